"""Progress and messages that read well both on a terminal and in a log file.

On a terminal: one tqdm bar per phase, in songs, whose position counts the steps of songs in flight (so the
ETA moves from the first step, not only when a whole batch ends), with a compact postfix for the batch.
Redirected (the overnight case): no bars and no escape codes at all, but a timestamped line every
`LEVO_PROGRESS_EVERY` seconds (default 30) and one per finished song; every message is timestamped too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Iterator

from tqdm import tqdm

PROGRESS_EVERY_ENV = "LEVO_PROGRESS_EVERY"
REFRESH_S = 0.1
"""Terminal bars redraw at most this often (a batch of 16 songs reports 16 steps every few milliseconds)."""


def is_terminal() -> bool:
    return sys.stderr.isatty()


def log(message: str) -> None:
    if is_terminal():
        tqdm.write(message, file=sys.stderr)
    else:
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        sys.stderr.write("".join(f"[{stamp}] {line}\n" for line in message.splitlines() or [""]))
        sys.stderr.flush()


class _LogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log(f"{record.levelname.lower()}: {record.getMessage()}")


def setup_logging() -> None:
    """Route the library's `logging` warnings (stale records, lock takeover) through `log`."""
    root = logging.getLogger("levo_batch")
    if not any(isinstance(h, _LogHandler) for h in root.handlers):
        root.addHandler(_LogHandler(logging.INFO))
        root.setLevel(logging.INFO)
        root.propagate = False


@contextmanager
def timed(what: str) -> Iterator[None]:
    """'loading LM ...' now, 'loading LM: 4.3 s' when done: start-up is never silent."""
    log(f"{what} ...")
    started = time.monotonic()
    yield
    log(f"{what}: {time.monotonic() - started:.1f} s")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PhaseProgress:
    """Progress of one phase in songs (fractions allowed): a bar on a terminal, periodic lines otherwise."""

    def __init__(self, total: int, label: str):
        self.total, self.label = total, label
        self.position = 0.0
        self.started = self.last_line = time.monotonic()
        self.every = float(os.environ.get(PROGRESS_EVERY_ENV, "30"))
        self.bar = tqdm(total=total, desc=label, unit="song", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]{postfix}") \
            if is_terminal() else None

    def advance(self, position: float, detail: str = "") -> None:
        self.position = min(position, self.total)
        if self.bar is not None:
            self.bar.n = self.position
            if time.monotonic() - self.last_line >= REFRESH_S or self.position == self.total:
                self.last_line = time.monotonic()
                self.bar.set_postfix_str(detail, refresh=False)
                self.bar.refresh()
        elif time.monotonic() - self.last_line >= self.every:
            self.line(detail)

    def line(self, detail: str = "") -> None:
        self.last_line = time.monotonic()
        elapsed = self.last_line - self.started
        eta = _clock(elapsed * (self.total - self.position) / self.position) if self.position > 0 else "?"
        log(f"{self.label}: {self.position:.1f}/{self.total} songs ({100 * self.position / self.total:.0f} %), "
            f"elapsed {_clock(elapsed)}, ETA {eta}" + (f"; {detail}" if detail else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LMProgress:
    """The LM phase: songs done plus, for each song in flight, its share of steps (`step / total`)."""

    def __init__(self, songs: int):
        self.phase = PhaseProgress(songs, "LM")
        self.done = 0
        self.steps: dict[str, tuple[int, int]] = {}

    def step(self, idx: str, step: int, total: int) -> None:
        self.steps[idx] = (step, total)
        self.phase.advance(self._position(), self._detail())

    def finished(self, idx: str, frames: int) -> None:
        self.steps.pop(idx, None)
        self.done += 1
        if self.phase.bar is None:
            log(f"LM: {idx} done ({frames / 25:.1f} s of audio), {self.done}/{self.phase.total} songs")
        self.phase.advance(self._position(), self._detail())

    def _position(self) -> float:
        return self.done + sum(step / total for step, total in self.steps.values() if total)

    def _detail(self) -> str:
        if not self.steps:
            return ""
        lowest = min(step for step, _ in self.steps.values())
        return f"{len(self.steps)} in flight, from step {lowest}/{next(iter(self.steps.values()))[1]}"

    def __enter__(self) -> "LMProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.phase.close()


class SongProgress:
    """One unit per song finished (written by the decoder, scored by `evaluate`, ...)."""

    def __init__(self, songs: int, label: str, verb: str = "written"):
        self.phase = PhaseProgress(songs, label)
        self.verb = verb
        self.done = 0

    def update(self, idx: str) -> None:
        self.done += 1
        if self.phase.bar is None:
            log(f"{self.phase.label}: {idx} {self.verb}, {self.done}/{self.phase.total} songs")
        self.phase.advance(self.done)

    def __enter__(self) -> "SongProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.phase.close()
