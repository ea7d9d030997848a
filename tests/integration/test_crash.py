"""Crash safety: SIGKILL the real server mid-upload and right after acknowledged writes.

What a client was told (201) must survive a kill -9; what was interrupted must not become
visible; the store must be consistent (`edgecache fsck` exit 0) and tmp/ swept at start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import EdgecacheServer, anonymous_push_config

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EdgecacheServer]:
    with EdgecacheServer(tmp_path / "ec", config_text=anonymous_push_config()) as s:
        yield s


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def upload(client: httpx.Client, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    r = client.put(r.headers["Location"], params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    return digest


def killing_body(
    server: EdgecacheServer, total: int, kill_after: int, seed: int
) -> tuple[Iterator[bytes], bytes]:
    """A request body of `total` bytes that SIGKILLs the server once `kill_after` bytes went
    out, while the rest of the body is still to be sent. Returns (iterator, full content)."""
    content = random.Random(seed).randbytes(total)

    def body() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            if sent >= kill_after and server.running():
                server.kill9()
            chunk = content[sent : sent + MiB]
            yield chunk
            sent += len(chunk)

    return body(), content


def assert_cut(send: Callable[[], httpx.Response]) -> None:
    """The request dies with the server: its connection breaks or, when a worker process
    relayed it to the killed owner (server/workers.py), the worker answers 503."""
    try:
        r = send()
    except httpx.TransportError:
        return
    assert r.status_code == 503, r.text
    assert r.json()["errors"][0]["code"] == "UNAVAILABLE"


def assert_restarted_clean(server: EdgecacheServer) -> None:
    """Restart on the same data dir: tmp/ swept, fsck clean."""
    server.restart()
    leftovers = files_under(server.data / "tmp")
    assert leftovers == [], f"tmp/ not swept at start-up: {leftovers}"
    fsck = server.cli("fsck", "--data", str(server.data))
    assert fsck.returncode == 0, f"fsck found problems:\n{fsck.stdout}\n{fsck.stderr}"


def test_kill9_during_chunked_and_monolithic_uploads(server: EdgecacheServer) -> None:
    repo = "crash/inflight"
    with server.client() as client:
        # Acknowledged before the crash.
        acked = os.urandom(2 * MiB + 11)
        acked_digest = upload(client, repo, acked)

        # A chunked upload: one chunk accepted, then the next PATCH is cut by the kill.
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202
        location = r.headers["Location"]
        first = os.urandom(8 * MiB)
        r = client.patch(
            location,
            content=first,
            headers={"Content-Range": f"0-{len(first) - 1}"},
        )
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        total = 64 * MiB
        body, second = killing_body(server, total, kill_after=16 * MiB, seed=1)
        assert_cut(
            lambda: client.patch(
                location,
                content=body,
                headers={
                    "Content-Range": f"{len(first)}-{len(first) + total - 1}",
                    "Content-Length": str(total),
                    "Content-Type": "application/octet-stream",
                },
            )
        )
    assert not server.running()
    interrupted_digest = digest_of(first + second)
    # A finished-looking digest of only the bytes that were accepted must not exist either.
    first_digest = digest_of(first)

    assert_restarted_clean(server)
    with server.client() as client:
        r = client.get(f"/v2/{repo}/blobs/{acked_digest}")
        assert r.status_code == 200
        assert r.headers["Docker-Content-Digest"] == acked_digest
        assert digest_of(r.content) == acked_digest
        for missing in (interrupted_digest, first_digest):
            r = client.head(f"/v2/{repo}/blobs/{missing}")
            assert r.status_code == 404, missing
        # The session either is gone or still knows at most what it was sent.
        r = client.get(location)
        if r.status_code == 204:
            end = int(r.headers["Range"].split("-")[1])
            assert end < len(first) + total
        else:
            assert r.status_code == 404

        # Kill during a monolithic PUT of a large blob: not visible afterwards.
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202
        total = 48 * MiB
        body, content = killing_body(server, total, kill_after=24 * MiB, seed=2)
        location = r.headers["Location"]
        assert_cut(
            lambda: client.put(
                location,
                params={"digest": digest_of(content)},
                content=body,
                headers={"Content-Length": str(total), "Content-Type": "application/octet-stream"},
            )
        )
    assert not server.running()

    assert_restarted_clean(server)
    with server.client() as client:
        assert client.head(f"/v2/{repo}/blobs/{digest_of(content)}").status_code == 404
        assert client.get(f"/v2/{repo}/blobs/{acked_digest}").content == acked


def test_kill9_right_after_acknowledged_writes(server: EdgecacheServer) -> None:
    """Every 201 is durable: blobs, a manifest and its tag survive a kill -9 that follows
    the last acknowledgement immediately."""
    repo = "crash/acked"
    blobs: dict[str, bytes] = {}
    with server.client() as client:
        for i in range(12):
            data = os.urandom(random.Random(i).randint(1, 512 * 1024))
            blobs[upload(client, repo, data)] = data
        config = b'{"architecture":"amd64","os":"linux"}'
        config_digest = upload(client, repo, config)
        layer_digest = next(iter(blobs))
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [
                    {
                        "mediaType": OCI_LAYER,
                        "digest": layer_digest,
                        "size": len(blobs[layer_digest]),
                    }
                ],
            }
        ).encode()
        r = client.put(
            f"/v2/{repo}/manifests/v1", content=manifest, headers={"Content-Type": OCI_MANIFEST}
        )
        assert r.status_code == 201, r.text
        # Last acknowledgement: a blob via single POST. Kill the moment its 201 arrives.
        last = os.urandom(300_000)
        r = client.post(
            f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(last)}, content=last
        )
        assert r.status_code == 201, r.text
        server.kill9()
        blobs[digest_of(last)] = last

    assert_restarted_clean(server)
    with server.client() as client:
        for digest, data in blobs.items():
            r = client.get(f"/v2/{repo}/blobs/{digest}")
            assert r.status_code == 200, digest
            assert r.content == data
        r = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200
        assert r.content == manifest
        assert r.headers["Docker-Content-Digest"] == digest_of(manifest)


def test_fsck_right_after_kill9_before_restart(server: EdgecacheServer) -> None:
    """A crash leaves no visible half-state: fsck on the dead server's data dir is clean too
    (leftovers in tmp/ are not part of the store)."""
    with server.client() as client:
        digest = upload(client, "crash/fsck", os.urandom(MiB))
        r = client.post("/v2/crash/fsck/blobs/uploads/")
        body, _ = killing_body(server, 32 * MiB, kill_after=8 * MiB, seed=3)
        location = r.headers["Location"]
        assert_cut(
            lambda: client.patch(
                location,
                content=body,
                headers={"Content-Length": str(32 * MiB), "Content-Range": f"0-{32 * MiB - 1}"},
            )
        )
    fsck = server.cli("fsck", "--data", str(server.data))
    assert fsck.returncode == 0, f"fsck found problems:\n{fsck.stdout}\n{fsck.stderr}"
    assert_restarted_clean(server)
    with server.client() as client:
        assert client.head(f"/v2/crash/fsck/blobs/{digest}").status_code == 200


def test_sigterm_is_a_clean_shutdown(server: EdgecacheServer) -> None:
    with server.client() as client:
        data = os.urandom(100_000)
        digest = upload(client, "crash/graceful", data)
    assert server.stop() == 0
    assert not server.server_json.exists(), "run/server.json must be removed at clean shutdown"
    fsck = server.cli("fsck", "--data", str(server.data))
    assert fsck.returncode == 0, f"fsck found problems:\n{fsck.stdout}\n{fsck.stderr}"
    server.restart()
    with server.client() as client:
        assert client.get(f"/v2/crash/graceful/blobs/{digest}").content == data
