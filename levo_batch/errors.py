"""The base of every error whose message is meant for the user as it stands (what is wrong, what to do).

The CLI prints such errors without a traceback and exits with status 2; anything else is a bug and keeps
its traceback. Per-song problems (`PromptError`) are handled inside the pipeline instead.
"""

from __future__ import annotations

from typing import Sequence


def first_few(items: Sequence[str], n: int, sep: str = ", ") -> str:
    """The first `n` items for a message, and how many more there are: `a, b, ... (3 more)`."""
    return sep.join(items[:n]) + (f"{sep}... ({len(items) - n} more)" if len(items) > n else "")


class LevoError(Exception):
    """An input, asset or state problem the user can fix; the message says how."""


class StorageError(LevoError):
    """SAVE_DIR cannot be written (disk full, read-only, permissions): the run stops at once, resumable."""


class PromptError(ValueError):
    """A job's prompt cannot be used (unreadable, empty, silent, too short, missing library entry): the pipeline
    fails that song and carries on with the others."""
