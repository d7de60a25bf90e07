"""The base of errors a user can fix: the CLI prints them without a traceback."""

from __future__ import annotations

__all__ = ["ConfigError", "TailoredError"]


class TailoredError(Exception):
    """An error in the user's input: a file, a row, a configuration key."""


class ConfigError(TailoredError, ValueError):
    """A configuration file or key is wrong; the message names the key."""
