"""One small exception hierarchy.

Every error a user can cause (a bad config, a messy data file, a broken checkpoint) is an
:class:`S2SError` whose message is a single line naming the file, line or key at fault. The
entry points catch it, print ``error: <message>`` and exit with status 2.
"""

from __future__ import annotations


class S2SError(Exception):
    """Base class for errors caused by user input; ``str(err)`` is one readable line."""


class ConfigError(S2SError):
    """A config file, key or value is invalid."""


class DataError(S2SError):
    """A data file is missing, unreadable or malformed, or a download failed."""


class CheckpointError(S2SError):
    """A checkpoint file is missing, truncated, foreign or from an incompatible version."""
