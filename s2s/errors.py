"""One small exception hierarchy.

Every error a user can cause (a bad config, a messy data file, a broken checkpoint) is an
:class:`S2SError` whose message is a single line naming the file, line or key at fault. The
entry points catch it, print ``error: <message>`` and exit with status 2.
"""

from __future__ import annotations

import errno
import os
import stat


class S2SError(Exception):
    """Base class for errors caused by user input; ``str(err)`` is one readable line."""


class ConfigError(S2SError):
    """A config file, key or value is invalid."""


class DataError(S2SError):
    """A data file is missing, unreadable or malformed, or a download failed."""


class CheckpointError(S2SError):
    """A checkpoint file is missing, truncated, foreign or from an incompatible version."""


def file_problem(path: "str | os.PathLike[str]") -> str:
    """Why ``path`` cannot be read as a file, as the end of a sentence ("does not exist", "is a
    directory", "is a symbolic link loop", ...), or "" when it is a readable regular file."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if os.path.islink(path):
            return f"is a symbolic link to '{os.readlink(path)}', which does not exist"
        if err.errno == errno.EACCES:
            return "cannot be reached (permission denied)"
        if err.errno == errno.ENOTDIR:
            return "does not exist (a part of its path is a file, not a directory)"
        return "does not exist"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a device, pipe or socket)"
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    return ""
