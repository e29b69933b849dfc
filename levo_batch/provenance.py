"""What made each song's audio: `SAVE_DIR/provenance/{idx}.json`, written right after the song's FLACs.

A record holds the song's recipe (its own inputs, the LM and decoder settings, see `song_recipe`), the
fingerprint of the token record that was decoded, the output-jsonl item, and the sha256 of every stem file.
A re-run compares the recipe it would use with the record before doing anything: a song whose lyrics,
prompt, seed, model or settings changed, whose audio was replaced, or that has no record at all is
re-rendered (or, with --strict, the run is refused), so SAVE_DIR never mixes audio of different settings
unannounced. The output jsonl is built from these records, so it always describes the audio on disk.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import orjson

from .atomic import atomic_write_bytes
from .contracts import song_seed
from .errors import LevoError, first_few
from .outputs import audio_paths
from .store import canonical, differences, file_sha256, move_aside

if TYPE_CHECKING:
    from .jobs import Job

FOLDER = "provenance"
log = logging.getLogger(__name__)


class StaleOutputError(LevoError):
    """--strict and some finished songs were made differently from what this run would make."""


@dataclass
class Provenance:
    recipe: dict
    tokens: str
    """Fingerprint of the token record that was decoded."""
    item: dict
    """The input jsonl item the audio was rendered from."""
    facts: dict
    """Prompt facts recorded in the output jsonl (auto-prompt choice, prompt audio hash)."""
    audio: dict[str, str]
    """Stem -> sha256 of its FLAC."""


def song_recipe(job: "Job", gen_type: str, seed: int, stage_recipe: dict) -> dict:
    """Everything that decides a song's audio, known before any model loads. A prompt file enters by content."""
    prompt = None
    if job.prompt_audio_path is not None:
        prompt = {"path": str(job.prompt_audio_path), "sha256": file_sha256(job.prompt_audio_path)}
    song = {"lyrics": job.gt_lyric, "descriptions": job.descriptions, "prompt_audio": prompt,
            "auto_prompt_audio_type": job.auto_prompt_audio_type, "seed": song_seed(seed, job.idx),
            "gen_type": gen_type}
    return canonical({"song": song, **stage_recipe})


def record_path(save_dir: Path, idx: str) -> Path:
    return Path(save_dir) / FOLDER / f"{idx}.json"


def write(save_dir: Path, idx: str, stems: Sequence[str], recipe: dict, tokens: str, item: dict,
          facts: dict) -> None:
    """Record the song's provenance; call after its FLACs are written (they are hashed here)."""
    hashes = {stem: file_sha256(p) for stem, p in audio_paths(save_dir, idx, stems).items()}
    record = Provenance(recipe, tokens, item, facts, hashes)
    atomic_write_bytes(record_path(save_dir, idx), orjson.dumps(asdict(record), option=orjson.OPT_SORT_KEYS))


def read(save_dir: Path, idx: str) -> Provenance | None:
    """The record, or None when absent. Raises ValueError when it is unreadable."""
    path = record_path(save_dir, idx)
    if not path.exists():
        return None
    try:
        return Provenance(**orjson.loads(path.read_bytes()))
    except (orjson.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path} is unreadable ({e})") from e


def stale_reason(save_dir: Path, idx: str, stems: Sequence[str], recipe: dict,
                 tokens: str | None = None) -> str | None:
    """Why the song's finished audio must be re-rendered for `recipe`, or None when it is current.

    `tokens` (decode-only runs) is the fingerprint of the token record that would be decoded now; the LM
    part of the recipe is then not compared, since stored tokens are decoded whatever settings made them.
    """
    try:
        record = read(save_dir, idx)
    except ValueError as e:
        return str(e)
    if record is None:
        return "its audio has no provenance record (rendered by an older levo_batch, or stopped before recording it)"
    for stem, path in audio_paths(save_dir, idx, stems).items():
        if record.audio.get(stem) != file_sha256(path):
            return f"{path} is not the file that was rendered (replaced or edited since)"
    if tokens is not None:
        if record.tokens != tokens:
            return "its stored tokens differ from the ones its audio was decoded from"
        old, new = _without_lm(record.recipe), _without_lm(recipe)
    else:
        old, new = record.recipe, recipe
    changed = differences(old, new)
    return "changed: " + ", ".join(changed) if changed else None


def _without_lm(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k != "lm"}


def set_aside_unreadable(save_dir: Path, idx: str) -> None:
    """Move an unreadable record out of the way (`*.corrupt`) so the song's new one can be written."""
    path = record_path(save_dir, idx)
    try:
        read(save_dir, idx)
    except ValueError:
        moved = move_aside(path)
        log.warning("Moved the unreadable provenance record of song %s aside to %s.", idx, moved)


def strict_refusal(reasons: dict[str, str]) -> StaleOutputError:
    shown = first_few([f"{idx}: {why}" for idx, why in reasons.items()], 5, sep="; ")
    return StaleOutputError(
        f"--strict: {len(reasons)} finished song(s) were rendered differently from what this run would render "
        f"({shown}). Rerun without --strict to re-render them, with --overwrite to redo everything, or "
        f"use another SAVE_DIR to keep both.")
