"""A connection's keep-alive timeout without a task per request, for hypercorn 0.18's trio worker.

Why: hypercorn's TCPServer keeps an "idle task" per connection (a TrioSingleTask running
_idle_timeout): it cancels that task when a request starts (Updated(idle=False)) and starts a
new one, through nursery.start, when the response is done. For a small request that was
~10% of the CPU of the serving process (py-spy of benchmarks/manifest_rate.py, RESULTS.md
issue 9): the largest single piece of hypercorn's per-request cost.

How: one watcher task per connection, started with the connection as hypercorn starts its
idle task, sleeps until the idle deadline. A request only notes the time (restart) or that
the connection is busy (stop): no task is started or cancelled. When the watcher wakes it
looks again: busy, it waits for the connection to become idle; idle for less than the
timeout (a request came and went), it sleeps until the new deadline; idle for the whole
timeout, or the server stopping while the connection is idle, it closes the connection as
hypercorn's _idle_timeout does. The watcher ends when the connection closes (cancel()).

The same behaviour as hypercorn's: keep_alive_timeout counts from the end of the last
response, a busy connection is never closed by it, and on shutdown an idle connection closes
at once and a busy one as soon as its response is done. tests/integration/test_keepalive.py
checks each, against the real server. hypercorn is pinned in pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


class IdleTimer:
    """Stands in for hypercorn's TrioSingleTask as TCPServer.idle_task (restart/stop)."""

    def __init__(
        self,
        timeout: float,
        terminated: Any,  # hypercorn's EventWrapper: wait(), is_set()
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.timeout, self.terminated, self.close = timeout, terminated, close
        self.idle = False
        self.idle_since = 0.0
        self._scope: trio.CancelScope | None = None
        self._became_idle: trio.Event | None = None

    async def restart(self, task_group: Any, action: Any = None) -> None:
        """The connection is idle from now (hypercorn passes its _idle_timeout: not used)."""
        self.idle = True
        self.idle_since = trio.current_time()
        if self._became_idle is not None:
            self._became_idle.set()
        if self._scope is None:
            self._scope = trio.CancelScope()
            task_group.spawn(self._watch, self._scope)

    async def stop(self) -> None:
        """A request is in progress."""
        self.idle = False

    def cancel(self) -> None:
        """The connection is closed: the watcher ends."""
        if self._scope is not None:
            self._scope.cancel()

    async def _watch(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                if not self.idle:
                    self._became_idle = trio.Event()
                    await self._became_idle.wait()
                    self._became_idle = None
                    continue
                deadline = self.idle_since + self.timeout
                with trio.move_on_at(deadline):
                    await self.terminated.wait()
                expired = trio.current_time() >= self.idle_since + self.timeout
                if self.idle and (expired or self.terminated.is_set()):
                    break
            with trio.CancelScope(shield=True):
                await self.close()
