"""The housekeeper: GC runs (manual, scheduled), eviction by size, free disk and age, and
the background scrub that finds corrupt files (gc/scrub.py).

Everything heavy runs in worker threads, in small LMDB transactions; the event loop only
schedules. One run at a time (GC and eviction share a lock: eviction is "unlink the least
recently pulled images, then collect").

Last-pulled times are kept in memory and written in one transaction per flush, so a pull
never costs an LMDB write.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import trio

from ..config import Config
from ..oci.digest import Digest
from ..store import Store
from ..store.collect import Plan, SweepResult, mark, sweep
from .evict import EvictionPlan, choose_evictions
from .markchild import ChildFailed, MarkJob, mark_in_child
from .scrub import Scrubber

log = logging.getLogger("edgecache.gc")


class Housekeeper:
    def __init__(
        self,
        store: Store,
        config: Config,
        is_proxied: Callable[[str], bool],
        in_flight: Callable[[], set[str]],
    ) -> None:
        self.store = store
        self.config = config
        self.is_proxied = is_proxied
        self.in_flight = in_flight  # digests being fetched (called on the event loop)
        # The mark runs in a child process (markchild.py) unless told otherwise (tests that
        # call the housekeeper without an `edgecache` executable to start).
        self.mark_in_child = True
        self.lock = trio.Lock()  # fair: a waiting eviction runs as soon as a GC run yields
        self.eviction_urgent = False
        self.pending_access: dict[tuple[str, str], float] = {}
        self._wake = trio.Event()
        self.evicted_images = 0
        self.runs = 0
        self.scrub = Scrubber(store, config.scrub, is_proxied)

    # ---- last-pulled times ---------------------------------------------------------------

    def pulled(self, repo: str, digest: Digest) -> None:
        self.pending_access[(repo, str(digest))] = time.time()

    async def flush_access(self) -> None:
        if not self.pending_access:
            return
        batch, self.pending_access = self.pending_access, {}
        await trio.to_thread.run_sync(self.store.index.record_access, batch)

    def disk_full(self) -> None:
        """A write failed with ENOSPC: evict now instead of at the next interval. A GC run
        sweeping at that moment stops at its next batch and lets the eviction have the lock
        (under load a sweep of 55k objects took minutes; the disk is full now)."""
        self.eviction_urgent = True
        self._wake.set()

    # ---- garbage collection --------------------------------------------------------------

    async def collect(self, *, dry_run: bool = False, trigger: str = "manual") -> dict[str, Any]:
        async with self.lock:
            return await self._collect(dry_run=dry_run, trigger=trigger)

    async def _collect(
        self, *, dry_run: bool, trigger: str, yield_to_eviction: bool = True
    ) -> dict[str, Any]:
        started = time.time()
        fetching = self.in_flight()
        gc = self.config.gc

        def marked() -> tuple[Plan, dict[str, Any]]:
            # Summaries walk every candidate: in the thread too, never on the event loop.
            plan = mark(
                self.store.index,
                grace=gc.grace,
                delete_untagged=gc.delete_untagged,
                is_proxied=self.is_proxied,
                in_flight=fetching,
                now=started,
            )
            return plan, plan.summary()

        if self.mark_in_child:
            job = MarkJob(str(self.store.layout.root), self.config, frozenset(fetching), started)
            try:
                plan, summary = await mark_in_child(job)
            except ChildFailed as exc:
                log.warning("gc: the mark process failed (%s); marking in a thread", exc)
                plan, summary = await trio.to_thread.run_sync(marked)
        else:
            plan, summary = await trio.to_thread.run_sync(marked)
        record: dict[str, Any] = {
            "started": started,
            "trigger": trigger,
            "dry_run": dry_run,
            "options": {"grace": gc.grace, "delete_untagged": gc.delete_untagged},
            "candidates": summary["candidates"],
            "candidate_bytes": summary["bytes"],
            "live": summary["live"],
            "kept_young": summary.get("kept_young"),  # see Plan.young
        }
        if dry_run:
            record["would_free"] = summary
        else:
            token = trio.lowlevel.current_trio_token()

            def in_flight_now() -> set[str]:
                return trio.from_thread.run_sync(self.in_flight, trio_token=token)

            def swept() -> tuple[SweepResult, dict[str, Any]]:
                result = sweep(
                    self.store.index,
                    self.store.layout,
                    plan,
                    grace=gc.grace,
                    in_flight=in_flight_now,
                    stop=lambda: yield_to_eviction and self.eviction_urgent,
                )
                freed = {d: plan.candidates[d] for d in result.deleted}
                return result, Plan(plan.started, freed, plan.links).summary()["by_repository"]

            result, by_repo = await trio.to_thread.run_sync(swept)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("gc mark started at %.6f", plan.started)
                for digest in result.deleted:
                    log.debug("gc deleted %s (linked in %s)", digest, plan.links.get(digest))
                for digest, why in result.skipped.items():
                    log.debug("gc kept %s: %s", digest, why)
            record["freed"] = {
                "objects": len(result.deleted),
                "bytes": result.freed_bytes,
                "by_repository": by_repo,
            }
            record["skipped"] = dict(Counter(result.skipped.values()))
            if result.stopped:
                record["skipped"]["left for an urgent eviction (disk full)"] = result.stopped
        record["ended"] = time.time()
        await trio.to_thread.run_sync(self.store.index.add_gc_run, record)
        self.runs += 1
        log.info(
            "gc %s (%s): %d candidates, %s",
            "dry run" if dry_run else "run",
            trigger,
            record["candidates"],
            f"freed {record['freed']['bytes']} bytes" if not dry_run else "nothing changed",
        )
        return record

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.store.index.gc_runs(limit)

    # ---- eviction ------------------------------------------------------------------------

    def _usage(self) -> tuple[int, int | None]:
        used = self.store.index.meta_int("store_bytes")
        try:
            st = os.statvfs(self.store.layout.root)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = None
        return used, free

    async def evict(self, *, trigger: str = "limits") -> dict[str, Any]:
        """Unlink least-recently-pulled proxied images until the limits hold, then collect."""
        async with self.lock:
            self.eviction_urgent = False  # this is the eviction a GC run may have yielded to
            await self.flush_access()
            evicted: list[dict[str, Any]] = []
            freed = 0
            for round_no in range(100):  # bounded: each round unlinks a batch and collects
                used, free = self._usage()
                choose = partial(
                    choose_evictions,
                    self.store.index,
                    self.config.eviction,
                    self.is_proxied,
                    used,
                    free,
                    time.time(),
                    continuing=round_no > 0,
                )
                plan: EvictionPlan = await trio.to_thread.run_sync(choose)
                if not plan.images:
                    break
                for repo, digest, reason in plan.images:
                    await self._unlink_image(repo, digest)
                    evicted.append({"repository": repo, "digest": digest, "reason": reason})
                record = await self._collect(
                    dry_run=False, trigger=f"eviction ({trigger})", yield_to_eviction=False
                )
                freed += record["freed"]["bytes"]
                if not plan.more:
                    break
            self.evicted_images += len(evicted)
            return {"evicted": evicted, "freed_bytes": freed, "store_bytes": self._usage()[0]}

    async def _unlink_image(self, repo: str, digest: str) -> None:
        """Tag → manifest (and an index's platform manifests) out of the repository."""
        record = self.store.index.manifest(digest)
        await self.store.delete_manifest(repo, Digest.parse(digest))
        for child in (record or {}).get("manifests", []):
            await self.store.delete_manifest(repo, Digest.parse(child))

    # ---- the background loop -------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.scrub.run)
            task_status.started()
            nursery.start_soon(self._limits_loop)
            if self.config.gc.schedule:
                nursery.start_soon(self._schedule_loop)

    async def _limits_loop(self) -> None:
        while True:
            with trio.move_on_after(self.config.eviction.check_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.flush_access()
                ev = self.config.eviction
                if ev.max_store_bytes or ev.min_free_bytes or ev.retention_days:
                    await self.evict()
                else:
                    self.eviction_urgent = False  # no limits: nothing to yield to
            except Exception:
                log.exception("eviction failed; will retry")

    async def _schedule_loop(self) -> None:
        from croniter import croniter

        schedule = croniter(self.config.gc.schedule, datetime.now())
        while True:
            delay = schedule.get_next(float) - time.time()
            await trio.sleep(max(0.0, delay))
            try:
                await self.collect(trigger="schedule")
            except Exception:
                log.exception("scheduled gc failed; will run at the next time")
