"""The base of every error whose message is meant for the user as it stands (what is wrong, what to do).

The CLI prints such errors without a traceback and exits with status 2; anything else is a bug and keeps
its traceback. Per-song problems (`prompts.errors.PromptError`) are handled inside the pipeline instead.
"""


class LevoError(Exception):
    """An input, asset or state problem the user can fix; the message says how."""


class StorageError(LevoError):
    """SAVE_DIR cannot be written (disk full, read-only, permissions): the run stops at once, resumable."""
