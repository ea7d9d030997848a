"""Blob files on disk: where they live and how they get there without a visible half.

Everything here is synchronous and blocking; the async Store runs it in worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..oci.digest import Digest

_FILE_MODE = 0o444


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
        """Remove leftovers of writes that never finished (a crash, a kill -9)."""
        removed = 0
        for entry in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
        return removed


class DigestMismatch(Exception):
    def __init__(self, expected: Digest, actual: Digest) -> None:
        super().__init__(f"content digest is {actual}, not {expected}")
        self.expected = expected
        self.actual = actual


class BlobWriter:
    """Append-only temp file that hashes as it goes and is published by `publish`.

    Used for monolithic uploads (in tmp/) and chunked upload sessions (in uploads/). The hash
    state lives in memory only; a session resumed after a restart is re-hashed at `publish`.
    """

    def __init__(self, path: Path, algorithm: str = "sha256", *, resume: bool = False) -> None:
        self.path = path
        self.algorithm = algorithm
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if resume else os.O_EXCL)
        self._fd = os.open(path, flags, 0o600)
        self.size = os.fstat(self._fd).st_size
        # A resumed session's earlier bytes were hashed by another process: rehash at publish.
        self._hasher: Any = hashlib.new(algorithm) if self.size == 0 else None

    @classmethod
    def in_tmp(cls, layout: Layout) -> BlobWriter:
        return cls(layout.tmp / uuid.uuid4().hex)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._hasher is not None:
            self._hasher.update(data)
        self.size += len(data)

    def digest(self, algorithm: str) -> Digest:
        if self._hasher is not None and self._hasher.name == algorithm:
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


def hash_file(path: Path, algorithm: str, chunk: int = 4 * 1024 * 1024) -> Digest:
    hasher = hashlib.new(algorithm)
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            hasher.update(block)
    return Digest.from_hasher(hasher)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
