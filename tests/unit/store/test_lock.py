"""The data-directory lock, and fsck of a directory in use."""

import fcntl
import json
import os
from pathlib import Path

import pytest

from edgecache.store import Store
from edgecache.store.fsck import fsck
from edgecache.store.lock import DataDirInUse, DataDirLock, holder, preload_running


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_url(tmp_path: Path) -> None:
    assert holder(tmp_path) is None
    first = DataDirLock.acquire(tmp_path, "edgecache serve")
    (tmp_path / "run" / "server.json").write_text(
        json.dumps({"url": "http://127.0.0.1:5999", "pid": os.getpid()})
    )
    with pytest.raises(DataDirInUse) as info:
        DataDirLock.acquire(tmp_path, "edgecache serve")
    text = str(info.value)
    assert f"pid {os.getpid()}" in text and "http://127.0.0.1:5999" in text
    assert str(holder(tmp_path)) == f"edgecache serve (pid {os.getpid()}, http://127.0.0.1:5999)"
    first.release()
    assert holder(tmp_path) is None
    DataDirLock.acquire(tmp_path, "edgecache fsck --repair").release()


def test_a_stale_server_file_is_not_taken_for_the_holder(tmp_path: Path) -> None:
    hold = DataDirLock.acquire(tmp_path, "edgecache fsck --repair")
    (tmp_path / "run" / "server.json").write_text(json.dumps({"url": "http://x:1", "pid": 1}))
    found = holder(tmp_path)
    assert found is not None and found.url is None and found.what == "edgecache fsck --repair"
    hold.release()


def test_a_repair_waits_for_no_preload(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    # What a running preload holds (transfer/spool.py).
    spool = os.open(tmp_path / "tmp", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(spool, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert preload_running(tmp_path)
        with pytest.raises(DataDirInUse) as info:
            DataDirLock.acquire(tmp_path, "edgecache fsck --repair", with_preloads=True)
        assert "preload" in str(info.value)
        assert holder(tmp_path) is None  # refused without leaving a hold behind
    finally:
        os.close(spool)
    assert not preload_running(tmp_path)


async def test_fsck_of_a_live_directory_lists_writes_in_progress(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "data")
    try:
        await store.start_upload("r")
        (store.layout.tmp / "a-download").write_bytes(b"half")
        (store.layout.uploads / "0000-no-record-yet").write_bytes(b"")
        live = fsck(store.layout, store.index, live=True)
        assert live.clean, live.problems
        assert len(live.in_progress) == 3
        assert any(line.startswith("tmp/a-download") for line in live.in_progress)
        stopped = fsck(store.layout, store.index)
        assert len(stopped.problems) == 2  # a leftover and an orphan file, once nobody writes
        with pytest.raises(ValueError):
            fsck(store.layout, store.index, live=True, repair=True)
    finally:
        store.close()
