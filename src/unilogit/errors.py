"""The errors unilogit raises on purpose; every layer may import them, so they import nothing of unilogit."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value; its message is one line naming the key and the fix."""


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or inf; its message is one line naming the step, the term and what was kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's message, or its class name when the message is empty."""
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__
