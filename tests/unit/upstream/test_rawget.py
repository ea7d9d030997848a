"""rawget: the blocking blob GET, against a real loopback socket that answers scripted bytes."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from edgecache.upstream import rawget


@contextmanager
def answering(*parts: bytes, hold: bool = False) -> Iterator[tuple[httpx.URL, list[bytes]]]:
    """A one-connection server on 127.0.0.1: reads the request head, sends `parts` (each its
    own send), then closes, or with hold=True keeps the connection open until the test ends.
    Yields the URL and a list that receives the request head."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            seen.append(head)
            for part in parts:
                conn.sendall(part)
            if hold:
                done.wait(10)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield httpx.URL(f"http://127.0.0.1:{port}/v2/r/blobs/sha256:abc"), seen
    finally:
        done.set()
        thread.join(10)
        listener.close()


def get(
    url: httpx.URL, headers: dict[str, str] | None = None, idle: float = 5.0
) -> rawget.RawResponse:
    return rawget.open_get(
        url, headers or {}, connect_timeout=5, idle_timeout=idle, tls=None, user_agent="t/1"
    )


def read_all(response: rawget.RawResponse, chunk: int = 1 << 20) -> tuple[bytes, list[int]]:
    out = bytearray()
    steps: list[int] = []
    rawget.pump(response, response.length, lambda v: out.extend(v), steps.append, chunk=chunk)
    return bytes(out), steps


def test_body_comes_through_in_chunks_and_the_request_is_plain() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nDocker-Content-Digest: x\r\n\r\n" % len(body)
    with answering(head + body[:1000], body[1000:]) as (url, seen):
        response = get(url, {"Authorization": "Bearer t", "Range": "bytes=5-"})
        try:
            assert response.status == 200 and response.length == len(body)
            assert response.headers["docker-content-digest"] == "x"
            data, steps = read_all(response, chunk=256 << 10)
        finally:
            response.close()
    assert data == body
    assert sum(steps) == len(body) and max(steps) <= 256 << 10
    request = seen[0].decode()
    assert request.startswith("GET /v2/r/blobs/sha256:abc HTTP/1.1\r\n")
    for line in ("Authorization: Bearer t", "Range: bytes=5-", "Accept-Encoding: identity",
                 "Connection: close", f"Host: 127.0.0.1:{url.port}"):  # fmt: skip
        assert line.lower() in request.lower()


def test_error_answers_are_returned_for_the_caller_to_decide() -> None:
    with answering(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}") as (url, _):
        response = get(url)
        response.close()
    assert response.status == 404


def test_redirect_location_is_returned() -> None:
    with answering(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\n\r\n") as (url, _):
        response = get(url)
        response.close()
    assert response.status == 307 and response.headers["location"] == "/elsewhere"


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nno length, read to the end",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"garbage that is not HTTP\r\n\r\n",
        b"",  # closed before answering
    ],
    ids=["chunked", "no-length", "bad-length", "not-http", "closed"],
)
def test_anything_but_a_sized_answer_falls_back_to_httpx(head: bytes) -> None:
    with answering(head) as (url, _), pytest.raises(rawget.Fallback):
        get(url)


def test_connection_refused_falls_back() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(rawget.Fallback, match="connect"):
        get(httpx.URL(f"http://127.0.0.1:{port}/v2/"))


@pytest.mark.parametrize(
    ("hold", "match"),
    [(False, "ended early"), (True, "timed out")],
    ids=["cut-short", "stalled"],
)
def test_broken_body_hands_on_what_arrived_then_breaks(hold: bool, match: str) -> None:
    """The server sends 300 kB of a 1 MB body, then closes, or stalls past the idle timeout."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    with answering(head, b"a" * 300_000, hold=hold) as (url, _):
        response = get(url, idle=0.3)
        out = bytearray()
        try:
            with pytest.raises(rawget.BodyBroken, match=match):
                rawget.pump(response, response.length, out.extend, lambda n: None, chunk=1 << 20)
        finally:
            response.close()
    assert bytes(out) == b"a" * 300_000


def test_shutdown_from_another_thread_wakes_the_reader() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    with answering(head, b"c" * 1000, hold=True) as (url, _):
        response = get(url, idle=30)
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                rawget.pump(
                    response, response.length, lambda v: None, lambda n: None, chunk=1 << 20
                )
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        response.shutdown()
        thread.join(5)
        response.close()
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], rawget.BodyBroken)


def test_a_pause_hands_on_what_arrived() -> None:
    """A slow link: 10 KiB arrive after the head, then nothing. They reach the writer during
    the pause, not once a large piece has filled (minutes, on a slow uplink)."""
    listener = socket.create_server(("127.0.0.1", 0))
    head_read, finished = threading.Event(), threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            head_read.wait(5)  # so the body is not read together with the head
            conn.sendall(b"d" * 10_000)
            finished.wait(10)

    server = threading.Thread(target=serve)
    server.start()
    url = httpx.URL(f"http://127.0.0.1:{listener.getsockname()[1]}/v2/r/blobs/sha256:abc")
    response = get(url, idle=30)
    head_read.set()
    steps: list[int] = []
    progressed = threading.Event()

    def progress(n: int) -> None:
        steps.append(n)
        progressed.set()

    def reader() -> None:
        with contextlib.suppress(rawget.BodyBroken):
            rawget.pump(response, response.length, lambda v: None, progress, chunk=1 << 20)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert response.head_body == b""
        assert progressed.wait(5), "nothing handed on while the upstream paused"
        assert sum(steps) == 10_000
    finally:
        finished.set()
        response.shutdown()
        thread.join(5)
        response.close()
        server.join(5)
        listener.close()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")
def test_ipv6_host_header_has_brackets() -> None:
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    port = listener.getsockname()[1]
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            seen.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        response = get(httpx.URL(f"http://[::1]:{port}/v2/"))
        data, _ = read_all(response)
        response.close()
    finally:
        thread.join(10)
        listener.close()
    assert data == b"ok"
    assert f"host: [::1]:{port}\r\n" in seen[0].decode().lower()
