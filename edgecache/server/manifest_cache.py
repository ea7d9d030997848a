"""Manifest bytes kept in memory: small, immutable by digest, and the hottest request there is.

Profiling GET manifest by tag showed ~15% of the server's CPU in the worker-thread hop to open
the file and a third in the sendfile path, for a body of ~1 KiB. Which manifest a repository
and tag name is still decided by the index on every request; only the bytes behind a digest,
which can never change, come from here.

Bytes are verified against their digest whenever they are read from disk (hashing ~1 KiB is
cheap next to the read): rot or a mistaken edit in a manifest file is caught before it is
served. A mismatch goes to `on_corrupt` (the scrub's heal: quarantine, and a fetch from
upstream for proxied content); when that puts good bytes back they are read again, otherwise
the request gets MANIFEST_UNKNOWN (pushed content: it has to be pushed again).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from ..oci import errors
from ..oci.digest import Digest
from ..store.scrub import FileId, Verdict


async def _not_healed(verdict: Verdict) -> bool:
    return False


def _read(path: Path) -> tuple[bytes, FileId]:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        return f.read(), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ManifestCache:
    def __init__(self, budget: int = 32 << 20) -> None:
        self.budget = budget
        self.size = 0
        self._entries: OrderedDict[Digest, bytes] = OrderedDict()
        self.on_corrupt: Callable[[Verdict], Awaitable[bool]] = _not_healed

    async def read(self, digest: Digest, path: Path) -> bytes:
        data = self._entries.get(digest)
        if data is not None:
            self._entries.move_to_end(digest)
            return data
        data = await self._read_verified(digest, path)
        self._entries[digest] = data
        self.size += len(data)
        while self.size > self.budget and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self.size -= len(evicted)
        return data

    async def _read_verified(self, digest: Digest, path: Path) -> bytes:
        for attempt in range(2):
            try:
                data, file_id = await trio.to_thread.run_sync(_read, path)
            except FileNotFoundError:
                raise errors.ManifestUnknown(
                    f"manifest {digest} is indexed but its file is missing; run fsck"
                ) from None
            if digest.verify(data):
                return data
            actual = Digest.of_bytes(data, digest.algorithm)
            verdict = Verdict(str(digest), len(data), f"its bytes hash to {actual}", file_id)
            if attempt or not await self.on_corrupt(verdict):
                break
        raise errors.ManifestUnknown(
            f"manifest {digest} was corrupt on disk and has been quarantined; push it again "
            "(a proxied one is fetched again when its upstream answers)"
        )
