"""The background scrub against a real LMDB store: passes, quarantine, healing, progress."""

from pathlib import Path

import trio

from edgecache.config import load
from edgecache.gc.scrub import Scrubber
from edgecache.oci.digest import Digest
from edgecache.store import Store
from edgecache.store.scrub import batch_after, read_progress, save_progress
from tests.unit.store.test_collect import push_image
from tests.unit.store.test_scrub import flip_a_byte


async def test_a_requested_pass_quarantines_and_asks_for_proxied_content_again(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "data")
    try:
        await push_image(store, "lab/team/app", "v1", b"proxied layer")
        await push_image(store, "team/app", "v1", b"pushed layer")
        for layer in (b"proxied layer", b"pushed layer"):
            flip_a_byte(store.layout.blob_path(Digest.of_bytes(layer)))
        config = load(None, env={}, overrides={"scrub": {"enabled": False}})
        scrubber = Scrubber(store, config.scrub, is_proxied=lambda r: r.startswith("lab/"))
        asked: list[tuple[str, Digest, str]] = []

        async def refetch(repo: str, digest: Digest, kind: str) -> bool:
            asked.append((repo, digest, kind))
            return True

        scrubber.refetch = refetch
        async with trio.open_nursery() as nursery:
            await nursery.start(scrubber.run)
            record = await scrubber.request_pass()
            status = await scrubber.status()
            nursery.cancel_scope.cancel()
        assert record["objects"] == 5 and record["corrupt"] == 2  # the config is shared
        assert asked == [("lab/team/app", Digest.of_bytes(b"proxied layer"), "blob")]
        assert status["corrupt_found"] == 2 and status["objects_verified"] == 5
        assert status["awaiting_repush"] == [str(Digest.of_bytes(b"pushed layer"))]
        assert [r["repositories"] for r in status["quarantined"]] in (
            [{"lab/team/app": "proxied"}, {"team/app": "pushed"}],
            [{"team/app": "pushed"}, {"lab/team/app": "proxied"}],
        )
        cursor, last, since = read_progress(store.index)
        assert cursor == "" and last == since == status["last_full_pass"]
    finally:
        store.close()


async def test_passes_come_by_themselves_and_an_interrupted_one_resumes(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "data")
    try:
        await push_image(store, "team/app", "v1", b"a", b"b", b"c")
        everything = sorted(d for d, _ in batch_after(store.index, "", 100))
        save_progress(store.index, everything[1])  # a pass stopped there by a restart
        config = load(None, env={}, overrides={"scrub": {"interval": 0.01}})
        scrubber = Scrubber(store, config.scrub, is_proxied=lambda r: False)
        async with trio.open_nursery() as nursery:
            await nursery.start(scrubber.run)
            with trio.fail_after(30):  # a deadline on the polled condition, not a wait
                while scrubber.passes_completed < 2:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert scrubber.objects_verified >= (len(everything) - 2) + len(everything)
        assert scrubber.last_pass is not None
        assert scrubber.last_pass["objects"] == len(everything)
    finally:
        store.close()
