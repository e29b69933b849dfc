"""Upstream's output layout: `SAVE_DIR/audios/{idx}[_vocal|_bgm].flac` and `SAVE_DIR/jsonl/{input name}.jsonl`.

Upstream saves with `torchaudio.save(path, wav, 48000)`, 16-bit FLAC through FFmpeg. We convert to int16
ourselves exactly as FFmpeg does (`levo_batch.audio.to_pcm16`) and hand soundfile int16 samples, so libsndfile
(which scales floats differently and may wrap out-of-range values) never converts anything and the files match
upstream's sample for sample.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf

from levo_batch.atomic import atomic_write_bytes
from levo_batch.audio import to_pcm16
from levo_batch.contracts import SAMPLE_RATE
from levo_batch.gen_types import STEM_SUFFIX


def write_flac(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write `(C, N)` float audio (C=2 for songs) as a 16-bit FLAC, atomically."""
    if audio.ndim != 2:
        raise ValueError(f"{path}: expected audio of shape (channels, samples), got {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError(f"{path}: audio contains NaN or infinite samples; the decoder output is broken")
    buf = io.BytesIO()
    sf.write(buf, to_pcm16(audio), sample_rate, format="FLAC", subtype="PCM_16")
    atomic_write_bytes(Path(path), buf.getvalue())


def audio_paths(save_dir: str | Path, idx: str, stems: Iterable[str]) -> dict[str, Path]:
    """Stem name (`main`, `vocal`, `bgm`) -> the flac upstream would write for it."""
    unknown = set(stems) - set(STEM_SUFFIX)
    if unknown:
        raise ValueError(f"unknown stems {sorted(unknown)}; expected some of {list(STEM_SUFFIX)}")
    return {stem: Path(save_dir) / "audios" / f"{idx}{STEM_SUFFIX[stem]}.flac" for stem in stems}


def is_done(save_dir: str | Path, idx: str, stems: Iterable[str]) -> bool:
    """All of a song's flacs exist; atomic writes make existence mean complete."""
    return all(p.exists() for p in audio_paths(save_dir, idx, stems).values())


def output_jsonl_path(save_dir: str | Path, input_path: str | Path) -> Path:
    """Upstream appends `.jsonl` to the input's file name: `lyrics.jsonl` -> `jsonl/lyrics.jsonl.jsonl`."""
    return Path(save_dir) / "jsonl" / f"{Path(input_path).name}.jsonl"


def output_item(item: dict, save_dir: str | Path, extra: dict | None = None) -> dict:
    """One output line: the input item with `idx` as a string (in place) and `wav_path` added, then `extra`.

    Upstream builds `wav_path` by string formatting, `f"{save_dir}/audios/{idx}.flac"`, with SAVE_DIR exactly
    as typed on the command line (relative stays relative); pass that string to reproduce it byte for byte.
    For separate stems it still records only the main file.
    """
    out = dict(item)
    out["idx"] = str(item["idx"])
    out["wav_path"] = f"{save_dir}/audios/{out['idx']}.flac"
    out.update(extra or {})
    return out


def write_output_jsonl(path: Path, items: list[dict]) -> None:
    """Write the items, one JSON object per line, atomically.

    Serialised with the standard library's `json.dumps(item, ensure_ascii=False)`, as upstream does, rather
    than orjson: orjson's compact separators would make every line differ from upstream's byte for byte.
    """
    text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    atomic_write_bytes(Path(path), text.encode("utf-8"))
