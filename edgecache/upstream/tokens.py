"""Bearer tokens per (realm, service, scope), reused until shortly before expiry.

Single-flight: when many requests for the same scope need a token at once (a cold pull fans
out to dozens of blob requests), exactly one fetch goes to the token server and the others
wait for its result. If the fetching task is cancelled, a waiter takes over the fetch rather
than failing. The fetch itself is passed in, so this module needs no sockets to test.

The scope names a repository, which comes from the client: at most MAX_TOKENS tokens are
kept (least recently used dropped first), so random names cannot grow the cache for ever.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from edgecache.bounded import BoundedCache
from edgecache.upstream.auth import IssuedToken

TokenKey = tuple[str, str, str]  # realm, service, scope
MAX_TOKENS = 1024


@dataclass
class _Cached:
    token: str = field(repr=False)
    valid_until: float


@dataclass
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    token: str | None = field(default=None, repr=False)
    error: Exception | None = None


class TokenCache:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_tokens: int = MAX_TOKENS
    ) -> None:
        self._clock = clock
        self._tokens: BoundedCache[TokenKey, _Cached] = BoundedCache(max_tokens, clock=clock)
        self._flights: dict[TokenKey, _Flight] = {}
        self.fetches = 0  # how many fetches were started (observability and tests)

    def __len__(self) -> int:
        return len(self._tokens)

    def cached(self, key: TokenKey) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        if entry.valid_until <= self._clock():
            self._tokens.pop(key)
            return None
        return entry.token

    def invalidate(self, key: TokenKey, token: str | None) -> None:
        """Drop `token` after the registry refused it. Only if it is still the cached one: of
        N requests refused with the same token, the first invalidates and the rest reuse the
        fresh token it fetched instead of each fetching another."""
        entry = self._tokens.get(key)
        if entry is not None and (token is None or entry.token == token):
            self._tokens.pop(key)

    async def get(self, key: TokenKey, fetch: Callable[[], Awaitable[IssuedToken]]) -> str:
        while True:
            token = self.cached(key)
            if token is not None:
                return token
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.error is not None:
                # A copy: one exception object raised in several tasks would share a traceback.
                raise copy.copy(flight.error)
            if flight.token is not None:
                return flight.token
            # The fetcher was cancelled before it finished: loop and fetch ourselves.

        flight = _Flight()
        self._flights[key] = flight
        self.fetches += 1
        try:
            issued = await fetch()
            self._tokens.put(key, _Cached(issued.token, self._clock() + issued.reuse_for()))
            flight.token = issued.token
            return issued.token
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()
