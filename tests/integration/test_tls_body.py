"""Blob bodies over TLS (the read path, server/http.py CachedReader and zerocopy.BufferBody).

Over TLS there is no sendfile: a warm blob is read from the page cache without blocking on the
event loop's thread (preadv with RWF_NOWAIT) into one buffer per response, which HTTP/1.1
writes uncopied; what the page cache does not hold is read on a thread. Both paths, and the
framings a body can take, must give the client exactly the stored bytes.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.integration.test_zerocopy import sample
from tests.support import EdgecacheServer, anonymous_push_config, make_tls_cert, push_blob

MiB = 1 << 20
SIZE = 3 * MiB + 12345  # several 1 MiB chunks and a short one


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EdgecacheServer, ssl.SSLContext]]:
    base = tmp_path_factory.mktemp("tls-body")
    ca, cert, key = make_tls_cert(base / "tls")
    extra = f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    context = ssl.create_default_context(cafile=str(ca))
    with EdgecacheServer(base, config_text=anonymous_push_config(extra)) as server:
        yield server, context


@pytest.fixture(scope="module")
def pushed(tls_server: tuple[EdgecacheServer, ssl.SSLContext]) -> tuple[bytes, str]:
    server, context = tls_server
    blob = os.urandom(SIZE)
    with server.client(verify=context) as client:
        return blob, push_blob(client, "tls/body", blob)


def _stored(server: EdgecacheServer, digest: str) -> Path:
    hexdigest = digest.removeprefix("sha256:")
    return server.data / "blobs" / "sha256" / hexdigest[:2] / hexdigest


def _drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.parametrize("cached", [True, False], ids=["page-cache", "from-disk"])
def test_whole_blob_over_tls_http11(
    tls_server: tuple[EdgecacheServer, ssl.SSLContext], pushed: tuple[bytes, str], cached: bool
) -> None:
    # The second request rides the same connection: the framing matched the body exactly.
    _whole_then_range(tls_server, pushed, cached, "HTTP/1.1", (1048570, 2097160))


def test_head_over_tls_sends_no_body(
    tls_server: tuple[EdgecacheServer, ssl.SSLContext], pushed: tuple[bytes, str]
) -> None:
    server, context = tls_server
    _, digest = pushed
    with httpx.Client(base_url=server.url, verify=context, timeout=60) as client:
        r = client.head(f"/v2/tls/body/blobs/{digest}")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(SIZE)
        assert r.content == b""
        assert client.get("/v2/").status_code == 200  # no stray body bytes on the connection


@pytest.mark.parametrize("cached", [True, False], ids=["page-cache", "from-disk"])
def test_whole_blob_over_tls_h2(
    tls_server: tuple[EdgecacheServer, ssl.SSLContext], pushed: tuple[bytes, str], cached: bool
) -> None:
    """HTTP/2 reads the file straight into its write buffer between the frame headers
    (server/h2fast.py _send_unread): from the page cache on the event loop, from the disk on
    a thread."""
    _whole_then_range(tls_server, pushed, cached, "HTTP/2", (17, 1048599))


def _whole_then_range(
    tls_server: tuple[EdgecacheServer, ssl.SSLContext],
    pushed: tuple[bytes, str],
    cached: bool,
    version: str,
    span: tuple[int, int],
) -> None:
    """GET the whole blob, then the bytes `span` (inclusive) of it, over one connection of
    `version`, the file in the page cache or not: the exact bytes, each response counted
    once under pread (the handler ran to its end: no error after the body)."""
    server, context = tls_server
    blob, digest = pushed
    if not cached:
        _drop_from_page_cache(_stored(server, digest))
    h2 = version == "HTTP/2"
    with httpx.Client(
        base_url=server.url, verify=context, http1=not h2, http2=h2, timeout=60
    ) as client:
        before = sample(client, "edgecache_served_bytes_total", '{path="pread"}')
        r = client.get(f"/v2/tls/body/blobs/{digest}")
        assert r.http_version == version
        assert r.status_code == 200
        assert r.content == blob
        first, last = span
        part = client.get(
            f"/v2/tls/body/blobs/{digest}", headers={"Range": f"bytes={first}-{last}"}
        )
        assert part.status_code == 206
        assert part.content == blob[first : last + 1]
        after = sample(client, "edgecache_served_bytes_total", '{path="pread"}')
    assert after - before == SIZE + len(part.content)


def test_concurrent_h2_streams_over_tls_share_one_connection(
    tls_server: tuple[EdgecacheServer, ssl.SSLContext], pushed: tuple[bytes, str]
) -> None:
    """Several streams of one connection take turns in the connection's one write buffer:
    each must get exactly its own bytes."""
    server, context = tls_server
    blob, digest = pushed
    ranges = [(0, SIZE - 1), (5, 2 * MiB + 3), (MiB - 1, SIZE - 1), (0, SIZE - 1)]
    results: dict[int, bytes] = {}

    async def main() -> None:
        async with httpx.AsyncClient(
            base_url=server.url, verify=context, http1=False, http2=True, timeout=60
        ) as client:

            async def get(i: int, first: int, last: int) -> None:
                r = await client.get(
                    f"/v2/tls/body/blobs/{digest}", headers={"Range": f"bytes={first}-{last}"}
                )
                assert r.http_version == "HTTP/2"
                results[i] = r.content

            async with anyio.create_task_group() as group:
                for i, (first, last) in enumerate(ranges):
                    group.start_soon(get, i, first, last)

    anyio.run(main, backend="trio")
    for i, (first, last) in enumerate(ranges):
        assert results[i] == blob[first : last + 1], i
