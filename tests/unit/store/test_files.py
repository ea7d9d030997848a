"""Blob files: the writer's file and hash are the same bytes, publishing never trusts what is
already there, and a failed index write leaves no file without an entry."""

import fcntl
import hashlib
import os
import threading
from functools import partial
from pathlib import Path

import lmdb
import pytest

from edgecache.oci.digest import Digest
from edgecache.store.files import (
    PRELOAD_PREFIX,
    BlobWriter,
    Layout,
    hash_file,
    publish_file,
    seal_bytes,
)
from edgecache.store.index import Index


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "data")
    layout.create()
    return layout


def test_threads_writing_at_once_cannot_split_file_and_hash(layout: Layout) -> None:
    writer = BlobWriter.in_tmp(layout)
    # Large distinct pieces: hashing them releases the GIL, so unlocked writers interleave.
    pieces = [bytes([i]) * (256 << 10) for i in range(64)]
    barrier = threading.Barrier(4)

    def write(mine: list[bytes]) -> None:
        barrier.wait()
        for piece in mine:
            writer.write(piece)

    threads = [threading.Thread(target=write, args=(pieces[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.size == sum(map(len, pieces)) == writer.path.stat().st_size
    assert writer.digest("sha256") == hash_file(writer.path, "sha256")
    writer.discard()


def test_rollback_puts_file_and_hash_back(layout: Layout) -> None:
    writer = BlobWriter.in_tmp(layout)
    writer.write(b"kept")
    mark = writer.checkpoint()
    writer.write(b"dropped" * 1000)
    writer.rollback(mark)
    writer.write(b" and more")
    assert writer.path.read_bytes() == b"kept and more"
    assert writer.digest("sha256") == Digest.of_bytes(b"kept and more")
    writer.discard()


def test_a_verified_copy_replaces_a_corrupt_or_truncated_file(layout: Layout) -> None:
    data = os.urandom(100_000)
    digest = Digest.of_bytes(data)
    first = seal_bytes(layout, data, digest)
    assert publish_file(layout, first.path, digest) == layout.blob_path(digest)
    target = layout.blob_path(digest)
    for damage in (b"rot" + data[3:], data[:500]):
        os.chmod(target, 0o644)
        target.write_bytes(damage)
        again = seal_bytes(layout, data, digest)
        created = publish_file(layout, again.path, digest)
        assert target.read_bytes() == data
        assert created is None  # replaced, not created
        assert not target.stat().st_mode & 0o222
    assert list(layout.tmp.iterdir()) == []


def test_a_failed_commit_removes_the_file_it_created(layout: Layout) -> None:
    # A real failure inside the transaction, after the rename: LMDB's map is full.
    index = Index(layout.index, map_size=256 << 10)
    _fill(index)
    data = b"blob bytes"
    digest = Digest.of_bytes(data)
    writer = seal_bytes(layout, data, digest)
    with pytest.raises(lmdb.MapFullError):
        index.commit_blob("r", str(digest), len(data), partial(publish, layout, writer, digest))
    assert not layout.blob_path(digest).exists()
    assert index.blob(str(digest)) is None
    index.close()


def publish(layout: Layout, writer: BlobWriter, digest: Digest) -> Path | None:
    return publish_file(layout, writer.path, digest)


def _fill(index: Index) -> None:
    """Fill the map, committed, until not even one more small entry fits."""
    count, batch = 0, 64
    while batch:
        try:
            with index.env.begin(write=True) as txn:
                for _ in range(batch):
                    txn.put(f"filler{count}".encode(), b"x" * 400, db=index.db["meta"])
                    count += 1
        except lmdb.MapFullError:
            batch //= 2


def test_a_failed_commit_keeps_a_file_it_replaced(layout: Layout) -> None:
    index = Index(layout.index, map_size=256 << 10)
    data = b"blob bytes"
    digest = Digest.of_bytes(data)
    first = seal_bytes(layout, data, digest)
    index.commit_blob("r", str(digest), len(data), partial(publish, layout, first, digest))
    _fill(index)
    again = seal_bytes(layout, data, digest)
    with pytest.raises(lmdb.MapFullError):
        index.commit_blob("s", str(digest), len(data), partial(publish, layout, again, digest))
    assert layout.blob_path(digest).read_bytes() == data
    assert hashlib.sha256(data).hexdigest() == digest.hex
    index.close()


def test_the_start_up_sweep_spares_a_running_preloads_spool_files(layout: Layout) -> None:
    leftover = layout.tmp / "0123abcd"  # a fetch a crash left behind
    spool = layout.tmp / f"{PRELOAD_PREFIX}1.part"
    for path in (leftover, spool):
        path.write_bytes(b"x")
    fd = os.open(layout.tmp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running preload holds (transfer/spool.py)
        assert layout.sweep_tmp() == 1
        assert spool.exists() and not leftover.exists()
    finally:
        os.close(fd)
    assert layout.sweep_tmp() == 1  # no preload now: its leftovers go too
    assert list(layout.tmp.iterdir()) == []
