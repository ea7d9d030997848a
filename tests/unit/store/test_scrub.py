"""Verifying stored files and quarantining bad ones, against a real LMDB store."""

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecache.oci.digest import Digest
from edgecache.store import Store
from edgecache.store.fsck import fsck
from edgecache.store.scrub import (
    Pacer,
    Stopped,
    batch_after,
    quarantine,
    quarantine_dir,
    quarantined,
    verify_object,
)
from tests.unit.store.test_collect import push_image
from tests.unit.store.test_store import chunks


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


def flip_a_byte(path: Path, offset: int = 0) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def unpaced() -> Pacer:
    return Pacer(1 << 40)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_pacer_holds_reads_to_its_rate() -> None:
    clock = Clock()
    waits: list[float] = []

    class Recorder(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            assert timeout is not None
            waits.append(timeout)
            clock.now += timeout
            return False

    pacer = Pacer(1000, Recorder(), clock)
    pacer(1000)  # a second's burst is allowed
    assert waits == []
    pacer(500)
    assert waits == [pytest.approx(0.5)]
    stopped = threading.Event()
    stopped.set()
    with pytest.raises(Stopped):
        Pacer(1000, stopped, clock)(1)


async def test_good_files_pass_and_bad_ones_are_found(store: Store) -> None:
    manifest = await push_image(store, "team/app", "v1", b"layer one", b"layer two")
    layer = Digest.of_bytes(b"layer two")
    objects = dict(batch_after(store.index, "", 100))
    assert len(objects) == 4  # config, two layers, manifest
    for digest, size in objects.items():
        assert verify_object(store.layout, digest, size, unpaced()).problem is None
    assert batch_after(store.index, sorted(objects)[1], 100) == sorted(objects.items())[2:]

    flip_a_byte(store.layout.blob_path(layer))
    verdict = verify_object(store.layout, str(layer), len(b"layer two"), unpaced())
    assert verdict.problem is not None and "hash to" in verdict.problem
    store.layout.blob_path(manifest).unlink()
    missing = verify_object(store.layout, str(manifest), objects[str(manifest)], unpaced())
    assert missing.problem == "its file is missing"


async def test_quarantine_moves_the_file_drops_the_records_and_a_repush_restores_it(
    store: Store,
) -> None:
    await push_image(store, "team/app", "v1", b"layer one")
    await store.link_blob("other/app", Digest.of_bytes(b"layer one"))
    layer = Digest.of_bytes(b"layer one")
    path = store.layout.blob_path(layer)
    flip_a_byte(path)
    bad_bytes = path.read_bytes()
    before = store.stats()["store_bytes"]
    verdict = verify_object(store.layout, str(layer), len(bad_bytes), unpaced())
    record = quarantine(store.index, store.layout, verdict, lambda repo: False, now=5.0)
    assert record is not None and record.needs_push
    assert record.repositories == {"other/app": "pushed", "team/app": "pushed"}
    assert not path.exists()
    assert (quarantine_dir(store.layout) / "sha256" / layer.hex).read_bytes() == bad_bytes
    assert store.blob("team/app", layer) is None and store.blob("other/app", layer) is None
    assert store.stats()["store_bytes"] == before - len(bad_bytes)
    assert fsck(store.layout, store.index).clean
    # Done once: a second attempt finds nothing to do.
    assert quarantine(store.index, store.layout, verdict, lambda repo: False) is None
    [listed] = quarantined(store.layout, store.index)
    assert listed["restored"] is False and listed["found"] == 5.0
    assert json.dumps(listed)  # what status shows

    await store.put_blob_stream("team/app", layer, chunks(b"layer one"))
    assert path.read_bytes() == b"layer one"
    assert store.blob("other/app", layer) is not None  # its link was kept
    assert quarantined(store.layout, store.index)[0]["restored"] is True


async def test_a_file_replaced_after_the_check_is_not_quarantined(store: Store) -> None:
    await push_image(store, "team/app", "v1", b"layer one")
    layer = Digest.of_bytes(b"layer one")
    path = store.layout.blob_path(layer)
    flip_a_byte(path)
    verdict = verify_object(store.layout, str(layer), 9, unpaced())
    # A verified copy renamed over the bad file before the quarantine ran.
    replacement = path.with_name("replacement")
    replacement.write_bytes(b"layer one")
    os.replace(replacement, path)
    assert quarantine(store.index, store.layout, verdict, lambda repo: False) is None
    assert store.blob("team/app", layer) is not None and path.read_bytes() == b"layer one"
