"""HTTP/1.1 spoken over a plain socket, for requests a client library refuses to send.

httpx and h11 will not put a CR, LF or NUL where a hostile client would, and they refuse to
read a response whose header was split by one: here both directions are bytes, so a test sees
exactly what edgecache wrote. Every request says `Connection: close` and is read to EOF with a
deadline, so a server that hangs fails the test instead of stalling the suite.

`send_while_reading` is for a body the server may refuse part-way (a full disk, a limit): it
reads the answer while it sends, where httpx would only report the broken pipe.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any

from tests.support import EdgecacheServer

TIMEOUT = 20.0


@dataclass(frozen=True)
class RawResponse:
    status: int
    head: bytes  # status line and header lines, exactly as sent
    headers: list[tuple[str, str]]  # (lowercased name, value)
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return ",".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(server: EdgecacheServer, request: bytes, timeout: float = TIMEOUT) -> RawResponse:
    """Send `request` as is and read the whole response (the request must close)."""
    with socket.create_connection((server.host.split(":")[0], server.port), timeout) as sock:
        sock.sendall(request)
        data = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {bytes(data)[:500]!r}"
    status_line, *lines = head.split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1").strip().lower(), value.decode("latin-1").strip()))
    length = next((int(v) for k, v in headers if k == "content-length"), None)
    if length is not None:
        assert len(body) == length, f"body is {len(body)} bytes, Content-Length says {length}"
    return RawResponse(int(status_line.split()[1]), head, headers, body)


def send_while_reading(server: EdgecacheServer, method: str, target: str, body: bytes) -> bytes:
    """Send a request with `body` while reading the answer, and return the answer's bytes: a
    server that gives up on a large body answers and closes before the body is all sent."""
    response = bytearray()
    with socket.create_connection((server.host.split(":")[0], server.port), timeout=60) as sock:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode())

        def read() -> None:
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    response.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        with contextlib.suppress(OSError):  # the server may close before it all went out
            sock.sendall(body)
        reader.join(60)
        assert not reader.is_alive(), "the server neither answered nor closed the connection"
    return bytes(response)


def request(
    server: EdgecacheServer,
    method: str,
    target: bytes | str,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> RawResponse:
    """One request with exactly these header bytes (Host, Connection and Content-Length added)."""
    if isinstance(target, str):
        target = target.encode()
    lines = [
        method.encode() + b" " + target + b" HTTP/1.1",
        b"Host: edgecache",
        b"Connection: close",
    ]
    lines += [name + b": " + value for name, value in headers or []]
    if body or method in ("PUT", "PATCH", "POST"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return exchange(server, b"\r\n".join(lines) + b"\r\n\r\n" + body)


def assert_oci_error(response: RawResponse, status: int, code: str) -> str:
    """`response` is the OCI error `code` with `status`; returns its message."""
    assert response.status == status, (
        f"expected {status} {code}, got {response.status}: {response.body[:500]!r}"
    )
    errors = response.json()["errors"]
    assert errors[0]["code"] == code, errors
    return str(errors[0]["message"])


def assert_no_internal_errors(server: EdgecacheServer) -> None:
    """Nothing the server logged was an unhandled exception (what a 500 leaves behind)."""
    log = server.log_text(tail=1_000_000)
    assert "Traceback" not in log, log[-5000:]
