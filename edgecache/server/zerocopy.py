"""A zero-copy (os.sendfile) body path for hypercorn's HTTP/1.1 over plain TCP.

Why: serving blobs is the hot path, and every userspace path measured under hypercorn's trio
worker tops out near 0.5-0.65x of nginx; sendfile reaches ~1x (../DESIGN.md, RESULTS.md).
Hypercorn 0.18 has no `http.response.zerocopysend` support, so this module adds exactly that
ASGI extension (https://asgi.readthedocs.io/en/latest/extensions.html#zero-copy-send) for
HTTP/1.1 connections without TLS, by subclassing three hypercorn classes:

- HTTPStream announces the extension in the scope and turns the app's zerocopysend message
  into a FileBody event;
- H11Protocol lets h11 account for the bytes (send_with_data_passthrough, so Content-Length
  framing stays h11's job) and hands a SendFile event to the connection;
- TCPServer performs the sendfile calls on its socket, under its send lock.

Everything else (TLS, h2, h2c) never sees the extension and the app falls back to pread
chunks. A sendfile that fails, or moves no byte for server.send_timeout, resets the connection
(server/connguard.py, which extends these classes, says why a reset). hypercorn is pinned in
pyproject.toml; tests/integration/test_zerocopy.py proves the path is active. `install()` is
idempotent; connguard.install() calls it before serving.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import struct
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import hypercorn.protocol as hc_protocol
import hypercorn.protocol.h2 as hc_h2
import hypercorn.protocol.h11 as hc_h11
import hypercorn.trio.run as hc_run
import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.tcp_server import TCPServer

EXTENSION = "http.response.zerocopysend"
# One sendfile call moves at most this much before yielding, so that one fast client cannot
# starve the others' first bytes.
MAX_CALL = 1 << 20
# A response whose body is at most this (a manifest, an error, a tag list) goes out in one write
# with its head: hypercorn writes the head at http.response.start and the body with the next
# message, two trips through the send path for ~1 KiB (py-spy: the send path was 27% of the
# CPU of a /healthz request). The app sends such a body at once after the head (http.py).
COALESCE_MAX = 64 << 10
# A large write over TLS is encrypted and sent this much at a time: the records then go from
# OpenSSL's memory BIO to the socket while they are still in the CPU's cache, and the BIO
# never grows (with its reallocations) to the size of the whole write.
TLS_PIECE = 256 << 10
IOV_MAX = 1024  # pieces per sendmsg call (Linux's UIO_MAXIOV)


@dataclass(frozen=True)
class FileBody(StreamEvent):
    fd: int
    offset: int
    count: int
    last: bool = False  # the end of the body (no more_body)


@dataclass(frozen=True)
class BufferBody(StreamEvent):
    """Body bytes in a buffer the app reuses once the send returns (HTTP/1.x only)."""

    data: memoryview


@dataclass(frozen=True)
class SendFile(Event):
    fd: int
    offset: int
    count: int


@dataclass(frozen=True)
class SendParts(Event):
    """Pieces of one write, sent as they are by sendmsg (h2c's frame headers and the body
    pieces between them, server/h2fast.py): no join, and mapped file pages are read only
    by the kernel."""

    parts: list[bytes | memoryview]


class _FileSlice:
    """What h11 sees as body data: only its length matters (data passthrough)."""

    __slots__ = ("count", "fd", "offset")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.fd, self.offset, self.count = fd, offset, count

    def __len__(self) -> int:
        return self.count


class ZeroCopyHTTPStream(HTTPStream):
    async def handle(self, event: StreamEvent) -> None:
        if isinstance(event, StreamClosed) and not self.closed:
            # hypercorn awaits room in the app's receive queue to deliver http.disconnect.
            # When the app answered early (an error before reading a large upload) that queue
            # is full of body chunks nobody will read: the connection then never closes and
            # the client blocks writing. Deliver it only if there is room.
            self.closed = True
            if self.state != ASGIHTTPState.CLOSED:
                await self.config.log.access(self.scope, None, time.time() - self.start_time)  # type: ignore[arg-type]
            channel = getattr(self.app_put, "__self__", None)
            with contextlib.suppress(
                trio.WouldBlock,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                AttributeError,
            ):
                channel.send_nowait({"type": "http.disconnect"})  # type: ignore[union-attr]
            return
        await super().handle(event)
        scope = getattr(self, "scope", None)
        if scope is not None and (
            scope["http_version"] == "2"
            or (self.scheme == "http" and scope["http_version"] == "1.1")
        ):
            # HTTP/1.1 without TLS: sendfile. h2c: a mapped file, its pages between the frame
            # headers in one sendmsg; h2 over TLS: the file read straight into the frames'
            # payloads (server/h2fast.py). HTTP/1.1 over TLS reads chunks (http.py).
            scope["extensions"][EXTENSION] = {}

    async def app_send(self, message: Any) -> None:
        if (
            message is not None
            and message.get("type") == "http.response.body"
            and isinstance(message.get("body"), memoryview)
            and self.state == ASGIHTTPState.RESPONSE
            and self.scope["http_version"] in ("1.0", "1.1")
        ):
            # A body chunk in the app's reused read buffer (http.py CachedReader): HTTP/1.x
            # writes it before this returns, so it goes out uncopied (hypercorn would make
            # bytes of it). HTTP/2 queues it, and gets the copy below.
            body = message["body"]
            if self.scope["method"] != "HEAD" and len(body):
                await self.send(BufferBody(self.stream_id, body))
            if not message.get("more_body", False):
                await self._send_closed()
            return
        if message is not None and message.get("type") == EXTENSION:
            if self.state != ASGIHTTPState.RESPONSE:
                raise RuntimeError("zerocopysend before http.response.start")
            fd = message["file"]
            fd = fd if isinstance(fd, int) else fd.fileno()
            count = int(message["count"])
            if self.scope["method"] != "HEAD" and count:
                last = not message.get("more_body", False)
                offset = int(message.get("offset", 0))
                await self.send(FileBody(self.stream_id, fd, offset, count, last))
            if not message.get("more_body", False):
                await self._send_closed()
            return
        await super().app_send(message)


class ZeroCopyH11Protocol(hc_h11.H11Protocol):
    _held = b""  # the head of a small response, written with its body (COALESCE_MAX)

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, hc_h11.Response) and event.status_code >= 200:
            # Same as hypercorn's, plus a reason phrase: some HTTP/1.1 clients (h2load, older
            # proxies) reject "HTTP/1.1 200 " with an empty one.
            headers = [*event.headers, *self.config.response_headers("h11")]
            if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            response = h11.Response(
                headers=headers, status_code=event.status_code, reason=_reason(event.status_code)
            )
            if _small(event.headers):
                self._held = self._h11_bytes(response)
            else:
                await self._send_h11_event(response)
            return
        held, self._held = self._held, b""
        if held and isinstance(event, hc_h11.Body):
            await self.send(hc_h11.RawData(data=held + self._h11_bytes(h11.Data(data=event.data))))
            return
        if isinstance(event, hc_h11.EndBody):
            data = held + self._h11_bytes(h11.EndOfMessage())
            if data:  # nothing to write for a Content-Length body that is complete
                await self.send(hc_h11.RawData(data=data))
            return
        if held:
            await self.send(hc_h11.RawData(data=held))
        if isinstance(event, BufferBody):
            assert isinstance(self.connection, h11.Connection)
            # As a FileBody: h11 frames it (Content-Length or chunked) without joining it
            # into new bytes, and each piece is written before this returns.
            chunk = h11.Data(data=event.data)  # type: ignore[arg-type]  # any buffer works
            for piece in self.connection.send_with_data_passthrough(chunk) or ():
                await self.send(hc_h11.RawData(data=piece))
            return
        if isinstance(event, FileBody):
            assert isinstance(self.connection, h11.Connection)
            pieces = self.connection.send_with_data_passthrough(
                h11.Data(data=_FileSlice(event.fd, event.offset, event.count))  # type: ignore[arg-type]
            )
            for piece in pieces or ():
                if isinstance(piece, _FileSlice):
                    await self.send(SendFile(piece.fd, piece.offset, piece.count))
                else:
                    await self.send(hc_h11.RawData(data=bytes(piece)))
            return
        await super().stream_send(event)

    def _h11_bytes(self, event: Any) -> bytes:
        """What h11 writes for `event` (as hypercorn's _send_h11_event, without sending)."""
        try:
            return self.connection.send(event) or b""  # type: ignore[union-attr]
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return b""


def _small(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.isdigit() and int(value) <= COALESCE_MAX
    return False


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class ZeroCopyTCPServer(TCPServer):
    sent_bytes = 0  # process-wide, for the metrics and the test that proves this path runs
    # A sendfile that cannot move a byte for this long gives up (server.send_timeout).
    send_timeout = math.inf

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, SendFile):
            async with self.send_lock:
                try:
                    await self._sendfile(event)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    # The body can no longer be what its head announced: reset, so that
                    # neither the client nor the read loop waits on this connection.
                    await reset_connection(self.stream)
                    await self.protocol.handle(Closed())
            return
        if (
            isinstance(event, RawData)
            and len(event.data) > TLS_PIECE
            and isinstance(self.stream, trio.SSLStream)
        ):
            async with self.send_lock:
                try:
                    with trio.CancelScope(shield=True), memoryview(event.data) as view:
                        for start in range(0, len(view), TLS_PIECE):
                            await self.stream.send_all(view[start : start + TLS_PIECE])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.protocol.handle(Closed())
            return
        if isinstance(event, SendParts):
            async with self.send_lock:
                try:
                    await self._sendmsg(event.parts)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    await reset_connection(self.stream)  # as for a failed sendfile, above
                    await self.protocol.handle(Closed())
            return
        if isinstance(event, Closed):
            # hypercorn closes (send_eof) without its send lock. When a response that ends
            # with Connection: close meets a request body h11 rejects (a bad chunk header),
            # the reading task's 400 then hit trio's BusyResourceError, which nothing catches:
            # one such request ended the whole server. Under the lock the 400 waits, finds
            # the stream closed, and is dropped like any send to a gone client.
            async with self.send_lock:
                await self._close()
            await self.protocol.handle(Closed())
            return
        await super().protocol_send(event)

    async def _sendfile(self, event: SendFile) -> None:
        sock = self.stream.socket  # plain TCP only: the extension is never offered on TLS
        out_fd = sock.fileno()
        offset, remaining = event.offset, event.count
        while remaining:
            try:
                sent = os.sendfile(out_fd, event.fd, offset, min(remaining, MAX_CALL))
            except BlockingIOError:
                with trio.move_on_after(self.send_timeout) as waited:
                    await trio.lowlevel.wait_writable(sock)
                if waited.cancelled_caught:
                    raise trio.BrokenResourceError(
                        f"the client took no bytes for {self.send_timeout:g}s"
                    ) from None
                continue
            if sent == 0:
                raise OSError("file shorter than the announced Content-Length")
            offset += sent
            remaining -= sent
            ZeroCopyTCPServer.sent_bytes += sent
            await trio.lowlevel.checkpoint()

    async def _sendmsg(self, parts: list[bytes | memoryview]) -> None:
        sock = self.stream.socket  # plain TCP only (h2fast sends SendParts without TLS)
        pending = [part for part in parts if len(part)]
        first = 0  # pending[:first] are sent
        while first < len(pending):
            batch = pending[first : first + IOV_MAX] if first or len(pending) > IOV_MAX else pending
            with trio.move_on_after(self.send_timeout) as waited:
                sent = await sock.sendmsg(batch)
            if waited.cancelled_caught:
                raise trio.BrokenResourceError(
                    f"the client took no bytes for {self.send_timeout:g}s"
                )
            while sent:
                size = len(pending[first])
                if sent >= size:
                    sent -= size
                    first += 1
                else:
                    pending[first] = memoryview(pending[first])[sent:]
                    sent = 0


_nowait = hasattr(os, "RWF_NOWAIT")  # False once a filesystem refuses the flag


def read_cached(fd: int, views: list[memoryview], offset: int) -> int:
    """Bytes read into `views` (in order) from what the page cache holds, without blocking:
    preadv with RWF_NOWAIT, safe on the event loop's thread. 0: nothing cached there, read it
    on a thread."""
    global _nowait
    if not _nowait:
        return 0
    try:
        return os.preadv(fd, views, offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return 0
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        _nowait = False
        return 0


async def reset_connection(stream: Any) -> None:
    """Close a connection with RST (SO_LINGER 0): no FIN or TLS close_notify that could pass
    for the end of a body, and no kernel buffers kept for a client that stopped reading."""
    transport = getattr(stream, "transport_stream", stream)  # under TLS, the TCP stream
    with contextlib.suppress(OSError, AttributeError):
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await transport.aclose()


_installed = False


def install() -> None:
    """Swap the three classes into hypercorn's modules (the trio worker looks them up there)."""
    global _installed
    if _installed:
        return
    hc_h11.HTTPStream = ZeroCopyHTTPStream  # type: ignore[misc]
    hc_h2.HTTPStream = ZeroCopyHTTPStream  # type: ignore[misc]  # the early-close fix only
    hc_protocol.H11Protocol = ZeroCopyH11Protocol  # type: ignore[misc]
    hc_run.TCPServer = ZeroCopyTCPServer  # type: ignore[misc]
    _installed = True
