"""skopeo (containers/image, the real Go client) pushes to and pulls from edgecache.

Images are built with umoci (random content, so every run has new blobs); what goes in must
come back byte-identical: same manifest bytes, same digests, same blob files.
"""

from __future__ import annotations

import json
from pathlib import Path

import bcrypt
import httpx
import pytest

from tests.support import (
    DockerRegistry,
    EdgecacheServer,
    make_image,
    oci_layout_blobs,
    oci_layout_dir,
    oci_layout_manifest,
    require_tool,
    run,
    sha256_bytes,
    sha256_file,
)

Registry = EdgecacheServer | DockerRegistry

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def skopeo(*args: str) -> str:
    # --insecure-policy: do not depend on /etc/containers/policy.json of the machine.
    return run([require_tool("skopeo"), "--insecure-policy", *args], timeout=300).stdout


def push(src: str, dest: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", src, dest)


def pull(src: str, dest: str) -> None:
    skopeo("copy", "--src-tls-verify=false", src, dest)


def inspect_raw(ref: str) -> bytes:
    # --raw prints the manifest exactly as served (no trailing newline added by skopeo 1.9).
    return skopeo("inspect", "--raw", "--tls-verify=false", ref).encode()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An OCI layout with a 3 MiB layer, a 64 KiB layer and a tiny one."""
    require_tool("skopeo")
    return make_image(tmp_path_factory.mktemp("image"), [3 * MiB, 64 * 1024, 1000])


@pytest.fixture(scope="module")
def pushed(registry: Registry, image: str) -> str:
    """The image pushed to team/app:v1; returns the docker:// reference."""
    ref = f"docker://{registry.host}/team/app:v1"
    push(image, ref)
    return ref


def test_push_then_pull_to_oci_layout_is_byte_identical(
    registry: Registry, image: str, pushed: str, tmp_path: Path
) -> None:
    dest = tmp_path / "pulled"
    pull(pushed, f"oci:{dest}:v1")

    src_digest, src_manifest = oci_layout_manifest(image)
    dst_digest, dst_manifest = oci_layout_manifest(f"oci:{dest}:v1")
    assert dst_digest == src_digest
    assert dst_manifest == src_manifest
    # Every blob (manifest, config, layers) came back with the same digest and content.
    src_blobs = oci_layout_blobs(oci_layout_dir(image))
    dst_blobs = oci_layout_blobs(dest)
    assert dst_blobs == src_blobs
    for digest, content_digest in dst_blobs.items():
        assert digest == content_digest


def test_inspect_raw_returns_pushed_manifest_bytes(
    registry: Registry, image: str, pushed: str
) -> None:
    digest, manifest = oci_layout_manifest(image)
    assert inspect_raw(pushed) == manifest
    # By digest too, and the registry names the same digest.
    assert inspect_raw(f"docker://{registry.host}/team/app@{digest}") == manifest
    r = httpx.get(
        f"{registry.url}/v2/team/app/manifests/v1",
        headers={"Accept": OCI_MANIFEST},
    )
    assert r.status_code == 200
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Type"] == OCI_MANIFEST
    assert r.content == manifest


def test_inspect_reports_image_config(registry: Registry, pushed: str) -> None:
    info = json.loads(skopeo("inspect", "--tls-verify=false", pushed))
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    assert info["Labels"] == {"org.example.test": "edgecache"}
    assert len(info["Layers"]) == 3


def test_pull_to_dir_has_every_blob(image: str, pushed: str, tmp_path: Path) -> None:
    dest = tmp_path / "dir"
    pull(pushed, f"dir:{dest}")
    _, manifest_bytes = oci_layout_manifest(image)
    assert (dest / "manifest.json").read_bytes() == manifest_bytes
    manifest = json.loads(manifest_bytes)
    for desc in [manifest["config"], *manifest["layers"]]:
        path = dest / desc["digest"].split(":", 1)[1]
        assert path.stat().st_size == desc["size"]
        assert sha256_file(path) == desc["digest"]


def test_push_by_digest(registry: Registry, image: str, tmp_path: Path) -> None:
    digest, manifest = oci_layout_manifest(image)
    ref = f"docker://{registry.host}/team/bydigest@{digest}"
    push(image, ref)
    assert inspect_raw(ref) == manifest
    # Pushed by digest only: no tag was created.
    r = httpx.get(f"{registry.url}/v2/team/bydigest/tags/list")
    assert r.status_code in (200, 404)
    if r.status_code == 200:
        assert not r.json().get("tags")
    dest = tmp_path / "bydigest"
    pull(ref, f"oci:{dest}:x")
    assert oci_layout_blobs(dest) == oci_layout_blobs(oci_layout_dir(image))


def test_push_again_is_idempotent(registry: Registry, image: str, pushed: str) -> None:
    push(image, pushed)
    _, manifest = oci_layout_manifest(image)
    assert inspect_raw(pushed) == manifest


def test_copy_between_repositories_of_the_same_registry(
    registry: Registry, image: str, pushed: str
) -> None:
    """Registry to registry: skopeo may cross-repo mount the blobs it knows are there."""
    dest = f"docker://{registry.host}/other/team-copy:v2"
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", pushed, dest)
    _, manifest = oci_layout_manifest(image)
    assert inspect_raw(dest) == manifest
    for desc in json.loads(manifest)["layers"]:
        r = httpx.head(f"{registry.url}/v2/other/team-copy/blobs/{desc['digest']}")
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == desc["size"]


def test_docker_schema2_push_and_pull(registry: Registry, image: str, tmp_path: Path) -> None:
    ref = f"docker://{registry.host}/team/docker:v1"
    skopeo("copy", "--format", "v2s2", "--dest-tls-verify=false", image, ref)
    raw = inspect_raw(ref)
    manifest = json.loads(raw)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    r = httpx.get(
        f"{registry.url}/v2/team/docker/manifests/v1",
        headers={"Accept": f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"},
    )
    assert r.status_code == 200
    assert r.headers["Content-Type"] == DOCKER_MANIFEST
    assert r.headers["Docker-Content-Digest"] == sha256_bytes(raw)
    dest = tmp_path / "docker-dir"
    pull(ref, f"dir:{dest}")
    assert (dest / "manifest.json").read_bytes() == raw
    for desc in [manifest["config"], *manifest["layers"]]:
        assert sha256_file(dest / desc["digest"].split(":", 1)[1]) == desc["digest"]


def test_multi_arch_index_copy_all(registry: Registry, tmp_path: Path) -> None:
    """An OCI index of two platform images: `skopeo copy --all` both ways keeps every byte."""
    amd64 = make_image(tmp_path, [128 * 1024], tag="amd64", name="multi")
    arm64 = make_image(tmp_path, [96 * 1024], tag="arm64", name="multi")
    layout = oci_layout_dir(amd64)
    umoci = require_tool("umoci")
    run([umoci, "config", "--image", f"{layout}:arm64", "--architecture", "arm64"])
    run([umoci, "gc", "--layout", layout])
    manifests = []
    for ref, arch in ((amd64, "amd64"), (arm64, "arm64")):
        digest, raw = oci_layout_manifest(ref)
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(raw),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests},
        separators=(",", ":"),
    ).encode()
    index_digest = sha256_bytes(index)
    (layout / "blobs" / "sha256" / index_digest.split(":", 1)[1]).write_bytes(index)
    top = json.loads((layout / "index.json").read_text())
    top["manifests"].append(
        {
            "mediaType": OCI_INDEX,
            "digest": index_digest,
            "size": len(index),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    )
    (layout / "index.json").write_text(json.dumps(top))

    ref = f"docker://{registry.host}/team/multi:latest"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:multi", ref)
    assert inspect_raw(ref) == index
    for m in manifests:
        r = httpx.get(
            f"{registry.url}/v2/team/multi/manifests/{m['digest']}",
            headers={"Accept": OCI_MANIFEST},
        )
        assert r.status_code == 200
        assert sha256_bytes(r.content) == m["digest"]

    dest = tmp_path / "multi-pulled"
    skopeo("copy", "--all", "--src-tls-verify=false", ref, f"oci:{dest}:multi")
    digest, raw = oci_layout_manifest(f"oci:{dest}:multi")
    assert (digest, raw) == (index_digest, index)
    pulled = oci_layout_blobs(dest)
    for digest, content in pulled.items():
        assert digest == content
    # Everything reachable from the index came back, nothing else.
    assert pulled == oci_layout_blobs(layout)


def test_push_with_credentials(tmp_path_factory: pytest.TempPathFactory, image: str) -> None:
    """Against a server without anonymous push: skopeo's basic-auth flow (401 challenge, then
    credentials) works, and a push without credentials is refused."""
    hashed = bcrypt.hashpw(b"pw-for-skopeo", bcrypt.gensalt(rounds=4)).decode()
    config = f'[auth]\n[auth.users]\nbob = "{hashed}"\n'
    with EdgecacheServer(tmp_path_factory.mktemp("edgecache-auth"), config_text=config) as server:
        ref = f"docker://{server.host}/secure/app:v1"
        refused = run(
            [require_tool("skopeo"), "--insecure-policy", "copy", "--dest-tls-verify=false",
             image, ref],
            check=False,
            timeout=300,
        )  # fmt: skip
        assert refused.returncode != 0
        assert "401" in refused.stderr or "unauthorized" in refused.stderr.lower()
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "bob:pw-for-skopeo", image, ref)
        # Pulls are anonymous.
        _, manifest = oci_layout_manifest(image)
        assert inspect_raw(ref) == manifest
