"""One small exception hierarchy.

Every error a user can cause (a bad config, a messy data file, a broken checkpoint) is an
:class:`S2SError` whose message is a single line naming the file, line or key at fault. The
entry points catch it, print ``error: <message>`` and exit with status 2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from typing import Iterator


class S2SError(Exception):
    """Base class for errors caused by user input; ``str(err)`` is one readable line and
    ``exit_code`` the status the commands exit with."""

    exit_code = 2


class ConfigError(S2SError):
    """A config file, key or value is invalid."""


class DataError(S2SError):
    """A data file is missing, unreadable or malformed, or a download failed."""


class CheckpointError(S2SError):
    """A checkpoint file is missing, truncated, foreign or from an incompatible version."""


class StorageError(S2SError):
    """The file system refused a write (disk full, no permission, a directory in the way):
    exit status 1, and the message names the path (and, for a full disk, the space)."""

    exit_code = 1


def _megabytes(count: int) -> str:
    return f"{count / 2**20:,.1f} MB"


def storage_error(path: "str | os.PathLike[str]", err: BaseException,
                  needed: int = 0) -> StorageError:
    """The one line for a failed write of ``path``; ``needed``: the bytes it was writing."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    full = (getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            or "No space left" in text or "file write failed" in text)
    if full:
        existing = os.path.dirname(os.path.abspath(os.fspath(path)))
        while existing and not os.path.isdir(existing):
            existing = os.path.dirname(existing)
        free = shutil.disk_usage(existing).free if existing else 0
        wanted = f", about {_megabytes(needed)} needed" if needed else ""
        return StorageError(f"cannot write '{path}': the disk is full ({_megabytes(free)} free"
                            f"{wanted})")
    reason = getattr(err, "strerror", None) or text
    return StorageError(f"cannot write '{path}': {reason}")


@contextlib.contextmanager
def writing(path: "str | os.PathLike[str]", needed: int = 0) -> Iterator[None]:
    """Turn a failed write of ``path`` into its :class:`StorageError` line."""
    try:
        yield
    except OSError as err:
        raise storage_error(path, err, needed) from None


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


def output_problem(path: "str | os.PathLike[str]") -> str:
    """Why ``path`` cannot be written as a file, as the end of a sentence, or "" when it can
    (checked before the work whose result goes there)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "is a directory, not a file"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"cannot be written: its directory '{os.path.dirname(path) or '.'}' does not exist"
    writable = os.access(path, os.W_OK) if os.path.exists(path) else os.access(parent, os.W_OK)
    return "" if writable else "cannot be written (permission denied)"
