"""The background scrub: store/scrub.py's checks, paced and scheduled inside the server.

A pass walks every stored object (blobs and manifests) in digest order, a batch at a time,
on a limiter of its own with one thread, never the default one whose threads serving's file
I/O needs; the reads are held to `[scrub] rate` bytes a second, so a pass over a large store
takes hours and serving keeps the disk. Its cursor is saved every SAVE_EVERY seconds: a pass
cut short by a restart resumes where it stopped. After a full pass the next is due `interval`
seconds later (the first, an interval after the scrub first ran on the data dir: content is
verified as it arrives); `request_pass` (the admin API) asks for one now and waits for it.

A bad object is quarantined (store/scrub.py). When a proxied repository links it, the scrub
asks `refetch` (set by the app) to fetch it again from upstream at once; when only pushed
repositories do, it is logged and listed in status for a re-push. A manifest that fails its
check when it is read from disk (server/manifest_cache.py) goes the same way through `heal`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from ..config import ScrubConfig
from ..oci.digest import Digest
from ..store import Store
from ..store.scrub import (
    Pacer,
    QuarantineRecord,
    Verdict,
    batch_after,
    linking_repositories,
    quarantine,
    quarantined,
    read_progress,
    save_progress,
    verify_object,
)

log = logging.getLogger("edgecache.scrub")

BATCH = 64
SAVE_EVERY = 10.0


async def _no_refetch(repo: str, digest: Digest, kind: str) -> bool:
    return False


class Scrubber:
    def __init__(
        self, store: Store, config: ScrubConfig, is_proxied: Callable[[str], bool]
    ) -> None:
        self.store = store
        self.config = config
        self.is_proxied = is_proxied
        # (repository, digest, "blob" | "manifest") -> whether a fetch from upstream started.
        self.refetch: Callable[[str, Digest, str], Awaitable[bool]] = _no_refetch
        self._limiter = trio.CapacityLimiter(1)
        self._stop = threading.Event()
        self._pacer = Pacer(config.rate, self._stop)
        self._wake = trio.Event()
        self._pass_done = trio.Event()
        self._wanted = 0  # passes_started must pass this before the loop may idle
        self.passes_started = 0
        self.passes_completed = 0
        self.running = False
        self.pass_started: float | None = None
        self.pass_objects = 0
        self.pass_bytes = 0
        self.objects_verified = 0  # since the server started (for /metrics counters)
        self.bytes_verified = 0
        self.corrupt_found = 0
        self.last_full_pass: float | None = None
        self._since = 0.0
        self.last_pass: dict[str, Any] | None = None

    # ---- the loop ------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cursor, self.last_full_pass, self._since = await trio.to_thread.run_sync(
            read_progress, self.store.index
        )
        task_status.started()
        try:
            while True:
                if not cursor:
                    await self._until_due()
                try:
                    cursor = await self._pass(cursor)
                except Exception:
                    # A disk error, a closed store: the next attempt resumes from the cursor.
                    log.exception("scrub pass failed; retrying in %.0f s", SAVE_EVERY)
                    await trio.sleep(SAVE_EVERY)
                    cursor, *_ = await trio.to_thread.run_sync(read_progress, self.store.index)
        finally:
            self._stop.set()  # wakes a paced thread abandoned by the cancellation

    async def _until_due(self) -> None:
        while self._wanted <= self.passes_started:
            if self.config.enabled:
                due = (self.last_full_pass or self._since) + self.config.interval - time.time()
                if due <= 0:
                    return
                with trio.move_on_after(due):
                    await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake = trio.Event()

    async def request_pass(self, *, wait: bool = True) -> dict[str, Any]:
        """Ask for a full pass that starts after now, and (`wait`) return its record once it
        has ended; without waiting, the progress so far (a large store takes hours)."""
        wanted = self.passes_started + 1
        self._wanted = max(self._wanted, wanted)
        self._wake.set()
        if not wait:
            return self.progress()
        while self.passes_completed < wanted:
            await self._pass_done.wait()
        assert self.last_pass is not None
        return self.last_pass

    async def _pass(self, cursor: str) -> str:
        self.passes_started += 1
        self.running = True
        self.pass_started = time.time()
        self.pass_objects = self.pass_bytes = 0
        corrupt = 0
        saved_at = time.monotonic()
        index = self.store.index
        try:
            while batch := await trio.to_thread.run_sync(batch_after, index, cursor, BATCH):
                for digest, size in batch:
                    check = partial(verify_object, self.store.layout, digest, size, self._pacer)
                    verdict = await trio.to_thread.run_sync(
                        check, limiter=self._limiter, abandon_on_cancel=True
                    )
                    self.pass_objects += 1
                    self.pass_bytes += verdict.size
                    self.objects_verified += 1
                    self.bytes_verified += verdict.size
                    if verdict.problem is not None and await self._quarantine(verdict):
                        corrupt += 1
                    cursor = digest
                if time.monotonic() - saved_at >= SAVE_EVERY:
                    await trio.to_thread.run_sync(save_progress, index, cursor)
                    saved_at = time.monotonic()
        finally:
            self.running = False
        self.last_full_pass = time.time()
        await trio.to_thread.run_sync(save_progress, index, "", self.last_full_pass)
        self.last_pass = {
            "started": self.pass_started,
            "ended": self.last_full_pass,
            "objects": self.pass_objects,
            "bytes": self.pass_bytes,
            "corrupt": corrupt,
        }
        log.info(
            "scrub pass verified %d objects (%d bytes): %d corrupt",
            self.pass_objects,
            self.pass_bytes,
            corrupt,
        )
        self.passes_completed += 1
        done, self._pass_done = self._pass_done, trio.Event()
        done.set()
        return ""

    # ---- quarantine and healing ----------------------------------------------------------

    async def _quarantine(self, verdict: Verdict) -> QuarantineRecord | None:
        # Not on the scrub's own thread: a reader healing a manifest must not wait behind a
        # large file the pass is reading at its slow rate.
        work = partial(quarantine, self.store.index, self.store.layout, verdict, self.is_proxied)
        record = await trio.to_thread.run_sync(work)
        if record is None:
            return None
        self.corrupt_found += 1
        repos = ", ".join(f"{r} ({k})" for r, k in record.repositories.items()) or "none"
        if record.needs_push:
            log.error(
                "%s %s is corrupt on disk (%s): quarantined; push it again (linked in %s)",
                record.kind,
                record.digest,
                record.problem,
                repos,
            )
        else:
            log.warning(
                "%s %s is corrupt on disk (%s): quarantined, fetching it again (linked in %s)",
                record.kind,
                record.digest,
                record.problem,
                repos,
            )
            await self._refetch(record)
        return record

    async def _refetch(self, record: QuarantineRecord) -> bool:
        for repo, kind in record.repositories.items():
            if kind != "proxied":
                continue
            try:
                if await self.refetch(repo, Digest.parse(record.digest), record.kind):
                    return True
            except Exception as exc:
                log.warning("fetching %s again for %s failed: %s", record.digest, repo, exc)
        return False

    async def heal(self, verdict: Verdict, kind: str = "manifest") -> bool:
        """A file found bad outside a pass (a manifest read from disk, a blob file of the
        wrong size opened to be served): quarantine it, fetch it again if it is proxied (a
        blob in the background). True when good bytes are in place again to be read."""
        digest = Digest.parse(verdict.digest)
        record = await self._quarantine(verdict)
        if record is None and not self.store.has_content(digest):
            # A concurrent reader quarantined it first: join its fetch (single-flight).
            repos = await trio.to_thread.run_sync(
                linking_repositories, self.store.index, verdict.digest
            )
            kinds = {repo: "proxied" if self.is_proxied(repo) else "pushed" for repo in repos}
            await self._refetch(QuarantineRecord(verdict.digest, kind, 0, 0, "", kinds))
        return self.store.has_content(digest)

    # ---- reporting -----------------------------------------------------------------------

    def progress(self) -> dict[str, Any]:
        return {
            "enabled": self.config.enabled,
            "rate_bytes_per_second": self.config.rate,
            "interval_seconds": self.config.interval,
            "running": self.running,
            "pass_started": self.pass_started if self.running else None,
            "pass_objects_verified": self.pass_objects if self.running else None,
            "pass_bytes_verified": self.pass_bytes if self.running else None,
            "objects_verified": self.objects_verified,
            "bytes_verified": self.bytes_verified,
            "corrupt_found": self.corrupt_found,
            "last_full_pass": self.last_full_pass,
            "last_pass": self.last_pass,
        }

    async def status(self) -> dict[str, Any]:
        """Progress, and the quarantined objects (pushed ones wait for a re-push)."""
        records = await trio.to_thread.run_sync(quarantined, self.store.layout, self.store.index)
        waiting = [
            r["digest"]
            for r in records
            if not r["restored"] and "proxied" not in r["repositories"].values()
        ]
        return {**self.progress(), "quarantined": records, "awaiting_repush": waiting}
