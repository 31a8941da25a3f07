"""User-facing errors: one line that names the problem and the fix, never a traceback.

The library's messages name Python arguments (``num_steps``); the command line maps them to its
flags (``--steps``) through :attr:`DevarrayError.argument`, so one message serves both.
"""

from __future__ import annotations


class DevarrayError(Exception):
    """A problem the user can fix. ``argument`` is the Python argument the message names, if any."""

    def __init__(self, message: str, *, argument: str | None = None):
        super().__init__(message)
        self.argument = argument


class StoreError(DevarrayError):
    """A missing, damaged, mismatched or unwritable run store."""


class ConfigError(DevarrayError):
    """A bad setting, preset or argument value."""


class TrainingDiverged(StoreError):
    """Training met a non-finite loss; every checkpoint already written is kept."""
