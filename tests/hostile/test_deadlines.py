"""Every connection has deadlines: a client that stops reading a response, or stops sending a
request body, is let go after server.send_timeout / server.body_timeout (1 s here).

hypercorn has no such deadline of its own (its read_timeout would also cut a long download
to a client that says nothing meanwhile), so before these a stalled client held its
connection, its buffers and its request for ever. Covered: HTTP/1.1 over plain TCP with
sendfile and with buffered reads, HTTP/1.1 over TLS, and HTTP/2 (a stream whose flow-control
window never opens, and a request body that stops).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.clients import TCP_CLOSE, H2Client, tcp_state
from tests.support import LOOPBACK, EdgecacheServer, make_tls_cert, sha256_bytes, wait_for

TIMEOUTS = "send_timeout = 1.0\nbody_timeout = 1.0\n"
BLOB = os.urandom(48 << 20)  # far more than the socket buffers on both sides hold
DIGEST = sha256_bytes(BLOB)
# A deadline of 1 s must act well within this (generous for a loaded 2-core CI machine).
PROMPT = 20.0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls_cert(tmp_path_factory.mktemp("tls"))


@contextlib.contextmanager
def _server(base: Path, server: str, ca: Path | None = None) -> Iterator[EdgecacheServer]:
    """A server with the deadlines set low, holding the big blob in repository "big"."""
    config = f"[server]\n{TIMEOUTS}{server}[auth]\nanonymous_push = true\n"
    with EdgecacheServer(base, config_text=config) as ec:
        verify = ssl.create_default_context(cafile=str(ca)) if ca else True
        with ec.client(verify=verify) as client:
            r = client.post("/v2/big/blobs/uploads/")
            assert r.status_code == 202, r.text
            r = client.put(r.headers["location"], params={"digest": DIGEST}, content=BLOB)
            assert r.status_code == 201, r.text
        yield ec


@pytest.fixture(scope="module", params=["sendfile", "pread"])
def plain(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgecacheServer]:
    extra = "" if request.param == "sendfile" else "sendfile = false\n"
    with _server(tmp_path_factory.mktemp(f"plain-{request.param}"), extra) as ec:
        yield ec


@pytest.fixture(scope="module")
def tls(
    tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path, Path]
) -> Iterator[EdgecacheServer]:
    ca, cert, key = tls_files
    server = f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    with _server(tmp_path_factory.mktemp("tls"), server, ca) as ec:
        yield ec


def ca_context(tls_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files[0]))


def stalled_reader(port: int, tls: ssl.SSLContext | None = None) -> socket.socket:
    """Ask for the big blob, then never read: the server's sends fill both socket buffers."""
    raw = socket.create_connection((LOOPBACK, port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock = tls.wrap_socket(raw, server_hostname=LOOPBACK) if tls is not None else raw
    sock.sendall(f"GET /v2/big/blobs/{DIGEST} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock  # under TLS the wrapper owns the descriptor


def assert_dropped(raw: socket.socket, server: EdgecacheServer) -> None:
    try:
        wait_for(
            lambda: tcp_state(raw) == TCP_CLOSE,
            timeout=PROMPT,
            what="the server to drop a client that stopped reading",
        )
    finally:
        raw.close()


def test_http1_client_that_stops_reading_is_dropped(plain: EdgecacheServer) -> None:
    assert_dropped(stalled_reader(plain.port), plain)
    with plain.client() as client:  # and the server carries on
        assert client.get("/v2/").status_code == 200


def test_tls_client_that_stops_reading_is_dropped(
    tls: EdgecacheServer, tls_files: tuple[Path, Path, Path]
) -> None:
    assert_dropped(stalled_reader(tls.port, ca_context(tls_files)), tls)


def test_h2_stream_whose_window_never_opens_is_reset(plain: EdgecacheServer) -> None:
    client = H2Client(LOOPBACK, plain.port, window=0, timeout=PROMPT)
    try:
        stream = client.request(f"/v2/big/blobs/{DIGEST}")
        while not client.done(stream) and client.pump():
            pass
        outcome = client.outcomes[stream]
        assert outcome.status == 200
        assert outcome.error.startswith("RST_STREAM"), outcome.error
        assert "CANCEL" in outcome.error and not outcome.complete
    finally:
        client.close()


def upload_location(server: EdgecacheServer, verify: ssl.SSLContext | bool = True) -> str:
    with server.client(verify=verify) as client:
        r = client.post("/v2/slow/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = str(r.headers["location"])
    return location + ("&" if "?" in location else "?")


def assert_unchanged(server: EdgecacheServer, digest: str) -> None:
    with server.client() as client:
        assert client.head(f"/v2/slow/blobs/{digest}").status_code == 404


def test_http1_body_that_stops_gets_408_and_close(plain: EdgecacheServer) -> None:
    body = os.urandom(1 << 20)
    digest = sha256_bytes(body)
    location = upload_location(plain)
    with socket.create_connection((LOOPBACK, plain.port), timeout=PROMPT) as sock:
        sock.sendall(
            f"PUT {location}digest={digest} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:1000]
        )
        answer = b""
        while chunk := sock.recv(65536):  # to the end: the server closes the connection
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"\r\nconnection: close" in head.lower()
    assert b"REQUEST_TIMEOUT" in payload
    assert_unchanged(plain, digest)


def test_h2_body_that_stops_gets_408(plain: EdgecacheServer) -> None:
    body = os.urandom(1 << 20)
    digest = sha256_bytes(body)
    location = upload_location(plain)
    client = H2Client(LOOPBACK, plain.port, timeout=PROMPT)
    try:
        stream = client.request(f"{location}digest={digest}", "PUT", body[:1000], len(body))
        # The request says 1 MiB, but its stream stays open with 1000 bytes sent.
        while not client.done(stream) and client.pump():
            pass
        outcome = client.outcomes[stream]
        assert outcome.status == 408, outcome
        assert b"REQUEST_TIMEOUT" in outcome.body
        # The rest of the body, late: dropped, and the connection still serves requests.
        client.conn.send_data(stream, body[1000:11_000])
        after = client.request("/v2/")
        while not client.done(after) and client.pump():
            pass
        assert client.outcomes[after].status == 200 and client.outcomes[after].complete
    finally:
        client.close()
    assert_unchanged(plain, digest)


def test_a_slow_reader_that_makes_progress_is_not_cut(plain: EdgecacheServer) -> None:
    """The deadline is on progress, not on the whole body: a download that takes longer than
    send_timeout but keeps reading finishes."""
    with plain.client(timeout=60) as client:
        total = 0
        with client.stream("GET", f"/v2/big/blobs/{DIGEST}") as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes(1 << 20):
                total += len(chunk)
    assert total == len(BLOB)
