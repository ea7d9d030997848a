"""The scan service's schedule: rescans of every stored report fire at the cron time (time
injected through trio's MockClock, never slept), and the queue bound holds."""

from __future__ import annotations

import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from edgecache.scan.config import ScanConfig, ScannerConfig, ScanSettings
from edgecache.scan.service import MAX_QUEUED, ScanFailed, ScanService
from edgecache.store import Store

DIGEST = "sha256:" + "a" * 64


def service(tmp_path: Path, schedule: str = "") -> ScanService:
    store = Store.open(tmp_path / "data")
    settings = ScanSettings(
        {"fake": ScannerConfig("fake", "http://127.0.0.1:9")}, ScanConfig(schedule=schedule)
    )
    return ScanService(SimpleNamespace(store=store), settings)  # type: ignore[arg-type]


async def test_rescans_fire_at_the_scheduled_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    scans = service(tmp_path, "30 4 * * *")
    index = scans.app.store.index
    index.put_scan(DIGEST, "fake", {"repo": "team/app", "scanned": 1.0})
    # A manifest record for the digest: only manifests still stored are rescanned.
    with index.env.begin(write=True) as txn:
        txn.put(DIGEST.encode(), b'{"media_type":"x","size":1}', db=index.db["manifests"])
    day = datetime.date.today()
    start = datetime.datetime(day.year, day.month, day.day, 4, 0).timestamp()
    scans.clock = lambda: start + trio.current_time()
    asked: list[tuple[str, str, str, float]] = []

    def request(repo: str, digest: str, trigger: str, scanner: str | None = None) -> None:
        asked.append((repo, digest, trigger, scans.clock()))

    scans.request = request  # type: ignore[assignment,method-assign]
    with trio.move_on_after(86400 + 3600):
        await scans._schedule_loop()
    assert [a[:3] for a in asked] == [("team/app", DIGEST, "schedule")] * 2
    assert [a[3] for a in asked] == [start + 1800, start + 1800 + 86400]


def test_the_queue_is_bounded_and_a_scan_is_joined_not_repeated(tmp_path: Path) -> None:
    scans = service(tmp_path)
    first = scans.request("team/app", DIGEST, "push")
    assert scans.request("team/app", DIGEST, "pull") is first
    for i in range(MAX_QUEUED - 1):
        scans.request("team/app", f"sha256:{i:064x}", "push")
    with pytest.raises(ScanFailed, match="waiting already"):
        scans.request("team/app", "sha256:" + "b" * 64, "push")
    with pytest.raises(ScanFailed, match="no scanner 'other'"):
        scans.request("team/app", DIGEST, "push", "other")
