"""Progress bars (tqdm, with ETA) and messages that do not tear the bars apart."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


def log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log(f"{record.levelname.lower()}: {record.getMessage()}")


def setup_logging() -> None:
    """Route the library's `logging` warnings (stale records, lock takeover) through tqdm-safe output."""
    root = logging.getLogger("levo_batch")
    if not any(isinstance(h, _TqdmHandler) for h in root.handlers):
        root.addHandler(_TqdmHandler(logging.INFO))
        root.setLevel(logging.INFO)
        root.propagate = False


def song_bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="song", file=sys.stderr, dynamic_ncols=True)


class LMProgress:
    """One bar over songs plus one bar per song in flight over its LM steps."""

    def __init__(self, songs: int):
        self.songs = song_bar(songs, "LM")
        self.bars: dict[str, tqdm] = {}

    def step(self, idx: str, step: int, total: int) -> None:
        bar = self.bars.get(idx)
        if bar is None:
            bar = self.bars[idx] = tqdm(total=total, desc=f"  {idx}", unit="step", leave=False,
                                        file=sys.stderr, dynamic_ncols=True, initial=step - 1)
        bar.update(step - bar.n)

    def finished(self, idx: str, frames: int) -> None:
        bar = self.bars.pop(idx, None)
        if bar is not None:
            bar.close()
        self.songs.update(1)
        self.songs.set_postfix_str(f"last {idx}: {frames / 25:.1f} s", refresh=False)

    def __enter__(self) -> "LMProgress":
        return self

    def __exit__(self, *exc) -> None:
        for bar in self.bars.values():
            bar.close()
        self.songs.close()
