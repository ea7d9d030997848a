"""Which images eviction picks, against a real LMDB store."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecache.config import EvictionConfig
from edgecache.gc.evict import DAY, bytes_to_free, choose_evictions
from edgecache.oci.digest import Digest
from edgecache.oci.manifest import parse_manifest
from edgecache.store import Store
from tests.unit.store.test_store import chunks, image_manifest

MiB = 1 << 20


def proxied(repo: str) -> bool:
    return repo.startswith("docker.io/")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


async def add_image(store: Store, repo: str, size: int, *, pin: bool = False) -> str:
    layer = repo.encode() * (size // len(repo))
    config = json.dumps({"repo": repo}).encode()
    for blob in (config, layer):
        await store.put_blob_stream(repo, Digest.of_bytes(blob), chunks(blob), pin=pin)
    data = image_manifest(config, layer)
    digest = Digest.of_bytes(data)
    await store.put_manifest(
        repo,
        data,
        parse_manifest(data, None),
        digest,
        "v1",
        require_children=not proxied(repo),
        pin=pin,
    )
    return str(digest)


@pytest.mark.parametrize(
    ("used", "free", "continuing", "expected"),
    [
        (85 * MiB, None, False, 0),  # below the high mark
        (95 * MiB, None, False, 15 * MiB),  # above it: down to the low mark
        (85 * MiB, None, True, 5 * MiB),  # hysteresis: keep going to the low mark
        (50 * MiB, 5 * MiB, False, 5 * MiB + MiB),  # free-disk reserve (10 MiB) plus margin
    ],
)
def test_bytes_to_free(used: int, free: int | None, continuing: bool, expected: int) -> None:
    ev = EvictionConfig(
        max_store_bytes=100 * MiB, min_free_bytes=10 * MiB, high_watermark=0.9, low_watermark=0.8
    )
    assert bytes_to_free(ev, used, free, continuing) == expected


async def test_least_recently_pulled_first_and_never_local_or_pinned(store: Store) -> None:
    old = await add_image(store, "docker.io/library/old", MiB)
    recent = await add_image(store, "docker.io/library/recent", MiB)
    await add_image(store, "docker.io/library/preloaded", MiB, pin=True)
    await add_image(store, "team/app", MiB)  # pushed: never evicted
    now = time.time()
    store.index.record_access(
        {("docker.io/library/old", old): now - 100, ("docker.io/library/recent", recent): now}
    )
    ev = EvictionConfig(max_store_bytes=2 * MiB, high_watermark=0.9, low_watermark=0.5)
    plan = choose_evictions(store.index, ev, proxied, store.stats()["store_bytes"], None, now)
    chosen = [repo for repo, _, _ in plan.images]
    assert chosen[0] == "docker.io/library/old"
    assert "docker.io/library/preloaded" not in chosen
    assert "team/app" not in chosen


async def test_retention_evicts_what_was_not_pulled_for_days(store: Store) -> None:
    stale = await add_image(store, "docker.io/library/stale", 1000)
    fresh = await add_image(store, "docker.io/library/fresh", 1000)
    now = time.time()
    store.index.record_access(
        {
            ("docker.io/library/stale", stale): now - 8 * DAY,
            ("docker.io/library/fresh", fresh): now - DAY,
        }
    )
    plan = choose_evictions(store.index, EvictionConfig(retention_days=7), proxied, 0, None, now)
    assert [(repo, reason) for repo, _, reason in plan.images] == [
        ("docker.io/library/stale", "not pulled for 7 days")
    ]
