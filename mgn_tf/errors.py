"""The error a command turns into exit code 2: a setting or flag the user has to change."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid flag value or setting; the message starts with the flag to fix and says what is accepted."""


def summary(exc: BaseException, limit: int = 300) -> str:
    """The first two non-empty lines of an exception's message, as one line of at most `limit` characters.

    Keras's load errors run over many lines (a count, then an example); the first two say what failed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
