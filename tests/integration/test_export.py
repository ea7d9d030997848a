"""`edgecache export` -> `edgecache preload` on another node -> pull: the same digests.

Node A gets an image pushed by skopeo (a registry's usual content: gzip layers, OCI manifest)
and one preloaded from a docker-save archive; node B starts empty and only ever sees the tar.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

from tests.integration.test_ctr import image_digests
from tests.integration.test_preload import airgapped_config, edgecache_argv, reported, skopeo
from tests.support import (
    Containerd,
    EdgecacheServer,
    anonymous_push_config,
    make_image,
    oci_layout_blobs,
    oci_layout_dir,
    oci_layout_manifest,
    require_tool,
    run,
    sha256_bytes,
)

MiB = 1 << 20


def cli(*args: str | Path) -> str:
    return run([*edgecache_argv(), *args], timeout=600).stdout


@pytest.fixture(scope="module")
def node_a(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A stopped node holding team/app:v1 (pushed) and docker.io/library/saved:1 (preloaded)."""
    base = tmp_path_factory.mktemp("node-a")
    image = make_image(base / "img", [3 * MiB, 1000])
    with EdgecacheServer(base / "a", config_text=anonymous_push_config()) as server:
        skopeo("copy", "--dest-tls-verify=false", image, f"docker://{server.host}/team/app:v1")
        data = server.data
    save = base / "save.tar"
    skopeo("copy", image, f"docker-archive:{save}:saved:1")
    saved_digest = reported(cli("preload", "--data", data, save))["docker.io/library/saved:1"]
    return data, image, saved_digest


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_round_trip_keeps_digests(node_a: tuple[Path, str, str], tmp_path: Path, fmt: str) -> None:
    data_a, image, saved_digest = node_a
    tar = tmp_path / "export.tar"
    out = cli("export", "--data", data_a, "team/app:v1", "saved:1", "-o", tar, "--format", fmt)
    pushed_digest, pushed_raw = oci_layout_manifest(image)
    assert reported(out) == {
        "team/app:v1": pushed_digest,
        "docker.io/library/saved:1": saved_digest,
    }
    node_b = tmp_path / "b"
    restored = reported(cli("preload", "--data", node_b / "data", tar))
    assert restored == reported(out)
    with EdgecacheServer(node_b, config_text=airgapped_config()) as server:
        raw = skopeo("inspect", "--raw", "--tls-verify=false",
                     f"docker://{server.host}/team/app:v1")  # fmt: skip
        assert raw.encode() == pushed_raw
        pulled = tmp_path / "pulled"
        skopeo("copy", "--src-tls-verify=false", f"docker://{server.host}/team/app:v1",
               f"oci:{pulled}:v1")  # fmt: skip
        skopeo("inspect", "--raw", "--tls-verify=false",
               f"docker://{server.host}/docker.io/library/saved:1")  # fmt: skip
    assert oci_layout_blobs(pulled) == oci_layout_blobs(oci_layout_dir(image))


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_ctr_pulls_what_was_exported(
    node_a: tuple[Path, str, str], tmp_path: Path, fmt: str
) -> None:
    """export on A -> preload on an empty B -> a fresh containerd pulls from B: same digests."""
    require_tool("containerd")
    require_tool("ctr")
    data_a, image, saved_digest = node_a
    pushed_digest, pushed_raw = oci_layout_manifest(image)
    tar = tmp_path / "export.tar"
    cli("export", "--data", data_a, "team/app:v1", "saved:1", "-o", tar, "--format", fmt)
    node_b = tmp_path / "b"
    cli("preload", "--data", node_b / "data", tar)
    # Short base path: containerd's unix sockets must fit in 108 bytes.
    with (
        EdgecacheServer(node_b, config_text=airgapped_config()) as server,
        tempfile.TemporaryDirectory(prefix="ec-ctrd-") as base,
        Containerd(base) as containerd,
    ):
        expected = {
            f"{server.host}/team/app:v1": pushed_digest,
            f"{server.host}/docker.io/library/saved:1": saved_digest,
        }
        for name in expected:
            containerd.ctr("images", "pull", "--plain-http", "--snapshotter", "native", name)
        assert image_digests(containerd) == expected
        check = containerd.ctr("images", "check").stdout.splitlines()[1:]
        assert len(check) == len(expected)
        for line in check:
            assert re.search(r"\bcomplete\s+\((\d+)/\1\)", line), line
        # Every blob as containerd stored it hashes to its digest, layers included.
        for digest in (pushed_digest, saved_digest):
            manifest = json.loads(containerd.content(digest))
            for desc in [manifest["config"], *manifest["layers"]]:
                assert sha256_bytes(containerd.content(desc["digest"])) == desc["digest"]
        assert containerd.content(pushed_digest) == pushed_raw


def test_skopeo_reads_oci_archive(node_a: tuple[Path, str, str], tmp_path: Path) -> None:
    data_a, image, _ = node_a
    tar = tmp_path / "export.tar"
    cli("export", "--data", data_a, "team/app:v1", "-o", tar)
    dest = tmp_path / "out"
    skopeo("copy", f"oci-archive:{tar}:team/app:v1", f"oci:{dest}:v1")
    assert oci_layout_manifest(f"oci:{dest}:v1") == oci_layout_manifest(image)


def test_skopeo_reads_docker_archive(node_a: tuple[Path, str, str], tmp_path: Path) -> None:
    data_a, _, _ = node_a
    tar = tmp_path / "export.tar"
    cli("export", "--data", data_a, "saved:1", "team/app:v1", "-o", tar, "--format", "docker")
    manifest = json.loads(run(["tar", "-xOf", tar, "manifest.json"]).stdout)
    assert sorted(tag for entry in manifest for tag in entry["RepoTags"]) == [
        "saved:1",
        "team/app:v1",
    ]
    for ref in ("saved:1", "team/app:v1"):
        dest = tmp_path / ref.replace("/", "_").replace(":", "_")
        skopeo("copy", f"docker-archive:{tar}:{ref}", f"oci:{dest}:x")
        config = json.loads(skopeo("inspect", "--config", f"oci:{dest}:x"))
        assert config["config"]["Labels"] == {"org.example.test": "edgecache"}


def test_export_of_missing_image_is_refused(node_a: tuple[Path, str, str], tmp_path: Path) -> None:
    data_a, _, _ = node_a
    proc = run([*edgecache_argv(), "export", "--data", data_a, "nope:1", "-o", tmp_path / "x.tar"],
               check=False)  # fmt: skip
    assert proc.returncode == 1
    assert "nope:1: not in the store (looked for nope and docker.io/library/nope)" in proc.stderr
    assert not (tmp_path / "x.tar").exists()
