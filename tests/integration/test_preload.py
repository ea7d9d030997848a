"""`edgecache preload` of archives made by real tools, pulled back with real clients.

skopeo writes docker-archive and oci-archive tars, umoci builds the layouts. The server runs
air-gapped: its only docker.io upstream is a closed loopback port, so what it serves under
docker.io/... comes from the preload (the pull-through cache's repository for that image).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import (
    EdgecacheServer,
    free_port,
    make_image,
    oci_layout_blobs,
    oci_layout_dir,
    oci_layout_manifest,
    require_tool,
    run,
    sha256_file,
    wait_for,
)

MiB = 1 << 20


def airgapped_config() -> str:
    # A docker.io upstream nobody listens on: the node is offline, as at an air-gapped site.
    return (
        f'[upstreams."docker.io"]\nurl = "http://127.0.0.1:{free_port()}"\n'
        "retries = 1\nconnect_timeout = 1.0\n"
    )


def edgecache_argv() -> list[str]:
    """`python -m edgecache` once preload/export are wired into its CLI, else our module."""
    from edgecache.cli import build_parser

    try:
        build_parser().parse_args(["preload", "--data", "x", "f"])
    except SystemExit:
        return [sys.executable, "-m", "edgecache.transfer.cli"]
    return [sys.executable, "-m", "edgecache"]


def preload(data: Path, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([*edgecache_argv(), "preload", "--data", data, *args], check=check, timeout=600)


def reported(out: str) -> dict[str, str]:
    """name -> manifest digest from preload's output lines."""
    return dict(line.split() for line in out.splitlines() if line.count(" ") == 1)


def skopeo(*args: str) -> str:
    return run([require_tool("skopeo"), "--insecure-policy", *args], timeout=300).stdout


def pull_to_layout(server: EdgecacheServer, name: str, dest: Path) -> None:
    skopeo("copy", "--src-tls-verify=false", f"docker://{server.host}/{name}", f"oci:{dest}:x")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    require_tool("skopeo")
    return make_image(tmp_path_factory.mktemp("img"), [2 * MiB, 64 * 1024, 700])


def test_docker_archive_from_skopeo_pulls_by_tag(image: str, tmp_path: Path) -> None:
    archive = tmp_path / "save.tar"
    skopeo("copy", image, f"docker-archive:{archive}:nginx:1.27")
    server = EdgecacheServer(tmp_path / "node", config_text=airgapped_config())
    with server:  # imported while the server runs on the same data directory
        out = preload(server.data, archive).stdout
        digest = reported(out)["docker.io/library/nginx:1.27"]
        assert "preloaded 1 image: 1 manifest, 4 blobs (4 new" in out
        raw = skopeo("inspect", "--raw", "--tls-verify=false",
                     f"docker://{server.host}/docker.io/library/nginx:1.27")  # fmt: skip
        assert sha256_of(raw.encode()) == digest
        manifest = json.loads(raw)
        assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        pulled = tmp_path / "pulled"
        pull_to_layout(server, "docker.io/library/nginx:1.27", pulled)
    # Layers travel uncompressed: their digests are the diff_ids of the original image.
    _, original = oci_layout_manifest(image)
    config = json.loads(
        (
            oci_layout_dir(image) / "blobs/sha256" / json.loads(original)["config"]["digest"][7:]
        ).read_bytes()
    )
    assert [x["digest"] for x in manifest["layers"]] == config["rootfs"]["diff_ids"]
    for digest_, content in oci_layout_blobs(pulled).items():
        assert digest_ == content


def sha256_of(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_oci_archive_and_umoci_layout(image: str, tmp_path: Path) -> None:
    archive = tmp_path / "oci.tar"
    skopeo("copy", image, f"oci-archive:{archive}:ghcr.io/org/tool:v2")
    data = tmp_path / "node" / "data"
    out = preload(data, archive).stdout
    layout_out = preload(data, oci_layout_dir(image), "--as", "team/app:v1").stdout
    expected_digest, expected_raw = oci_layout_manifest(image)
    assert reported(out) == {"ghcr.io/org/tool:v2": expected_digest}
    assert reported(layout_out) == {"team/app:v1": expected_digest}
    assert "0 new" in layout_out  # the same image: every blob already stored
    with EdgecacheServer(tmp_path / "node", config_text=airgapped_config()) as server:
        for name in ("ghcr.io/org/tool:v2", "team/app:v1"):
            raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{server.host}/{name}")
            assert raw.encode() == expected_raw
        pulled = tmp_path / "pulled"
        pull_to_layout(server, "team/app:v1", pulled)
    assert oci_layout_blobs(pulled) == oci_layout_blobs(oci_layout_dir(image))


def test_second_preload_writes_nothing(image: str, tmp_path: Path) -> None:
    plain = tmp_path / "save.tar"
    skopeo("copy", image, f"docker-archive:{plain}:app:v1")
    run(["gzip", "-k", plain])
    archive = tmp_path / "save.tar.gz"
    data = tmp_path / "data"
    first = preload(data, archive).stdout
    files = {p: p.stat().st_mtime_ns for p in (data / "blobs").rglob("*") if p.is_file()}
    second = preload(data, archive).stdout
    assert reported(first) == reported(second)
    assert "4 blobs (0 new, 0 B; 4 already stored)" in second
    assert {p: p.stat().st_mtime_ns for p in (data / "blobs").rglob("*") if p.is_file()} == files


@pytest.mark.slow
def test_kill9_during_preload_then_rerun(tmp_path: Path) -> None:
    # Enough layers that the import is still running well after the first one is verified.
    image = make_image(tmp_path / "img", [48 * MiB] * 6 + [1000])
    archive = tmp_path / "big.tar"
    skopeo("copy", image, f"docker-archive:{archive}:big:v1")
    data = tmp_path / "node" / "data"
    argv = [*edgecache_argv(), "preload", "--data", str(data), str(archive)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # A verified spool file means at least one layer was fully read, hashed and fsynced.
        first = wait_for(
            lambda: (
                next(iter((data / "tmp").glob("preload-sha256-*")), None)
                if proc.poll() is None
                else pytest.fail("preload finished before it could be killed")
            ),
            timeout=120,
            what="a verified spool file",
        )
        inode = first.stat().st_ino
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    out = preload(data, archive).stdout
    digest = reported(out)["docker.io/library/big:v1"]
    blob = data / "blobs/sha256" / first.name[-64:][:2] / first.name[-64:]
    assert blob.stat().st_ino == inode, "the rerun wrote the verified layer again"
    fsck = run([*[sys.executable, "-m", "edgecache"], "fsck", "--data", data], check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    with EdgecacheServer(tmp_path / "node", config_text=airgapped_config()) as server:
        raw = skopeo("inspect", "--raw", "--tls-verify=false",
                     f"docker://{server.host}/docker.io/library/big:v1")  # fmt: skip
        assert sha256_of(raw.encode()) == digest
        pull_to_layout(server, "docker.io/library/big:v1", tmp_path / "pulled")
    assert sha256_file(blob) == f"sha256:{blob.name}"
