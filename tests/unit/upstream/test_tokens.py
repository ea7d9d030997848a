"""Token cache: reuse until shortly before expiry, one fetch per scope at a time."""

from __future__ import annotations

import trio
import trio.testing

from edgecache.upstream import UpstreamAuthError
from edgecache.upstream.auth import IssuedToken
from edgecache.upstream.tokens import TokenCache

KEY = ("https://auth/token", "svc", "repository:a:pull")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_reused_until_shortly_before_expiry() -> None:
    clock = Clock()
    cache = TokenCache(clock)
    issued = iter(["t1", "t2"])

    async def fetch() -> IssuedToken:
        return IssuedToken(next(issued), 60)

    assert await cache.get(KEY, fetch) == "t1"
    clock.now = 44.9
    assert await cache.get(KEY, fetch) == "t1"
    clock.now = 45.0  # 60 s token, reused for 45 s
    assert await cache.get(KEY, fetch) == "t2"
    assert cache.fetches == 2


async def test_concurrent_requests_share_one_fetch() -> None:
    cache = TokenCache()
    release = trio.Event()
    got: list[str] = []

    async def fetch() -> IssuedToken:
        await release.wait()
        return IssuedToken("shared", 300)

    async def want() -> None:
        got.append(await cache.get(KEY, fetch))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(want)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert got == ["shared"] * 20
    assert cache.fetches == 1


async def test_failure_reaches_every_waiter_without_refetching() -> None:
    cache = TokenCache()
    release = trio.Event()
    errors: list[UpstreamAuthError] = []

    async def fetch() -> IssuedToken:
        await release.wait()
        raise UpstreamAuthError("u", "token request refused")

    async def want() -> None:
        try:
            await cache.get(KEY, fetch)
        except UpstreamAuthError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(want)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert len(errors) == 5 and cache.fetches == 1
    assert all(str(e) == "token request refused" and e.upstream == "u" for e in errors)
    assert len({id(e) for e in errors}) == 5  # copies, not one shared object


async def test_cancelled_fetcher_hands_over_to_a_waiter() -> None:
    cache = TokenCache()
    calls = 0

    async def fetch() -> IssuedToken:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep_forever()
        return IssuedToken("second", 300)

    result: list[str] = []
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def fetcher() -> None:
            with first:
                await cache.get(KEY, fetch)

        async def waiter() -> None:
            result.append(await cache.get(KEY, fetch))

        nursery.start_soon(fetcher)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
    assert result == ["second"] and calls == 2


async def test_invalidate_only_the_refused_token() -> None:
    cache = TokenCache()
    tokens = iter(["old", "new"])

    async def fetch() -> IssuedToken:
        return IssuedToken(next(tokens), 300)

    assert await cache.get(KEY, fetch) == "old"
    cache.invalidate(KEY, "old")
    assert await cache.get(KEY, fetch) == "new"
    cache.invalidate(KEY, "old")  # a late 401 for the old token keeps the fresh one
    assert cache.cached(KEY) == "new"


async def test_tokens_for_many_scopes_stay_within_the_bound() -> None:
    # Scopes name repositories, which clients choose: random names must not grow the cache.
    cache = TokenCache(max_tokens=8)

    async def fetch() -> IssuedToken:
        return IssuedToken("t", 300)

    for n in range(100):
        await cache.get(("https://auth/token", "svc", f"repository:r{n}:pull"), fetch)
    assert len(cache) == 8
    assert cache.cached(("https://auth/token", "svc", "repository:r99:pull")) == "t"
