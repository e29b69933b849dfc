"""Which songs a render produced: its output jsonl, each song's audio files, and the run's own records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import LevoError
from ..outputs import audio_paths, output_jsonl_path
from ..store import TokenStore


@dataclass(frozen=True)
class RenderedSong:
    idx: str
    gt_lyric: str
    mix: Path
    vocal: Path | None
    """The `--separate` vocal stem, when the render wrote one (ASR hears it without the accompaniment)."""
    lm_seconds: float | None
    """Wall time of the song's LM generation as the run recorded it (shared with its batch mates)."""


def find_songs(save_dir: Path, input_jsonl: Path | None = None) -> tuple[Path, list[RenderedSong], list[str]]:
    """The output jsonl read, the songs with audio on disk, and the idx of listed songs without audio."""
    results = _results_jsonl(save_dir, input_jsonl)
    items = _read_items(results)
    store = TokenStore(save_dir) if (save_dir / "tokens").is_dir() else None
    songs, missing = [], []
    for item in items:
        idx = str(item["idx"])
        paths = audio_paths(save_dir, idx, ("main", "vocal"))
        if not paths["main"].is_file():
            missing.append(idx)
            continue
        record = store.load_any(idx) if store is not None else None
        lm_seconds = record.meta.get("lm_seconds") if record is not None else None
        vocal = paths["vocal"] if paths["vocal"].is_file() else None
        songs.append(RenderedSong(idx, item.get("gt_lyric", ""), paths["main"], vocal, lm_seconds))
    if input_jsonl is not None:
        listed = {str(item["idx"]) for item in items}
        missing += [idx for idx in _read_idx(input_jsonl) if idx not in listed]
    return results, songs, missing


def _results_jsonl(save_dir: Path, input_jsonl: Path | None) -> Path:
    if not save_dir.is_dir():
        raise LevoError(f"{save_dir} is not a folder; pass the SAVE_DIR of a finished render")
    if input_jsonl is not None:
        if not input_jsonl.is_file():
            raise LevoError(f"{input_jsonl} not found; pass the jsonl the render was made from")
        path = output_jsonl_path(save_dir, input_jsonl)
        if not path.is_file():
            raise LevoError(f"{path} not found: {save_dir} holds no finished render of {input_jsonl.name}; "
                            f"run `levo-batch generate CKPT {input_jsonl} {save_dir}` first")
        return path
    found = sorted((save_dir / "jsonl").glob("*.jsonl"))
    if len(found) != 1:
        what = "no result jsonl" if not found else f"{len(found)} result jsonls ({', '.join(p.name for p in found)})"
        raise LevoError(f"{save_dir / 'jsonl'} has {what}; pass the INPUT.jsonl the render was made from")
    return found[0]


def _read_items(path: Path) -> list[dict]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LevoError(f"{path}:{number}: not valid JSON ({exc.msg}); was the file edited by hand?") from exc
        if not isinstance(item, dict) or "idx" not in item:
            raise LevoError(f"{path}:{number}: expected an object with an 'idx' field")
        items.append(item)
    return items


def _read_idx(input_jsonl: Path) -> list[str]:
    return [str(item["idx"]) for item in _read_items(input_jsonl)]
