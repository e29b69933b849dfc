"""The one error a job's prompt can raise: the pipeline fails that song and carries on with the others."""


class PromptError(ValueError):
    """A prompt that cannot be used (unreadable, empty, silent, too short, missing library entry)."""
