"""Mark and sweep against a real LMDB store."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecache.oci.digest import Digest
from edgecache.store import Store
from edgecache.store.collect import mark, sweep
from edgecache.store.fsck import fsck
from tests.unit.store.test_store import chunks, image_manifest, put_manifest


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


def never_proxied(repo: str) -> bool:
    return False


async def push_image(store: Store, repo: str, tag: str | None, *layers: bytes) -> Digest:
    config = json.dumps({"layers": len(layers), "tag": tag}).encode()
    for blob in (config, *layers):
        await store.put_blob_stream(repo, Digest.of_bytes(blob), chunks(blob))
    return await put_manifest(store, repo, image_manifest(config, *layers), tag)


def collect(store: Store, **options: object) -> tuple[dict[str, object], dict[str, int]]:
    args = {"grace": 0.0, "delete_untagged": True, "is_proxied": never_proxied, **options}
    plan = mark(store.index, **args)  # type: ignore[arg-type]
    summary = plan.summary()
    result = sweep(store.index, store.layout, plan, grace=0.0)
    return summary, result.deleted


async def test_tagged_images_survive_and_untagged_ones_go(store: Store) -> None:
    shared, only_old = b"shared layer", b"old layer"
    await push_image(store, "r", "keep", shared)
    old = await push_image(store, "r", "old", shared, only_old)
    await store.delete_tag("r", "old")
    summary, deleted = collect(store)
    assert str(old) in deleted
    assert str(Digest.of_bytes(only_old)) in deleted
    assert str(Digest.of_bytes(shared)) not in deleted
    assert summary["candidates"] == len(deleted)
    assert summary["bytes"] == sum(deleted.values())
    assert store.manifest("r", "keep") is not None
    assert store.manifest("r", str(old)) is None
    assert not store.layout.blob_path(Digest.of_bytes(only_old)).exists()
    assert fsck(store.layout, store.index).clean
    assert store.stats()["store_bytes"] == sum(
        p.stat().st_size for p in store.layout.blobs.rglob("*") if p.is_file()
    )


async def test_untagged_manifests_stay_unless_asked(store: Store) -> None:
    old = await push_image(store, "r", "t", b"layer")
    await store.delete_tag("r", "t")
    _, deleted = collect(store, delete_untagged=False)
    assert deleted == {}
    await store.delete_manifest("r", old)  # unlinked from every repository: garbage
    _, deleted = collect(store, delete_untagged=False)
    assert str(old) in deleted


async def test_proxied_content_is_not_collected_for_being_untagged(store: Store) -> None:
    digest = await push_image(store, "docker.io/library/x", None, b"layer")
    _, deleted = collect(store, is_proxied=lambda repo: repo.startswith("docker.io/"))
    assert deleted == {}
    assert store.manifest("docker.io/library/x", str(digest)) is not None


async def test_referrers_follow_their_subject(store: Store) -> None:
    subject = await push_image(store, "r", "v1", b"layer")
    config = b"{}"
    await store.put_blob_stream("r", Digest.of_bytes(config), chunks(config))
    signature = await put_manifest(store, "r", image_manifest(config, subject=subject), None)
    _, deleted = collect(store)
    assert deleted == {}
    await store.delete_tag("r", "v1")
    _, deleted = collect(store)
    assert {str(subject), str(signature)} <= set(deleted)
    assert store.referrers("r", subject) == []


async def test_pinned_and_young_content_survives(store: Store) -> None:
    pinned = b"pinned"
    await store.put_blob_stream("p", Digest.of_bytes(pinned), chunks(pinned), pin=True)
    loose = b"uploaded, no manifest yet"
    await store.put_blob_stream("p", Digest.of_bytes(loose), chunks(loose))
    plan = mark(store.index, grace=3600, delete_untagged=True, is_proxied=never_proxied)
    assert plan.candidates == {}
    _, deleted = collect(store)
    assert list(deleted) == [str(Digest.of_bytes(loose))]


async def test_what_only_the_grace_window_keeps_is_counted(store: Store) -> None:
    """A new operator deletes an image and collects: nothing goes, and the plan says why."""
    layer, kept = b"layer of a deleted image", b"layer of a tagged image"
    await push_image(store, "r", "keep", kept)
    deleted = await push_image(store, "r", "old", layer)
    await store.delete_manifest("r", deleted)
    plan = mark(store.index, grace=3600, delete_untagged=True, is_proxied=never_proxied, now=1e10)
    assert len(plan.candidates) == 3 and plan.young == {}  # all older than 1e10 - 1h
    now = store.index.blob(str(Digest.of_bytes(layer)))["created"] + 1  # type: ignore[index]
    plan = mark(store.index, grace=3600, delete_untagged=True, is_proxied=never_proxied, now=now)
    assert list(plan.candidates) == [str(deleted)]  # unlinked: deleted on purpose, no grace
    # The deleted image's layer and config; not the tagged image's content (kept anyway).
    assert str(Digest.of_bytes(layer)) in plan.young
    assert str(Digest.of_bytes(kept)) not in plan.young
    assert len(plan.young) == 2
    kept_young = plan.summary()["kept_young"]
    assert kept_young["objects"] == 2 and kept_young["bytes"] == sum(plan.young.values())
    assert now - 1 + 3600 <= kept_young["until"] <= now + 3600


async def test_content_referenced_after_the_mark_is_spared(store: Store) -> None:
    layer = b"reused by a push racing the sweep"
    old = await push_image(store, "r", "old", layer)
    await store.delete_tag("r", "old")
    plan = mark(store.index, grace=0.0, delete_untagged=True, is_proxied=never_proxied)
    assert str(Digest.of_bytes(layer)) in plan.candidates
    # A new image reusing the layer is pushed between mark and sweep.
    await store.put_blob_stream("r2", Digest.of_bytes(layer), chunks(layer))
    await push_image(store, "r2", "new", layer)
    result = sweep(store.index, store.layout, plan, grace=0.0)
    assert str(old) in result.deleted
    assert result.skipped[str(Digest.of_bytes(layer))] == "referenced since the mark began"
    assert store.blob("r2", Digest.of_bytes(layer)) is not None
    assert store.layout.blob_path(Digest.of_bytes(layer)).exists()
    assert fsck(store.layout, store.index).clean


async def test_dry_run_equals_real_run(store: Store) -> None:
    for i in range(5):
        await push_image(store, f"repo{i % 2}", f"t{i}", f"layer {i}".encode(), b"common")
    for i in range(0, 5, 2):
        await store.delete_tag(f"repo{i % 2}", f"t{i}")
    dry = mark(store.index, grace=0.0, delete_untagged=True, is_proxied=never_proxied)
    summary = dry.summary()
    result = sweep(store.index, store.layout, dry, grace=0.0)
    assert set(result.deleted) == set(dry.candidates)
    assert summary["bytes"] == result.freed_bytes
    by_repo = summary["by_repository"]
    assert isinstance(by_repo, dict) and set(by_repo) == {"repo0"}


async def test_mark_in_a_child_process_equals_the_mark_in_this_one(store: Store) -> None:
    """The server marks in `edgecache _gc-mark` (gc/markchild.py): same plan, other process."""
    import time

    from edgecache.cache.routing import resolve
    from edgecache.config import load
    from edgecache.gc.markchild import MarkJob, mark_in_child

    await push_image(store, "r", "keep", b"shared")
    gone = await push_image(store, "r", "old", b"shared", b"only old")
    await store.delete_tag("r", "old")
    await push_image(store, "docker.io/library/x", None, b"proxied")  # proxied: a root
    config = load(None, env={}, overrides={"gc": {"grace": 0.0, "delete_untagged": True}})
    now = time.time()
    job = MarkJob(str(store.layout.root), config, frozenset({"sha256:" + "0" * 64}), now)
    plan, summary = await mark_in_child(job)
    here = mark(
        store.index,
        grace=0.0,
        delete_untagged=True,
        is_proxied=lambda repo: resolve(config, repo, None).proxied,
        in_flight=job.in_flight,
        now=now,
    )
    assert plan == here and summary == here.summary()
    assert str(gone) in plan.candidates and str(Digest.of_bytes(b"only old")) in plan.candidates
    assert str(Digest.of_bytes(b"proxied")) not in plan.candidates


async def test_sweep_stops_between_batches_when_told(store: Store) -> None:
    for n in range(3):
        await push_image(store, "r", f"t{n}", f"layer {n}".encode())
        await store.delete_tag("r", f"t{n}")
    plan = mark(store.index, grace=0.0, delete_untagged=True, is_proxied=never_proxied)
    answers = iter([False, False, True])
    result = sweep(store.index, store.layout, plan, grace=0.0, batch=2, stop=lambda: next(answers))
    assert len(result.deleted) == 4 and result.stopped == 5 and result.skipped == {}
    for digest in set(plan.candidates) - set(result.deleted):
        assert store.index.blob(digest) is not None  # left exactly as it was
    assert fsck(store.layout, store.index).clean


async def test_declared_sizes_go_with_what_declared_them(store: Store) -> None:
    """The proxy remembers each child's declared size; nothing keeps that table growing."""
    stored, never_pulled = b"pulled layer", b"layer never pulled"
    digest = await push_image(store, "r", "t", stored)
    store.index.declare_sizes(
        {str(Digest.of_bytes(stored)): len(stored), str(Digest.of_bytes(never_pulled)): 18}
    )
    manifest = store.index.manifest(str(digest))
    assert manifest is not None
    manifest["blobs"].append(str(Digest.of_bytes(never_pulled)))  # as a proxied one may
    with store.index.env.begin(write=True) as txn:
        txn.put(str(digest).encode(), json.dumps(manifest).encode(), db=store.index.db["manifests"])
    await store.delete_manifest("r", digest)
    _, deleted = collect(store)
    assert str(digest) in deleted and str(Digest.of_bytes(stored)) in deleted
    assert store.index.declared_size(str(Digest.of_bytes(stored))) is None
    assert store.index.declared_size(str(Digest.of_bytes(never_pulled))) is None
