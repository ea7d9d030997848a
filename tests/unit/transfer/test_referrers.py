"""Referrers (signatures, SBOMs, scan reports) through export and preload, on real stores.

Layouts are built here in Python (archives.py); the integration tests use real servers.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import trio

from edgecache.oci.digest import Digest
from edgecache.oci.manifest import parse_manifest
from edgecache.store import Store
from edgecache.transfer import export as export_module
from edgecache.transfer import oci_layout as layout_module
from edgecache.transfer.errors import TransferError
from edgecache.transfer.export import ExportSummary, export
from edgecache.transfer.importer import Summary, preload

from .archives import Entries, digest, layer_tar, multiarch_layout, oci_layout, write
from .helpers import snapshot

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
REPORT = "application/vnd.edgecache.vulnerability.report.v1+json"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
REPO = "docker.io/library/app"
LAYERS = [layer_tar(b"a" * 5000, "a"), layer_tar(b"b" * 7000, "b")]


def artifact(subject: tuple[str, int], artifact_type: str, *payloads: bytes) -> bytes:
    """An OCI 1.1 artifact manifest as scan/service.py and cosign write them."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY, "digest": digest(b"{}"), "size": 2},
            "layers": [
                {"mediaType": "application/json", "digest": digest(p), "size": len(p)}
                for p in payloads
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": subject[1]},
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
        },
        separators=(",", ":"),
    ).encode()


def blob_of(entries: Entries, wanted: str) -> bytes:
    return next(data for name, data in entries.files if name == f"blobs/sha256/{wanted[7:]}")


def add(entries: Entries, manifest: bytes, *payloads: bytes, listed: bool = True) -> str:
    """Put a referrer and its blobs into a layout; list it in index.json as oras does."""
    for blob in (b"{}", manifest, *payloads):
        name = f"blobs/sha256/{digest(blob)[7:]}"
        if all(n != name for n, _ in entries.files):
            entries.add(name, blob)
    if listed:
        at = next(i for i, (n, _) in enumerate(entries.files) if n == "index.json")
        index = json.loads(entries.files[at][1])
        index["manifests"].append(
            {"mediaType": OCI_MANIFEST, "digest": digest(manifest), "size": len(manifest)}
        )
        entries.files[at] = ("index.json", json.dumps(index).encode())
    return digest(manifest)


def quiet(data: Path, files: list[Path], **kwargs: object) -> Summary:
    return preload(data, files, err=io.StringIO(), tty=False, **kwargs)  # type: ignore[arg-type]


def quiet_export(data: Path, refs: list[str], out: Path, fmt: str = "oci") -> ExportSummary:
    return export(data, refs, out, fmt=fmt, err=io.StringIO(), tty=False)


def referrers(data: Path, repo: str, subject: str) -> list[str]:
    store = Store.open(data)
    try:
        return sorted(d["digest"] for d in store.referrers(repo, Digest.parse(subject)))
    finally:
        store.close()


def tar_index(path: Path) -> list[dict[str, object]]:
    with tarfile.open(path) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        return list(json.loads(member.read())["manifests"])


def tar_names(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return set(tar.getnames())


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Entries, str, str, str]:
    """app:v1 with a scan report and a signature of that report, both listed."""
    entries, digests = oci_layout({"app:v1": LAYERS})
    image = digests["app:v1"]
    subject = (image, len(blob_of(entries, image)))
    report = artifact(subject, REPORT, b'{"vulnerabilities":[]}')
    report_digest = add(entries, report, b'{"vulnerabilities":[]}')
    signature = artifact((report_digest, len(report)), SIGNATURE, b"sig")
    signature_digest = add(entries, signature, b"sig")
    return entries, image, report_digest, signature_digest


def test_preload_stores_listed_referrers_untagged(
    tmp_path: Path, signed: tuple[Entries, str, str, str]
) -> None:
    entries, image, report, signature = signed
    summary = quiet(tmp_path / "data", [write(tmp_path / "l.tar", entries.tar())])
    assert [(n, str(d)) for n, d in summary.images] == [(f"{REPO}:v1", image)]
    assert "1 image: 1 manifest, 6 blobs, 2 referrers (" in summary.line()
    assert referrers(tmp_path / "data", REPO, image) == [report]
    assert referrers(tmp_path / "data", REPO, report) == [signature]
    assert snapshot(tmp_path / "data")["tags"] == {REPO: {"v1": image}}
    # A second run writes nothing and counts the same.
    before = snapshot(tmp_path / "data")
    again = quiet(tmp_path / "data", [tmp_path / "l.tar"])
    assert snapshot(tmp_path / "data") == before
    assert again.line().startswith("1 image: 1 manifest, 6 blobs, 2 referrers (0 new")


def test_export_carries_referrers_and_preload_restores_them(
    tmp_path: Path, signed: tuple[Entries, str, str, str]
) -> None:
    entries, image, report, signature = signed
    quiet(tmp_path / "a", [write(tmp_path / "l.tar", entries.tar())])
    out = tmp_path / "export.tar"
    summary = quiet_export(tmp_path / "a", ["app:v1"], out)
    assert summary.line().startswith("1 image: 1 manifest, 6 blobs, 2 referrers (")
    assert summary.left_out == 0 and summary.incomplete == {}
    index = tar_index(out)
    assert [d["digest"] for d in index] == [image, report, signature]
    assert "annotations" in index[0]
    for desc in index[1:]:  # plain descriptors: never taken for a tagged image
        assert set(desc) == {"mediaType", "digest", "size", "artifactType"}
    assert [d["artifactType"] for d in index[1:]] == [REPORT, SIGNATURE]
    assert {f"blobs/sha256/{d[7:]}" for d in (report, signature, digest(b"sig"))} <= tar_names(out)
    restored = quiet(tmp_path / "b", [out])
    assert "2 referrers" in restored.line()
    assert referrers(tmp_path / "b", REPO, image) == [report]
    assert referrers(tmp_path / "b", REPO, report) == [signature]
    assert snapshot(tmp_path / "b")["tags"] == {REPO: {"v1": image}}
    # Exported again from the second store: the same bytes.
    again = tmp_path / "again.tar"
    quiet_export(tmp_path / "b", ["app:v1"], again)
    assert again.read_bytes() == out.read_bytes()


def test_docker_format_leaves_referrers_out_and_counts_them(
    tmp_path: Path, signed: tuple[Entries, str, str, str]
) -> None:
    entries, image, report, _ = signed
    quiet(tmp_path / "a", [write(tmp_path / "l.tar", entries.tar())])
    out = tmp_path / "docker.tar"
    summary = quiet_export(tmp_path / "a", ["app:v1"], out, fmt="docker")
    assert summary.left_out == 2 and summary.referrers == 0
    assert "referrer" not in summary.line()
    assert [d["digest"] for d in tar_index(out)] == [image]
    assert f"blobs/sha256/{report[7:]}" not in tar_names(out)


def test_export_without_referrers_is_unchanged(tmp_path: Path) -> None:
    entries, digests = oci_layout({"app:v1": LAYERS})
    quiet(tmp_path / "a", [write(tmp_path / "l.tar", entries.tar())])
    out = tmp_path / "export.tar"
    summary = quiet_export(tmp_path / "a", ["app:v1"], out)
    assert summary.line().startswith("1 image: 1 manifest, 3 blobs (")
    assert [d["digest"] for d in tar_index(out)] == [digests["app:v1"]]
    assert len(tar_names(out)) == 2 + 4


def test_referrers_of_platform_manifests_travel(tmp_path: Path) -> None:
    entries, index_digest, children = multiarch_layout("multi:1")
    arm = children[1]
    signature = artifact((arm, len(blob_of(entries, arm))), SIGNATURE, b"arm sig")
    signature_digest = add(entries, signature, b"arm sig")
    quiet(tmp_path / "a", [write(tmp_path / "m.tar", entries.tar())])
    repo = "docker.io/library/multi"
    assert referrers(tmp_path / "a", repo, arm) == [signature_digest]
    out = tmp_path / "export.tar"
    assert quiet_export(tmp_path / "a", ["multi:1"], out).referrers == 1
    quiet(tmp_path / "b", [out])
    assert referrers(tmp_path / "b", repo, arm) == [signature_digest]
    assert referrers(tmp_path / "b", repo, index_digest) == []


def test_unlisted_referrers_are_found_among_the_blobs(
    tmp_path: Path,
) -> None:
    """cosign v3 `save` names only the image in index.json; its signature is a stray blob."""
    entries, digests = oci_layout({"app:v1": LAYERS})
    image = digests["app:v1"]
    signature = artifact((image, len(blob_of(entries, image))), SIGNATURE, b"sig")
    signature_digest = add(entries, signature, b"sig", listed=False)
    # A stray manifest whose layer is missing, and one of something else: both left alone.
    broken = artifact((image, len(blob_of(entries, image))), SIGNATURE, b"not in the layout")
    add(entries, broken, listed=False)
    other = artifact((digest(b"elsewhere"), 9), SIGNATURE, b"sig")
    add(entries, other, listed=False)
    summary = quiet(tmp_path / "data", [write(tmp_path / "l.tar", entries.tar())])
    assert len(summary.referrers) == 1
    assert referrers(tmp_path / "data", REPO, image) == [signature_digest]


def test_referrer_of_content_already_in_the_repository(tmp_path: Path) -> None:
    """An input may leave out a subject the target repository already holds."""
    first, digests = oci_layout({"app:v1": LAYERS})
    quiet(tmp_path / "data", [write(tmp_path / "1.tar", first.tar())])
    old = digests["app:v1"]
    second, _ = oci_layout({"app:v2": LAYERS[:1]})
    signature = artifact((old, len(blob_of(first, old))), SIGNATURE, b"late signature")
    signature_digest = add(second, signature, b"late signature")
    quiet(tmp_path / "data", [write(tmp_path / "2.tar", second.tar())])
    assert referrers(tmp_path / "data", REPO, old) == [signature_digest]


def test_referrer_of_nothing_known_is_refused_before_anything_is_published(
    tmp_path: Path,
) -> None:
    entries, _ = oci_layout({"app:v1": LAYERS})
    orphan = artifact((digest(b"nowhere"), 7), SIGNATURE, b"sig")
    add(entries, orphan, b"sig")
    data = tmp_path / "data"
    Store.open(data).close()
    before = snapshot(data)
    with pytest.raises(TransferError, match=r"index.json manifests\[1\]: a referrer of sha256:.*"
                       r"neither in the input nor in docker.io/library/app: refused"):  # fmt: skip
        quiet(data, [write(tmp_path / "l.tar", entries.tar())])
    assert snapshot(data) == before


def test_incomplete_listed_referrer_is_refused(tmp_path: Path) -> None:
    entries, digests = oci_layout({"app:v1": LAYERS})
    image = digests["app:v1"]
    signature = artifact((image, len(blob_of(entries, image))), SIGNATURE, b"lost")
    add(entries, signature)  # its layer is not in the layout
    data = tmp_path / "data"
    with pytest.raises(TransferError, match=r"manifests\[1\] -> blob 1 names sha256:.*neither"):
        quiet(data, [write(tmp_path / "l.tar", entries.tar())])
    assert snapshot(data)["tags"] == {}


def test_only_referrers_is_not_an_image(tmp_path: Path) -> None:
    entries, digests = oci_layout({"app:v1": LAYERS})
    image = digests["app:v1"]
    signature = artifact((image, len(blob_of(entries, image))), SIGNATURE, b"sig")
    add(entries, signature, b"sig")
    at = next(i for i, (n, _) in enumerate(entries.files) if n == "index.json")
    index = json.loads(entries.files[at][1])
    index["manifests"] = index["manifests"][1:]
    entries.files[at] = ("index.json", json.dumps(index).encode())
    archive = write(tmp_path / "l.tar", entries.tar())
    with pytest.raises(TransferError, match="lists no images, only 1 referrer"):
        quiet(tmp_path / "data", [archive])
    # One referrer exported by digest is an image when --as names it.
    quiet(tmp_path / "data", [archive], rename="team/sig:v1")
    assert snapshot(tmp_path / "data")["tags"] == {"team/sig": {"v1": digest(signature)}}


def test_as_counts_images_not_referrers(
    tmp_path: Path, signed: tuple[Entries, str, str, str]
) -> None:
    entries, image, report, _ = signed
    quiet(tmp_path / "data", [write(tmp_path / "l.tar", entries.tar())], rename="team/x:1")
    assert referrers(tmp_path / "data", "team/x", image) == [report]


def test_limits(
    tmp_path: Path, signed: tuple[Entries, str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    entries, *_ = signed
    archive = write(tmp_path / "l.tar", entries.tar())
    quiet(tmp_path / "a", [archive])
    monkeypatch.setattr(layout_module, "MAX_REFERRERS", 1)
    monkeypatch.setattr(export_module, "MAX_REFERRERS", 1)
    with pytest.raises(TransferError, match=r"more than 1 referrers .* the limit of one import"):
        quiet(tmp_path / "b", [archive])
    out = tmp_path / "x.tar"
    with pytest.raises(TransferError, match=r"app:v1: more than 1 referrers .* one export"):
        quiet_export(tmp_path / "a", ["app:v1"], out)
    assert not out.exists() and not (tmp_path / "x.tar.part").exists()


def test_referrer_the_store_lacks_part_of_is_left_out(tmp_path: Path) -> None:
    """A proxied signature cached without its layer: the image still exports, minus it."""
    entries, digests = oci_layout({"app:v1": LAYERS})
    image = digests["app:v1"]
    quiet(tmp_path / "a", [write(tmp_path / "l.tar", entries.tar())])
    signature = artifact((image, len(blob_of(entries, image))), SIGNATURE, b"never pulled")
    store = Store.open(tmp_path / "a")
    try:
        put = store.put_manifest(
            REPO,
            signature,
            parse_manifest(signature, OCI_MANIFEST),
            Digest.of_bytes(signature),
            None,
            require_children=False,
        )
        trio.run(lambda: put)
    finally:
        store.close()
    out = tmp_path / "x.tar"
    summary = quiet_export(tmp_path / "a", ["app:v1"], out)
    assert summary.referrers == 0
    assert list(summary.incomplete) == [Digest.of_bytes(signature)]
    assert "is not in docker.io/library/app" in summary.incomplete[Digest.of_bytes(signature)]
    assert [d["digest"] for d in tar_index(out)] == [image]


@pytest.mark.parametrize("inner_listed", [False, True])
def test_referrer_that_is_an_index_travels_whole(tmp_path: Path, inner_listed: bool) -> None:
    """An index with a subject (attestations per platform): its manifests come along first."""
    entries, digests = oci_layout({"app:v1": LAYERS})
    image = digests["app:v1"]
    subject = (image, len(blob_of(entries, image)))
    inner = artifact(subject, SIGNATURE, b"inner")
    add(entries, inner, b"inner", listed=inner_listed)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "artifactType": "application/vnd.example.bundle",
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest(inner), "size": len(inner)}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": image, "size": subject[1]},
        }
    ).encode()
    entries.add(f"blobs/sha256/{digest(index)[7:]}", index)
    at = next(i for i, (n, _) in enumerate(entries.files) if n == "index.json")
    top = json.loads(entries.files[at][1])
    top["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest(index),
            "size": len(index),
        }
    )
    entries.files[at] = ("index.json", json.dumps(top).encode())
    summary = quiet(tmp_path / "a", [write(tmp_path / "l.tar", entries.tar())])
    # The inner manifest is a referrer of the image too, but travels as the index's manifest.
    assert referrers(tmp_path / "a", REPO, image) == sorted([digest(index), digest(inner)])
    assert "2 manifests" in summary.line() and "1 referrer" in summary.line()
    out = tmp_path / "x.tar"
    exported = quiet_export(tmp_path / "a", ["app:v1"], out)
    assert (exported.manifests, exported.referrers) == (2, 1)
    assert [d["digest"] for d in tar_index(out)] == [image, digest(index)]
    quiet(tmp_path / "b", [out])
    assert referrers(tmp_path / "b", REPO, image) == sorted([digest(index), digest(inner)])
