"""Fakes of the services edgecache's preheat providers talk to, which cannot be installed here.

Each fake stands in for a real service (Dragonfly's manager, Kraken's proxy and agent, a
registry-notification webhook receiver); none of them is that service. They follow the
published definitions and the real code (cited in each module's docstring), validate what they
receive against them, record every request, and really pull from edgecache where the real
service would.

Conventions (those of tests/upstreams.py):
- a `ThreadingHTTPServer` on 127.0.0.1:0 in a daemon thread, so trio tests can use them;
- a context manager: started on enter; shut down, listening socket closed, open keep-alive
  connections cut and threads joined on exit (`close()` does the same and is idempotent, so a
  test can kill a fake mid-way: its port then refuses connections);
- `.url` stays valid after `close()` (tests point edgecache at a dead fake that way);
- no sleeps for synchronisation: `wait_until(predicate, timeout)` waits on a
  `threading.Condition` notified at every request and every state change;
- `.requests` is a snapshot of every request received (method, path, headers, body, parsed
  JSON), recorded before it is handled;
- an exception in a fake's own code (a bug in the fake) answers 500, is kept in
  `.internal_errors`, and fails the `with` block on exit: a broken fake must fail loudly.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
MAX_BODY = 16 << 20  # no fake needs bigger request bodies


@dataclass(frozen=True)
class RecordedRequest:
    """One request as a fake received it."""

    method: str
    path: str  # the request target as sent: path and query
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    json: Any = None  # the parsed body when it is JSON (None otherwise: see json_error)
    json_error: str | None = None
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass
class Reply:
    """What a fake answers; `drop` closes the connection without any response."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False

    @classmethod
    def json(cls, status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, body, "application/json; charset=utf-8", headers)

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Reply:
        return cls(status, text.encode(), content_type)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real services speak it
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every request is in fake.requests instead

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    return None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            return None
        if n < 0 or n > MAX_BODY:
            return None
        return self.rfile.read(n)

    def _dispatch(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._send(Reply.text(400, "bad request framing"))
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        parsed: Any = None
        error: str | None = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                error = str(exc)
        request = RecordedRequest(self.command, self.path, headers, body, parsed, error)
        fake._record(request)
        try:
            reply = fake.handle(request)
        except Exception:
            fake._internal_error(f"{self.command} {self.path}:\n{traceback.format_exc()}")
            reply = Reply.text(500, "fake internal error (a bug in the fake; see internal_errors)")
        if reply.drop:
            self.close_connection = True
            return
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        if reply.content_type is not None:
            self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class FakeServer:
    """Base of the fakes: HTTP plumbing, request recording, waiting, lifecycle."""

    name = "fake"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._internal_errors: list[str] = []
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._port: int | None = None
        self.stopping = threading.Event()  # set by close(): background work stops early
        # Requests a fake refused as not what the real service accepts (each fake's own type).
        self._rejections: list[Any] = []

    # -- lifecycle

    def start(self) -> Self:
        assert self._httpd is None, f"{self.name} already started"
        httpd = _Server((LOOPBACK, 0), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._port = int(httpd.server_address[1])
        # A short poll interval: shutdown() returns within it (the default 0.5 s adds up).
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name=f"{self.name}-http", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop answering: the port refuses connections, open connections are cut."""
        self.stopping.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            with self._cond:
                conns = list(self._conns)
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            if self._thread is not None:
                self._thread.join(timeout=10)
        for worker in list(self._workers):
            worker.join(timeout=30)
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.close()
        if exc_type is None and self._internal_errors:
            raise AssertionError(
                f"{self.name}: bug in the fake itself:\n" + "\n".join(self._internal_errors)
            )

    @property
    def port(self) -> int:
        assert self._port is not None, f"{self.name} not started"
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    # -- what happened

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    @property
    def rejections(self) -> list[Any]:
        with self._cond:
            return list(self._rejections)

    def wait_for_rejections(self, n: int, timeout: float) -> list[Any]:
        if n <= 0:
            return self.rejections
        return self.wait_until(
            lambda: list(self._rejections) if len(self._rejections) >= n else None,
            timeout,
            f"{n} rejected requests",
        )

    @property
    def internal_errors(self) -> list[str]:
        with self._cond:
            return list(self._internal_errors)

    def wait_until(
        self, predicate: Callable[[], T | None], timeout: float, what: str = "condition"
    ) -> T:
        """Block until `predicate()` is truthy (re-checked at every change); return its value."""
        with self._cond:
            result = self._cond.wait_for(predicate, timeout=timeout)
        if not result:
            raise TimeoutError(f"{self.name}: timed out after {timeout:.1f}s waiting for {what}")
        return result

    # -- for subclasses

    def handle(self, request: RecordedRequest) -> Reply:
        raise NotImplementedError

    def changed(self) -> None:
        """Wake up waiters: call after every change of recorded state."""
        with self._cond:
            self._cond.notify_all()

    @property
    def lock(self) -> threading.Condition:
        """The (re-entrant) lock that guards every recorded list of the fake."""
        return self._cond

    def spawn(self, target: Callable[[], None], name: str) -> None:
        """Run background work (a pull) in a thread that close() joins; errors are bugs."""

        def run() -> None:
            try:
                target()
            except Exception:
                self._internal_error(f"{name}:\n{traceback.format_exc()}")

        worker = threading.Thread(target=run, name=f"{self.name}-{name}", daemon=True)
        with self._cond:
            self._workers = [w for w in self._workers if w.is_alive()]
            self._workers.append(worker)
        worker.start()

    # -- internals

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    def _internal_error(self, text: str) -> None:
        with self._cond:
            self._internal_errors.append(text)
            self._cond.notify_all()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._cond:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


def go_time(ts: float | None = None) -> str:
    """A time as Go's encoding/json writes a UTC time.Time (RFC 3339, trailing zeros trimmed)."""
    ts = time.time() if ts is None else ts
    whole = int(ts)
    micros = round((ts - whole) * 1_000_000)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    if micros:
        text += "." + f"{micros:06d}".rstrip("0")
    return text + "Z"


# RFC 3339 as Go's time.Time.UnmarshalJSON accepts it (upper-case T and Z).
RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
