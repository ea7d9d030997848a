"""Index keys and the content graph: long names, referrer keys, what an index may name."""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecache.oci import errors, mediatypes
from edgecache.oci.digest import Digest
from edgecache.oci.manifest import parse_manifest
from edgecache.store import Store
from edgecache.store.collect import mark, sweep
from edgecache.store.fsck import fsck
from edgecache.store.index import Index
from edgecache.store.keys import MAX_KEY, key
from tests.unit.store.test_store import chunks, image_manifest

LONG_REPO = "/".join(["a" * 63] * 4)  # 255 characters, the longest name a client may send


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


async def push(store: Store, repo: str, data: bytes, tag: str | None, algorithm: str) -> Digest:
    digest = Digest.of_bytes(data, algorithm)
    await store.put_manifest(repo, data, parse_manifest(data, None), digest, tag)
    return digest


def nothing_on_disk(store: Store) -> bool:
    return not any(p.is_file() for p in store.layout.blobs.rglob("*")) and not any(
        store.layout.tmp.iterdir()
    )


async def sha512_referrer(store: Store, repo: str) -> tuple[Digest, Digest]:
    config = b"{}"
    await store.put_blob_stream(repo, Digest.of_bytes(config), chunks(config))
    subject = await push(store, repo, image_manifest(config), "v1", "sha512")
    referrer = await push(store, repo, image_manifest(config, subject=subject), None, "sha512")
    return subject, referrer


async def test_a_sha512_referrer_in_a_255_character_repository_is_stored(store: Store) -> None:
    assert len(LONG_REPO) == 255
    # Its plain key would be 527 bytes, over LMDB's 511.
    assert len(key(LONG_REPO, "sha512:" + "0" * 128, "sha512:" + "0" * 128)) > MAX_KEY
    subject, referrer = await sha512_referrer(store, LONG_REPO)
    assert [d["digest"] for d in store.referrers(LONG_REPO, subject)] == [str(referrer)]
    assert fsck(store.layout, store.index).clean
    # GC follows the referrer from its subject, so it lives as long as the subject is tagged.
    plan = mark(store.index, grace=0.0, delete_untagged=True, is_proxied=lambda _: False)
    assert str(referrer) not in plan.candidates
    assert await store.delete_manifest(LONG_REPO, referrer)
    assert store.referrers(LONG_REPO, subject) == []


async def test_referrers_stored_under_the_old_key_are_still_listed_and_removed(
    store: Store,
) -> None:
    subject, referrer = await sha512_referrer(store, "r")
    # Rewrite the entry as a data directory from before the shortened key holds it.
    with store.index.env.begin(write=True) as txn:
        db = store.index.db["referrers"]
        ((new_key, value),) = list(txn.cursor(db=db))
        assert new_key.endswith(hashlib.sha256(str(referrer).encode()).hexdigest().encode())
        txn.delete(new_key, db=db)
        txn.put(key("r", str(subject), str(referrer)), value, db=db)
    assert [d["digest"] for d in store.referrers("r", subject)] == [str(referrer)]
    plan = mark(store.index, grace=0.0, delete_untagged=True, is_proxied=lambda _: False)
    assert str(referrer) not in plan.candidates
    # Untagging the subject makes both garbage; the sweep removes the old-style entry too.
    await store.delete_tag("r", "v1")
    plan = mark(store.index, grace=0.0, delete_untagged=True, is_proxied=lambda _: False)
    assert {str(subject), str(referrer)} <= plan.candidates.keys()
    sweep(store.index, store.layout, plan, grace=0.0)
    assert store.referrers("r", subject) == []
    assert store.index.counts()["referrers"] == 0


async def test_a_name_too_long_for_the_index_is_refused_before_anything_is_written(
    store: Store,
) -> None:
    # Proxied repositories are stored as "<upstream>/<repo>": longer than a client's 255.
    repo = "upstream.example/" + "b" * 430
    data = b"bytes"
    with pytest.raises(errors.NameInvalid) as info:
        await store.put_blob_stream(repo, Digest.of_bytes(data), chunks(data))
    assert "too long" in info.value.message and str(MAX_KEY) in info.value.message
    assert info.value.status == 400
    with pytest.raises(errors.NameInvalid):
        await store.start_upload(repo)
    with pytest.raises(errors.NameInvalid):  # its links key fits, its tag's does not
        await push(store, "c" * 400, image_manifest(b"{}"), "t" * 128, "sha256")
    referrer = image_manifest(b"{}", subject=Digest.of_bytes(b"s", "sha512"))
    with pytest.raises(errors.NameInvalid):  # its referrer key does not fit
        await push(store, "c" * 320, referrer, None, "sha256")
    assert nothing_on_disk(store)
    assert store.stats()["blobs"] == 0
    assert list(store.layout.uploads.iterdir()) == []


def index_of(store: Store, *children: tuple[str, Digest]) -> bytes:
    """An index of stored content, each child with its stored size (sizes are checked)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": media_type,
                    "digest": str(digest),
                    "size": (store.index.blob(str(digest)) or {"size": 0})["size"],
                }
                for media_type, digest in children
            ],
        }
    ).encode()


async def test_an_index_naming_a_blob_is_refused(store: Store) -> None:
    config = b"{}"
    await store.put_blob_stream("r", Digest.of_bytes(config), chunks(config))
    child = await push(store, "r", image_manifest(config), None, "sha256")
    blob = Digest.of_bytes(b"just a blob")
    await store.put_blob_stream("r", blob, chunks(b"just a blob"))
    bad = index_of(store, (mediatypes.OCI_MANIFEST, child), (mediatypes.OCI_MANIFEST, blob))
    with pytest.raises(errors.ManifestInvalid) as info:
        await push(store, "r", bad, "multi", "sha256")
    assert str(blob) in info.value.message
    assert str(child) not in info.value.message
    assert store.manifest("r", "multi") is None
    assert not store.layout.blob_path(Digest.of_bytes(bad)).exists()
    assert list(store.layout.tmp.iterdir()) == []
    good = index_of(store, (mediatypes.OCI_MANIFEST, child))
    await push(store, "r", good, "multi", "sha256")
    assert store.manifest("r", "multi") is not None


async def test_manifest_bytes_uploaded_as_a_blob_leave_the_manifest_resolvable(
    store: Store,
) -> None:
    config = b"{}"
    await store.put_blob_stream("r", Digest.of_bytes(config), chunks(config))
    data = image_manifest(config)
    digest = await push(store, "r", data, None, "sha256")
    await store.put_blob_stream("r", digest, chunks(data))
    assert store.manifest("r", str(digest)) is not None
    await push(store, "r", index_of(store, (mediatypes.OCI_MANIFEST, digest)), "multi", "sha256")


def test_gc_history_is_bounded_and_a_zero_limit_lists_nothing(tmp_path: Path) -> None:
    index = Index(tmp_path / "index")
    try:
        for started in range(12):
            index.add_gc_run({"started": float(started)}, keep=10)
        runs = index.gc_runs(limit=50)
        assert [r["started"] for r in runs] == [float(s) for s in range(11, 1, -1)]
        assert index.gc_runs(limit=0) == []
    finally:
        index.close()
