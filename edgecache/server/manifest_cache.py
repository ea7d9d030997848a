"""Manifest bytes kept in memory: small, immutable by digest, and the hottest request there is.

Profiling GET manifest by tag showed ~15% of the server's CPU in the worker-thread hop to open
the file and a third in the sendfile path, for a body of ~1 KiB. Which manifest a repository
and tag name is still decided by the index on every request; only the bytes behind a digest,
which can never change, come from here.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import trio

from ..oci import errors
from ..oci.digest import Digest


class ManifestCache:
    def __init__(self, budget: int = 32 << 20) -> None:
        self.budget = budget
        self.size = 0
        self._entries: OrderedDict[Digest, bytes] = OrderedDict()

    async def read(self, digest: Digest, path: Path) -> bytes:
        data = self._entries.get(digest)
        if data is not None:
            self._entries.move_to_end(digest)
            return data
        try:
            data = await trio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            raise errors.ManifestUnknown(
                f"manifest {digest} is indexed but its file is missing; run fsck"
            ) from None
        self._entries[digest] = data
        self.size += len(data)
        while self.size > self.budget and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self.size -= len(evicted)
        return data
