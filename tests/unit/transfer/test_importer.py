"""Preload of synthetic OCI layouts and docker-save archives into a real store."""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from pathlib import Path

import pytest
import zstandard

from edgecache.oci.digest import Digest
from edgecache.store import Store
from edgecache.transfer.errors import TransferError
from edgecache.transfer.importer import preload
from edgecache.transfer.progress import human_bytes
from edgecache.transfer.spool import PARALLEL_MIN

from .archives import (
    config_for,
    digest,
    docker_save,
    layer_tar,
    multiarch_layout,
    oci_layout,
    write,
)
from .helpers import snapshot

LAYERS = [layer_tar(b"a" * 5000, "a"), layer_tar(b"b" * 70000, "b")]


def quiet(data: Path, files: list[Path], **kwargs: object) -> object:
    return preload(data, files, err=io.StringIO(), tty=False, **kwargs)  # type: ignore[arg-type]


def manifest_of(data: Path, repo: str, tag: str) -> tuple[str, bytes]:
    store = Store.open(data)
    try:
        info = store.manifest(repo, tag)
        assert info is not None, f"{repo}:{tag} not in store"
        return str(info.digest), info.path.read_bytes()
    finally:
        store.close()


def test_oci_layout_tar_keeps_manifest_digest_and_normalises_name(tmp_path: Path) -> None:
    entries, digests = oci_layout({"nginx:1.27": LAYERS, "ghcr.io/org/tool:v2": LAYERS[:1]})
    archive = write(tmp_path / "layout.tar", entries.tar())
    summary = quiet(tmp_path / "data", [archive])
    assert [(n, str(d)) for n, d in summary.images] == [  # type: ignore[attr-defined]
        ("docker.io/library/nginx:1.27", digests["nginx:1.27"]),
        ("ghcr.io/org/tool:v2", digests["ghcr.io/org/tool:v2"]),
    ]
    assert (
        manifest_of(tmp_path / "data", "docker.io/library/nginx", "1.27")[0]
        == digests["nginx:1.27"]
    )
    state = snapshot(tmp_path / "data")
    assert state["tmp"] == []
    assert len(state["pinned"]) == state["counts"]["blobs"]  # --pin is the default


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_inputs_are_detected_by_magic(tmp_path: Path, compression: str) -> None:
    entries, digests = oci_layout({"app:v1": LAYERS})
    raw = entries.tar()
    packed = gzip.compress(raw) if compression == "gzip" else zstandard.compress(raw)
    # A misleading name: detection must not trust it.
    archive = write(tmp_path / "image.tar", packed)
    quiet(tmp_path / "data", [archive])
    assert manifest_of(tmp_path / "data", "docker.io/library/app", "v1")[0] == digests["app:v1"]


def test_oci_layout_directory(tmp_path: Path) -> None:
    entries, digests = oci_layout({"v1": LAYERS})
    layout = tmp_path / "layout"
    for name, data in entries.files:
        (layout / name).parent.mkdir(parents=True, exist_ok=True)
        (layout / name).write_bytes(data)
    with pytest.raises(TransferError, match=r"bare tag 'v1'.*--as"):
        quiet(tmp_path / "data", [layout])
    quiet(tmp_path / "data", [layout], rename="team/app:v7")
    assert manifest_of(tmp_path / "data", "team/app", "v7")[0] == digests["v1"]


def test_multiarch_index_is_kept_whole(tmp_path: Path) -> None:
    entries, index_digest, children = multiarch_layout("docker.io/library/multi:1")
    quiet(tmp_path / "data", [write(tmp_path / "m.tar", entries.tar())])
    assert manifest_of(tmp_path / "data", "docker.io/library/multi", "1")[0] == index_digest
    for child in children:
        assert manifest_of(tmp_path / "data", "docker.io/library/multi", child)[0] == child


@pytest.mark.parametrize("legacy_links", [False, True])
@pytest.mark.parametrize("manifest_last", [False, True])
def test_docker_save_becomes_schema2_manifest(
    tmp_path: Path, legacy_links: bool, manifest_last: bool
) -> None:
    entries = docker_save(
        {"nginx:1.27": LAYERS, "localhost/team/app:v1": LAYERS[:1]},
        legacy_links=legacy_links,
        manifest_last=manifest_last,
    )
    summary = quiet(tmp_path / "data", [write(tmp_path / "save.tar", entries.tar())])
    names = [n for n, _ in summary.images]  # type: ignore[attr-defined]
    assert names == ["docker.io/library/nginx:1.27", "localhost/team/app:v1"]
    got_digest, raw = manifest_of(tmp_path / "data", "docker.io/library/nginx", "1.27")
    manifest = json.loads(raw)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    config = config_for(LAYERS)
    assert manifest["config"] == {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": len(config),
        "digest": digest(config),
    }
    # Layers stay uncompressed: their digests are the config's diff_ids.
    assert [layer["digest"] for layer in manifest["layers"]] == [digest(x) for x in LAYERS]
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar"
    }
    assert got_digest == str(Digest.of_bytes(raw))
    # The same archive always gives the same manifest, whatever the node.
    other = quiet(tmp_path / "other", [tmp_path / "save.tar"])
    assert other.images == summary.images  # type: ignore[attr-defined]


def test_docker_save_gzip_layer_keeps_bytes_and_checks_diff_id(tmp_path: Path) -> None:
    entries = docker_save({"app:v1": LAYERS[:1]})
    compressed = gzip.compress(LAYERS[0], mtime=0)
    name = next(n for n, _ in entries.files if n.endswith(".tar"))
    entries.files = [(n, compressed if n == name else d) for n, d in entries.files]
    quiet(tmp_path / "data", [write(tmp_path / "s.tar", entries.tar())])
    _, raw = manifest_of(tmp_path / "data", "docker.io/library/app", "v1")
    layer = json.loads(raw)["layers"][0]
    assert layer["digest"] == digest(compressed)
    assert layer["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"


def test_second_import_writes_nothing(tmp_path: Path) -> None:
    entries, _ = oci_layout({"nginx:1.27": LAYERS})
    archive = write(tmp_path / "a.tar", entries.tar())
    first = quiet(tmp_path / "data", [archive])
    before = snapshot(tmp_path / "data")
    again = quiet(tmp_path / "data", [archive])
    assert snapshot(tmp_path / "data") == before
    assert first.new_blobs == 2 + 1  # type: ignore[attr-defined]
    assert again.new_blobs == 0 and again.skipped == 3  # type: ignore[attr-defined]


def test_resume_reuses_verified_spool_files(tmp_path: Path) -> None:
    """A killed run leaves verified `preload-*` files in tmp/; the rerun does not rewrite them."""
    entries, digests = oci_layout({"nginx:1.27": LAYERS})
    data = tmp_path / "data"
    Store.open(data).close()
    big = LAYERS[1]
    spool = data / "tmp" / f"preload-sha256-{digest(big).split(':')[1]}"
    spool.write_bytes(big)
    inode = spool.stat().st_ino
    summary = quiet(data, [write(tmp_path / "a.tar", entries.tar())])
    assert manifest_of(data, "docker.io/library/nginx", "1.27")[0] == digests["nginx:1.27"]
    store = Store.open(data)
    try:
        assert store.layout.blob_path(Digest.parse(digest(big))).stat().st_ino == inode
    finally:
        store.close()
    assert summary.new_blobs == 3  # type: ignore[attr-defined]
    assert snapshot(data)["tmp"] == []


def test_no_pin(tmp_path: Path) -> None:
    entries, _ = oci_layout({"nginx:1.27": LAYERS})
    quiet(tmp_path / "data", [write(tmp_path / "a.tar", entries.tar())], pin=False)
    assert snapshot(tmp_path / "data")["pinned"] == []


def test_progress_lines_and_summary_when_not_a_terminal(tmp_path: Path) -> None:
    entries, _ = oci_layout({"nginx:1.27": LAYERS})
    err = io.StringIO()
    summary = preload(
        tmp_path / "data", [write(tmp_path / "a.tar", entries.tar())], err=err, tty=False
    )
    assert "\r" not in err.getvalue()
    assert "preload a.tar:" in err.getvalue()
    assert "1 image: 1 manifest, 3 blobs (3 new" in summary.line()


def test_as_needs_a_single_image(tmp_path: Path) -> None:
    entries, _ = oci_layout({"a:1": LAYERS, "b:1": LAYERS})
    with pytest.raises(TransferError, match=r"--as names one image.*2"):
        quiet(tmp_path / "data", [write(tmp_path / "a.tar", entries.tar())], rename="x:1")


def test_not_an_image_archive(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("hello"), io.BytesIO(b""))
    with pytest.raises(TransferError, match="neither an OCI image layout"):
        quiet(tmp_path / "data", [write(tmp_path / "x.tar", buf.getvalue())])


def test_large_entries_of_a_plain_tar_are_spooled_side_by_side(tmp_path: Path) -> None:
    """Entries >= PARALLEL_MIN are read by worker threads while the walk goes on: the result
    and the progress count are those of a one-at-a-time import."""
    big = [layer_tar(random.Random(i).randbytes(PARALLEL_MIN + i), f"f{i}") for i in range(4)]
    entries, digests = oci_layout({"nginx:1.27": big, "other:1": [big[0], LAYERS[0]]})
    archive = write(tmp_path / "a.tar", entries.tar())
    err = io.StringIO()
    summary = preload(tmp_path / "data", [archive], err=err, tty=False)
    assert summary.new_blobs == 4 + 1 + 2  # type: ignore[attr-defined]
    for name, repo, tag in (("nginx:1.27", "docker.io/library/nginx", "1.27"),
                            ("other:1", "docker.io/library/other", "1")):  # fmt: skip
        assert manifest_of(tmp_path / "data", repo, tag)[0] == digests[name]
    store = Store.open(tmp_path / "data")
    try:
        for layer in big:
            info = store.blob("docker.io/library/nginx", Digest.parse(digest(layer)))
            assert info is not None and info.path.read_bytes() == layer
    finally:
        store.close()
    assert snapshot(tmp_path / "data")["tmp"] == []
    # Every byte of the input counted once: the last progress line reports the file's size.
    last = [line for line in err.getvalue().splitlines() if line.startswith("preload a.tar:")][-1]
    assert last.startswith(f"preload a.tar: {human_bytes(archive.stat().st_size)} in "), last
