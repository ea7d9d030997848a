"""Rot on disk: corrupt files are found, quarantined and healed, never served again.

A real edgecache in front of a real docker-registry. Bytes of stored files are flipped the
way bit rot or a mistaken edit would; a scrub pass is asked for through the admin API.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import OCI_MANIFEST, EdgecacheServer, admin, oci_manifest, push_blob, wait_for
from tests.upstreams import PushedImage, RunningUpstream

SCRUB = "[scrub]\nrate = 1073741824\n\n"  # fast passes for the test; interval: 7 days


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def image(upstream: RunningUpstream) -> PushedImage:
    return upstream.push_test_image("team/app", layer=os.urandom(300_000))


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[EdgecacheServer]:
    config = (
        f"[auth]\nanonymous_push = true\n\n{SCRUB}"
        f'[upstreams.lab]\nurl = "{upstream.url}"\nretries = 1\n'
    )
    with EdgecacheServer(tmp_path_factory.mktemp("cache"), config_text=config) as server:
        yield server


def blob_file(server: EdgecacheServer, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return server.data / "blobs" / "sha256" / hexd[:2] / hexd


def flip_a_byte(path: Path) -> bytes:
    """Corrupt a stored file in place (they are read-only: made writable first)."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return bytes(data)


def metric(server: EdgecacheServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def get_manifest(client: httpx.Client, path: str) -> httpx.Response:
    return client.get(path, headers={"Accept": OCI_MANIFEST})


def test_corrupt_proxied_content_is_fetched_again(
    cache: EdgecacheServer, upstream: RunningUpstream, image: PushedImage
) -> None:
    base = "/v2/lab/team/app"
    with cache.client() as client:
        assert get_manifest(client, f"{base}/manifests/v1").content == image.manifest
        assert client.get(f"{base}/blobs/{image.layer_digest}").content == image.layer
    # The manifest must be read from disk again (not from memory): a restart empties memory.
    cache.stop()
    bad_manifest = flip_a_byte(blob_file(cache, image.digest))
    bad_layer = flip_a_byte(blob_file(cache, image.layer_digest))
    manifest_gets = upstream.request_count(f"/v2/team/app/manifests/{image.digest}", "GET")
    cache.restart()

    with cache.client() as client:
        # Verified as it is read: quarantined and fetched again within the same request.
        r = get_manifest(client, f"{base}/manifests/v1")
        assert r.status_code == 200 and r.content == image.manifest
        got = upstream.settled_request_count(
            f"/v2/team/app/manifests/{image.digest}", "GET", manifest_gets + 1
        )
        assert got == manifest_gets + 1

        served_before = upstream.settled_served_bytes(image.layer_digest, len(image.layer))
        record = admin(cache, "POST", "scrub")
        assert record["corrupt"] == 1 and record["objects"] == 2, record  # manifest, layer
        r = client.get(f"{base}/blobs/{image.layer_digest}")
        assert r.status_code == 200 and r.content == image.layer
        expected = served_before + len(image.layer)
        assert upstream.settled_served_bytes(image.layer_digest, expected) == expected
        # And from the store again on the next pull.
        assert client.get(f"{base}/blobs/{image.layer_digest}").content == image.layer
        assert get_manifest(client, f"{base}/manifests/v1").content == image.manifest

    quarantine = cache.data / "quarantine" / "sha256"
    assert (quarantine / image.digest.split(":")[1]).read_bytes() == bad_manifest
    assert (quarantine / image.layer_digest.split(":")[1]).read_bytes() == bad_layer
    # A joiner can hold every byte a moment before the fetch it joined has published them.
    scrub = wait_for(
        lambda: (
            (s := admin(cache, "GET", "status")["scrub"])
            and all(r["restored"] for r in s["quarantined"])
            and s
        ),
        timeout=10,
        what="both quarantined objects to be restored",
    )
    assert scrub["corrupt_found"] == 2 and scrub["awaiting_repush"] == []
    records = {r["digest"]: r for r in scrub["quarantined"]}
    for digest in (image.digest, image.layer_digest):
        assert records[digest]["repositories"] == {"lab/team/app": "proxied"}
    assert metric(cache, "edgecache_scrub_corrupt_found_total") == 2
    assert metric(cache, "edgecache_scrub_objects_verified_total") >= 2
    assert metric(cache, "edgecache_scrub_last_full_pass_timestamp_seconds") > 0


def push(client: httpx.Client, repo: str, tag: str, config: bytes, layer: bytes) -> bytes:
    for blob in (config, layer):
        push_blob(client, repo, blob)
    manifest = oci_manifest(config, [layer])
    r = client.put(f"/v2/{repo}/manifests/{tag}", content=manifest,
                   headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
    assert r.status_code == 201, r.text
    return manifest


def test_corrupt_pushed_content_is_refused_reported_and_restored_by_a_repush(
    cache: EdgecacheServer,
) -> None:
    repo, config, layer = "team/pushed", b'{"architecture":"amd64","os":"linux"}', os.urandom(5000)
    with cache.client() as client:
        manifest = push(client, repo, "v1", config, layer)
        m_digest, l_digest = digest_of(manifest), digest_of(layer)
        flip_a_byte(blob_file(cache, m_digest))  # never read since the push: not in memory
        flip_a_byte(blob_file(cache, l_digest))

        for _ in range(2):  # the first read finds it, and it stays refused
            r = get_manifest(client, f"/v2/{repo}/manifests/v1")
            assert r.status_code == 404, r.text
            assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        assert "quarantined; push it" in r.json()["errors"][0]["message"], r.text
        assert admin(cache, "POST", "scrub")["corrupt"] == 1
        assert client.head(f"/v2/{repo}/blobs/{l_digest}").status_code == 404
        r = client.get(f"/v2/{repo}/blobs/{l_digest}")
        assert r.status_code == 404
        assert "quarantined; push it" in r.json()["errors"][0]["message"], r.text
        # Another repository learns nothing about content it never linked.
        r = client.get(f"/v2/team/other/blobs/{l_digest}")
        assert r.status_code == 404 and "quarantined" not in r.text
        assert get_manifest(client, f"/v2/{repo}/manifests/{m_digest}").status_code == 404

        scrub = admin(cache, "GET", "status")["scrub"]
        assert set(scrub["awaiting_repush"]) == {m_digest, l_digest}
        records = {r["digest"]: r for r in scrub["quarantined"]}
        assert records[l_digest]["repositories"] == {repo: "pushed"}
        assert records[m_digest]["kind"] == "manifest"
        shown = cache.cli("status", "--data", str(cache.data), check=True).stdout
        assert l_digest in shown and m_digest in shown
        log = cache.log_text()
        assert re.search(rf"{l_digest} is corrupt on disk .*push it again.*{repo}", log), log

        # The right bytes, pushed again, are served again.
        assert push(client, repo, "v1", config, layer) == manifest
        assert get_manifest(client, f"/v2/{repo}/manifests/v1").content == manifest
        assert client.get(f"/v2/{repo}/blobs/{l_digest}").content == layer
    scrub = admin(cache, "GET", "status")["scrub"]
    assert scrub["awaiting_repush"] == []
    assert admin(cache, "POST", "scrub")["corrupt"] == 0


def test_a_blob_file_of_the_wrong_size_is_quarantined_as_it_is_opened(
    cache: EdgecacheServer, upstream: RunningUpstream
) -> None:
    """Cut short on disk, a file would be served with its indexed Content-Length and the
    client would wait for bytes that never come: the size is checked at every open."""
    pushed_repo, layer = "team/short", os.urandom(40_000)
    proxied = upstream.push_test_image("team/short", layer=os.urandom(50_000))
    with cache.client(timeout=20) as client:
        push_blob(client, pushed_repo, layer)
        base = "/v2/lab/team/short"
        assert client.get(f"{base}/blobs/{proxied.layer_digest}").content == proxied.layer
        for digest in (digest_of(layer), proxied.layer_digest):
            path = blob_file(cache, digest)
            os.chmod(path, 0o644)
            os.truncate(path, 1000)

        # Pushed: refused at once (not a hang), reported for a re-push.
        r = client.get(f"/v2/{pushed_repo}/blobs/{digest_of(layer)}")
        assert r.status_code == 404, r.text
        assert "quarantined" in r.json()["errors"][0]["message"]
        # Proxied: the same request joins the fetch that the quarantine started.
        r = client.get(f"{base}/blobs/{proxied.layer_digest}")
        assert r.status_code == 200 and r.content == proxied.layer
        assert client.get(f"{base}/blobs/{proxied.layer_digest}").content == proxied.layer

    scrub = admin(cache, "GET", "status")["scrub"]
    assert digest_of(layer) in scrub["awaiting_repush"]
    assert proxied.layer_digest not in scrub["awaiting_repush"]
    assert blob_file(cache, proxied.layer_digest).stat().st_size == len(proxied.layer)
