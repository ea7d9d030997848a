"""A chunked request body that h11 refuses (a chunk size that is not hex, or is absurdly long)
on a request edgecache answers without reading its body. The error response ends with
`Connection: close`, and hypercorn's close raced the 400 it sends for the bad chunk: trio's
BusyResourceError escaped and one anonymous request ended the whole server process.
Now the client gets a 4xx (or a closed connection) and the server keeps serving."""

from __future__ import annotations

import socket

import pytest

from tests.support import EdgecacheServer

ROUTES = [
    # Refused before the body is read: unknown upload session, bad digest, bad name.
    ("PATCH", "/v2/chunked/app/blobs/uploads/00000000-0000-0000-0000-000000000000"),
    ("POST", "/v2/chunked/app/blobs/uploads/?digest=sha256:" + "a" * 64),
    ("POST", "/v2/chunked/app/blobs/uploads/?digest=sha256:zz"),
    ("PUT", "/v2/Bad_Name/manifests/v1"),
]
BAD_CHUNK_SIZES = [b"zz", b"1" * 5000, b"-1", b"0x10"]


def send_bad_chunk(server: EdgecacheServer, method: str, path: str, size: bytes) -> bytes:
    with socket.create_connection((server.host.split(":")[0], server.port), 20) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: edgecache\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + size
            + b"\r\nabc\r\n0\r\n\r\n"
        )
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_bad_chunk_size_never_ends_the_server(
    edgecache: EdgecacheServer, method: str, path: str
) -> None:
    # Several rounds: the failure was a race between two tasks of one connection.
    for _ in range(5):
        for size in BAD_CHUNK_SIZES:
            answer = send_bad_chunk(edgecache, method, path, size)
            if answer:
                status = int(answer.split(b" ", 2)[1])
                assert 400 <= status < 500, answer[:300]
            assert edgecache.running(), edgecache.log_text()
    with edgecache.client() as client:
        assert client.get("/v2/").status_code == 200
    assert "Traceback" not in edgecache.log_text(tail=1_000_000)
