"""The fault-injecting proxy, against a tiny local HTTP server with a known byte pattern.

Raw sockets where the exact bytes matter (cuts, stalls); http.client for keep-alive.
No sleeps: every wait is a condition polled with a deadline (tests.support.wait_for).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.faultproxy import FaultProxy, random_offsets
from tests.support import wait_for

PATTERN = bytes(range(256)) * 1024  # 256 KiB: larger than one 64 KiB proxy chunk


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so connections stay open between requests (keep-alive through the proxy).
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"small\n" if self.path == "/small" else PATTERN
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


@pytest.fixture(scope="module")
def origin() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(origin: ThreadingHTTPServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", origin.server_address[1]) as p:
        yield p


def raw_get(proxy: FaultProxy, path: str = "/blob", timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return sock


def read_all(sock: socket.socket) -> tuple[bytes, BaseException | None]:
    """Everything the peer sent, and the error that ended the stream (None = clean EOF)."""
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except OSError as exc:
        return b"".join(chunks), exc
    finally:
        sock.close()
    return b"".join(chunks), None


def fetch(proxy: FaultProxy, path: str = "/blob") -> tuple[bytes, BaseException | None]:
    """GET over a fresh connection: (bytes received, error that ended it or None).

    An error may come from the send as well: a reset can arrive before the request is out.
    """
    try:
        sock = raw_get(proxy, path)
    except OSError as exc:
        return b"", exc
    return read_all(sock)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def test_bytes_pass_through_unchanged(proxy: FaultProxy) -> None:
    raw, err = fetch(proxy)
    assert err is None
    status, _, body = split_response(raw)
    assert status == 200
    assert body == PATTERN
    assert proxy.bytes_to_client == len(raw)
    assert proxy.connections == 1
    assert proxy.requests == 1
    assert proxy.cuts == 0


def test_keep_alive_and_request_bodies(proxy: FaultProxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    for _ in range(3):
        conn.request("PUT", "/echo", body=b"x" * 100_000)
        r = conn.getresponse()
        assert (r.status, r.read()) == (201, b"x" * 100_000)
        conn.request("GET", "/small")
        assert conn.getresponse().read() == b"small\n"
    conn.close()
    assert proxy.connections == 1
    assert proxy.requests == 6


def test_cut_after_delivers_exactly_n_bytes_then_reset(proxy: FaultProxy) -> None:
    proxy.cut_after(1000, count=1)
    raw, err = fetch(proxy)
    assert len(raw) == 1000
    assert raw.startswith(b"HTTP/1.1 200")
    assert isinstance(err, ConnectionResetError), err  # RST, as a real drop looks
    assert proxy.cuts == 1
    # count=1: the next connection is not cut.
    raw, err = fetch(proxy)
    assert err is None
    assert split_response(raw)[2] == PATTERN
    assert proxy.cuts == 1


def test_cut_mid_body_with_fin(proxy: FaultProxy) -> None:
    proxy.cut_after(100_000, rst=False)
    raw, err = fetch(proxy)
    assert (len(raw), err) == (100_000, None)  # a clean EOF, short of Content-Length
    assert proxy.cuts == 1


def test_cut_at_random_offsets_is_reproducible(proxy: FaultProxy) -> None:
    offsets = random_offsets(seed=42, low=10, high=len(PATTERN))
    expected = random_offsets(seed=42, low=10, high=len(PATTERN))
    proxy.cut_after(offsets, count=3)
    for _ in range(3):
        raw, _ = fetch(proxy)
        assert len(raw) == expected()
    assert proxy.cuts == 3
    raw, err = fetch(proxy)
    assert err is None and split_response(raw)[2] == PATTERN


def test_cut_applies_to_pooled_keep_alive_connection(proxy: FaultProxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("GET", "/small")
    assert conn.getresponse().read() == b"small\n"
    proxy.cut_after(500)
    conn.request("GET", "/blob")
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        conn.getresponse().read()
    conn.close()
    assert proxy.cuts == 1


def test_503_burst_then_normal(proxy: FaultProxy) -> None:
    proxy.fail_with_503(2)
    for _ in range(2):
        raw, err = fetch(proxy)
        assert err is None
        status, headers, _ = split_response(raw)
        assert status == 503
        assert headers["retry-after"] == "0"
        assert headers["connection"] == "close"
    raw, err = fetch(proxy)
    assert split_response(raw)[0] == 200 and split_response(raw)[2] == PATTERN
    assert proxy.failed_requests == 2
    assert proxy.requests == 3


def test_failure_on_keep_alive_connection_and_status(proxy: FaultProxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("GET", "/small")
    assert conn.getresponse().read() == b"small\n"
    proxy.fail_with_status(1, 429, retry_after=None)
    conn.request("GET", "/small")
    r = conn.getresponse()
    r.read()
    assert r.status == 429
    assert r.getheader("Retry-After") is None
    assert r.getheader("Connection") == "close"
    conn.close()


def test_stall_holds_bytes_until_release(proxy: FaultProxy) -> None:
    proxy.stall()
    sock = raw_get(proxy)
    # The proxy has the response in hand and is holding it: nothing reached the client.
    wait_for(lambda: proxy.holding == 1, timeout=5, what="proxy to hold the response")
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(1)
    sock.setblocking(True)
    assert proxy.bytes_to_client == 0
    proxy.release()
    raw, err = read_all(sock)
    assert err is None and split_response(raw)[2] == PATTERN


def test_hold_after_sends_exactly_n_bytes_then_holds_until_release(proxy: FaultProxy) -> None:
    proxy.hold_after(1000, count=1)
    sock = raw_get(proxy)
    wait_for(lambda: proxy.holding == 1, timeout=5, what="proxy to hold the response")
    got = b""
    while len(got) < 1000:
        got += sock.recv(1000 - len(got))
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(1)
    sock.setblocking(True)
    assert proxy.bytes_to_client == 1000
    # count=1: another connection flows meanwhile.
    raw, err = fetch(proxy)
    assert err is None and split_response(raw)[2] == PATTERN
    proxy.release()
    raw, err = read_all(sock)
    assert err is None and split_response(got + raw)[2] == PATTERN
    assert proxy.cuts == 0


def test_stall_for_seconds_releases_itself(proxy: FaultProxy) -> None:
    start = time.monotonic()
    proxy.stall(0.2)
    raw, err = fetch(proxy)
    assert time.monotonic() - start >= 0.2
    assert err is None and split_response(raw)[2] == PATTERN


def test_refuse_then_heal(proxy: FaultProxy) -> None:
    proxy.refuse()
    raw, err = fetch(proxy)
    assert raw == b""
    assert isinstance(err, ConnectionResetError), err
    assert proxy.refused == 1
    proxy.heal()
    raw, err = fetch(proxy)
    assert err is None and split_response(raw)[2] == PATTERN


def test_heal_clears_every_fault(proxy: FaultProxy) -> None:
    proxy.cut_after(10)
    proxy.fail_with_503(5)
    proxy.stall()
    proxy.heal()
    raw, err = fetch(proxy)
    assert err is None and split_response(raw)[2] == PATTERN
    assert (proxy.cuts, proxy.failed_requests) == (0, 0)


def test_reset_all_drops_open_connections(proxy: FaultProxy) -> None:
    proxy.stall()
    sock = raw_get(proxy)
    wait_for(lambda: proxy.holding == 1, timeout=5, what="proxy to hold the response")
    assert proxy.reset_all() == 1
    raw, err = read_all(sock)
    assert raw == b"" and isinstance(err, ConnectionResetError), err
    wait_for(lambda: proxy.open_connections == 0, timeout=5, what="connection cleanup")


def test_upstream_down_resets_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with FaultProxy("127.0.0.1", port) as proxy:
            raw, err = fetch(proxy)
    assert raw == b"" and isinstance(err, ConnectionResetError), err


def test_only_loopback_targets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 80)
