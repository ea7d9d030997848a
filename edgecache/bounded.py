"""A bounded, expiring map: the shape of every cache whose keys come from client input.

A dict keyed by what clients send (repository names, tags, passwords, addresses) grows for as
long as clients keep sending new keys: 20,000 random anonymous lookups grew one such cache by
13 MiB. `BoundedCache` holds at most `max_entries`, dropping the least recently used first,
and forgets an entry `ttl` seconds after it was stored, so memory is bounded whatever arrives.
The clock is injected so that expiry is tested without waiting.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    def __init__(
        self,
        max_entries: int,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        # key -> (stored at, value); order is least recently used first.
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return self.get(key) is not None

    def get(self, key: K, ttl: float | None = None) -> V | None:
        """The value (and mark it recently used), or None when absent or expired.

        `ttl` overrides the cache's for this lookup (a negative entry expires sooner)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        limit = self.ttl if ttl is None else ttl
        if limit is not None and self._clock() - entry[0] >= limit:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def age(self, key: K) -> float | None:
        """Seconds since `key` was stored (None when absent); does not refresh it."""
        entry = self._entries.get(key)
        return None if entry is None else self._clock() - entry[0]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def clear(self) -> None:
        self._entries.clear()
