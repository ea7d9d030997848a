"""Idle keep-alive connections, on the real server (server/idletimer.py).

edgecache replaces hypercorn's per-request idle task with one timer per connection; these are
the behaviours that must not change: `[server] idle_timeout` counts from the end of the last
response, a request in progress is never cut by it however long it takes, every request
re-arms it, and a stopping server closes idle connections at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from tests.support import EdgecacheServer, wait_for

IDLE = 1.5
GET = b"GET /v2/ HTTP/1.1\r\nHost: edgecache\r\n\r\n"


def _connect(server: EdgecacheServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def _response(sock: socket.socket) -> bytes:
    """One response to GET /v2/ (a 2-byte JSON body), read whole."""
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"{}"):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    return data


def _head(sock: socket.socket) -> str:
    """A response without a body (202 of an upload), read to the end of its head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    return data.decode()


def _closed_at(sock: socket.socket) -> float:
    """The time (time.monotonic) at which the server closed the connection (EOF or reset)."""
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""
    return time.monotonic()


def test_an_idle_connection_is_closed_after_idle_timeout(tmp_path: Path) -> None:
    with EdgecacheServer(tmp_path, config_text=f"[server]\nidle_timeout = {IDLE}\n") as server:
        with _connect(server) as sock:
            sock.sendall(GET)
            assert _response(sock).startswith(b"HTTP/1.1 200")
            answered = time.monotonic()
            waited = _closed_at(sock) - answered
        assert IDLE * 0.9 <= waited < IDLE + 20, waited


def test_each_request_rearms_the_timer(tmp_path: Path) -> None:
    config = f"[server]\nidle_timeout = {IDLE}\n"
    with EdgecacheServer(tmp_path, config_text=config) as server, _connect(server) as sock:
        start = time.monotonic()
        while time.monotonic() - start < 3 * IDLE:  # longer than the timeout in all
            sock.sendall(GET)
            assert _response(sock).startswith(b"HTTP/1.1 200")  # the same connection
            answered = time.monotonic()
            time.sleep(IDLE / 3)  # the client's pace between requests, not a wait for it
        assert _closed_at(sock) - answered >= IDLE * 0.9


def test_a_request_in_progress_is_not_cut_by_the_idle_timeout(tmp_path: Path) -> None:
    """A blob upload whose body trickles in for twice the idle timeout completes."""
    body = os.urandom(64 * 1024)
    pieces = 6
    config = f"[auth]\nanonymous_push = true\n[server]\nidle_timeout = {IDLE}\n"
    with EdgecacheServer(tmp_path, config_text=config) as server, _connect(server) as sock:
        sock.sendall(
            b"POST /v2/team/slow/blobs/uploads/ HTTP/1.1\r\nHost: edgecache\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        head = _head(sock)
        assert head.startswith("HTTP/1.1 202"), head
        location = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("location:")
        )
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: edgecache\r\n"
            f"Content-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        step = len(body) // pieces
        for i in range(pieces):  # 6 pieces, IDLE / 3 apart: 2 x IDLE in all
            sock.sendall(body[i * step : (i + 1) * step if i < pieces - 1 else len(body)])
            time.sleep(IDLE / 3)  # the slow client itself, not a synchronisation
        answer = _head(sock)
        assert answer.startswith("HTTP/1.1 202"), answer
        assert f"range: 0-{len(body) - 1}" in answer.lower(), answer


def test_a_stopping_server_closes_idle_connections_at_once(tmp_path: Path) -> None:
    server = EdgecacheServer(tmp_path, config_text="[server]\nidle_timeout = 300\n").start()
    try:
        with _connect(server) as sock:
            sock.sendall(GET)
            assert _response(sock).startswith(b"HTTP/1.1 200")
            signalled = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            assert _closed_at(sock) - signalled < 60  # not the 300 s of the idle timeout
        assert wait_for(lambda: not server.running(), timeout=30, what="the server to exit")
    finally:
        server.stop()
