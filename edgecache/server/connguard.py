"""Connection rules hypercorn 0.18 lacks: send deadlines, broken responses, the h2 request limit.

Why here: each rule needs hypercorn internals (protocol/http_stream.py, h11.py, h2.py and
trio/tcp_server.py, read for 0.18.0), so they are kept in this one module, extending the
classes of server/zerocopy.py; hypercorn is pinned in pyproject.toml. What hypercorn does by
itself, and what changes:

- An app that stops (returns or raises) after http.response.start without finishing the
  body. HTTP/1.x: the connection is closed with FIN, so a Content-Length body is short and a
  chunked one lacks its last chunk, but a close-delimited HTTP/1.0 body would look complete.
  HTTP/2: nothing at all is sent; the stream stays open (no END_STREAM, no RST_STREAM) until
  the idle connection is dropped 75 s later. Here the connection is reset (RST, neither FIN
  nor TLS close_notify) on HTTP/1.x and the stream gets RST_STREAM on HTTP/2, at once. The
  proxy relies on this to break a download whose digest failed (server/proxied.py).
- Sends have no deadline: a socket send is shielded and waits for ever on a client that
  stopped reading, and an h2 stream whose flow-control window never opens waits for ever.
  read_timeout is no answer (it also cuts a long download to a silent client). Here each
  socket send must move some bytes within `send_timeout` (sendfile too, in zerocopy.py), and
  an h2 stream with bytes queued must get some out within it; otherwise the connection is
  reset, or the stream is reset with CANCEL and its app hears http.disconnect.
- HTTP/2 after keep_alive_max_requests: hypercorn calls h2's close_connection, whose state
  machine then refuses every frame, so the streams in flight never finish (their clients hang
  until the idle timeout). Here newer streams are refused with REFUSED_STREAM (safe to
  retry), the streams in flight finish, and only then GOAWAY closes the connection.
- A request with both Content-Length and Transfer-Encoding: h11 lets the chunked framing
  win, as RFC 9112 section 6.3 says, and keeps the connection alive. Such a request is how
  request smuggling starts, so its response carries Connection: close and the connection
  ends after it (the RFC's advice).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, cast

import h2.errors
import h2.events
import h2.exceptions
import h11
import hypercorn.protocol as hc_protocol
import hypercorn.protocol.h2 as hc_h2
import hypercorn.protocol.h11 as hc_h11
import hypercorn.trio.run as hc_run
import priority
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Body, EndBody, Response, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.http_stream import ASGIHTTPState

from . import h2fast, zerocopy
from .idletimer import IdleTimer

# Seconds an HTTP/2 connection stays open after its final GOAWAY (see _close_soon).
GOAWAY_GRACE = 2.0


class GuardedConfig(HypercornConfig):
    """hypercorn's settings plus ours, so that the connection classes can read them."""

    send_timeout: float = 60.0  # server.send_timeout; 0 = no deadline


def _send_timeout(config: HypercornConfig) -> float:
    return getattr(config, "send_timeout", 0.0) or math.inf


@dataclass(frozen=True)
class AbortResponse(StreamEvent):
    """The app left its response unfinished: the client must not take it as complete."""


class GuardedHTTPStream(zerocopy.ZeroCopyHTTPStream):
    async def app_send(self, message: Any) -> None:
        if (
            message is None
            and not self.closed
            and self.state in (ASGIHTTPState.RESPONSE, ASGIHTTPState.TRAILERS)
        ):
            await self.send(AbortResponse(self.stream_id))
        await super().app_send(message)


class GuardedH11Protocol(zerocopy.ZeroCopyH11Protocol):
    ambiguous_length = False  # the request in hand had Content-Length and Transfer-Encoding

    async def _create_stream(self, request: h11.Request) -> None:
        names = {name for name, _ in request.headers}
        self.ambiguous_length = b"content-length" in names and b"transfer-encoding" in names
        await super()._create_stream(request)

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, AbortResponse):
            await self.send(ResetConnection())
            return
        if isinstance(event, Response) and event.status_code >= 200 and self.ambiguous_length:
            event = Response(
                stream_id=event.stream_id,
                headers=[*event.headers, (b"connection", b"close")],
                status_code=event.status_code,
            )
        await super().stream_send(event)


@dataclass(frozen=True)
class ResetConnection(Event):
    """From a protocol to its TCP server: end the connection with RST, now."""


class GuardedH2Protocol(h2fast.FastH2Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send_timeout = _send_timeout(self.config)
        # stream id -> the deadline of the app's send that waits for the client's window
        self._deadlines: dict[int, trio.CancelScope] = {}
        self._last_accepted = 0
        self._draining = False  # the request limit is reached
        self._finished = False

    # ---- unfinished responses and the per-stream send deadline ---------------------------

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, AbortResponse):
            await self._reset(event.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        if (
            isinstance(event, Body | EndBody | zerocopy.FileBody)
            and event.stream_id in self.stream_buffers
        ):
            deadline = trio.current_time() + self._send_timeout
            with trio.CancelScope(deadline=deadline) as scope:
                self._deadlines[event.stream_id] = scope
                try:
                    await super().stream_send(event)
                finally:
                    self._deadlines.pop(event.stream_id, None)
            if scope.cancelled_caught:
                await self._reset(event.stream_id, h2.errors.ErrorCodes.CANCEL)
                await self._close_stream(event.stream_id)  # the app hears http.disconnect
            return
        await super().stream_send(event)
        if isinstance(event, StreamClosed):
            await self._finish_draining()

    async def _send_data(self, stream_id: int) -> None:
        buffer = self.stream_buffers.get(stream_id)
        queued = len(buffer.buffer) if buffer is not None else 0
        await super()._send_data(stream_id)
        if buffer is not None and len(buffer.buffer) < queued:
            scope = self._deadlines.get(stream_id)
            if scope is not None:  # the client took bytes: a new deadline
                scope.deadline = trio.current_time() + self._send_timeout
        await self._finish_draining()

    async def _reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.connection.reset_stream(stream_id, error_code=code)
        buffer = self.stream_buffers.get(stream_id)
        if buffer is not None:
            # Emptied and complete: the send task drops it on its next visit (END_STREAM is
            # refused by h2 for a reset stream, and hypercorn then forgets the stream).
            await buffer.close()
            with contextlib.suppress(priority.MissingStreamError):
                self.priority.unblock(stream_id)
            await self.has_data.set()
        await self._flush()

    # ---- the request limit ---------------------------------------------------------------

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        limit = self.config.keep_alive_max_requests
        accepted = self.keep_alive_requests
        known = set(self.streams)
        kept = []
        shutting_down = self.context.terminated.is_set()  # hypercorn refuses them itself
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and not shutting_down:
                if accepted >= limit:
                    # Never processed, so safe to retry: Go's client does so at once.
                    with contextlib.suppress(h2.exceptions.ProtocolError):
                        self.connection.reset_stream(
                            event.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM
                        )
                    continue
                accepted += 1
                known.add(event.stream_id)
                self._last_accepted = event.stream_id
            elif isinstance(event, h2.events.DataReceived) and event.stream_id not in known:
                # A body for a stream refused above or already answered (a 408, a 401 before
                # the upload): hypercorn would fail on it. Dropped, its window given back.
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                continue
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id not in known:
                continue
            kept.append(event)
        await super()._handle_events(kept)
        if accepted >= limit:
            # Not SETTINGS_MAX_CONCURRENT_STREAMS = 0 as well: the h2 package (httpx) then
            # fails a request locally instead of waiting for the GOAWAY that retries it.
            self._draining = True
        await self._finish_draining()

    def _frame(
        self, stream_id: int, data: bytes | memoryview | h2fast._Mapped, end: bool
    ) -> list[bytes | memoryview]:
        parts = super()._frame(stream_id, data, end)
        if (
            end
            and self._draining
            and not self._finished
            and set(self.stream_buffers) == {stream_id}
        ):
            # The last response of a draining connection: its GOAWAY goes in the same write
            # as its END_STREAM. Sent after it (the next flush), a sequential client (httpx)
            # could read the response, send its next request on this connection first, and
            # get REFUSED_STREAM, which it does not retry (seen once in ~10 loaded runs).
            self._finished = True
            self.connection.close_connection(last_stream_id=self._last_accepted)
            parts.append(self.connection.data_to_send())
            self.task_group.spawn(self._close_soon)
        return parts

    async def _finish_draining(self) -> None:
        # GOAWAY only once the streams in flight are done: after a GOAWAY, clients built on
        # the h2 package (httpx) refuse every further frame, so an early one would break the
        # very streams it should let finish. Its last stream id tells every client that the
        # streams after it were not processed (httpx and Go then retry them elsewhere).
        if not self._draining or self._finished or self.closed:
            return
        if self.streams or self.stream_buffers:
            return  # a stream still owes its client an END_STREAM
        self._finished = True
        self.connection.close_connection(last_stream_id=self._last_accepted)
        await self._flush()
        self.task_group.spawn(self._close_soon)

    async def _close_soon(self) -> None:
        # Not at once: a request the client sent before it read the GOAWAY would meet a TCP
        # reset, which can destroy the GOAWAY unread. Meanwhile it is ignored (see handle).
        await trio.sleep(GOAWAY_GRACE)
        if not self.closed:
            await self.send(Closed())

    async def handle(self, event: Event) -> None:
        if self._finished and isinstance(event, RawData):
            return  # after the final GOAWAY nothing is processed; the client retries elsewhere
        await super().handle(event)


class DeadlineSocketStream(trio.abc.HalfCloseableStream):
    """A TCP stream whose sends give up (and reset the connection) when the peer takes no
    bytes for `timeout` seconds. A slow reader that makes progress is never cut: the deadline
    covers each send call of the socket, not the whole buffer."""

    def __init__(self, inner: trio.SocketStream, timeout: float) -> None:
        self.inner = inner
        self.socket = inner.socket
        self.timeout = timeout

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as view:
            if not view:
                await trio.lowlevel.checkpoint()
                return
            while view:
                with trio.move_on_after(self.timeout) as waited:
                    try:
                        sent = await self.socket.send(view)
                    except OSError as exc:
                        raise trio.BrokenResourceError(f"send failed: {exc}") from exc
                if waited.cancelled_caught:
                    await zerocopy.reset_connection(self)
                    raise trio.BrokenResourceError(
                        f"the client took no bytes for {self.timeout:g}s"
                    )
                view = view[sent:]

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class GuardedTCPServer(zerocopy.ZeroCopyTCPServer):
    def __init__(self, app: Any, config: HypercornConfig, context: Any, state: Any, stream: Any):
        timeout = _send_timeout(config)
        if isinstance(stream, trio.SSLStream):
            stream.transport_stream = DeadlineSocketStream(stream.transport_stream, timeout)
        elif isinstance(stream, trio.SocketStream):
            stream = DeadlineSocketStream(stream, timeout)
        super().__init__(app, config, context, state, stream)
        self.send_timeout = timeout
        # No task started and cancelled per request (server/idletimer.py).
        self.idle_task = IdleTimer(  # type: ignore[assignment]
            config.keep_alive_timeout, context.terminated, self._initiate_server_close
        )

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            # Nothing more comes from the client: the keep-alive timer has nothing to close
            # (hypercorn's own idle task kept each closed connection's task for the whole
            # keep_alive_timeout, 75 s).
            cast(IdleTimer, self.idle_task).cancel()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, ResetConnection):
            await zerocopy.reset_connection(self.stream)
            return
        await super().protocol_send(event)


def install() -> None:
    """Swap the guarded classes into hypercorn's modules (the trio worker looks them up
    there); idempotent. Includes zerocopy's sendfile path."""
    zerocopy.install()
    h2fast.install()  # coalesced DATA frames; GuardedH2Protocol extends its class
    hc_h11.HTTPStream = GuardedHTTPStream  # type: ignore[misc]
    hc_h2.HTTPStream = GuardedHTTPStream  # type: ignore[misc]
    hc_protocol.H11Protocol = GuardedH11Protocol  # type: ignore[misc]
    hc_protocol.H2Protocol = GuardedH2Protocol  # type: ignore[misc]
    hc_run.TCPServer = GuardedTCPServer  # type: ignore[misc]
