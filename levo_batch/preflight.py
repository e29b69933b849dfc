"""Checks that run with the jsonl, before any model loads or any file is written.

A render takes hours; a setting that cannot work (a zero batch size, a NaN guidance, a song longer than the
checkpoint can generate, a missing decoder file, a read-only SAVE_DIR) must be refused in the first second,
not after the LM phase. Each problem is one line saying what is wrong and what to do; they are all reported
at once (exit 2) and nothing is created, not even SAVE_DIR.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .errors import LevoError, first_few

if TYPE_CHECKING:
    from .jobs import Job
    from .stages import GenerationSettings


class PreflightError(LevoError):
    """Settings, SAVE_DIR or assets that cannot work; the message holds one line per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Needs:
    """What the pending songs will use, so only the assets that are really needed must be present."""

    lm: bool = False
    decoder: bool = False
    prompt_audio: bool = False
    auto_prompt: bool = False

    @classmethod
    def of(cls, jobs: Sequence["Job"], *, tokens_only: bool, decode_only: bool) -> "Needs":
        if not jobs:
            return cls()
        return cls(lm=not decode_only, decoder=not tokens_only,
                   prompt_audio=any(j.prompt_audio_path is not None for j in jobs),
                   auto_prompt=any(j.auto_prompt_audio_type is not None for j in jobs))


def raise_if(problems: Sequence[str]) -> None:
    if problems:
        raise PreflightError(problems)


def option_problems(s: "GenerationSettings", max_dur: float | None) -> list[str]:
    """Ranges of the numeric options; `max_dur` is the checkpoint's limit (None: no LM in this run)."""
    problems = []
    for flag, value in (("--batch-size", s.batch_size), ("--decoder-batch", s.decoder_batch),
                        ("--checkpoint-every", s.checkpoint_every), ("--top-k", s.top_k)):
        if value is not None and value < 1:
            problems.append(f"error: {flag} {value}: must be a whole number >= 1")
    if s.temperature is not None and not (math.isfinite(s.temperature) and s.temperature > 0):
        problems.append(f"error: --temperature {s.temperature}: must be a finite number > 0 "
                        f"(use --greedy for argmax decoding)")
    if s.cfg_coef is not None and not math.isfinite(s.cfg_coef):
        problems.append(f"error: --cfg-coef {s.cfg_coef}: must be a finite number (upstream uses 1.5)")
    if s.max_duration is not None:
        limit = f" and at most the checkpoint's max_dur {max_dur:g} s" if max_dur is not None else ""
        too_long = max_dur is not None and s.max_duration > max_dur
        if not (math.isfinite(s.max_duration) and s.max_duration >= 0.04) or too_long:
            problems.append(f"error: --max-duration {s.max_duration:g}: must be a number of seconds >= 0.04 "
                            f"(one frame){limit}")
    return problems


def save_dir_problems(save_dir: Path) -> list[str]:
    """SAVE_DIR must be a writable folder, or creatable inside a writable one."""
    if save_dir.exists():
        if not save_dir.is_dir():
            return [f"error: SAVE_DIR {save_dir} is a file, not a folder; pass a folder path (it is created "
                    f"if missing)"]
        if not _writable(save_dir):
            return [f"error: SAVE_DIR {save_dir} is not writable ({_why_not_writable(save_dir)}); fix its "
                    f"permissions or choose another folder"]
        return []
    parent = save_dir.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return [f"error: SAVE_DIR {save_dir} cannot be created: {parent} is a file, not a folder"]
    if not _writable(parent):
        return [f"error: SAVE_DIR {save_dir} cannot be created: {parent} is not writable "
                f"({_why_not_writable(parent)}); choose another folder"]
    return []


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _why_not_writable(folder: Path) -> str:
    try:
        st = os.statvfs(folder)
    except OSError:
        return "permission denied"
    return "read-only file system" if st.f_flag & os.ST_RDONLY else "permission denied"


def decode_only_problems(jobs: Sequence["Job"], tokens_dir: Path) -> list[str]:
    """--decode-only decodes stored tokens; songs without a finished record cannot be rendered."""
    missing = [j.idx for j in jobs if not (tokens_dir / f"{j.idx}.npz").is_file()]
    if not missing:
        return []
    return [f"error: --decode-only: no finished tokens in {tokens_dir} for {len(missing)} song(s): "
            f"{first_few(missing, 10)}; "
            f"run without --decode-only to generate them"]
