"""The evaluation's files: `eval/report.json` (everything), `eval/report.csv` (one row per song)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_bytes
from .stats import mean_ci

METRICS = {
    "per": ("PER", "phoneme error rate (lower is better)"),
    "wer": ("WER", "word error rate; one Chinese character counts as a word (lower is better)"),
    "cer": ("CER", "character error rate (lower is better)"),
    "CE": ("CE", "Audiobox Aesthetics content enjoyment (1-10)"),
    "CU": ("CU", "Audiobox Aesthetics content usefulness (1-10)"),
    "PC": ("PC", "Audiobox Aesthetics production complexity (1-10)"),
    "PQ": ("PQ", "Audiobox Aesthetics production quality (1-10)"),
    "duration_s": ("duration", "length in seconds"),
    "lufs": ("LUFS", "integrated loudness, ITU-R BS.1770-4"),
    "peak_dbfs": ("peak", "sample peak in dBFS"),
    "clipped_fraction": ("clipped", "share of samples at 16-bit full scale"),
    "silence_ratio": ("silence", "share of 50 ms frames below -60 dBFS"),
    "lm_seconds": ("LM time", "seconds the LM spent on the song (shared with its batch)"),
}
"""Per-song numeric columns, in report order: key -> (short label, definition)."""
COLUMNS = ("idx", "language", "asr_audio", *METRICS, "per_edits", "per_length", "wer_edits", "wer_length",
           "cer_edits", "cer_length", "transcript")


@dataclass
class Report:
    save_dir: str
    results_jsonl: str
    settings: dict
    songs: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Per metric: mean over songs with its 95 % CI; for error rates also the pooled rate."""
        out = {}
        for key in METRICS:
            entry = mean_ci(song.get(key) for song in self.songs).as_dict()
            if f"{key}_edits" in COLUMNS:
                edits = sum(song.get(f"{key}_edits") or 0 for song in self.songs)
                length = sum(song.get(f"{key}_length") or 0 for song in self.songs)
                entry["pooled"] = edits / length if length else None
            out[key] = entry
        return out

    def as_dict(self) -> dict:
        return {
            "save_dir": self.save_dir,
            "results_jsonl": self.results_jsonl,
            "settings": self.settings,
            "metrics": {key: {"label": label, "definition": text} for key, (label, text) in METRICS.items()},
            "summary": self.summary(),
            "missing": self.missing,
            "songs": self.songs,
        }


def write_json(report: Report, path: Path) -> None:
    text = json.dumps(report.as_dict(), ensure_ascii=False, indent=1)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def write_csv(report: Report, path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for song in report.songs:
        writer.writerow({key: "" if song.get(key) is None else song[key] for key in COLUMNS})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
