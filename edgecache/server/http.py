"""A thin request/response layer over raw ASGI: the only place that builds ASGI messages."""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import trio

from ..cache import owner
from ..concurrency import unwrapped_errors
from ..oci import errors
from . import zerocopy

ASGIReceive = Any
ASGISend = Any

# Body chunks arrive in ~64 KiB pieces; writing each through a worker thread would cost more
# in thread hand-offs than in I/O, so they are coalesced to this size first.
WRITE_BATCH = 1 << 20
# The pread fallback (TLS, h2): measured 4-8 MiB chunks faster than 1 MiB, but every
# concurrent client holds one chunk in memory; 1 MiB keeps RSS flat with many clients.
READ_CHUNK = 1 << 20


class CachedReader:
    """Reads what the page cache holds without blocking (zerocopy.read_cached), on the event
    loop's thread: a warm blob over TLS then costs no thread hand-off per chunk (py-spy: ~11%
    of the CPU of a TLS download). What is not cached yet comes back empty, and the caller
    reads it on a thread, so a slow disk never stalls the other connections. One buffer per
    response: each chunk is a view of it, which HTTP/1.x writes before the next read
    (server/zerocopy.py BufferBody) and HTTP/2 copies as it queues it."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)

    def read(self, fd: int, size: int, offset: int) -> memoryview | bytes:
        view = memoryview(self.buffer)[:size]
        n = zerocopy.read_cached(fd, [view], offset)
        return view[:n]  # valid until the next read: HTTP/1.x sends it uncopied


_NOTED = {"docker-content-digest": "digest", "content-type": "media_type",
          "content-length": "length"}  # fmt: skip


@dataclass
class Request:
    scope: dict[str, Any]
    receive: ASGIReceive
    send: ASGISend
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    started: bool = False
    sent_bytes: int = 0
    status: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Added to whatever response is sent (OCI-Namespace, Warning), errors included.
    headers_out: dict[str, str] = field(default_factory=dict)
    body_done: bool = False
    # Seconds the request body may stop arriving before the request fails with 408
    # (server.body_timeout; 0 = never).
    body_timeout: float = 60.0
    # Sent by another serving process over <data>/run/ (cache/owner.py): answered for it.
    internal: bool = False
    # The member of the site that signed this request (peers/sign.py), or None: a client.
    peer: str | None = None
    disconnected: bool = False  # seen by until_disconnect()
    # The read buffer of send_part's non-zero-copy path, kept for the response's later parts
    # (a proxied download in flight sends one part per arrival of bytes).
    reader: CachedReader | None = None

    @classmethod
    def from_scope(cls, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> Request:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), True))
        return cls(scope, receive, send, scope["method"], scope["path"], query, headers)

    @property
    def zerocopy(self) -> bool:
        return zerocopy.EXTENSION in self.scope.get("extensions", {})

    async def chunks(self, batch: int = WRITE_BATCH) -> AsyncIterator[bytes]:
        """The request body, coalesced into pieces of about `batch` bytes."""
        buffer = bytearray()
        while True:
            message = await self._receive_body()
            if message["type"] == "http.disconnect":
                raise trio.BrokenResourceError("client disconnected during the request body")
            buffer += message.get("body", b"")
            more = message.get("more_body", False)
            if len(buffer) >= batch or (not more and buffer):
                yield bytes(buffer)
                buffer.clear()
            if not more:
                self.body_done = True
                return

    async def _receive_body(self) -> dict[str, Any]:
        # Without a deadline a client that stops sending holds the request, its upload
        # session and its connection for ever.
        with trio.move_on_after(self.body_timeout or math.inf):
            message: dict[str, Any] = await self.receive()
            return message
        raise errors.RequestTimeout(
            f"no request body bytes for {self.body_timeout:g}s; the request was abandoned"
        )

    async def read_body(self, limit: int) -> bytes:
        """The whole body (manifests), refused past `limit` bytes without reading it all."""
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise errors.ManifestTooLarge(f"manifest is {declared} bytes; the limit is {limit}")
        body = bytearray()
        async for chunk in self.chunks(batch=1):
            body += chunk
            if len(body) > limit:
                raise errors.ManifestTooLarge(f"manifest exceeds the limit of {limit} bytes")
        return bytes(body)

    async def start(self, status: int, headers: dict[str, str]) -> None:
        if self.internal and "cache" in self.extra:
            self.headers_out[owner.CACHE] = self.extra["cache"]  # for the asker's access log
        self.status = status
        self.started = True
        if status < 300:  # what a notification (edgecache/notify.py) says of the answer
            for name, value in headers.items():  # relayed answers' names are lowercase
                key = _NOTED.get(name.lower())
                if key is not None:
                    self.extra[key] = value
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (k.lower().encode(), str(v).encode())
                    for k, v in {**self.headers_out, **headers}.items()
                ],
            }
        )

    async def finish(self) -> None:
        """End a response whose body (if any) was already sent."""
        await self.send({"type": "http.response.body", "body": b""})

    async def respond(
        self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        all_headers = {"Content-Length": str(len(body)), **(headers or {})}
        await self.start(status, all_headers)
        if self.method == "HEAD":
            body = b""
        await self.send({"type": "http.response.body", "body": body})
        self.sent_bytes += len(body)

    async def respond_json(
        self,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        body = json.dumps(payload, indent=None, separators=(",", ":")).encode()
        await self.respond(status, {"Content-Type": content_type, **(headers or {})}, body)

    @property
    def unread_body(self) -> bool:
        if self.body_done:
            return False
        length = self.headers.get("content-length", "0")
        return "transfer-encoding" in self.headers or (length.isdigit() and int(length) > 0)

    async def respond_error(self, error: errors.OCIError) -> None:
        body = error.body()
        headers = {"Content-Type": "application/json", **error.headers}
        if self.unread_body and self.scope.get("http_version") in ("1.0", "1.1"):
            # The client is still sending a body we will not read (it may be gigabytes): the
            # connection cannot carry another request, so say so instead of leaving the
            # client to find out from a reset.
            headers["Connection"] = "close"
        await self.respond(error.status, headers, body)

    async def send_file(self, fd: int, offset: int, count: int, use_zerocopy: bool) -> str:
        """Send `count` bytes of an open file after start() and end the response."""
        if self.method == "HEAD" or count == 0:
            await self.finish()
            return "none"
        used = await self.send_part(fd, offset, count, use_zerocopy, last=True)
        if not (use_zerocopy and self.zerocopy):  # the zero-copy send above ended the body
            await self.finish()
        return used

    async def send_part(
        self, fd: int, offset: int, count: int, use_zerocopy: bool, *, last: bool = False
    ) -> str:
        """Send bytes of an open file as more body to come (`last`: the end of the body, when
        the zero-copy path is taken: then h2c can put END_STREAM on the last frame); returns
        the path used."""
        if use_zerocopy and self.zerocopy:
            await self.send(
                {
                    "type": zerocopy.EXTENSION,
                    "file": fd,
                    "offset": offset,
                    "count": count,
                    "more_body": not last,
                }
            )
            self.sent_bytes += count
            if self.scope.get("http_version") != "2":
                return "sendfile"
            return "mmap" if self.scope.get("scheme") == "http" else "pread"
        end = offset + count
        if self.reader is None or len(self.reader.buffer) < min(READ_CHUNK, count):
            self.reader = CachedReader(min(READ_CHUNK, count))
        while offset < end:
            size = min(READ_CHUNK, end - offset)
            data = self.reader.read(fd, size, offset)
            if not data:  # not in the page cache: read from the disk on a thread
                data = await trio.to_thread.run_sync(os.pread, fd, size, offset)
            if not data:
                raise OSError("file shorter than its index entry")
            offset += len(data)
            await self.send({"type": "http.response.body", "body": data, "more_body": True})
            self.sent_bytes += len(data)
        return "pread"

    @asynccontextmanager
    async def until_disconnect(self) -> AsyncIterator[None]:
        """Run a long response body that stops when the client goes away.

        hypercorn silently drops what is sent after a disconnect, so without this a hung-up
        client would be "served" to the end (and cost disk reads and wake-ups until then).
        End the response (finish()) after the block, not in it: ending it can make hypercorn
        close the stream (a client that asked for Connection: close), which tells the watcher
        "disconnect", whose cancel would then land inside hypercorn's own closing of the
        connection and leave it open for good.
        """
        with unwrapped_errors():
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    while (await self.receive())["type"] != "http.disconnect":
                        pass
                    self.disconnected = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                yield
                nursery.cancel_scope.cancel()
