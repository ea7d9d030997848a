"""Hostile and broken archives: refused with a precise error, the store left unchanged."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from edgecache.transfer.archive import Limits
from edgecache.transfer.errors import TransferError
from edgecache.transfer.importer import preload
from edgecache.transfer.spool import PARALLEL_MIN

from .archives import Entries, digest, docker_save, layer_tar, oci_layout, write
from .helpers import snapshot

LAYERS = [layer_tar(b"x" * 300_000, "x"), layer_tar(b"y" * 1000, "y")]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A store that already holds one image, so that "unchanged" means something."""
    entries, _ = oci_layout({"existing:1": [layer_tar(b"old")]})
    preload(tmp_path / "data", [write(tmp_path / "seed.tar", entries.tar())], err=io.StringIO())
    return tmp_path / "data"


def refused(data: Path, archive: Path, match: str, limits: Limits | None = None) -> None:
    before = snapshot(data)
    with pytest.raises(TransferError, match=match):
        preload(data, [archive], err=io.StringIO(), tty=False, limits=limits)
    assert snapshot(data) == before


def with_special(info: tarfile.TarInfo) -> Entries:
    entries, _ = oci_layout({"app:v1": LAYERS})
    entries.specials.append(info)
    return entries


def test_dotdot_path(data: Path, tmp_path: Path) -> None:
    entries, _ = oci_layout({"app:v1": LAYERS})
    entries.add("blobs/../../escape", b"boom")
    refused(
        data, write(tmp_path / "a.tar", entries.tar()), r"'blobs/\.\./\.\./escape' contains '\.\.'"
    )


def test_absolute_path(data: Path, tmp_path: Path) -> None:
    entries, _ = oci_layout({"app:v1": LAYERS})
    entries.add("/etc/evil", b"boom")
    refused(data, write(tmp_path / "a.tar", entries.tar()), "'/etc/evil' has an absolute path")


def test_symlink_outside(data: Path, tmp_path: Path) -> None:
    link = tarfile.TarInfo("blobs/sha256/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    refused(data, write(tmp_path / "a.tar", with_special(link).tar()), "symlink .* points outside")


def test_absolute_symlink(data: Path, tmp_path: Path) -> None:
    link = tarfile.TarInfo("layer.tar")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    refused(data, write(tmp_path / "a.tar", with_special(link).tar()), "absolute target")


def test_hardlink_outside(data: Path, tmp_path: Path) -> None:
    link = tarfile.TarInfo("hard")
    link.type, link.linkname = tarfile.LNKTYPE, "../outside"
    refused(data, write(tmp_path / "a.tar", with_special(link).tar()), "hardlink .* points outside")


@pytest.mark.parametrize(
    ("kind", "words"),
    [(tarfile.CHRTYPE, "a character device"), (tarfile.BLKTYPE, "a block device"),
     (tarfile.FIFOTYPE, "a fifo")],
)  # fmt: skip
def test_device_files(data: Path, tmp_path: Path, kind: bytes, words: str) -> None:
    dev = tarfile.TarInfo("dev/node")
    dev.type = kind
    refused(data, write(tmp_path / "a.tar", with_special(dev).tar()), f"'dev/node' is {words}")


def test_blob_bytes_do_not_match_digest(data: Path, tmp_path: Path) -> None:
    entries, _ = oci_layout({"app:v1": LAYERS})
    name = f"blobs/sha256/{digest(LAYERS[0]).split(':')[1]}"
    entries.files = [(n, b"tampered" + d[8:] if n == name else d) for n, d in entries.files]
    refused(data, write(tmp_path / "a.tar", entries.tar()), f"'{name}' has content with digest")


def test_docker_layer_does_not_match_diff_id(data: Path, tmp_path: Path) -> None:
    entries = docker_save({"app:v1": LAYERS})
    # Renamed so that its name promises nothing: only the config's diff_id can catch it.
    entries.files = [
        ("layer0/layer.tar", layer_tar(b"other"))
        if n.endswith(".tar") and d == LAYERS[0]
        else (n, d)
        for n, d in entries.files
    ]
    manifest = json.loads(dict(entries.files)["manifest.json"])
    manifest[0]["Layers"][0] = "layer0/layer.tar"
    entries.files = [
        (n, json.dumps(manifest).encode() if n == "manifest.json" else d) for n, d in entries.files
    ]
    refused(data, write(tmp_path / "a.tar", entries.tar()), "but the config's diff_id is")


def test_manifest_names_missing_blob(data: Path, tmp_path: Path) -> None:
    entries, _ = oci_layout({"app:v1": LAYERS})
    name = f"blobs/sha256/{digest(LAYERS[1]).split(':')[1]}"
    entries.files = [(n, d) for n, d in entries.files if n != name]
    refused(
        data,
        write(tmp_path / "a.tar", entries.tar()),
        f"names {digest(LAYERS[1])} .*neither in the layout nor in the store",
    )


def test_docker_save_names_missing_layer(data: Path, tmp_path: Path) -> None:
    entries = docker_save({"app:v1": LAYERS})
    entries.files = [(n, d) for n, d in entries.files if d != LAYERS[1]]
    refused(data, write(tmp_path / "a.tar", entries.tar()), r"Layers\[1\] .* is not in the archive")


def test_truncated_plain_tar(data: Path, tmp_path: Path) -> None:
    entries, _ = oci_layout({"app:v1": LAYERS})
    raw = entries.tar()
    big = raw.index(b"x" * 1000)
    refused(data, write(tmp_path / "a.tar", raw[: big + 100_000]), "truncated")


def test_truncated_gzip(data: Path, tmp_path: Path) -> None:
    entries, _ = oci_layout({"app:v1": LAYERS})
    packed = gzip.compress(entries.tar())
    refused(data, write(tmp_path / "a.tar.gz", packed[: len(packed) // 2]), "truncated")


def test_gzip_bomb(data: Path, tmp_path: Path) -> None:
    entries, _ = oci_layout({"app:v1": [layer_tar(bytes(8 << 20), "zeros")]})
    packed = gzip.compress(entries.tar(), compresslevel=9)
    refused(
        data,
        write(tmp_path / "bomb.tar.gz", packed),
        "expands without bound",
        Limits(max_ratio=10, ratio_floor=1 << 20),
    )


def test_too_many_entries(data: Path, tmp_path: Path) -> None:
    entries, _ = oci_layout({"app:v1": LAYERS})
    for i in range(50):
        entries.add(f"junk/{i}", b"")
    refused(data, write(tmp_path / "a.tar", entries.tar()), "more than 20 entries",
            Limits(max_entries=20))  # fmt: skip


def test_not_a_tar(data: Path, tmp_path: Path) -> None:
    refused(data, write(tmp_path / "a.tar", b"\0" * 4096 + b"hello"), "not a tar archive")


def test_xz_is_named(data: Path, tmp_path: Path) -> None:
    refused(data, write(tmp_path / "a.tar", b"\xfd7zXZ\x00" + b"\0" * 600), "xz-compressed")


def test_layout_directory_symlink_outside(data: Path, tmp_path: Path) -> None:
    entries, _ = oci_layout({"app:v1": LAYERS})
    layout = tmp_path / "layout"
    for name, blob in entries.files:
        (layout / name).parent.mkdir(parents=True, exist_ok=True)
        (layout / name).write_bytes(blob)
    (tmp_path / "secret").write_bytes(b"secret")
    (layout / "blobs" / "sha256" / "evil").symlink_to(tmp_path / "secret")
    refused(data, layout, "symlink 'blobs/sha256/evil' .* points outside the layout")


def test_wrong_bytes_in_a_large_entry_read_by_a_worker(data: Path, tmp_path: Path) -> None:
    big = [layer_tar(bytes([i]) * PARALLEL_MIN, f"f{i}") for i in range(3)]
    entries, _ = oci_layout({"app:v1": big})
    name = f"blobs/sha256/{digest(big[1]).split(':')[1]}"
    forged = big[2][:-1] + b"!"
    entries.files = [(n, forged if n == name else d) for n, d in entries.files]
    refused(data, write(tmp_path / "a.tar", entries.tar()), f"entry '{name}' has content with")


def test_truncated_inside_a_large_entry(data: Path, tmp_path: Path) -> None:
    big = [layer_tar(bytes([i]) * PARALLEL_MIN, f"f{i}") for i in range(3)]
    entries, _ = oci_layout({"app:v1": big})
    raw = entries.tar()
    cut = raw.index(big[1]) + len(big[1]) // 2
    refused(data, write(tmp_path / "a.tar", raw[:cut]), "truncated")
