"""A full disk fails the write cleanly, starts eviction, and the server goes on serving.

The data directory lives on a small tmpfs the test mounts (root needed: CI runs as root;
elsewhere the test skips, and in CI a failed mount is a failure).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import EdgecacheServer, anonymous_push_config, in_ci

MiB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        message = f"cannot mount a tmpfs for the disk-full test: {result.stderr.strip()}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


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
        r = client.post(
            "/v2/team/app/blobs/uploads/", params={"digest": digest_of(big)}, content=big
        )
        assert r.status_code == 507, r.text
        assert r.json()["errors"][0]["code"] == "INSUFFICIENT_STORAGE"
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
