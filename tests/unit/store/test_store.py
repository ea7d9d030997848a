"""The store against a real LMDB environment and real files in a temp directory."""

import json
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edgecache.oci import errors, mediatypes
from edgecache.oci.digest import Digest
from edgecache.oci.manifest import parse_manifest
from edgecache.store import Store
from edgecache.store.fsck import fsck


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


def image_manifest(config: bytes, *layers: bytes, subject: Digest | None = None) -> bytes:
    def desc(media_type: str, data: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "digest": str(Digest.of_bytes(data)), "size": len(data)}

    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", x) for x in layers],
    }
    if subject is not None:
        body["subject"] = {"mediaType": mediatypes.OCI_MANIFEST, "digest": str(subject), "size": 1}
    return json.dumps(body).encode()


async def put_manifest(store: Store, repo: str, data: bytes, tag: str | None) -> Digest:
    digest = Digest.of_bytes(data)
    await store.put_manifest(repo, data, parse_manifest(data, None), digest, tag)
    return digest


async def test_blob_is_visible_only_in_its_repository_and_read_only(store: Store) -> None:
    data = os.urandom(300_000)
    digest = Digest.of_bytes(data)
    info = await store.put_blob_stream("a/b", digest, chunks(data[:1000], data[1000:]))
    assert info.size == len(data)
    assert info.path.read_bytes() == data
    assert not info.path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert store.blob("a/b", digest) is not None
    assert store.blob("other", digest) is None
    assert store.stats()["store_bytes"] == len(data)
    assert list(store.layout.tmp.iterdir()) == []


async def test_wrong_digest_stores_nothing(store: Store) -> None:
    claimed = Digest.of_bytes(b"something else")
    with pytest.raises(errors.DigestInvalid) as info:
        await store.put_blob_stream("a", claimed, chunks(b"actual bytes"))
    assert str(Digest.of_bytes(b"actual bytes")) in info.value.message
    assert store.blob("a", claimed) is None
    assert list(store.layout.tmp.iterdir()) == []
    assert list(store.layout.blobs.rglob("*.*")) == []
    assert store.stats()["blobs"] == 0


async def test_same_content_twice_is_stored_once(store: Store) -> None:
    digest = Digest.of_bytes(b"x" * 10)
    await store.put_blob_stream("a", digest, chunks(b"x" * 10))
    await store.put_blob_stream("b", digest, chunks(b"x" * 10))
    assert store.stats()["store_bytes"] == 10
    assert store.blob("b", digest) is not None


async def test_upload_session_survives_a_restart(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    digest = Digest.of_bytes(data)
    first = Store.open(tmp_path / "d")
    upload_id = await first.start_upload("r")
    assert await first.append_upload("r", upload_id, 0, chunks(data[:20_000])) == 20_000
    first.close()

    second = Store.open(tmp_path / "d", sweep=True)
    try:
        assert second.upload_offset("r", upload_id) == 20_000
        with pytest.raises(errors.RangeNotSatisfiable) as info:
            await second.append_upload("r", upload_id, 0, chunks(b"again"))
        assert "20000" in info.value.message
        await second.append_upload("r", upload_id, 20_000, chunks(data[20_000:40_000]))
        blob = await second.finish_upload("r", upload_id, digest, chunks(data[40_000:]))
        assert blob.path.read_bytes() == data
        with pytest.raises(errors.BlobUploadUnknown):
            second.upload_offset("r", upload_id)
        assert list(second.layout.uploads.iterdir()) == []
    finally:
        second.close()


async def test_upload_sessions_are_scoped_to_their_repository(store: Store) -> None:
    upload_id = await store.start_upload("mine")
    with pytest.raises(errors.BlobUploadUnknown):
        store.upload_offset("yours", upload_id)
    await store.cancel_upload("mine", upload_id)
    with pytest.raises(errors.BlobUploadUnknown):
        store.upload_offset("mine", upload_id)


async def test_manifest_needs_its_children_in_the_repository(store: Store) -> None:
    config, layer = b"{}", b"layer"
    data = image_manifest(config, layer)
    await store.put_blob_stream("r", Digest.of_bytes(config), chunks(config))
    with pytest.raises(errors.ManifestBlobUnknown) as info:
        await put_manifest(store, "r", data, "v1")
    assert str(Digest.of_bytes(layer)) in info.value.message
    assert store.manifest("r", "v1") is None
    # Nothing half-written: neither the manifest file nor a tmp leftover.
    assert not store.layout.blob_path(Digest.of_bytes(data)).exists()
    assert list(store.layout.tmp.iterdir()) == []

    await store.put_blob_stream("r", Digest.of_bytes(layer), chunks(layer))
    digest = await put_manifest(store, "r", data, "v1")
    info2 = store.manifest("r", "v1")
    assert info2 is not None and info2.digest == digest
    assert info2.media_type == mediatypes.OCI_MANIFEST
    assert store.tags("r") == ["v1"]


async def test_delete_manifest_removes_its_tags_and_referrer_entry(store: Store) -> None:
    config = b"{}"
    await store.put_blob_stream("r", Digest.of_bytes(config), chunks(config))
    subject = await put_manifest(store, "r", image_manifest(config), "v1")
    await store.delete_tag("r", "nope")
    referrer = await put_manifest(store, "r", image_manifest(config, subject=subject), None)
    assert [d["digest"] for d in store.referrers("r", subject)] == [str(referrer)]
    assert await store.delete_manifest("r", referrer)
    assert store.referrers("r", subject) == []
    assert await store.delete_manifest("r", subject)
    assert store.tags("r") == []
    assert store.manifest("r", str(subject)) is None
    assert not await store.delete_manifest("r", subject)


async def test_mount_needs_the_blob_in_the_source(store: Store) -> None:
    digest = Digest.of_bytes(b"shared")
    assert not await store.mount_blob("dst", "src", digest)
    await store.put_blob_stream("src", digest, chunks(b"shared"))
    assert await store.mount_blob("dst", "src", digest)
    assert store.blob("dst", digest) is not None


async def test_fsck_finds_problems_in_both_directions_and_repairs(store: Store) -> None:
    good, bad = b"good", b"will be corrupted"
    await store.put_blob_stream("r", Digest.of_bytes(good), chunks(good))
    bad_info = await store.put_blob_stream("r", Digest.of_bytes(bad), chunks(bad))
    assert fsck(store.layout, store.index).clean

    os.chmod(bad_info.path, 0o644)
    bad_info.path.write_bytes(b"will be CORRUPTED")  # same size, wrong bytes
    stray = store.layout.blob_path(Digest.of_bytes(b"stray"))
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"stray")
    (store.layout.tmp / "leftover").write_bytes(b"half")

    report = fsck(store.layout, store.index)
    assert len(report.problems) == 3, report.problems
    assert any("does not match its digest" in p for p in report.problems)
    assert any("has no index entry" in p for p in report.problems)

    repaired = fsck(store.layout, store.index, repair=True)
    assert len(repaired.repaired) == 3
    assert fsck(store.layout, store.index).clean
    assert store.blob("r", Digest.of_bytes(bad)) is None
    assert store.blob("r", Digest.of_bytes(good)) is not None
    assert store.stats()["store_bytes"] == len(good)
