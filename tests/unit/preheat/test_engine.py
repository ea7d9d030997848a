"""The preheat engine's triggers and job records, with a real store and trio's MockClock:
cron schedules fire at their time (time injected, never slept), windows open and close, events
start only the policies that match, and the job history stays bounded."""

from __future__ import annotations

import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from edgecache.config import load
from edgecache.preheat.config import Window, parse
from edgecache.preheat.engine import Preheater, PreheatError, parse_images
from edgecache.preheat.jobs import Image, Job
from edgecache.store import Store


def engine(tmp_path: Path, policies: list[dict[str, Any]], **kwargs: Any) -> Preheater:
    store = Store.open(tmp_path / "data")
    app = SimpleNamespace(store=store, config=load(env={}))
    config = parse({"policies": policies, **kwargs})
    return Preheater(app, config)  # type: ignore[arg-type]


def local_time(hour: int, minute: int, second: int = 0) -> float:
    day = datetime.date.today()
    return datetime.datetime(day.year, day.month, day.day, hour, minute, second).timestamp()


async def test_a_cron_schedule_fires_at_its_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    preheater = engine(tmp_path, [{"name": "nightly", "schedule": "0 3 * * *"}])
    start = local_time(2, 59, 30)
    preheater.clock = lambda: start + trio.current_time()
    fired: list[float] = []
    preheater.submit = lambda trigger, **kw: fired.append(preheater.clock())  # type: ignore
    policy = preheater.policies["nightly"]
    with trio.move_on_after(2 * 86400):
        await preheater._cron_loop(policy)
    # Today's 03:00 and tomorrow's (whatever the clock did meanwhile: it jumped).
    assert fired[:2] == [local_time(3, 0), local_time(3, 0) + 86400]


async def test_events_start_only_matching_policies_and_coalesce(tmp_path: Path) -> None:
    preheater = engine(
        tmp_path,
        [
            {"name": "a", "repositories": ["team/**"], "tags": ["v*"], "on": ["push"]},
            {"name": "b", "repositories": ["other/*"], "on": ["push", "pull"]},
            {"name": "c", "repositories": ["**"], "on": ["preload"]},
        ],
    )
    digest = "sha256:" + "a" * 64
    preheater.event("push", "team/x/app", "v1", digest)
    preheater.event("push", "team/x/app", "v1", digest)  # queued already: nothing more
    preheater.event("push", "team/x/app", "latest", digest)  # tag does not match
    preheater.event("pull", "other/app", "v1", digest)
    preheater.event("pull", "other/deep/app", "v1", digest)  # * stays in one segment
    queued = [(j.policy, j.trigger, j.images[0].name) for j in preheater._queue]
    assert queued == [("a", "push", "team/x/app:v1"), ("b", "pull", "other/app:v1")]
    stored = preheater.jobs(10)
    assert [j["state"] for j in stored] == ["queued", "queued"]


async def test_cancel_of_a_queued_job_is_recorded(tmp_path: Path) -> None:
    preheater = engine(tmp_path, [])
    job = preheater.submit("manual", images=parse_images(["team/app:v1"]))
    assert preheater.cancel(job.id)
    await preheater.flush()
    assert preheater.job(job.id)["state"] == "cancelled"  # type: ignore[index]
    assert not preheater.cancel(job.id)
    assert preheater.app.store.index.preheat_record(f"job/{job.id}")["state"] == "cancelled"  # type: ignore[index]


async def test_the_job_history_is_bounded(tmp_path: Path) -> None:
    preheater = engine(tmp_path, [], jobs_kept=5)
    ids = []
    for _ in range(12):
        job = preheater.submit("manual", images=[Image("team/app", "v1", tag="v1")])
        preheater.cancel(job.id)
        ids.append(job.id)
        await preheater.flush()
    kept = [r["id"] for r in preheater.app.store.index.preheat_records("job/")]
    assert kept == list(reversed(ids[-5:]))


def test_queue_is_bounded_and_names_are_checked(tmp_path: Path) -> None:
    preheater = engine(tmp_path, [])
    with pytest.raises(PreheatError, match="no preheat provider 'df'"):
        preheater.submit("manual", images=[], providers_=["df"])
    with pytest.raises(PreheatError, match="UPPER"):
        parse_images(["UPPER/app:v1"])
    for _ in range(100):
        preheater.submit("manual", images=[])
    with pytest.raises(PreheatError, match="waiting already"):
        preheater.submit("manual", images=[])


@pytest.mark.parametrize(
    ("window", "minute", "inside", "until_open"),
    [
        ("22:00-06:00", 23 * 60, True, 0),
        ("22:00-06:00", 5 * 60 + 59, True, 0),
        ("22:00-06:00", 6 * 60, False, 16 * 60),
        ("22:00-06:00", 12 * 60, False, 10 * 60),
        ("01:30-02:00", 90, True, 0),
        ("01:30-02:00", 120, False, 23 * 60 + 30),
        ("00:00-00:00", 777, True, 0),
    ],
)
def test_windows(window: str, minute: int, inside: bool, until_open: int) -> None:
    parsed = Window.parse(window)
    assert parsed is not None and str(parsed) == window
    assert parsed.contains(minute) is inside
    assert parsed.minutes_until_open(minute) == until_open


def test_job_states_settle_from_results() -> None:
    ok, bad = (
        Image("r", "v1", tag="v1", digest="sha256:1"),
        Image("r", "v2", tag="v2", digest="sha256:2"),
    )
    job = Job("1", "manual", ["site", "df"], [ok, bad])
    job.result("site", ok).state = "done"
    job.result("site", bad).state = "failed"
    job.result("df", ok).state = "done"
    job.settle()
    assert job.state == "partial"
    job.result("site", bad).state = "skipped"
    job.state = "running"
    job.settle()
    assert job.state == "succeeded"
    job.result("site", ok).state = job.result("df", ok).state = "failed"
    job.result("site", bad).state = "failed"
    job.settle()
    assert job.state == "failed"


def test_a_burst_of_events_makes_one_job_and_leaves_room_for_the_operator(tmp_path: Path) -> None:
    preheater = engine(tmp_path, [{"name": "pulled", "repositories": ["**"], "on": ["pull"]}])
    for i in range(300):
        preheater.event("pull", f"up/app{i}", "v1", f"sha256:{i:064x}")
    assert len(preheater._queue) == 1
    assert len(preheater._queue[0].images) == 300
    for _ in range(99):
        preheater.submit("manual", images=[])
    preheater.event("pull", "up/late", "v1", "sha256:" + "f" * 64)  # joins the waiting job
    assert len(preheater._queue[0].images) == 301


def test_policy_values_that_could_stall_a_loop_are_refused(tmp_path: Path) -> None:
    from edgecache.configvalues import ConfigError

    for bad in ({"watch_interval": float("nan")}, {"schedule": "0 0 31 2 *"},
                {"bandwidth": "1" + "0" * 400}, {"tags": ["v*"] * 101}):  # fmt: skip
        with pytest.raises(ConfigError):
            parse({"policies": [{"name": "x", **bad}]})


def test_jobs_a_dead_server_left_running_are_recorded_stopped(tmp_path: Path) -> None:
    preheater = engine(tmp_path, [])
    index = preheater.app.store.index
    index.put_preheat("job/1-a", {"id": "1-a", "state": "running"})
    index.put_preheat("job/2-b", {"id": "2-b", "state": "succeeded"})
    preheater._close_interrupted()
    assert index.preheat_record("job/1-a")["state"] == "stopped"  # type: ignore[index]
    assert index.preheat_record("job/2-b")["state"] == "succeeded"  # type: ignore[index]
    assert [r["id"] for r in index.preheat_records("job/", 1)] == ["2-b"]
