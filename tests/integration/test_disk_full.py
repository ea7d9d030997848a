"""A full disk fails the write cleanly, starts eviction, and the server goes on serving.

The data directory lives on a small tmpfs the test mounts (`small_disk`, in tests/conftest.py:
root needed, CI runs as root; elsewhere the test skips, and in CI a failed mount is a failure).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from tests.hostile.raw import send_while_reading
from tests.support import EdgecacheServer, anonymous_push_config

MiB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_disk_full_write_fails_cleanly_and_serving_continues(
    small_disk: Path, tmp_path: Path
) -> None:
    config = anonymous_push_config("[eviction]\nmin_free_bytes = 1048576\n")
    server = EdgecacheServer(tmp_path / "ec", config_text=config, data=small_disk / "data")
    with server, server.client() as client:
        small = os.urandom(64 * 1024)
        r = client.post(
            "/v2/team/app/blobs/uploads/", params={"digest": digest_of(small)}, content=small
        )
        assert r.status_code == 201
        big = os.urandom(40 * MiB)  # larger than the whole disk
        target = f"/v2/team/app/blobs/uploads/?digest={digest_of(big)}"
        answer = send_while_reading(server, "POST", target, big)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 507"), answer[:300]
        assert b'"code": "INSUFFICIENT_STORAGE"' in rest
        assert list((server.data / "tmp").iterdir()) == []  # the partial file is gone
        assert client.get(f"/v2/team/app/blobs/{digest_of(big)}").status_code == 404
        # Still serving: what was stored pulls, and a write that fits succeeds.
        got = client.get(f"/v2/team/app/blobs/{digest_of(small)}")
        assert got.status_code == 200 and got.content == small
        again = os.urandom(32 * 1024)
        r = client.post(
            "/v2/team/app/blobs/uploads/", params={"digest": digest_of(again)}, content=again
        )
        assert r.status_code == 201
        metrics = client.get("/metrics").text
        match = re.search(r"^edgecache_disk_full_total (\S+)$", metrics, re.MULTILINE)
        assert match and float(match.group(1)) >= 1
    fsck = server.cli("fsck", "--data", str(server.data))
    assert fsck.returncode == 0, fsck.stdout
