"""Everyday operator mistakes, told in one line: what is wrong, where, and what to do.

The command line prints a UserError as `edgecache: <message>` and exits non-zero; it never
shows a traceback for something the operator can fix (a port in use, a data directory that is
a file or on a read-only mount, an output directory that does not exist). Tracebacks are kept
for bugs. This module only words errors: it opens nothing itself, except `open_store`, which
wraps the store's own opening.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store


class UserError(Exception):
    """A mistake in the command, the config or the machine's state; nothing was changed."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_REASONS = {
    errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
}


def reason(exc: BaseException) -> str:
    """The cause of an OSError (or an LMDB error) in words, without the path it repeats."""
    if isinstance(exc, OSError):
        if exc.errno in _REASONS:
            return _REASONS[exc.errno]
        return (exc.strerror or str(exc)).lower()
    text = str(exc)
    # lmdb.Error reads "<path>: <strerror>"; the path is already in our message.
    return text.rpartition(": ")[2].lower() if ": " in text else text


def _file_in_the_way(path: Path) -> Path | None:
    """`path` itself or the nearest ancestor that exists, if that is not a directory."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def data_dir_error(path: Path, exc: BaseException) -> UserError:
    blocker = _file_in_the_way(path)
    if blocker == path:
        return UserError(f"data directory {path} is a file, not a directory")
    if blocker is not None:
        return UserError(f"data directory {path}: {blocker} is a file, not a directory")
    return UserError(f"cannot use data directory {path}: {reason(exc)}")


def open_store(path: Path, *, sweep: bool = False, existing: bool = False) -> Store:
    """Store.open with its failures in words. `existing`: refuse to create a new data
    directory (commands that only read one: a typo in --data must not make an empty store)."""
    import lmdb

    from .store import Store

    if existing and not (path / "index").is_dir():
        blocker = _file_in_the_way(path)
        if blocker is not None:
            raise data_dir_error(path, FileExistsError(errno.EEXIST, "exists"))
        raise UserError(f"{path} is not an edgecache data directory (no index/ in it)")
    try:
        return Store.open(path, sweep=sweep)
    except (OSError, lmdb.Error) as exc:
        raise data_dir_error(path, exc) from None


def output_file_error(path: Path, exc: OSError) -> UserError:
    """Writing `path` (an export, a config file) failed."""
    parent = path.parent
    if path.is_dir():
        return UserError(f"{path} is a directory: give the name of the file to write")
    if not parent.exists():
        return UserError(f"cannot write {path}: directory {parent} does not exist")
    blocker = _file_in_the_way(parent)
    if blocker is not None:
        return UserError(f"cannot write {path}: {blocker} is a file, not a directory")
    return UserError(f"cannot write {path}: {reason(exc)}")


def writable_output(path: Path) -> None:
    """Refuse an output path that cannot work before any long work starts."""
    if path.is_dir():
        raise output_file_error(path, IsADirectoryError(errno.EISDIR, "is a directory"))
    parent = path.parent
    if not parent.is_dir():
        raise output_file_error(path, FileNotFoundError(errno.ENOENT, "no such directory"))
    if not os.access(parent, os.W_OK):
        raise output_file_error(path, PermissionError(errno.EACCES, "permission denied"))
