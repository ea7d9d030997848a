import pytest
import trio

from edgecache.cache.flight import SingleFlight
from edgecache.oci import errors


async def test_concurrent_callers_share_one_execution() -> None:
    release = trio.Event()
    calls = 0

    async def work() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "value"

    results: list[str] = []
    async with trio.open_nursery() as background:
        flight: SingleFlight[str] = SingleFlight(background)

        async def caller() -> None:
            results.append(await flight.run("k", work))

        async with trio.open_nursery() as callers:
            for _ in range(10):
                callers.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            assert flight.in_flight("k")
            release.set()
    assert results == ["value"] * 10
    assert calls == 1 and flight.executions == 1
    assert not flight.in_flight("k")


async def test_a_cancelled_caller_does_not_cancel_the_work() -> None:
    release = trio.Event()
    finished = trio.Event()

    async def work() -> int:
        await release.wait()
        finished.set()
        return 1

    async with trio.open_nursery() as background:
        flight: SingleFlight[int] = SingleFlight(background)
        with trio.move_on_after(0.01):
            await flight.run("k", work)
        assert flight.in_flight("k")
        release.set()
        await finished.wait()
        assert await flight.run("k2", work) == 1


async def test_failures_reach_every_waiter_and_the_next_call_retries() -> None:
    attempts = 0

    async def work() -> int:
        nonlocal attempts
        attempts += 1
        await trio.sleep(0)
        raise errors.Unavailable("upstream down")

    async with trio.open_nursery() as background:
        flight: SingleFlight[int] = SingleFlight(background)
        for _ in range(2):
            with pytest.raises(errors.Unavailable, match="upstream down"):
                await flight.run("k", work)
    assert attempts == 2
