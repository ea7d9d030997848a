"""Blob bodies read off the event loop: a blocking HTTP/1.1 GET run by a worker thread.

httpx reads a body at ~350-480 MB/s per process, on the event loop's thread: per network read,
h11, httpcore and httpx each copy the bytes and run Python code (perf on a cold 4-client pull:
a third of the loop thread in memmove and the interpreter). That is fine for a WAN uplink, but
a blob download from a LAN upstream (another edgecache, a site registry) then competes with
serving for one core. So a blob GET's body is read here instead: `recv_into` a reused buffer,
written and hashed by the same worker thread (all three release the GIL), while the event loop
only hears how far it got.

Only the plain case is handled: a 2xx with a Content-Length, after redirects. Anything else
(401 and token refresh, 404, 429 and 5xx with their retries, chunked bodies, a connection that
fails before the response head) raises `Fallback`, and the caller makes the request again
through the httpx Session, which knows what to do with it. The head is parsed by h11; the
connection is closed after one response (blob bodies are large: no pooling to gain).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import h11
import httpx

HEAD_LIMIT = 64 << 10  # a response head bigger than this is not a registry's
# After a short read, the buffer is handed on unless more bytes arrive within this many
# seconds: on a fast link they always do (the writes stay large), while on a slow one each
# burst reaches the waiting clients as it arrives instead of after a batch has filled.
PAUSE = 0.002


class Fallback(Exception):
    """Not a plain 2xx with a Content-Length here: make the request through httpx."""


class BodyBroken(Exception):
    """The body stopped early: carries how it ended (the caller resumes from its offset)."""


@dataclass
class RawResponse:
    sock: socket.socket
    url: httpx.URL
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers keep the last value
    length: int  # Content-Length
    head_body: bytes = field(repr=False)  # body bytes that arrived with the head

    def shutdown(self) -> None:
        """Wake a thread blocked reading (it sees the end of the stream); safe from any thread,
        unlike close(), whose descriptor number another thread may be about to use."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.shutdown()
        self.sock.close()


def open_get(
    url: httpx.URL,
    headers: Mapping[str, str],
    *,
    connect_timeout: float,
    idle_timeout: float,
    tls: ssl.SSLContext | None,
    user_agent: str,
) -> RawResponse:
    """Send GET `url` and read the response head (blocking; run in a worker thread).

    Raises Fallback for anything but a response head read whole (connection refused, a
    broken head, chunked or unsized bodies); the caller decides what a status means.
    """
    if url.scheme not in ("http", "https"):
        raise Fallback(f"scheme {url.scheme}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        sock = socket.create_connection((url.host, port), timeout=connect_timeout)
    except OSError as exc:
        raise Fallback(f"connect: {exc}") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if url.scheme == "https":
            context = tls if tls is not None else ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=url.host)
        sock.settimeout(idle_timeout)
        request = [
            ("Host", url.netloc.decode("ascii")),  # brackets for IPv6, the port if given
            ("User-Agent", user_agent),
            ("Accept-Encoding", "identity"),
            ("Connection", "close"),
            *headers.items(),
        ]
        conn = h11.Connection(h11.CLIENT)
        sock.sendall(conn.send(h11.Request(method="GET", target=url.raw_path, headers=request)))
        sock.sendall(conn.send(h11.EndOfMessage()))
        response = _read_head(sock, conn)
        fields = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
        body = b""
        if 200 <= response.status_code < 300:
            if "transfer-encoding" in fields or "content-length" not in fields:
                raise Fallback("no Content-Length")
            body = _buffered_body(conn)
        return RawResponse(
            sock, url, response.status_code, fields, int(fields.get("content-length", 0)), body
        )
    except (OSError, h11.ProtocolError, ValueError) as exc:
        sock.close()
        raise Fallback(f"{type(exc).__name__}: {exc}") from None
    except BaseException:
        sock.close()
        raise


def _read_head(sock: socket.socket, conn: h11.Connection) -> h11.Response:
    received = 0
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            return event
        if event is h11.NEED_DATA:
            data = sock.recv(HEAD_LIMIT)
            received += len(data)
            if received > HEAD_LIMIT:
                raise ValueError("response head too large")
            conn.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        raise ValueError(f"unexpected {type(event).__name__} before the response head")


def _buffered_body(conn: h11.Connection) -> bytes:
    """Body bytes h11 already holds (they came in the same read as the head)."""
    parts = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            parts.append(bytes(event.data))
        else:  # NEED_DATA, or EndOfMessage for a body that fit
            return b"".join(parts)


def pump(
    response: RawResponse,
    length: int,
    write: Callable[[memoryview], None],
    progress: Callable[[int], None],
    *,
    chunk: int,
) -> int:
    """Read `length` body bytes (after the head's) into `write`, `chunk` at a time at most,
    calling `progress(n)` after each write. Blocking; run in a worker thread.

    Returns the bytes written; raises BodyBroken when the body stops short (timeout,
    reset, EOF) after handing on everything that did arrive.
    """
    written = 0
    if response.head_body:
        first = memoryview(response.head_body)[:length]
        write(first)
        progress(len(first))
        written = len(first)
    buf = bytearray(chunk)
    view = memoryview(buf)
    while written < length:
        filled = 0
        want = min(chunk, length - written)
        error: BodyBroken | None = None
        # Fill the buffer (one write per chunk, not per network read), but hand on what there
        # is when the network pauses so waiters on a slow link keep up.
        while filled < want:
            asked = want - filled
            try:
                n = response.sock.recv_into(view[filled:want])
            except TimeoutError:
                error = BodyBroken("timed out waiting for data")
                break
            except OSError as exc:
                error = BodyBroken(f"connection lost ({type(exc).__name__}: {exc})")
                break
            if n == 0:
                error = BodyBroken("response ended early")
                break
            filled += n
            if n < asked and filled < want and not _more_soon(response.sock):
                break
        if filled:
            write(view[:filled])
            written += filled
            progress(filled)
        if error is not None:
            raise error
    return written


def _more_soon(sock: socket.socket) -> bool:
    """Whether more body bytes are readable now or within PAUSE."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True  # decrypted bytes already wait inside the TLS layer
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(PAUSE * 1000))
