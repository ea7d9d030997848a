"""Blob files on disk: where they live and how they get there without a visible half.

Everything here is synchronous and blocking; the async Store runs it in worker threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..oci.digest import Digest

_FILE_MODE = 0o444
# Names of a preload's spool files in tmp/ (transfer/spool.py writes them).
PRELOAD_PREFIX = "preload-"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def upload_path(self, upload_id: str) -> Path:
        return self.uploads / upload_id

    def create(self) -> None:
        for path in (
            self.root,
            self.index,
            self.blobs,
            self.tmp,
            self.uploads,
            self.run,
            self.trash,
        ):
            path.mkdir(parents=True, exist_ok=True)

    def sweep_tmp(self) -> int:
        """Remove leftovers of writes that never finished (a crash, a kill -9).

        A preload may be running (it works beside a server, and holds an flock on tmp/ while
        it does, transfer/spool.py): its spool files are then left to it.
        """
        fd = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                keep = ""
            except BlockingIOError:
                keep = PRELOAD_PREFIX
            removed = 0
            for entry in self.tmp.iterdir():
                if keep and entry.name.startswith(keep):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
            return removed
        finally:
            os.close(fd)  # and with it the flock


class DigestMismatch(Exception):
    def __init__(self, expected: Digest, actual: Digest) -> None:
        super().__init__(f"content digest is {actual}, not {expected}")
        self.expected = expected
        self.actual = actual


class BlobWriter:
    """A file that hashes what is appended to it, and can be put back to an earlier state.

    Used for monolithic uploads and downloads (a new file in tmp/) and for one request of a
    chunked upload session (the session's file in uploads/, reopened per request so that an
    idle session holds no descriptor). The file and the hash are always the same bytes by
    construction: each write goes to both under one lock, so neither two threads nor a failed
    write can put bytes in one and not the other (a write that fails part-way truncates the
    file back and leaves the hash untouched). `rollback()` puts both back to how they were at
    `checkpoint()`: a PATCH that fails leaves its session as it found it.
    """

    def __init__(self, path: Path, fd: int, size: int, hasher: Any) -> None:
        self.path = path
        self._fd = fd
        self.size = size
        self._hasher = hasher
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: Path, algorithm: str = "sha256") -> BlobWriter:
        # O_APPEND: after a rollback's ftruncate the next write lands at the new end, where
        # a plain descriptor would leave a hole at its old offset.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        return cls(path, fd, 0, hashlib.new(algorithm))

    @classmethod
    def in_tmp(cls, layout: Layout) -> BlobWriter:
        return cls.create(layout.tmp / uuid.uuid4().hex)

    @classmethod
    def reopen(cls, path: Path, size: int, hasher: Any) -> BlobWriter:
        """Append to an upload session's file whose first `size` bytes `hasher` has seen.

        Raises FileNotFoundError when the file is gone and ValueError when it is shorter than
        `size`; bytes past `size` (a write whose rollback could not run: a crash) are cut off.
        """
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            actual = os.fstat(fd).st_size
            if actual < size:
                raise ValueError(f"{path} has {actual} bytes, its session says {size}")
            if actual > size:
                os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, size, hasher)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        with self._lock:
            start = self.size
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except BaseException:
                # If even this fails, reopen() of a session cuts the file back to `size`, and
                # a temp file is discarded by whoever sees the error.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
                raise
            self._hasher.update(data)
            self.size = start + len(data)

    def checkpoint(self) -> tuple[int, Any]:
        with self._lock:
            return self.size, self._hasher.copy()

    def rollback(self, checkpoint: tuple[int, Any]) -> None:
        size, hasher = checkpoint
        with self._lock:
            os.ftruncate(self._fd, size)
            self.size, self._hasher = size, hasher.copy()

    def hash_state(self) -> Any:
        """A copy of the hash of the bytes written so far (to resume a session with)."""
        with self._lock:
            return self._hasher.copy()

    def digest(self, algorithm: str) -> Digest:
        with self._lock:
            if self._hasher.name == algorithm:
                return Digest.from_hasher(self._hasher)
        return hash_file(self.path, algorithm)

    def seal(self, expected: Digest) -> None:
        """Verify and fsync; the caller then publishes inside its index transaction.

        Raises DigestMismatch (and removes the file) when the bytes are not `expected`.
        """
        actual = self.digest(expected.algorithm)
        if actual != expected:
            self.discard()
            raise DigestMismatch(expected, actual)
        os.fsync(self._fd)
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def publish_file(layout: Layout, source: Path, digest: Digest) -> Path | None:
    """Rename a sealed (verified, fsynced) file into place, replacing whatever is there.

    An existing file is never trusted: rot or a mistaken edit may have changed it, and the
    source was verified a moment ago. Readers with the old file open keep its inode. Returns
    the target when this call created it (nothing was there), None when it replaced a file:
    a transaction that fails after a creating rename must remove the file again (see
    Index._publishing), while a replaced file is still named by its old entry.

    Called inside the LMDB write transaction that records the content, so that publishing
    and any concurrent removal (garbage collection) are serialised by LMDB's writer lock.
    """
    target = layout.blob_path(digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(source, _FILE_MODE)
    created = not os.path.lexists(target)
    os.rename(source, target)
    _fsync_dir(target.parent)
    return target if created else None


def seal_bytes(layout: Layout, data: bytes, digest: Digest) -> BlobWriter:
    """Small content (manifests) takes the same tmp → verify → fsync route as blobs."""
    writer = BlobWriter.in_tmp(layout)
    try:
        writer.write(data)
        writer.seal(digest)
    except BaseException:
        writer.discard()
        raise
    return writer


def hash_file(
    path: Path,
    algorithm: str,
    chunk: int = 4 * 1024 * 1024,
    pace: Callable[[int], None] | None = None,
) -> Digest:
    """`pace` is told each block's size as it is read (the scrub's rate limit sleeps there)."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            hasher.update(block)
            if pace is not None:
                pace(len(block))
    return Digest.from_hasher(hasher)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
