"""Single-flight: concurrent callers for the same key share one execution.

The work runs in a long-lived nursery (the server's), not in the first caller's task: a client
that disconnects cancels only its own wait, never the fetch that other clients (and the cache)
are waiting for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

from ..oci import errors

T = TypeVar("T")


class _Call(Generic[T]):
    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: T | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[T]):
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._calls: dict[Hashable, _Call[T]] = {}
        self.executions = 0  # how many times work really ran (tests and metrics)

    def in_flight(self, key: Hashable) -> bool:
        return key in self._calls

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        call = self._calls.get(key)
        if call is None:
            call = _Call()
            self._calls[key] = call
            self.executions += 1
            self._nursery.start_soon(self._execute, key, call, work)
        await call.done.wait()
        if call.error is not None:
            # Every waiter raises the same object; dropping the traceback keeps it from growing
            # with each re-raise.
            raise call.error.with_traceback(None)
        return call.value  # type: ignore[return-value]

    async def _execute(
        self, key: Hashable, call: _Call[T], work: Callable[[], Awaitable[T]]
    ) -> None:
        try:
            call.value = await work()
        except trio.Cancelled:
            call.error = errors.Unavailable("the server is shutting down")
            raise
        except Exception as exc:
            call.error = exc
        finally:
            del self._calls[key]
            call.done.set()
