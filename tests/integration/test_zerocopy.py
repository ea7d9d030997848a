"""The sendfile body path (server/zerocopy.py) is really the one serving plain HTTP/1.1.

It lives on hypercorn internals, so a hypercorn upgrade that silently disables it must fail
here rather than show up as a 2x slowdown in production.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.support import EdgecacheServer, anonymous_push_config

SIZE = 3 * 1024 * 1024 + 17


def sample(client: httpx.Client, name: str, labels: str = "") -> float:
    text = client.get("/metrics").text
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    return digest


@pytest.fixture(scope="module")
def blob() -> bytes:
    return os.urandom(SIZE)


def _server(tmp_path_factory: pytest.TempPathFactory, extra: str) -> Iterator[EdgecacheServer]:
    server = EdgecacheServer(
        tmp_path_factory.mktemp("zc"), config_text=anonymous_push_config() + extra
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def zc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    yield from _server(tmp_path_factory, "")


def test_plain_http1_blob_goes_through_sendfile(zc_server: EdgecacheServer, blob: bytes) -> None:
    with zc_server.client() as client:
        digest = push_blob(client, "zc/one", blob)
        before = sample(client, "edgecache_sendfile_socket_bytes")
        response = client.get(f"/v2/zc/one/blobs/{digest}")
        assert response.status_code == 200
        assert response.content == blob
        assert response.headers["content-length"] == str(SIZE)
        after = sample(client, "edgecache_sendfile_socket_bytes")
        assert after - before == SIZE

        ranged = client.get(f"/v2/zc/one/blobs/{digest}", headers={"Range": "bytes=1000-1999"})
        assert ranged.status_code == 206
        assert ranged.content == blob[1000:2000]
        assert sample(client, "edgecache_sendfile_socket_bytes") - after == 1000

        # The connection stays usable after a sendfile body (h11 accounted for the bytes).
        assert client.get("/v2/").status_code == 200


def test_h2c_sends_mapped_pages(zc_server: EdgecacheServer, blob: bytes) -> None:
    """h2c cannot use sendfile (a frame header every 16 KiB): the file is mapped and its pages
    go between the headers in one sendmsg (server/h2fast.py), not read into buffers."""
    with zc_server.client() as client:
        digest = push_blob(client, "zc/two", blob)
        zero_before = sample(client, "edgecache_sendfile_socket_bytes")
    with httpx.Client(base_url=zc_server.url, http1=False, http2=True, timeout=60) as h2:
        response = h2.get(f"/v2/zc/two/blobs/{digest}")
        assert response.http_version == "HTTP/2"
        assert response.content == blob
    with zc_server.client() as client:
        assert sample(client, "edgecache_sendfile_socket_bytes") == zero_before
        assert sample(client, "edgecache_served_bytes_total", '{path="mmap"}') >= SIZE


@pytest.fixture(scope="module")
def no_zc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    yield from _server(tmp_path_factory, "[server]\nsendfile = false\n")


def test_sendfile_off_serves_the_same_bytes(no_zc_server: EdgecacheServer, blob: bytes) -> None:
    with no_zc_server.client() as client:
        digest = push_blob(client, "zc/three", blob)
        response = client.get(f"/v2/zc/three/blobs/{digest}")
        assert response.content == blob
        assert sample(client, "edgecache_sendfile_socket_bytes") == 0
