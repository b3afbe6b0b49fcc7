"""The error a command turns into exit code 2: a setting or flag the user has to change."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid flag value or setting; the message starts with the flag to fix and says what is accepted."""
