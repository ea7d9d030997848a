"""Upload sessions against a real LMDB environment and real files: one writer at a time, every
request all or nothing, bounded and expiring, no descriptor held while idle."""

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from edgecache.oci import errors
from edgecache.oci.digest import Digest
from edgecache.store import Store
from edgecache.store.files import hash_file
from tests.unit.store.test_store import chunks


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


def state(store: Store, upload_id: str) -> tuple[int, int]:
    """(offset the session reports, bytes in its file)."""
    offset = store.upload_offset("r", upload_id)
    return offset, store.layout.upload_path(upload_id).stat().st_size


def open_files() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


async def broken_after(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise trio.BrokenResourceError("client disconnected during the request body")


async def held_body(
    first: bytes, started: trio.Event, go_on: trio.Event, rest: bytes = b""
) -> AsyncIterator[bytes]:
    """A body held open after `first`: sets `started`, then waits for `go_on` to send `rest`."""
    yield first
    started.set()
    await go_on.wait()
    if rest:
        yield rest


async def finish(store: Store, upload_id: str, data: bytes) -> bytes:
    info = await store.finish_upload("r", upload_id, Digest.of_bytes(data), chunks())
    return info.path.read_bytes()


async def test_a_request_that_breaks_off_leaves_the_session_as_it_was(store: Store) -> None:
    upload_id = await store.start_upload("r")
    await store.append_upload("r", upload_id, 0, chunks(b"a" * 1000))
    with pytest.raises(trio.BrokenResourceError):
        await store.append_upload("r", upload_id, 1000, broken_after(b"b" * 5000, b"c" * 7000))
    assert state(store, upload_id) == (1000, 1000)
    # The hash is back where the file is: the rest of the push publishes the right bytes.
    await store.append_upload("r", upload_id, 1000, chunks(b"d" * 3000))
    assert await finish(store, upload_id, b"a" * 1000 + b"d" * 3000) == b"a" * 1000 + b"d" * 3000


async def test_a_finishing_put_that_breaks_off_keeps_the_session(store: Store) -> None:
    upload_id = await store.start_upload("r")
    await store.append_upload("r", upload_id, 0, chunks(b"a" * 10))
    with pytest.raises(trio.BrokenResourceError):
        await store.finish_upload(
            "r", upload_id, Digest.of_bytes(b"a" * 20), broken_after(b"a" * 5)
        )
    assert state(store, upload_id) == (10, 10)
    await store.append_upload("r", upload_id, 10, chunks(b"a" * 10))
    assert await finish(store, upload_id, b"a" * 20) == b"a" * 20


@pytest.mark.parametrize("body", [b"x" * 11, b"x" * 9])
async def test_a_body_unlike_its_content_range_is_refused_and_changes_nothing(
    store: Store, body: bytes
) -> None:
    upload_id = await store.start_upload("r")
    await store.append_upload("r", upload_id, 0, chunks(b"a" * 100))
    with pytest.raises(errors.RangeNotSatisfiable) as info:
        await store.append_upload("r", upload_id, 100, chunks(body[:4], body[4:]), 10)
    assert "Content-Range" in info.value.message and " 10" in info.value.message
    assert state(store, upload_id) == (100, 100)
    assert await finish(store, upload_id, b"a" * 100) == b"a" * 100


async def test_a_second_writer_is_refused_while_the_first_writes(store: Store) -> None:
    upload_id = await store.start_upload("r")
    first_half_written, go_on = trio.Event(), trio.Event()
    body = held_body(b"1" * 1000, first_half_written, go_on, rest=b"2" * 1000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.append_upload, "r", upload_id, 0, body)
        await first_half_written.wait()
        with pytest.raises(errors.RangeNotSatisfiable) as patch:
            await store.append_upload("r", upload_id, None, chunks(b"intruder"))
        assert "another request is writing" in patch.value.message
        with pytest.raises(errors.RangeNotSatisfiable):
            await store.finish_upload("r", upload_id, Digest.of_bytes(b"x"), chunks(b"x"))
        # The status reports what the completed requests wrote: none yet.
        assert store.upload_offset("r", upload_id) == 0
        go_on.set()
    assert await finish(store, upload_id, b"1" * 1000 + b"2" * 1000) == b"1" * 1000 + b"2" * 1000


async def test_a_cancel_waits_for_the_writer_then_cancels(store: Store) -> None:
    upload_id = await store.start_upload("r")
    started, go_on = trio.Event(), trio.Event()
    body = held_body(b"1" * 10, started, go_on, rest=b"2" * 10)
    outcome: list[str] = []

    async def patch() -> None:
        await store.append_upload("r", upload_id, 0, body)
        outcome.append("patched")

    async def cancel() -> None:
        await store.cancel_upload("r", upload_id)
        outcome.append("cancelled")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(patch)
        await started.wait()
        nursery.start_soon(cancel)
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == []
        go_on.set()
    assert outcome == ["patched", "cancelled"]
    assert list(store.layout.uploads.iterdir()) == []
    with pytest.raises(errors.BlobUploadUnknown):
        store.upload_offset("r", upload_id)


async def test_a_cancel_after_the_finishing_put_finds_no_session(store: Store) -> None:
    upload_id = await store.start_upload("r")
    started, go_on = trio.Event(), trio.Event()
    body = held_body(b"data", started, go_on)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.finish_upload, "r", upload_id, Digest.of_bytes(b"data"), body)
        await started.wait()

        async def cancel() -> None:
            with pytest.raises(errors.BlobUploadUnknown):
                await store.cancel_upload("r", upload_id)

        nursery.start_soon(cancel)
        await trio.testing.wait_all_tasks_blocked()
        go_on.set()
    assert store.blob("r", Digest.of_bytes(b"data")) is not None


async def test_sessions_are_bounded_per_client_and_in_total(store: Store) -> None:
    limits = {"max_per_client": 2, "max_total": 3}
    first = await store.start_upload("r", "10.0.0.1", **limits)
    await store.start_upload("r", "10.0.0.1", **limits)
    with pytest.raises(errors.TooManyRequests) as per_client:
        await store.start_upload("r", "10.0.0.1", **limits)
    assert "max_uploads_per_client" in per_client.value.message
    await store.start_upload("r", "10.0.0.2", **limits)
    with pytest.raises(errors.TooManyRequests) as total:
        await store.start_upload("r", "10.0.0.3", **limits)
    assert "max_uploads" in total.value.message
    assert len(list(store.layout.uploads.iterdir())) == 3
    # A finished session frees its slot.
    await store.cancel_upload("r", first)
    await store.start_upload("r", "10.0.0.1", **limits)


async def test_concurrent_starts_cannot_overshoot_the_limit(store: Store) -> None:
    started: list[str] = []

    async def start() -> None:
        with contextlib.suppress(errors.TooManyRequests):
            started.append(await store.start_upload("r", "c", max_per_client=5))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(start)
    assert len(started) == 5
    assert len(list(store.layout.uploads.iterdir())) == 5


async def test_idle_sessions_expire_busy_ones_do_not(store: Store) -> None:
    idle = await store.start_upload("r", "10.0.0.1")
    busy = await store.start_upload("r", "10.0.0.1")
    started, go_on = trio.Event(), trio.Event()
    body = held_body(b"x", started, go_on)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.append_upload, "r", busy, 0, body)
        await started.wait()
        assert await store.uploads.expire(60.0) == 0
        assert await store.uploads.expire(60.0, now=time.time() + 61) == 1
        go_on.set()
    assert not store.layout.upload_path(idle).exists()
    with pytest.raises(errors.BlobUploadUnknown):
        store.upload_offset("r", idle)
    assert store.upload_offset("r", busy) == 1
    (record,) = [r for u, r in store.index.all_uploads() if u == busy]
    assert record["client"] == "10.0.0.1"


async def test_expiry_after_a_restart_goes_by_the_recorded_activity(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "d")
    upload_id = await first.start_upload("r", "10.0.0.1")
    await first.append_upload("r", upload_id, 0, chunks(b"abc"))
    first.close()
    second = Store.open(tmp_path / "d", sweep=True)
    try:
        assert await second.uploads.expire(60.0) == 0
        assert await second.uploads.expire(60.0, now=time.time() + 61) == 1
        assert list(second.layout.uploads.iterdir()) == []
        assert list(second.index.all_uploads()) == []
    finally:
        second.close()


async def test_an_idle_session_holds_no_file_descriptor(store: Store) -> None:
    upload_id = await store.start_upload("r")
    await store.append_upload("r", upload_id, 0, chunks(b"some bytes"))
    path = str(store.layout.upload_path(upload_id))
    assert path not in open_files()
    assert await finish(store, upload_id, b"some bytes") == b"some bytes"


async def test_a_restarted_session_rehashes_its_file(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "d")
    upload_id = await first.start_upload("r")
    await first.append_upload("r", upload_id, 0, chunks(b"a" * 5000))
    first.close()
    second = Store.open(tmp_path / "d", sweep=True)
    try:
        assert second.upload_offset("r", upload_id) == 5000
        await second.append_upload("r", upload_id, 5000, chunks(b"b" * 10))
        info = await second.finish_upload(
            "r", upload_id, Digest.of_bytes(b"a" * 5000 + b"b" * 10), chunks()
        )
        assert hash_file(info.path, "sha256") == info.digest
    finally:
        second.close()
