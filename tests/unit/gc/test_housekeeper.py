"""The housekeeper against a real LMDB store: a GC run gives way to an urgent eviction."""

from pathlib import Path

from edgecache.config import load
from edgecache.gc.service import Housekeeper
from edgecache.store import Store
from edgecache.store.fsck import fsck
from tests.unit.store.test_collect import push_image


async def test_a_gc_run_yields_to_an_eviction_the_disk_full_asked_for(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "data")
    try:
        for n in range(3):
            await push_image(store, "r", f"t{n}", f"layer {n}".encode())
            await store.delete_tag("r", f"t{n}")
        config = load(None, env={}, overrides={"gc": {"grace": 0.0, "delete_untagged": True}})
        keeper = Housekeeper(store, config, is_proxied=lambda repo: False, in_flight=set)
        keeper.mark_in_child = False  # the mark's process is tested in test_collect
        keeper.disk_full()
        record = await keeper.collect()
        assert record["candidates"] == 9  # 3 x (manifest, config, layer)
        assert record["freed"]["objects"] == 0
        assert record["skipped"] == {"left for an urgent eviction (disk full)": 9}
        # The eviction it yielded to runs (no limits configured: it frees nothing itself) and
        # takes the request; the next run collects everything.
        await keeper.evict(trigger="disk full")
        record = await keeper.collect()
        assert record["freed"]["objects"] == 9 and record["skipped"] == {}
        assert fsck(store.layout, store.index).clean
    finally:
        store.close()
