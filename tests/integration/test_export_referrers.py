"""Referrers travel with their image: export (OCI) on node A -> preload on an empty node B.

Node A gets an image pushed over the registry API, an SBOM attached to it (artifactType, empty
config, one layer, a subject: the shape of edgecache's own report artifacts too, which clients
may not push; tests/integration/test_scan.py exports a real one) and a signature of that SBOM
(a referrer of a referrer). B starts empty, only ever sees the tar, and must answer the
referrers API as A does.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_export import cli
from tests.integration.test_preload import airgapped_config, edgecache_argv, reported, skopeo
from tests.support import (
    EdgecacheServer,
    anonymous_push_config,
    oci_layout_manifest,
    oci_manifest,
    push_blob,
    run,
    sha256_bytes,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
REPORT = "application/spdx+json"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
REPORT_LAYER = "application/spdx+json"
REF_NAME = "org.opencontainers.image.ref.name"
REPO = "team/app"


def put_manifest(client: httpx.Client, repo: str, ref: str, body: bytes) -> httpx.Response:
    r = client.put(f"/v2/{repo}/manifests/{ref}", content=body,
                   headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
    assert r.status_code == 201, r.text
    return r


def push_image(client: httpx.Client, repo: str, tag: str, seed: bytes) -> tuple[str, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed.decode()}).encode()
    layer = seed * 4096
    for blob in (config, layer):
        push_blob(client, repo, blob)
    manifest = oci_manifest(config, [layer])
    put_manifest(client, repo, tag, manifest)
    return sha256_bytes(manifest), manifest


def attach(
    client: httpx.Client, repo: str, subject: tuple[str, int], artifact_type: str,
    layers: list[tuple[str, bytes]],
) -> tuple[str, bytes]:  # fmt: skip
    """Push a referrer by digest, as scan/service.py and cosign do (no tag)."""
    push_blob(client, repo, b"{}")
    for _, data in layers:
        push_blob(client, repo, data)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY, "digest": sha256_bytes(b"{}"), "size": 2},
            "layers": [
                {"mediaType": media_type, "digest": sha256_bytes(data), "size": len(data)}
                for media_type, data in layers
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": subject[1]},
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
        },
        separators=(",", ":"),
    ).encode()
    digest = sha256_bytes(manifest)
    r = put_manifest(client, repo, digest, manifest)
    assert r.headers.get("OCI-Subject") == subject[0]
    return digest, manifest


def referrers(client: httpx.Client, repo: str, subject: str) -> list[dict[str, Any]]:
    r = client.get(f"/v2/{repo}/referrers/{subject}")
    assert r.status_code == 200, r.text
    return sorted(r.json()["manifests"], key=lambda d: d["digest"])


def tags(client: httpx.Client, repo: str) -> list[str]:
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200, r.text
    return sorted(r.json()["tags"])


class NodeA:
    data: Path
    image: str
    report: str
    signature: str
    plain: str
    plain_manifest: bytes
    answers: dict[str, list[dict[str, Any]]]  # subject -> A's referrers answer
    tags: list[str]


@pytest.fixture(scope="module")
def node_a(tmp_path_factory: pytest.TempPathFactory) -> NodeA:
    """A stopped node: team/app:v1 with a report and a signature of the report, and
    team/plain:v1 with no referrers at all."""
    node = NodeA()
    base = tmp_path_factory.mktemp("node-a")
    with (
        EdgecacheServer(base, config_text=anonymous_push_config()) as server,
        server.client() as client,
    ):
        node.image, manifest = push_image(client, REPO, "v1", b"app")
        report_json = json.dumps({"vulnerabilities": [{"id": "CVE-2026-0001"}]}).encode()
        node.report, report = attach(client, REPO, (node.image, len(manifest)), REPORT,
                                     [(REPORT_LAYER, report_json)])  # fmt: skip
        node.signature, _ = attach(client, REPO, (node.report, len(report)), SIGNATURE,
                                   [("application/vnd.dev.cosign.simplesigning.v1+json",
                                     b'{"critical":{}}')])  # fmt: skip
        node.plain, node.plain_manifest = push_image(client, "team/plain", "v1", b"plain")
        node.answers = {s: referrers(client, REPO, s) for s in (node.image, node.report)}
        node.tags = tags(client, REPO)
        node.data = server.data
    assert [d["digest"] for d in node.answers[node.image]] == [node.report]
    assert [d["digest"] for d in node.answers[node.report]] == [node.signature]
    assert node.tags == ["v1"]
    return node


def tar_json(tar: Path, name: str) -> Any:
    return json.loads(run(["tar", "-xOf", tar, name]).stdout)


def test_referrers_travel_to_a_fresh_node(node_a: NodeA, tmp_path: Path) -> None:
    tar = tmp_path / "export.tar"
    out = cli("export", "--data", node_a.data, "team/app:v1", "-o", tar)
    assert reported(out) == {"team/app:v1": node_a.image}
    # Blobs: config, layer, the empty config, the report, the signature's payload.
    assert "exported 1 image: 1 manifest, 5 blobs, 2 referrers (" in out
    index = tar_json(tar, "index.json")["manifests"]
    assert [d["digest"] for d in index] == [node_a.image, node_a.report, node_a.signature]
    assert index[0]["annotations"][REF_NAME] == "team/app:v1"
    for desc in index[1:]:
        assert "annotations" not in desc  # no ref.name: never taken for a tagged image
        assert desc["mediaType"] == OCI_MANIFEST
    assert [d["artifactType"] for d in index[1:]] == [REPORT, SIGNATURE]

    node_b = tmp_path / "b"
    loaded = cli("preload", "--data", node_b / "data", tar)
    assert reported(loaded) == {"team/app:v1": node_a.image}
    assert "preloaded 1 image: 1 manifest, 5 blobs, 2 referrers (5 new, " in loaded
    fsck = run([sys.executable, "-m", "edgecache", "fsck", "--data", node_b / "data"],
               check=False)  # fmt: skip
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    with (
        EdgecacheServer(node_b, config_text=airgapped_config()) as server,
        server.client() as client,
    ):
        for subject, answer in node_a.answers.items():
            assert referrers(client, REPO, subject) == answer
        assert referrers(client, REPO, node_a.signature) == []
        assert tags(client, REPO) == node_a.tags  # no tag for a referrer
        for digest in (node_a.report, node_a.signature):
            r = client.get(f"/v2/{REPO}/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200 and sha256_bytes(r.content) == digest
            manifest = r.json()
            for desc in [manifest["config"], *manifest["layers"]]:
                blob = client.get(f"/v2/{REPO}/blobs/{desc['digest']}")
                assert blob.status_code == 200
                assert sha256_bytes(blob.content) == desc["digest"]
                assert len(blob.content) == desc["size"]
        r = client.get(f"/v2/{REPO}/referrers/{node_a.image}", params={"artifactType": REPORT})
        assert [d["digest"] for d in r.json()["manifests"]] == [node_a.report]
    # A second preload of the same tar changes nothing and counts the same.
    again = cli("preload", "--data", node_b / "data", tar)
    assert "1 image: 1 manifest, 5 blobs, 2 referrers (0 new, 0 B; 5 already stored)" in again


def test_skopeo_still_reads_the_layout(node_a: NodeA, tmp_path: Path) -> None:
    """Untagged referrer entries do not get in the way of a tool that looks up a tag."""
    tar = tmp_path / "export.tar"
    cli("export", "--data", node_a.data, "team/app:v1", "-o", tar)
    raw = skopeo("inspect", "--raw", f"oci-archive:{tar}:team/app:v1")
    assert sha256_bytes(raw.encode()) == node_a.image
    # A full copy reads every blob (skopeo compresses the uncompressed layer on the way).
    dest = tmp_path / "out"
    skopeo("copy", f"oci-archive:{tar}:team/app:v1", f"oci:{dest}:v1")
    copied = json.loads(oci_layout_manifest(f"oci:{dest}:v1")[1])
    assert copied["config"]["digest"] == json.loads(raw)["config"]["digest"]


def test_docker_format_says_it_left_them_out(node_a: NodeA, tmp_path: Path) -> None:
    tar = tmp_path / "docker.tar"
    proc = run([*edgecache_argv(), "export", "--data", node_a.data, "team/app:v1", "-o", tar,
                "--format", "docker"], timeout=600)  # fmt: skip
    notes = [line for line in proc.stderr.splitlines() if "referrer" in line]
    assert notes == [
        "edgecache export: left out 2 referrers (signatures, SBOMs, scan reports): the docker "
        "format cannot carry them; --format oci does"
    ]
    assert re.search(r"^exported 1 image: 1 manifest, 2 blobs \([^,)]*\) to ", proc.stdout,
                     re.M), proc.stdout  # fmt: skip
    assert [d["digest"] for d in tar_json(tar, "index.json")["manifests"]] == [node_a.image]
    with tarfile.open(tar) as t:
        names = set(t.getnames())
    for digest in (node_a.report, node_a.signature):
        assert f"blobs/sha256/{digest[7:]}" not in names
    node_b = tmp_path / "b" / "data"
    loaded = cli("preload", "--data", node_b, tar)
    assert re.search(r"^preloaded 1 image: 1 manifest, 2 blobs \(2 new", loaded, re.M), loaded


def test_export_without_referrers_is_unchanged(node_a: NodeA, tmp_path: Path) -> None:
    """index.json and the tar's entries are what export wrote before referrers travelled."""
    tar = tmp_path / "plain.tar"
    out = cli("export", "--data", node_a.data, "team/plain:v1", "-o", tar)
    assert re.search(r"^exported 1 image: 1 manifest, 2 blobs \([^,)]*\) to ", out, re.M), out
    name = "team/plain:v1"
    expected = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": node_a.plain,
                "size": len(node_a.plain_manifest),
                "annotations": {
                    REF_NAME: name,
                    "io.containerd.image.name": name,
                    "io.edgecache.image.name": name,
                },
            }
        ],
    }
    raw = run(["tar", "-xOf", tar, "index.json"]).stdout.encode()
    assert raw == json.dumps(expected, indent=2).encode()
    manifest = json.loads(node_a.plain_manifest)
    blobs = [node_a.plain, manifest["config"]["digest"], manifest["layers"][0]["digest"]]
    with tarfile.open(tar) as t:
        assert t.getnames() == ["oci-layout", "index.json"] + [
            f"blobs/sha256/{d[7:]}" for d in blobs
        ]
