"""ORAS artifacts through the real `oras` Python client library.

oras-py 0.2.x `push()` cannot set a manifest `artifactType`, so the artifact manifest is built
here and pushed with the library's own upload functions (`upload_blob` chunked PATCH uploads,
`upload_manifest`); pulling uses the library's `pull()`, and the signature attached to the
artifact uses `push(subject=...)` as is.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    DockerRegistry,
    EdgecacheServer,
    require_module,
    sha256_bytes,
    sha256_file,
)

oras_provider = require_module("oras.provider")
oras_oci = require_module("oras.oci")

Registry = EdgecacheServer | DockerRegistry

MiB = 1 << 20
BIG_SIZE = 200 * MiB
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
ARTIFACT_TYPE = "application/vnd.example.model+json"
WEIGHTS_TYPE = "application/vnd.example.model.weights.v1"
TITLE = "org.opencontainers.image.title"


def write_random_file(path: Path, size: int, seed: int) -> str:
    """Write `size` pseudo-random bytes (8 MiB at a time); return their sha256 digest."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            chunk = rng.randbytes(min(remaining, 8 * MiB))
            h.update(chunk)
            f.write(chunk)
            remaining -= len(chunk)
    return "sha256:" + h.hexdigest()


def oras_registry(registry: Registry) -> Any:
    # insecure=True: plain http to 127.0.0.1. "basic" auth backend: anonymous registry, no token
    # service to look for.
    return oras_provider.Registry(hostname=registry.host, insecure=True, auth_backend="basic")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    path = tmp_path_factory.mktemp("artifact") / "model.bin"
    yield path, write_random_file(path, BIG_SIZE, seed=200)
    path.unlink()  # pytest keeps the last temp dirs around: do not keep 200 MiB in them


@pytest.fixture(scope="module")
def model_artifact(registry: Registry, big_file: tuple[Path, str]) -> dict[str, Any]:
    """Push the 200 MiB model artifact (custom artifactType) to ml/model:v1."""
    path, digest = big_file
    client = oras_registry(registry)
    container = client.get_container(f"{registry.host}/ml/model:v1")

    layer = {
        "mediaType": WEIGHTS_TYPE,
        "digest": digest,
        "size": BIG_SIZE,
        "annotations": {TITLE: "model.bin"},
    }
    # Chunked upload: POST, PATCH with Content-Range in 32 MiB chunks, PUT ?digest=.
    r = client.upload_blob(str(path), container, layer, do_chunked=True, chunk_size=32 * MiB)
    assert r.status_code == 201, r.text

    # The empty config ("{}"), uploaded monolithically (POST + PUT).
    empty = path.parent / "empty.json"
    empty.write_bytes(b"{}")
    config = {"mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_DIGEST, "size": 2}
    r = client.upload_blob(str(empty), container, config)
    assert r.status_code in (200, 201), r.text

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": config,
        "layers": [layer],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    r = client.upload_manifest(manifest, container)
    assert r.status_code == 201, r.text
    return {"manifest": manifest, "digest": r.headers["Docker-Content-Digest"]}


def test_pull_200mib_artifact_roundtrip(
    registry: Registry,
    big_file: tuple[Path, str],
    model_artifact: dict[str, Any],
    tmp_path: Path,
) -> None:
    _, digest = big_file
    client = oras_registry(registry)
    files = client.pull(target=f"{registry.host}/ml/model:v1", outdir=str(tmp_path))
    assert [Path(f).name for f in files] == ["model.bin"]
    pulled = Path(files[0])
    assert pulled.stat().st_size == BIG_SIZE
    assert sha256_file(pulled) == digest
    pulled.unlink()


def test_manifest_keeps_artifact_type(registry: Registry, model_artifact: dict[str, Any]) -> None:
    client = oras_registry(registry)
    manifest = client.get_manifest(f"{registry.host}/ml/model:v1")
    assert manifest == model_artifact["manifest"]
    assert manifest["artifactType"] == ARTIFACT_TYPE

    r = httpx.get(f"{registry.url}/v2/ml/model/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == OCI_MANIFEST
    assert r.headers["Docker-Content-Digest"] == model_artifact["digest"]
    assert sha256_bytes(r.content) == model_artifact["digest"]


def test_blob_served_with_digest_and_size(
    registry: Registry, big_file: tuple[Path, str], model_artifact: dict[str, Any]
) -> None:
    _, digest = big_file
    client = oras_registry(registry)
    r = client.get_blob(f"{registry.host}/ml/model:v1", digest, head=True)
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == BIG_SIZE
    assert r.headers["Docker-Content-Digest"] == digest
    # A range from the middle of the 200 MiB blob matches the file.
    path, _ = big_file
    start = 123 * MiB + 7
    r2 = httpx.get(
        f"{registry.url}/v2/ml/model/blobs/{digest}",
        headers={"Range": f"bytes={start}-{start + 4095}"},
    )
    assert r2.status_code == 206
    with open(path, "rb") as f:
        f.seek(start)
        assert r2.content == f.read(4096)


def test_signature_with_subject_is_listed_as_referrer(
    registry: Registry, model_artifact: dict[str, Any], tmp_path: Path
) -> None:
    if isinstance(registry, DockerRegistry):
        pytest.skip("docker-registry 2.8 has no referrers API")
    # The model manifest as the registry serves it is the subject.
    r = httpx.get(
        f"{registry.url}/v2/ml/model/manifests/{model_artifact['digest']}",
        headers={"Accept": OCI_MANIFEST},
    )
    assert r.status_code == 200
    subject = oras_oci.Subject(OCI_MANIFEST, model_artifact["digest"], len(r.content))

    sig = tmp_path / "model.sig"
    sig.write_bytes(b"signed: " + model_artifact["digest"].encode())
    sig_config = tmp_path / "sig-config.json"
    sig_config.write_bytes(b'{"signer":"test"}')
    sig_config_type = "application/vnd.example.signature.config.v1+json"
    client = oras_registry(registry)
    resp = client.push(
        target=f"{registry.host}/ml/model:sig",
        files=[f"{sig}:application/vnd.example.signature.v1"],
        manifest_config=f"{sig_config}:{sig_config_type}",
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )
    assert resp.status_code == 201
    assert resp.headers.get("OCI-Subject") == model_artifact["digest"]
    sig_digest = resp.headers["Docker-Content-Digest"]

    r = httpx.get(f"{registry.url}/v2/ml/model/referrers/{model_artifact['digest']}")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    index = json.loads(r.content)
    refs = {m["digest"]: m for m in index["manifests"]}
    assert sig_digest in refs
    # No artifactType in the signature manifest: the referrers entry uses config.mediaType.
    assert refs[sig_digest]["artifactType"] == sig_config_type
    assert refs[sig_digest]["mediaType"] == OCI_MANIFEST

    # And the signature pulls back through the library.
    files = client.pull(target=f"{registry.host}/ml/model:sig", outdir=str(tmp_path / "out"))
    assert [Path(f).read_bytes() for f in files] == [sig.read_bytes()]
