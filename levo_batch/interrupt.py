"""Ctrl-C / SIGTERM handling: stop at the next safe point, never in the middle of a write.

The first signal only raises a flag; the pipeline checks it after each persisted step (token checkpoint,
finished song, written FLAC) and unwinds with `StopRequested`. A second signal stops at once; the
atomic writers guarantee that even then no half-written file is left behind. Where nothing of ours is
being written (loading models, preparing prompts, decoding a song's windows), the pipeline wraps the work
in `stop_at_once()` so that the first signal interrupts it without waiting for it to end.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class StopRequested(BaseException):
    """Raised at a safe point after Ctrl-C/SIGTERM (a BaseException so generic handlers let it through)."""

    _requested = threading.Event()
    _at_once = threading.Event()

    @classmethod
    def check(cls) -> None:
        if cls._requested.is_set():
            raise cls("interrupted")


@contextmanager
def interruptible() -> Iterator[None]:
    """Install the two-stage handler for SIGINT and SIGTERM (main thread only) for the block's duration."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        if StopRequested._requested.is_set() or StopRequested._at_once.is_set():
            StopRequested._requested.set()
            raise KeyboardInterrupt
        StopRequested._requested.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    StopRequested._requested.clear()
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        StopRequested._requested.clear()


@contextmanager
def stop_at_once() -> Iterator[None]:
    """Inside this block the first Ctrl-C raises KeyboardInterrupt at once (only for work that writes nothing)."""
    StopRequested.check()
    StopRequested._at_once.set()
    try:
        yield
    finally:
        StopRequested._at_once.clear()
