"""The preheat engine: triggers, the job queue and runner, watched tags, provider health.

Runs in the process that owns fetches (the first serving process), beside GC and eviction.

Triggers:
- manual: `edgecache preheat run POLICY`, `edgecache preheat IMAGE...` (admin API);
- schedule: a policy's cron expression (server local time);
- events (a policy's `on`): push (a manifest pushed here), preload (an image imported by
  `edgecache preload`), pull (a proxied manifest this repository did not hold, fetched for a
  client's pull by tag: Harbor fires nothing for proxy-cache projects), watch (see below);
- watch: each of a policy's `watch` tags is asked of its upstream with HEAD every
  watch_interval (a HEAD costs nothing against Docker Hub's pull limit); a digest that moved
  is fetched with no client asking, inside the policy's window only, at most at its bandwidth.
  A watch job still running when the window closes is stopped; the next window finishes it.

Jobs run two at a time; at most MAX_QUEUED wait. An event for an image a job of the same
policy is already waiting to run adds nothing. Preheat's own fetches fire no events.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import httpx
import trio

from ..cache.fetch import Pacer
from ..cache.routing import resolve
from ..configvalues import ConfigError
from ..oci import errors
from ..oci.manifest import parse_manifest
from ..oci.mediatypes import is_index_type
from ..store import ManifestInfo
from ..upstream import UpstreamError
from . import providers
from .config import PolicyConfig, PreheatConfig, ProviderConfig, parse_policy, split_image
from .jobs import FINAL, PROGRESS_WRITE, Image, Job, new_id
from .policy import Selector, is_signed, select_manifests

if TYPE_CHECKING:
    from ..cache.routing import Target
    from ..server.app import App

log = logging.getLogger("edgecache.preheat")

MAX_QUEUED = 100
RESERVED = 10  # queue places events never take
CONCURRENT_JOBS = 2
MAX_IMAGES = 1000  # images one job resolves
HEALTH_INTERVAL = 30.0
MAX_BACKOFF = 60.0
# cosign's own artifacts are tags too; a policy over "**" tags does not preheat them.
_COSIGN_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(sig|att|sbom)")

# Set while a preheat job fetches: what it stores fires no events.
_IN_JOB: contextvars.ContextVar[bool] = contextvars.ContextVar("preheat_job", default=False)


class PreheatError(Exception):
    """A request the engine refuses (the admin API answers it with 4xx)."""


class Preheater:
    def __init__(
        self,
        app: App,
        config: PreheatConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.config = config
        self.clock = clock
        self.public_url = ""  # this server's URL (run.py sets it once bound)
        self.policies: dict[str, PolicyConfig] = {p.name: p for p in config.policies}
        self.admin_policies: set[str] = set()
        self._queue: deque[Job] = deque()
        self._wake = trio.Event()
        self._running: dict[str, tuple[Job, trio.CancelScope]] = {}
        self._recent: dict[str, Job] = {}  # jobs of this run, for live progress
        self._to_write: dict[str, Job] = {}
        self._dropped = 0
        self._dropped_logged = -math.inf
        self._flush = trio.Event()
        self.watch_state: dict[tuple[str, str], dict[str, Any]] = {}
        self.health: dict[str, dict[str, Any]] = {}
        self._loops: trio.CancelScope | None = None
        self._loops_changed = trio.Event()
        self.on_job_end: Callable[[Job], None] = lambda job: None
        self.on_health: Callable[[str, bool], None] = lambda name, up: None
        self.on_bytes: Callable[[str, int], None] = lambda policy, n: None
        # Where recorded events go (run.py: the app's, which also starts scans).
        self.on_event: Callable[[str, str, str | None, str], None] = self.event
        self._load_admin_policies()

    # ---- policies set through the admin API ----------------------------------------------

    def _load_admin_policies(self) -> None:
        for table in self.app.store.index.preheat_records("policy/"):
            try:
                policy = parse_policy("admin", table, self.config.providers)
            except ConfigError as exc:
                log.warning(
                    "a preheat policy set through the admin API is no longer valid: %s", exc
                )
                continue
            try:
                self._check_watch(policy)
            except PreheatError as exc:  # the config's upstreams changed since
                log.warning("a preheat policy set through the admin API is left out: %s", exc)
                continue
            self.policies[policy.name] = policy
            self.admin_policies.add(policy.name)

    async def put_policy(self, table: object) -> PolicyConfig:
        try:
            policy = parse_policy("admin", table, self.config.providers)
        except ConfigError as exc:
            raise PreheatError(str(exc)) from None
        if policy.name in self.policies and policy.name not in self.admin_policies:
            raise PreheatError(
                f"policy {policy.name!r} is in the config file; change it there (the admin "
                "API sets and deletes only its own)"
            )
        if policy.severity and not self.app.config.scan.scanners:
            raise PreheatError(
                f"policy {policy.name!r}: severity filters on vulnerability reports, and no "
                "[scanners.<name>] is configured"
            )
        if policy.name not in self.policies and len(self.policies) >= 100:
            raise PreheatError("at most 100 preheat policies")
        self._check_watch(policy)
        record = policy.as_table()
        await trio.to_thread.run_sync(
            self.app.store.index.put_preheat, f"policy/{policy.name}", record
        )
        self.policies[policy.name] = policy
        self.admin_policies.add(policy.name)
        self._restart_loops()
        return policy

    async def delete_policy(self, name: str) -> bool:
        if name not in self.policies:
            return False
        if name not in self.admin_policies:
            raise PreheatError(
                f"policy {name!r} is in the config file; remove it there (the admin API "
                "deletes only the policies it set)"
            )
        await trio.to_thread.run_sync(self.app.store.index.put_preheat, f"policy/{name}", None)
        del self.policies[name]
        self.admin_policies.discard(name)
        self.watch_state = {k: v for k, v in self.watch_state.items() if k[0] != name}
        self._restart_loops()
        return True

    def _check_watch(self, policy: PolicyConfig) -> None:
        for ref in policy.watch:
            repo, _ = split_image(ref)
            try:
                proxied = resolve(self.app.config, repo, None).proxied
            except errors.OCIError:
                proxied = False
            if not proxied:
                raise PreheatError(
                    f"policy {policy.name!r}: watch {ref!r}: expected a repository of an "
                    "upstream, as clients name it (<upstream>/<repository>:<tag>)"
                )

    def _restart_loops(self) -> None:
        if self._loops is not None:
            self._loops.cancel()

    # ---- submitting ----------------------------------------------------------------------

    def submit(
        self,
        trigger: str,
        *,
        policy: PolicyConfig | None = None,
        images: Iterable[Image] | None = None,
        providers_: Iterable[str] | None = None,
        selector: Selector | None = None,
        deadline: float | None = None,
    ) -> Job:
        """Queue a job: a policy's (its selection, or `images`), or images by hand."""
        if len(self._queue) >= MAX_QUEUED:
            raise PreheatError(
                f"{MAX_QUEUED} preheat jobs are waiting already; try again when some are done"
            )
        names = list(providers_ or (policy.providers if policy else ("site",)))
        for name in names:
            if name not in self.config.providers:
                raise PreheatError(
                    f"no preheat provider {name!r} (configured: {', '.join(self.config.providers)})"
                )
        job = Job(
            new_id(self.clock()),
            trigger,
            names,
            list(images or []),
            policy=policy.name if policy else None,
            created=self.clock(),
        )
        job.selector = selector or (policy.selector if policy else Selector())
        job.select_all = images is None
        job.deadline = deadline
        self._queue.append(job)
        self._recent[job.id] = job
        self._trim_recent()
        self._wake.set()
        self._mark(job)
        log.info(
            "preheat job %s queued (%s%s)",
            job.id, trigger, f", policy {policy.name}" if policy else "",
        )  # fmt: skip
        return job

    def event(self, kind: str, repository: str, tag: str | None, digest: str) -> None:
        """A push, preload or first proxy pull: the matching policies' jobs (never raises)."""
        if _IN_JOB.get():
            return
        try:
            self._event(kind, repository, tag, digest)
        except Exception:  # a push or a pull must not fail for preheat's sake
            log.exception("preheat %s event of %s failed", kind, repository)

    def _event(self, kind: str, repository: str, tag: str | None, digest: str) -> None:
        for policy in list(self.policies.values()):
            if not policy.enabled or kind not in policy.on:
                continue
            selector = policy.selector
            if not selector.repository_matches(repository):
                continue
            if tag is None and "**" not in selector.tags and "*" not in selector.tags:
                continue
            if tag is not None and not selector.tag_matches(tag):
                continue
            if self._waiting(policy.name, repository, digest):
                continue
            image = Image(repository, digest, tag=tag, digest=digest)
            # Events of a policy join its job still waiting to run: a burst of pulls makes one
            # job, and the queue keeps room for the operator's and the schedule's.
            waiting = next(
                (j for j in self._queue
                 if j.policy == policy.name and j.trigger == kind and len(j.images) < MAX_IMAGES),
                None,
            )  # fmt: skip
            if waiting is not None:
                waiting.images.append(image)
                self._mark(waiting)
                continue
            if len(self._queue) >= MAX_QUEUED - RESERVED:
                self._dropped += 1
                if time.monotonic() - self._dropped_logged >= 60:
                    log.warning(
                        "preheat: %d event(s) dropped: %d jobs waiting (the last %d places are "
                        "kept for manual and scheduled runs)", self._dropped, len(self._queue),
                        RESERVED,
                    )  # fmt: skip
                    self._dropped, self._dropped_logged = 0, time.monotonic()
                continue
            self.submit(kind, policy=policy, images=[image])

    def _close_interrupted(self) -> None:
        """Jobs a server that died (kill -9, power) left running or queued: recorded as
        stopped, so that no listing shows them going on for ever."""
        index = self.app.store.index
        for record in index.preheat_records("job/"):
            if record.get("state") in FINAL:
                continue
            record["state"] = "stopped"
            record["error"] = "the server stopped during the job"
            index.put_preheat(f"job/{record['id']}", record)

    async def drain_events(self) -> int:
        """The events other processes recorded in the index (`edgecache preload`), handled
        and removed; the number of images they named."""
        index = self.app.store.index
        count = 0
        for record in reversed(index.preheat_records("event/")):
            await trio.to_thread.run_sync(index.put_preheat, f"event/{record.get('id', '')}", None)
            images = record.get("images")
            kind = record.get("kind")
            if kind not in ("preload", "push") or not isinstance(images, list):
                continue
            for image in images[:MAX_IMAGES]:
                if isinstance(image, dict) and isinstance(image.get("digest"), str):
                    tag = image.get("tag")
                    self.on_event(
                        kind,
                        str(image.get("repository")),
                        tag if isinstance(tag, str) else None,
                        image["digest"],
                    )
                    count += 1
        return count

    def _waiting(self, policy: str, repository: str, digest: str) -> bool:
        for job in self._queue:
            if job.policy == policy and any(
                i.repository == repository and digest in (i.digest, i.reference) for i in job.images
            ):
                return True
        return False

    def cancel(self, job_id: str) -> bool:
        for job in self._queue:
            if job.id == job_id:
                self._queue.remove(job)
                job.state = "cancelled"
                job.finished = self.clock()
                job.settle()
                self._mark(job)
                return True
        running = self._running.get(job_id)
        if running is None:
            return False
        running[0].state = "cancelled"
        running[1].cancel()
        return True

    def job(self, job_id: str) -> dict[str, Any] | None:
        live = self._recent.get(job_id)
        if live is not None:
            return live.record()
        return self.app.store.index.preheat_record(f"job/{job_id}")

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: the index's records, this run's (maybe not written yet) live."""
        records = {r["id"]: r for r in self.app.store.index.preheat_records("job/", limit)}
        records.update((job.id, job.record()) for job in self._recent.values())
        return [records[i] for i in sorted(records, reverse=True)[:limit]]

    def _trim_recent(self) -> None:
        while len(self._recent) > 200:
            oldest = next(iter(self._recent))
            if self._recent[oldest].state not in FINAL or oldest in self._to_write:
                break
            del self._recent[oldest]

    def _mark(self, job: Job) -> None:
        """The job's record is to be written (by _writer, in a thread, at most every
        PROGRESS_WRITE seconds: LMDB writes never run on the event loop)."""
        self._to_write[job.id] = job
        self._flush.set()

    async def flush(self) -> None:
        """Write the records marked since the last write."""
        jobs, self._to_write = self._to_write, {}
        if not jobs:
            return
        records = [job.record() for job in jobs.values()]
        index, keep = self.app.store.index, self.config.jobs_kept

        def work() -> None:
            for record in records:
                index.put_preheat(f"job/{record['id']}", record, keep=keep)

        try:
            await trio.to_thread.run_sync(work)
        except Exception:
            log.exception("writing %d preheat job records failed", len(records))

    async def _writer(self) -> None:
        try:
            while True:
                await self._flush.wait()
                self._flush = trio.Event()
                await self.flush()
                self._trim_recent()
                await trio.sleep(PROGRESS_WRITE)
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    # ---- running ---------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            for _ in range(CONCURRENT_JOBS):
                nursery.start_soon(self._runner)
            nursery.start_soon(self._guarded, self._health_loop)
            await trio.to_thread.run_sync(self._close_interrupted)
            await self.drain_events()  # recorded while no server ran
            task_status.started()
            while True:
                with trio.CancelScope() as self._loops:
                    async with trio.open_nursery() as loops:
                        for policy in list(self.policies.values()):
                            if not policy.enabled:
                                continue
                            if policy.schedule:
                                loops.start_soon(self._guarded, self._cron_loop, policy)
                            for ref in policy.watch if "watch" in policy.on else ():
                                loops.start_soon(self._guarded, self._watch_loop, policy, ref)
                        await trio.sleep_forever()  # until the policies change

    async def _runner(self) -> None:
        while True:
            while not self._queue:
                self._wake = trio.Event()
                await self._wake.wait()
            job = self._queue.popleft()
            await self._run_job(job)

    async def _run_job(self, job: Job) -> None:
        token = _IN_JOB.set(True)
        job.state = "running"
        job.started = self.clock()
        self._mark(job)
        policy = self.policies.get(job.policy or "")
        deadline = job.deadline
        try:
            pace = Pacer(policy.bandwidth) if policy and policy.bandwidth else None
            with trio.CancelScope() as scope:
                if deadline is not None:
                    scope.deadline = trio.current_time() + max(0.0, deadline - self.clock())
                self._running[job.id] = (job, scope)
                await self._resolve_all(job, policy)
                async with trio.open_nursery() as nursery:
                    for name in job.providers:
                        nursery.start_soon(self._provide, job, self.config.providers[name], pace)
            if scope.cancelled_caught and job.state != "cancelled":
                job.state = "stopped"
                job.error = "the policy's window closed; the next window goes on"
            job.settle()
        except Exception as exc:  # a bug here must not take the server down
            log.exception("preheat job %s failed", job.id)
            job.state = "failed"
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            _IN_JOB.reset(token)
            self._running.pop(job.id, None)
            if job.state not in FINAL:  # the server is stopping: cancelled from outside
                job.state = "stopped"
                job.error = "the server stopped during the job"
                job.settle()
            job.finished = self.clock()
            self._mark(job)
            self.on_job_end(job)
            log.info(
                "preheat job %s %s: %d images, %d bytes, %.1f s",
                job.id, job.state, len(job.images), job.bytes, job.finished - job.started,
            )  # fmt: skip

    async def _resolve_all(self, job: Job, policy: PolicyConfig | None) -> None:
        selector: Selector = job.selector or Selector()
        if job.select_all and policy is not None:
            job.images = self._selection(policy)
        for image in job.images[:MAX_IMAGES]:
            try:
                await self._resolve(image, selector, policy is not None)
                if policy is not None and policy.severity and image.ready:
                    image.skipped = self._vulnerable(image, policy.severity)
            except (
                errors.OCIError,
                providers.Fail,
                providers.Retry,
                UpstreamError,
                OSError,
                ValueError,
            ) as exc:
                image.error = getattr(exc, "message", None) or str(exc)
            self._mark(job)
        del job.images[MAX_IMAGES:]

    def _selection(self, policy: PolicyConfig) -> list[Image]:
        """What a policy run covers: the tags held here that its patterns match, and the
        tags it watches."""
        images: dict[tuple[str, str], Image] = {}
        for ref in policy.watch:  # first: never cut off by the held tags
            repo, tag = split_image(ref)
            images.setdefault((repo, tag), Image(repo, tag, tag=tag))
        store = self.app.store
        for repo in store.repositories():
            if len(images) >= MAX_IMAGES:
                break
            if not policy.selector.repository_matches(repo):
                continue
            for tag in store.tags(repo):
                if _COSIGN_TAG.fullmatch(tag) or not policy.selector.tag_matches(tag):
                    continue
                images.setdefault((repo, tag), Image(repo, tag, tag=tag))
                if len(images) >= MAX_IMAGES:
                    log.warning("preheat policy %s: more than %d images; the first %d run",
                                policy.name, MAX_IMAGES, MAX_IMAGES)  # fmt: skip
                    break
        return list(images.values())

    async def _resolve(self, image: Image, selector: Selector, filtered: bool) -> None:
        """Tag -> digest (a proxied tag asked of the upstream: a new digest is fetched), the
        manifests to preheat, and the policy's filters."""
        target = resolve(self.app.config, image.repository, None)
        reference = image.digest or image.reference
        info = await self._top_manifest(target, image, reference)
        image.digest = str(info.digest)
        image.media_type = info.media_type
        image.size = info.size
        if is_index_type(info.media_type):
            data = await trio.to_thread.run_sync(info.path.read_bytes)
            index = parse_manifest(data, info.media_type)
            entries = select_manifests(
                {"manifests": [d.to_json() for d in index.manifest_children]}, selector.platforms
            )
            image.manifests = [
                {
                    "digest": e["digest"],
                    "mediaType": e.get("mediaType", ""),
                    "size": e.get("size", 0),
                    "platform": _platform_text(e.get("platform")),
                }
                for e in entries
            ]
            if not image.manifests:
                wanted = ", ".join(str(p) for p in selector.platforms)
                image.skipped = f"the index has no manifest for {wanted}"
                return
        else:
            image.manifests = [
                {"digest": image.digest, "mediaType": info.media_type, "size": info.size}
            ]
        if filtered and selector.signed and not await self._signed(target, image):
            image.skipped = "not signed (no cosign signature tag or signature referrer)"

    def _vulnerable(self, image: Image, threshold: str) -> str:
        """Why the severity filter leaves the image out ("" when it does not)."""
        from ..scan.report import severity_rank
        from ..scan.service import stored_report

        for entry in image.manifests:
            found = stored_report(self.app, image.repository, entry["digest"])
            if found is None:
                return "not scanned yet (the policy's severity filter needs a report)"
            worst = found[1].severity
            if worst != "None" and severity_rank(worst) >= severity_rank(threshold):
                return (
                    f"vulnerable: its report's highest severity is {worst} "
                    f"(the policy takes images below {threshold})"
                )
        return ""

    async def _top_manifest(self, target: Target, image: Image, reference: str) -> ManifestInfo:
        app = self.app
        if target.proxied and not reference.startswith("sha256:"):
            try:
                return await app.proxy.refresh_tag(target, app.upstream(target), reference)
            except (UpstreamError, errors.OCIError) as exc:
                cached = app.store.manifest(target.store_repo, reference)
                if cached is None:
                    raise
                log.info("preheat: %s: upstream failed (%s); the cached digest", image.name, exc)
                return cached
        return await providers.manifest_info(self, target, reference)

    async def _signed(self, target: Target, image: Image) -> bool:
        app = self.app
        tags = list(app.store.tags(target.store_repo))
        from ..oci.digest import Digest

        referrers = list(app.store.referrers(target.store_repo, Digest.parse(image.digest)))
        if target.proxied:
            upstream = app.upstream(target)
            with suppress(errors.OCIError):
                tags += await app.proxy.tags(target, upstream)
            with suppress(errors.OCIError):
                referrers += await app.proxy.referrers(
                    target, upstream, Digest.parse(image.digest), None
                )
        return is_signed(image.digest, tags, referrers)

    async def _provide(self, job: Job, provider: ProviderConfig, pace: Pacer | None) -> None:
        handler = providers.PROVIDERS[provider.type]
        for image in job.images:
            if not image.ready:
                continue
            result = job.result(provider.name, image)
            started = time.monotonic()
            attempt = 0
            while True:
                attempt += 1
                result.attempts = attempt
                result.state = "running"
                self._mark(job)
                try:
                    outcome = await handler(self, provider, image, pace)
                except providers.Retry as exc:
                    if provider.type != "site":
                        self._set_health(provider.name, False, str(exc))
                    if attempt > provider.retries:
                        result.state, result.error = "failed", str(exc)
                        break
                    result.error = str(exc)
                    delay = exc.after or min(MAX_BACKOFF, 2.0 ** (attempt - 1))
                    log.info(
                        "preheat %s to %s: %s; retrying in %.0f s",
                        image.name, provider.name, exc, delay,
                    )  # fmt: skip
                    await trio.sleep(delay)
                    continue
                except providers.Fail as exc:
                    result.state, result.error = "failed", str(exc)
                    break
                except errors.OCIError as exc:
                    result.state, result.error = "failed", exc.message
                    break
                except Exception as exc:
                    log.exception("preheat %s to %s failed", image.name, provider.name)
                    result.state, result.error = "failed", f"{type(exc).__name__}: {exc}"
                    break
                result.state = outcome.state
                result.bytes, result.detail = outcome.bytes, outcome.detail
                if provider.type != "site":
                    self._set_health(provider.name, True, "")
                result.error = ""
                if outcome.bytes:
                    self.on_bytes(job.policy or "manual", outcome.bytes)
                break
            result.seconds = time.monotonic() - started
            if result.state == "failed":
                job.provider_errors[provider.name] = result.error
                log.warning("preheat %s to %s failed: %s", image.name, provider.name, result.error)
            self._mark(job)

    # ---- what providers ask of the engine ---------------------------------------------------

    async def manifest(self, target: Target, reference: str) -> ManifestInfo:
        return await providers.manifest_info(self, target, reference)

    def registry_url(self, provider: ProviderConfig) -> str:
        return provider.registry_url or self.public_url

    def pull_token(self, repository: str, ttl: float) -> str:
        issuer = self.app.auth.tokens
        assert issuer is not None
        return issuer.pull_token("edgecache:preheat", repository, ttl)

    def client(self, provider: ProviderConfig) -> httpx.AsyncClient:
        from ..upstream.session import service_client

        return service_client(provider.ca_file)

    # ---- schedules, watched tags, health ---------------------------------------------------

    async def _guarded(self, loop: Callable[..., Awaitable[None]], *args: Any) -> None:
        """A background loop that a bug (or an input nobody foresaw) cannot end, nor the
        server with it: logged, then started again after a minute."""
        while True:
            try:
                await loop(*args)
                return
            except Exception:
                log.exception("preheat: %s failed; starting it again in 60 s", loop.__name__)
                await trio.sleep(60)

    async def _cron_loop(self, policy: PolicyConfig) -> None:
        from croniter import croniter

        schedule = croniter(policy.schedule, datetime.datetime.fromtimestamp(self.clock()))
        while True:
            when = schedule.get_next(float)
            await trio.sleep(max(0.0, when - self.clock()))
            try:
                self.submit("schedule", policy=policy)
            except PreheatError as exc:
                log.warning("scheduled preheat of %s skipped: %s", policy.name, exc)

    def _minute_of_day(self) -> float:
        now = datetime.datetime.fromtimestamp(self.clock())
        return now.hour * 60 + now.minute + now.second / 60

    async def _watch_loop(self, policy: PolicyConfig, ref: str) -> None:
        repo, tag = split_image(ref)
        target = resolve(self.app.config, repo, None)
        upstream = self.app.upstream(target)
        state = self.watch_state.setdefault((policy.name, ref), {"ref": ref, "policy": policy.name})
        while True:
            try:
                remote = await upstream.head_manifest(target.remote_repo, tag)
                state["upstream_digest"] = str(remote.digest) if remote.digest else None
                state["error"] = None
            except UpstreamError as exc:
                state["error"] = str(exc)
                remote = None
            state["checked"] = self.clock()
            cached = self.app.store.tag(target.store_repo, tag)
            state["cached_digest"] = str(cached.digest) if cached else None
            moved = (
                remote is not None
                and remote.digest is not None
                and (cached is None or cached.digest != remote.digest)
            )
            state["moved"] = moved
            wait = policy.watch_interval
            if moved:
                window = policy.window
                minute = self._minute_of_day()
                if window is None or window.contains(minute):
                    if not self._watch_running(policy.name, repo, tag):
                        deadline = None
                        if window is not None:
                            deadline = self.clock() + _minutes_until_close(window, minute) * 60
                        image = Image(repo, tag, tag=tag)
                        try:
                            job = self.submit(
                                "watch", policy=policy, images=[image], deadline=deadline
                            )
                            state["job"] = job.id
                        except PreheatError as exc:
                            log.warning("watch of %s: %s", ref, exc)
                    state["waiting_for_window"] = False
                else:
                    state["waiting_for_window"] = True
                    wait = min(wait, max(1.0, window.minutes_until_open(minute) * 60))
            await trio.sleep(wait)

    def _watch_running(self, policy: str, repo: str, tag: str) -> bool:
        jobs = [*self._queue, *(j for j, _ in self._running.values())]
        return any(
            j.policy == policy and j.trigger == "watch"
            and any(i.repository == repo and i.tag == tag for i in j.images)
            for j in jobs
        )  # fmt: skip

    async def _health_loop(self) -> None:
        while True:
            for provider in self.config.providers.values():
                if provider.type == "site":
                    self.health[provider.name] = {"up": True}
                    continue
                await self.check_health(provider)
            await trio.sleep(HEALTH_INTERVAL)

    async def check_health(self, provider: ProviderConfig) -> bool:
        path = "/healthy" if provider.type == "dragonfly" else "/health"
        error = ""
        try:
            from ..upstream.session import call_service

            async with self.client(provider) as client:
                response = await call_service(client, "GET", provider.url + path, deadline=5.0)
            up = response.status_code == 200
            if not up:
                error = f"GET {path}: {response.status_code}"
        except httpx.HTTPError as exc:
            up, error = False, f"GET {path}: {type(exc).__name__}"
        self._set_health(provider.name, up, error)
        return up

    def _set_health(self, name: str, up: bool, error: str) -> None:
        """What the last health check or request to a provider said."""
        before = self.health.get(name, {}).get("up")
        self.health[name] = {"up": up, "checked": self.clock(), "error": error[:300]}
        if before is not None and before != up:
            log.warning("preheat provider %s is %s", name, "up" if up else f"down ({error})")
        self.on_health(name, up)

    def status(self) -> dict[str, Any]:
        running = [job.id for job, _ in self._running.values()]
        return {
            "policies": sorted(self.policies),
            "queued": len(self._queue),
            "running": running,
            "providers": [
                {
                    "provider": name,
                    "type": p.type,
                    "url": p.url,
                    "up": self.health.get(name, {}).get("up"),
                    "error": self.health.get(name, {}).get("error") or "",
                }
                for name, p in self.config.providers.items()
            ],
            "watch": [dict(v) for v in self.watch_state.values()],
        }


def _platform_text(platform: object) -> str:
    if not isinstance(platform, dict):
        return ""
    parts = [str(platform.get("os", "")), str(platform.get("architecture", ""))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def _minutes_until_close(window: Any, minute: float) -> float:
    return (window.end - minute) % 1440 or 1440.0


def parse_images(values: Iterable[str]) -> list[Image]:
    """`repo:tag` / `repo@digest` as the CLI and the admin API take them."""
    images = []
    from ..oci.names import Reference, validate_repository

    for value in values:
        repo, ref = split_image(value)
        try:
            validate_repository(repo)
            parsed = Reference.parse(ref)
        except errors.OCIError as exc:
            raise PreheatError(f"{value!r}: {exc.message}") from None
        if parsed.digest is not None:
            images.append(Image(repo, ref, digest=ref))
        else:
            images.append(Image(repo, ref, tag=ref))
    return images
