"""Blobs never load into memory: the server's peak RSS stays flat for a 512 MiB push and pull.

512 MiB rather than several GiB keeps the suite quick (this disk writes ~160 MB/s); the bound
asserted (64 MiB of growth) is far below what buffering even a quarter of the blob would cost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support import EdgecacheServer

BLOB = 512 << 20
H2_RANGE = 128 << 20
CHUNK = 4 << 20
# Generous for allocator noise, far below what buffering even a tenth of the blob would cost.
ALLOWED_GROWTH = 64 << 20


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def pattern() -> Iterator[bytes]:
    block = hashlib.sha256(b"seed").digest() * (CHUNK // 32)
    for i in range(BLOB // CHUNK):
        yield i.to_bytes(8, "big") + block[8:]


def test_large_push_and_pulls_keep_rss_flat(edgecache: EdgecacheServer) -> None:
    expected = hashlib.sha256()
    for chunk in pattern():
        expected.update(chunk)
    digest = f"sha256:{expected.hexdigest()}"

    with edgecache.client(timeout=300) as client:
        client.get("/v2/")
        baseline = peak_rss(edgecache.pid)

        start = client.post("/v2/mem/big/blobs/uploads/")
        assert start.status_code == 202
        # Streamed (chunked transfer encoding): httpx never holds the whole body either.
        done = client.put(start.headers["location"], params={"digest": digest}, content=pattern())
        assert done.status_code == 201, done.text

        got = hashlib.sha256()
        with client.stream("GET", f"/v2/mem/big/blobs/{digest}") as response:  # sendfile path
            assert response.status_code == 200
            for part in response.iter_bytes(CHUNK):
                got.update(part)
        assert f"sha256:{got.hexdigest()}" == digest

    # The buffered-read path (h2c); a range keeps it quick (Python h2 on both ends is slow).
    with httpx.Client(base_url=edgecache.url, http1=False, http2=True, timeout=300) as h2:
        headers = {"Range": f"bytes=0-{H2_RANGE - 1}"}
        received = 0
        with h2.stream("GET", f"/v2/mem/big/blobs/{digest}", headers=headers) as response:
            assert response.status_code == 206
            for part in response.iter_bytes(CHUNK):
                received += len(part)
        assert received == H2_RANGE

    growth = peak_rss(edgecache.pid) - baseline
    assert growth < ALLOWED_GROWTH, f"peak RSS grew by {growth >> 20} MiB for a 1 GiB blob"
