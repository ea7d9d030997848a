"""A fault-injecting TCP proxy for tests: real sockets between edgecache and its upstream.

    with FaultProxy("127.0.0.1", registry.port) as proxy:
        start edgecache with --upstream NAME=proxy.url
        proxy.cut_after(random_offsets(seed=7, low=1, high=4 << 20), count=5)
        ... pull, check digests, check proxy.cuts ...

Why threads: the tests mix plain (sync) code and trio code, and the proxied server is another
process, so the proxy must make progress whatever the test thread is doing. Two plain threads
per connection (one per direction, blocking sockets) keep every fault easy to reason about:
holding bytes back is just not calling send(), and TCP back-pressure does the rest.

Faults are switched from the test thread at any time; every switch and every counter goes
through one lock. Only loopback is ever used: the proxy listens on 127.0.0.1 and refuses a
target that is not a loopback address, so a typo can never make a test talk to the network.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import math
import random
import selectors
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from types import TracebackType

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024
# A request head larger than this is not HTTP we understand: stop inspecting that connection.
MAX_HEAD = 64 * 1024
# How long a cut waits for the bytes it promised to leave the kernel before the RST (which
# discards unsent data). Only reached when the client stops reading altogether.
DRAIN_TIMEOUT = 5.0

Offset = int | Callable[[], int]


class TokenBucket:
    """`rate` bytes per second, at most `burst` bytes ahead; thread-safe, blocking `take`.

    A reservation bucket: a pump that received n bytes takes n tokens (the balance may go
    negative) and sleeps until the balance it left would be back to zero, so that over any
    interval at most burst + rate x interval bytes pass, in the order they arrived."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate {rate} and burst {burst}: expected more than 0")
        self.rate, self.burst = float(rate), float(burst)
        self._tokens = self.burst
        self._t = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
            self._t = now
            self._tokens -= n
            debt = -self._tokens
        if debt > 0:
            time.sleep(debt / self.rate)


_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def random_offsets(seed: int, low: int, high: int) -> Callable[[], int]:
    """Reproducible random cut offsets in [low, high] for `cut_after` (seeded, own RNG)."""
    rng = random.Random(seed)
    return lambda: rng.randint(low, high)


def _rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST, as when a middlebox drops a connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _unsent_bytes(sock: socket.socket) -> int:
    """Bytes still in the socket's send queue (Linux TIOCOUTQ: unsent + unacknowledged)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


class _Connection:
    """One proxied client connection and its upstream connection.

    Two pump threads share it. Sockets are shut down (which wakes a thread blocked in recv)
    but only closed by whichever pump finishes last, so no thread ever uses a closed (and
    possibly reused) file descriptor.
    """

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.lock = threading.Lock()
        self.aborted = False
        self.rst = False
        self.pumps_left = 2
        # Cut state, guarded by proxy._lock: the cut generation this connection has looked at,
        # and the absolute count of response bytes after which it is cut (None = never).
        self.cut_generation = 0
        self.cut_at: int | None = None
        self.sent = 0
        self.holding = False
        self.serial = proxy._next_serial()

    def abort(self, *, rst: bool) -> None:
        """Stop both directions now; the last pump out closes (with RST if `rst`)."""
        with self.lock:
            if self.aborted:
                return
            self.aborted = True
            self.rst = rst
        # SHUT_RD on the client wakes the other pump without sending the client anything, so
        # an RST (sent at close) is the first thing the client sees after the last byte.
        how = socket.SHUT_RD if rst else socket.SHUT_RDWR
        with contextlib.suppress(OSError):
            self.client.shutdown(how)
        with contextlib.suppress(OSError):
            self.upstream.shutdown(socket.SHUT_RDWR)
        with self.proxy._cond:
            self.proxy._cond.notify_all()  # a pump holding bytes in a stall must notice

    def pump_done(self) -> None:
        with self.lock:
            self.pumps_left -= 1
            last = self.pumps_left == 0
            rst = self.rst
        if not last:
            return
        if rst:
            _rst_close(self.client)
        else:
            with contextlib.suppress(OSError):
                self.client.close()
        with contextlib.suppress(OSError):
            self.upstream.close()
        self.proxy._forget(self)


class FaultProxy:
    """TCP proxy on 127.0.0.1 to target_host:target_port with switchable faults.

    Faults (all thread-safe, callable while traffic flows):
    - cut_after(n, count=None): after n more response bytes on a connection, reset it.
    - stall(seconds=inf) / release(): hold response bytes, connections stay open.
    - hold_after(n, count=None) / release(): as cut_after, but held open and silent instead.
    - fail_with_503(n) / fail_with_status(n, status): answer the next n requests directly.
    - refuse(): accept new connections and reset them at once (upstream down).
    - reset_all(): reset every open connection now (pooled keep-alive ones included).
    - heal(): clear every fault.
    - limit_rate(bytes_per_second): one bandwidth cap for the response bytes of all its
      connections together (a benchmark's shared uplink, benchmarks/site_pull.py).
    Counters: bytes_to_client, connections, cuts, requests, failed_requests, refused;
    first_byte_at / last_byte_at (monotonic) of the response bytes.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        if not ipaddress.ip_address(socket.gethostbyname(target_host)).is_loopback:
            raise ValueError(f"FaultProxy only proxies to loopback, not {target_host!r}")
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._live: set[_Connection] = set()
        self._closing = False
        # Faults.
        self._cut_generation = 0
        self._cut_nbytes: Offset | None = None
        self._cut_count: int | None = None
        self._cut_rst = True
        self._cut_hold = False
        self._released = 0  # release() generations: a held connection waits for the next
        self._stall_until = 0.0  # monotonic deadline; math.inf = until release()
        self._stall_below: float = math.inf  # only connections with a lower serial stall
        self._serials = 0
        self._fail_left = 0
        self._fail_status = 503
        self._fail_retry_after: float | None = 0
        self._refusing = False
        # Counters.
        self._bytes_to_client = 0
        self._connections = 0
        self._cuts = 0
        self._requests = 0
        self._failed_requests = 0
        self._refused = 0
        self._bucket: TokenBucket | None = None
        self.first_byte_at = 0.0
        self.last_byte_at = 0.0
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-{self.port}-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
            live = list(self._live)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        for conn in live:
            conn.abort(rst=False)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    # -------------------------------------------------------------------- faults

    def cut_after(self, nbytes: Offset, *, count: int | None = None, rst: bool = True) -> None:
        """Cut connections after `nbytes` more upstream->client bytes (headers included).

        `nbytes` may be a callable, asked once per connection (see `random_offsets`). The
        offset counts from the first response byte a connection forwards after this call, so
        pooled keep-alive connections are cut in their next response too. `count` limits how
        many connections are cut (None = every one). rst=False closes with FIN instead.
        """
        with self._cond:
            self._cut_generation += 1
            self._cut_nbytes = nbytes
            self._cut_count = count
            self._cut_rst = rst
            self._cut_hold = False

    def hold_after(self, nbytes: Offset, *, count: int | None = None) -> None:
        """As cut_after, but a connection that reaches its offset is held: open, sending
        nothing more (`holding` counts it) until release(), then it flows on. For a process
        that must die mid-body, on a transfer that would otherwise be over at once."""
        self.cut_after(nbytes, count=count)
        with self._cond:
            self._cut_hold = True

    def stall(self, seconds: float = math.inf, *, open_only: bool = False) -> None:
        """Hold every response byte (connections stay open) for `seconds` or until release().

        open_only=True holds only the connections open now: ones opened later flow freely
        (a transfer stays stalled mid-body while other requests get answers).
        """
        with self._cond:
            self._stall_until = time.monotonic() + seconds
            self._stall_below = self._serials if open_only else math.inf
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._stall_until = 0.0
            self._released += 1
            self._cond.notify_all()

    def limit_rate(self, bytes_per_second: float, burst: float = 4 * CHUNK) -> None:
        """Cap the response bytes of all connections together (not a fault: heal() keeps it)."""
        self._bucket = TokenBucket(bytes_per_second, burst)

    def fail_with_503(self, n: int, *, retry_after: float | None = 0) -> None:
        """The next `n` requests get `503` with `Connection: close` (and `Retry-After`)."""
        self.fail_with_status(n, 503, retry_after=retry_after)

    def fail_with_status(self, n: int, status: int, *, retry_after: float | None = 0) -> None:
        """The next `n` requests get `status` from the proxy instead of reaching upstream.

        retry_after=None sends no Retry-After header. Requests are found on every connection,
        keep-alive ones included (the request head and Content-Length body are parsed).
        """
        with self._cond:
            self._fail_left = n
            self._fail_status = status
            self._fail_retry_after = retry_after

    def refuse(self) -> None:
        """New connections are accepted and reset at once, as by a host whose service is down."""
        with self._cond:
            self._refusing = True

    def reset_all(self) -> int:
        """Reset every open connection now; returns how many there were."""
        with self._cond:
            live = list(self._live)
        for conn in live:
            conn.abort(rst=True)
        return len(live)

    def heal(self) -> None:
        """Clear every fault (cuts, stall, pending failures, refusal)."""
        with self._cond:
            self._cut_generation += 1
            self._cut_nbytes = None
            self._cut_count = None
            self._stall_until = 0.0
            self._released += 1
            self._fail_left = 0
            self._refusing = False
            self._cond.notify_all()

    # ------------------------------------------------------------------ counters

    @property
    def bytes_to_client(self) -> int:
        with self._lock:
            return self._bytes_to_client

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    @property
    def cuts(self) -> int:
        with self._lock:
            return self._cuts

    @property
    def requests(self) -> int:
        """HTTP requests seen from clients (including those answered by a failure)."""
        with self._lock:
            return self._requests

    @property
    def failed_requests(self) -> int:
        with self._lock:
            return self._failed_requests

    @property
    def refused(self) -> int:
        with self._lock:
            return self._refused

    @property
    def holding(self) -> int:
        """Connections that have response bytes held back by a stall right now."""
        with self._lock:
            return sum(1 for conn in self._live if conn.holding)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._live)

    # ------------------------------------------------------------------ internals

    def _next_serial(self) -> int:
        with self._lock:
            self._serials += 1
            return self._serials - 1

    def _spawn(self, target: Callable[..., None], *args: object, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        # Started under the lock so close() never sees (and joins) a thread not yet started.
        with self._lock:
            self._threads.add(thread)
            thread.start()

    def _thread_exit(self) -> None:
        with self._lock:
            self._threads.discard(threading.current_thread())

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._live.discard(conn)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        # A selector with a wake-up socket: a blocking accept() is not reliably woken by
        # closing the listener from another thread.
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        client, _ = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return
                    client.setblocking(True)
                    with self._lock:
                        self._connections += 1
                        refusing = self._refusing or self._closing
                        if refusing:
                            self._refused += 1
                    if refusing:
                        _rst_close(client)
                        continue
                    self._spawn(self._open, client, name=f"faultproxy-{self.port}-open")

    def _open(self, client: socket.socket) -> None:
        try:
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                _rst_close(client)  # upstream down: the client sees what it would directly
                return
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, client, upstream)
            with self._lock:
                if self._closing:
                    closing = True
                else:
                    closing = False
                    self._live.add(conn)
            if closing:
                _rst_close(client)
                upstream.close()
                return
            self._spawn(self._requests_pump, conn, name=f"faultproxy-{self.port}-req")
            self._spawn(self._responses_pump, conn, name=f"faultproxy-{self.port}-resp")
        finally:
            self._thread_exit()

    # client -> upstream: forwards requests, answering some itself when failures are armed.
    def _requests_pump(self, conn: _Connection) -> None:
        try:
            self._forward_requests(conn)
        except OSError:
            conn.abort(rst=False)
        finally:
            conn.pump_done()
            self._thread_exit()

    def _forward_requests(self, conn: _Connection) -> None:
        head = b""
        body_left = 0
        inspecting = True  # False once the stream is something we do not parse (chunked...)
        while True:
            data = conn.client.recv(CHUNK)
            if not data or conn.aborted:
                if not conn.aborted:
                    # Client finished sending: pass the half-close on, keep responses flowing.
                    with contextlib.suppress(OSError):
                        conn.upstream.shutdown(socket.SHUT_WR)
                return
            if not inspecting:
                conn.upstream.sendall(data)
                continue
            while data:
                if body_left:
                    part, data = data[:body_left], data[body_left:]
                    body_left -= len(part)
                    conn.upstream.sendall(part)
                    continue
                head += data
                data = b""
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    if len(head) > MAX_HEAD:
                        inspecting = False
                        conn.upstream.sendall(head)
                        head = b""
                    break
                request, data = head[: end + 4], head[end + 4 :]
                head = b""
                failure = self._take_failure()
                if failure is not None:
                    self._answer_failure(conn, failure)
                    return
                conn.upstream.sendall(request)
                length, chunked = _body_framing(request)
                if chunked:
                    inspecting = False
                    conn.upstream.sendall(data)
                    break
                body_left = length

    def _take_failure(self) -> bytes | None:
        with self._lock:
            self._requests += 1
            if self._fail_left <= 0:
                return None
            self._fail_left -= 1
            self._failed_requests += 1
            status, retry_after = self._fail_status, self._fail_retry_after
        body = f"{status} {_REASONS.get(status, 'Error')} (faultproxy)\n".encode()
        headers = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: text/plain",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if retry_after is not None:
            headers.append(f"Retry-After: {retry_after:g}")
        return ("\r\n".join(headers) + "\r\n\r\n").encode() + body

    def _answer_failure(self, conn: _Connection, response: bytes) -> None:
        conn.client.sendall(response)
        with contextlib.suppress(OSError):
            conn.client.shutdown(socket.SHUT_WR)
        # The upstream never sees this request. Shut it only after the answer is out: the
        # response pump then sees EOF and half-closes the client, which must not come first.
        with contextlib.suppress(OSError):
            conn.upstream.shutdown(socket.SHUT_RDWR)
        # Read (and drop) what the client still sends until it closes: closing a socket with
        # unread input would send an RST and could destroy the response in flight.
        conn.client.settimeout(10)
        with contextlib.suppress(OSError):
            while conn.client.recv(CHUNK):
                pass

    # upstream -> client: where cuts and stalls happen.
    def _responses_pump(self, conn: _Connection) -> None:
        try:
            self._forward_responses(conn)
        except OSError:
            conn.abort(rst=False)
        finally:
            conn.pump_done()
            self._thread_exit()

    def _forward_responses(self, conn: _Connection) -> None:
        while True:
            data = conn.upstream.recv(CHUNK)
            if not data or conn.aborted:
                if not conn.aborted:
                    with contextlib.suppress(OSError):
                        conn.client.shutdown(socket.SHUT_WR)
                return
            bucket = self._bucket
            if bucket is not None:
                bucket.take(len(data))
            while data:
                if not self._wait_unstalled(conn):
                    return
                allowed, rst, hold = self._allowance(conn, len(data))
                if allowed is None:
                    conn.client.sendall(data)
                    self._count_sent(conn, len(data))
                    break
                part = data[:allowed]
                if part:
                    conn.client.sendall(part)
                    self._count_sent(conn, len(part))
                data = data[allowed:]
                if data and hold:
                    if not self._hold(conn):
                        return
                elif data:
                    self._cut(conn, rst=rst)
                    return

    def _wait_unstalled(self, conn: _Connection) -> bool:
        """Block while a stall is on; False when the connection or the proxy is going away."""
        with self._cond:
            while not (conn.aborted or self._closing) and conn.serial < self._stall_below:
                remaining = self._stall_until - time.monotonic()
                if remaining <= 0:
                    break
                conn.holding = True
                self._cond.wait(None if math.isinf(remaining) else remaining)
            conn.holding = False
            return not (conn.aborted or self._closing)

    def _hold(self, conn: _Connection) -> bool:
        """Hold a connection that reached its hold_after offset until release(); False when
        it or the proxy is going away."""
        with self._cond:
            conn.cut_at = None  # once released, it flows on
            released = self._released
            while not (conn.aborted or self._closing) and self._released == released:
                conn.holding = True
                self._cond.wait()
            conn.holding = False
            return not (conn.aborted or self._closing)

    def _allowance(self, conn: _Connection, n: int) -> tuple[int | None, bool, bool]:
        """How many of the next `n` bytes may go before a cut or hold (None = all, none
        pending), whether a cut resets, whether it is a hold."""
        with self._lock:
            if conn.cut_generation != self._cut_generation:
                # A new cut rule: this connection takes its share (and a fresh offset) now.
                conn.cut_generation = self._cut_generation
                conn.cut_at = None
                offset = self._cut_nbytes
                if offset is not None and (self._cut_count is None or self._cut_count > 0):
                    if self._cut_count is not None:
                        self._cut_count -= 1
                    conn.cut_at = conn.sent + max(0, offset() if callable(offset) else offset)
            rst, hold = self._cut_rst, self._cut_hold
            if conn.cut_at is None:
                return None, rst, hold
            return min(n, conn.cut_at - conn.sent), rst, hold

    def _count_sent(self, conn: _Connection, n: int) -> None:
        with self._lock:
            conn.sent += n
            self._bytes_to_client += n
            self.last_byte_at = time.monotonic()
            self.first_byte_at = self.first_byte_at or self.last_byte_at

    def _cut(self, conn: _Connection, *, rst: bool) -> None:
        # An RST discards whatever is still queued, so let the promised bytes reach the
        # client first; otherwise "cut after N bytes" would deliver fewer than N.
        deadline = time.monotonic() + DRAIN_TIMEOUT
        with contextlib.suppress(OSError):
            while _unsent_bytes(conn.client) > 0 and time.monotonic() < deadline:
                time.sleep(0.001)  # the kernel offers no wake-up for "send queue empty"
        with self._lock:
            self._cuts += 1
        if rst:
            conn.abort(rst=True)
        else:
            with contextlib.suppress(OSError):
                conn.client.shutdown(socket.SHUT_WR)
            conn.abort(rst=False)


def _body_framing(head: bytes) -> tuple[int, bool]:
    """(Content-Length, chunked?) of a request head; unparseable lengths count as no body."""
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.strip().lower()
        if key == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                length = 0
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return length, chunked


__all__ = ["FaultProxy", "random_offsets"]
