"""A real containerd pulls images from edgecache with `ctr`.

containerd runs privately (own root, state, socket; CRI disabled) and is stopped by its pid.
Images are pushed with skopeo; containerd fetches them, verifies every digest, and unpacks the
layers (which checks the uncompressed diff_ids in the config too).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    Containerd,
    DockerRegistry,
    EdgecacheServer,
    make_image,
    oci_layout_dir,
    oci_layout_manifest,
    require_tool,
    run,
)

Registry = EdgecacheServer | DockerRegistry

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    require_tool("containerd")
    require_tool("ctr")
    # Short base path: containerd's unix sockets must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="ec-ctrd-") as base, Containerd(base) as daemon:
        yield daemon


def push_image(registry: Registry, tmp_path: Path, repo: str, sizes: list[int]) -> tuple[str, str]:
    """Build and push an image to `repo:v1`; return (layout ref, manifest digest)."""
    ref = make_image(tmp_path, sizes)
    run(
        [
            require_tool("skopeo"),
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            ref,
            f"docker://{registry.host}/{repo}:v1",
        ],
        timeout=300,
    )
    digest, _ = oci_layout_manifest(ref)
    return ref, digest


def image_digests(containerd: Containerd) -> dict[str, str]:
    """ref -> target digest of every image containerd has (`ctr images ls`)."""
    out = containerd.ctr("images", "ls").stdout.splitlines()
    images = {}
    for line in out[1:]:
        fields = line.split()
        if len(fields) >= 3:
            images[fields[0]] = fields[2]
    return images


def assert_content_matches_layout(containerd: Containerd, layout_ref: str) -> None:
    """Every blob of the image, as containerd stored it, equals the bytes pushed."""
    layout = oci_layout_dir(layout_ref)
    _, manifest_raw = oci_layout_manifest(layout_ref)
    manifest = json.loads(manifest_raw)
    for desc in [manifest["config"], *manifest["layers"]]:
        expected = (layout / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]).read_bytes()
        assert containerd.content(desc["digest"]) == expected, desc["digest"]


def test_ctr_pull_plain_http(registry: Registry, containerd: Containerd, tmp_path: Path) -> None:
    layout_ref, digest = push_image(registry, tmp_path, "team/app", [4 * MiB, 256 * 1024, 100])
    name = f"{registry.host}/team/app:v1"
    containerd.ctr("images", "pull", "--plain-http", "--snapshotter", "native", name)

    assert image_digests(containerd)[name] == digest
    # The same digest edgecache serves for the tag.
    r = httpx.head(f"{registry.url}/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    assert r.headers["Docker-Content-Digest"] == digest

    check = containerd.ctr("images", "check").stdout
    line = next(x for x in check.splitlines() if x.startswith(name))
    assert re.search(r"\bcomplete\s+\((\d+)/\1\)", line), line
    assert_content_matches_layout(containerd, layout_ref)


def test_ctr_pull_through_hosts_toml(
    registry: Registry, containerd: Containerd, tmp_path: Path
) -> None:
    """The way edge nodes are configured: a hosts.toml for the registry host."""
    _, digest = push_image(registry, tmp_path, "team/hosts", [1 * MiB, 2000])
    hosts_dir = tmp_path / "certs.d"
    host_dir = hosts_dir / registry.host
    host_dir.mkdir(parents=True)
    (host_dir / "hosts.toml").write_text(
        f'server = "{registry.url}"\n\n'
        f'[host."{registry.url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    name = f"{registry.host}/team/hosts:v1"
    containerd.ctr("images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native", name)
    assert image_digests(containerd)[name] == digest


def test_ctr_pull_by_digest(registry: Registry, containerd: Containerd, tmp_path: Path) -> None:
    _, digest = push_image(registry, tmp_path, "team/pinned", [512 * 1024])
    name = f"{registry.host}/team/pinned@{digest}"
    containerd.ctr("images", "pull", "--plain-http", "--snapshotter", "native", name)
    assert image_digests(containerd)[name] == digest
