"""What the store holds stays what its digests say, whatever is pushed or was damaged.

A corrupt file on disk is replaced by the next verified copy of its bytes; names and digests
that would outgrow the index's keys are stored (referrers) or refused with a 400, never a 500
with a file left behind; an index whose child is a blob is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import EdgecacheServer, anonymous_push_config

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
LONG_REPO = "/".join(["a" * 63] * 4)  # 255 characters, the longest name a client may send


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def blob_file(server: EdgecacheServer, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":")
    return server.data / "blobs" / algorithm / hexdigest[:2] / hexdigest


def stored_files(server: EdgecacheServer) -> set[Path]:
    return {p for p in (server.data / "blobs").rglob("*") if p.is_file()}


def push_blob(client: httpx.Client, repo: str, data: bytes, chunked: bool = False) -> str:
    digest = digest_of(data)
    if chunked:
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        assert client.patch(location, content=data).status_code == 202
        r = client.put(location, params={"digest": digest})
    else:
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    return digest


def manifest(config: bytes, subject: tuple[str, int] | None = None) -> bytes:
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [],
    }
    if subject is not None:
        body["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": subject[1]}
        body["artifactType"] = "application/vnd.example.signature"
    return json.dumps(body).encode()


def put_manifest(client: httpx.Client, repo: str, ref: str, data: bytes) -> httpx.Response:
    media_type = json.loads(data)["mediaType"]
    return client.put(
        f"/v2/{repo}/manifests/{ref}", headers={"Content-Type": media_type}, content=data
    )


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_a_corrupt_blob_file_is_replaced_by_the_next_verified_push(
    edgecache: EdgecacheServer, damage: str, chunked: bool
) -> None:
    data = os.urandom(300_000)
    with edgecache.client() as client:
        digest = push_blob(client, "hostile/rot", data)
        path = blob_file(edgecache, digest)
        os.chmod(path, 0o644)
        rotten = bytes([data[0] ^ 0xFF]) + data[1:] if damage == "flipped" else data[:1000]
        path.write_bytes(rotten)
        push_blob(client, "hostile/rot", data, chunked=chunked)
        r = client.get(f"/v2/hostile/rot/blobs/{digest}")
        assert r.status_code == 200
        assert digest_of(r.content) == digest
        assert path.read_bytes() == data


def test_a_sha512_referrer_in_a_255_character_repository_is_stored(
    edgecache: EdgecacheServer,
) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    with edgecache.client() as client:
        push_blob(client, LONG_REPO, config)
        subject = manifest(config)
        subject_digest = digest_of(subject, "sha512")
        r = put_manifest(client, LONG_REPO, subject_digest, subject)
        assert r.status_code == 201, r.text
        referrer = manifest(config, subject=(subject_digest, len(subject)))
        referrer_digest = digest_of(referrer, "sha512")
        r = put_manifest(client, LONG_REPO, referrer_digest, referrer)
        assert r.status_code == 201, r.text
        r = client.get(f"/v2/{LONG_REPO}/referrers/{subject_digest}")
        assert r.status_code == 200, r.text
        assert [m["digest"] for m in r.json()["manifests"]] == [referrer_digest]
        r = client.get(f"/v2/{LONG_REPO}/manifests/{referrer_digest}")
        assert r.status_code == 200 and r.content == referrer
        assert client.delete(f"/v2/{LONG_REPO}/manifests/{referrer_digest}").status_code == 202
        r = client.get(f"/v2/{LONG_REPO}/referrers/{subject_digest}")
        assert r.json()["manifests"] == []
    fsck = edgecache.cli("fsck", "--data", str(edgecache.data))
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_an_index_naming_a_blob_is_refused(edgecache: EdgecacheServer) -> None:
    config = b"{}"
    with edgecache.client() as client:
        push_blob(client, "hostile/index", config)
        child = manifest(config)
        assert put_manifest(client, "hostile/index", digest_of(child), child).status_code == 201
        layer = push_blob(client, "hostile/index", os.urandom(1000))
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {"mediaType": OCI_MANIFEST, "digest": digest_of(child), "size": len(child)},
                    {"mediaType": OCI_MANIFEST, "digest": layer, "size": 1000},
                ],
            }
        ).encode()
        before = stored_files(edgecache)
        r = put_manifest(client, "hostile/index", "multi", index)
        assert r.status_code == 400, r.text
        error = r.json()["errors"][0]
        assert error["code"] == "MANIFEST_INVALID"
        assert layer in error["message"]
        assert client.get("/v2/hostile/index/manifests/multi").status_code == 404
        assert stored_files(edgecache) == before


def test_a_manifest_declaring_the_wrong_size_is_refused(edgecache: EdgecacheServer) -> None:
    """A descriptor's size is what clients check a download against (containerd refuses a
    layer of another size): a manifest that misstates one would break every pull of it."""
    config, layer = b'{"os":"linux"}', os.urandom(3000)
    with edgecache.client() as client:
        push_blob(client, "hostile/sizes", config)
        layer_digest = push_blob(client, "hostile/sizes", layer)
        body = json.loads(manifest(config))
        body["layers"] = [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": 2999}]
        lying = json.dumps(body).encode()
        before = stored_files(edgecache)
        r = put_manifest(client, "hostile/sizes", "v1", lying)
        assert r.status_code == 400, r.text
        error = r.json()["errors"][0]
        assert error["code"] == "MANIFEST_INVALID"
        assert f"{layer_digest} is 3000 bytes, not 2999" in error["message"], error
        assert client.get("/v2/hostile/sizes/manifests/v1").status_code == 404
        assert stored_files(edgecache) == before
        body["layers"][0]["size"] = 3000
        assert put_manifest(client, "hostile/sizes", "v1", json.dumps(body).encode()).is_success


LONG_UPSTREAM = "mirror-" + "u" * 150 + ".example"


@pytest.fixture
def long_upstream(tmp_path: Path) -> Iterator[EdgecacheServer]:
    # Nothing listens on the upstream's port: the request must be refused before any fetch.
    config = f'[upstreams."{LONG_UPSTREAM}"]\nurl = "http://127.0.0.1:9"\nretries = 1\n'
    with EdgecacheServer(tmp_path / "ec", config_text=anonymous_push_config(config)) as server:
        yield server


def test_a_proxied_name_too_long_for_the_index_is_refused(
    long_upstream: EdgecacheServer,
) -> None:
    repo = "/".join(["b" * 63] * 4)
    with long_upstream.client() as client:
        for path in (
            f"/v2/{repo}/manifests/latest",
            f"/v2/{repo}/blobs/{digest_of(b'x')}",
        ):
            r = client.get(path, params={"ns": LONG_UPSTREAM})
            assert r.status_code == 400, r.text
            error = r.json()["errors"][0]
            assert error["code"] == "NAME_INVALID"
            assert "too long" in error["message"]
    assert stored_files(long_upstream) == set()
    assert list((long_upstream.data / "tmp").iterdir()) == []
