"""The admin API (bearer token from <data>/run/admin-token): what CLI commands ask the server.

GET  status            store statistics: sizes by repository, hit ratio, oldest content
POST gc[?dry_run=true] run garbage collection now (or report what it would free)
GET  gc/history        records of past runs, newest first
POST evict             apply the size / free-disk / age limits now
POST scrub[?wait=false] run a full scrub pass now (verify every stored file) and report it
                       (or only start it)
GET  preheat/policies  the preheat policies (from the config file and from this API)
PUT  preheat/policies/NAME   set a policy (JSON: the keys of [[preheat.policies]])
DELETE preheat/policies/NAME remove a policy this API set
POST preheat/run       {"policy": NAME} or {"images": [...], "providers": [...],
                       "platforms": [...]}: queue a job, answered 202 with its record
GET  preheat/jobs[?limit=N]  jobs, newest first; preheat/jobs/ID one job
POST scan              {"image": "repo:tag" | "repo@digest", "scanner": NAME, "wait": true}:
                       scan an image (each platform manifest of an index) now
GET  report?image=I[&scanner=S]  the stored reports of an image's manifests
GET  pull_policies     the pull policies in the order they are tried (the API's, then the
                       config's)
PUT  pull_policies/NAME  set one (JSON: the keys of [[pull_policies]]); DELETE removes it
POST preheat/jobs/ID/cancel  cancel a queued or running job
POST preheat/events    read the events `edgecache preload` recorded in the index (what it
                       imported), for the policies' event triggers
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import trio

from .. import __version__
from ..oci import errors, jsontext
from ..oci.integers import parse_decimal
from . import metricsum
from .http import Request

if TYPE_CHECKING:
    from .app import App

PREFIX = "/_edgecache/admin/"


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


async def dispatch(app: App, req: Request) -> None:
    name = req.path[len(PREFIX) :]
    method = req.method
    if name == "status" and method in ("GET", "HEAD"):
        await req.respond_json(200, await status(app))
    elif name == "gc" and method == "POST":
        record = await app.housekeeper.collect(
            dry_run=_flag(req.query.get("dry_run")), trigger="admin API"
        )
        await req.respond_json(200, record)
    elif name == "gc/history" and method in ("GET", "HEAD"):
        # parse_decimal, not isdigit() + int(): "²" and 5000-digit limits were 500s.
        limit = parse_decimal(req.query.get("limit", ""))
        await req.respond_json(200, app.housekeeper.history(50 if limit is None else limit))
    elif name == "evict" and method == "POST":
        await req.respond_json(200, await app.housekeeper.evict(trigger="admin API"))
    elif name == "scrub" and method == "POST":
        wait = req.query.get("wait", "true").lower() not in ("0", "false", "no")
        await req.respond_json(200, await app.housekeeper.scrub.request_pass(wait=wait))
    elif name.startswith("preheat/"):
        await _preheat(app, req, name[len("preheat/") :])
    elif name == "pull_policies" or name.startswith("pull_policies/"):
        await _pull_policies(app, req, name.partition("/")[2])
    elif name == "scan" and method == "POST":
        await _scan(app, req)
    elif name == "report" and method in ("GET", "HEAD"):
        await _report(app, req)
    else:
        raise errors.NotFound(f"no admin endpoint {method} {req.path}")


MAX_BODY = 1 << 20


async def _json_body(req: Request) -> dict[str, Any]:
    data = await req.read_body(MAX_BODY)
    try:
        value = jsontext.loads(data or b"{}")  # no NaN, no recursion blow-up: one ValueError
    except ValueError as exc:
        raise errors.BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise errors.BadRequest("the body must be a JSON object")
    return value


async def _preheat(app: App, req: Request, name: str) -> None:
    from ..preheat.engine import PreheatError, parse_images

    engine = app.preheat
    if engine is None:
        raise errors.NotFound("preheat runs in the owner process only")
    method = req.method
    try:
        if name == "policies" and method in ("GET", "HEAD"):
            tables = [
                p.as_table() | {"source": "admin" if p.name in engine.admin_policies else "config"}
                for p in engine.policies.values()
            ]
            await req.respond_json(200, tables)
        elif name.startswith("policies/") and method == "PUT":
            body = await _json_body(req)
            wanted = name[len("policies/") :]
            if body.setdefault("name", wanted) != wanted:
                raise errors.BadRequest(
                    f"the body names policy {body['name']!r}, the URL {wanted!r}"
                )
            policy = await engine.put_policy(body)
            await req.respond_json(200, policy.as_table() | {"source": "admin"})
        elif name.startswith("policies/") and method == "DELETE":
            wanted = name[len("policies/") :]
            if not await engine.delete_policy(wanted):
                raise errors.NotFound(f"no preheat policy {wanted!r}")
            await req.respond_json(200, {"deleted": wanted})
        elif name == "run" and method == "POST":
            body = await _json_body(req)
            job = _submit(engine, body, parse_images)
            await req.respond_json(202, job.record())
        elif name == "jobs" and method in ("GET", "HEAD"):
            limit = parse_decimal(req.query.get("limit", ""))
            await req.respond_json(200, engine.jobs(50 if limit is None else min(limit, 1000)))
        elif name.startswith("jobs/") and name.endswith("/cancel") and method == "POST":
            job_id = name[len("jobs/") : -len("/cancel")]
            if not engine.cancel(job_id):
                raise errors.NotFound(f"no queued or running preheat job {job_id!r}")
            await req.respond_json(200, {"cancelled": job_id})
        elif name.startswith("jobs/") and method in ("GET", "HEAD"):
            record = engine.job(name[len("jobs/") :])
            if record is None:
                raise errors.NotFound(f"no preheat job {name[len('jobs/') :]!r}")
            await req.respond_json(200, record)
        elif name == "events" and method == "POST":
            await req.read_body(MAX_BODY)
            count = await engine.drain_events()
            await req.respond_json(200, {"events": count})
        else:
            raise errors.NotFound(f"no admin endpoint {method} {req.path}")
    except PreheatError as exc:
        raise errors.BadRequest(str(exc)) from None


async def _pull_policies(app: App, req: Request, name: str) -> None:
    from ..configvalues import ConfigError
    from ..scan.config import parse_policy

    gate = app.gate
    gate.refresh()
    if not name and req.method in ("GET", "HEAD"):
        tables = [
            p.as_table() | {"source": "admin" if p.name in gate.admin_names else "config"}
            for p in gate.policies
        ]
        await req.respond_json(200, tables)
        return
    if not name:
        raise errors.MethodNotAllowed(f"{req.method} is not allowed on pull_policies")
    if req.method == "PUT":
        body = await _json_body(req)
        if body.setdefault("name", name) != name:
            raise errors.BadRequest(f"the body names policy {body['name']!r}, the URL {name!r}")
        if name not in gate.admin_names and any(p.name == name for p in gate.policies):
            raise errors.BadRequest(f"pull policy {name!r} is in the config file; change it there")
        if name not in gate.admin_names and len(gate.admin_names) >= 100:
            raise errors.BadRequest("at most 100 pull policies through the admin API")
        try:
            policy = parse_policy(f"pull policy {name!r}", body, app.config.scan.scanners, name)
        except ConfigError as exc:
            raise errors.BadRequest(str(exc)) from None
        await trio.to_thread.run_sync(app.store.index.put_pull_policy, name, policy.as_table())
        gate.refresh()
        await req.respond_json(200, policy.as_table() | {"source": "admin"})
    elif req.method == "DELETE":
        if name not in gate.admin_names:
            raise errors.NotFound(f"no pull policy {name!r} set through the admin API")
        await trio.to_thread.run_sync(app.store.index.put_pull_policy, name, None)
        gate.refresh()
        await req.respond_json(200, {"deleted": name})
    else:
        raise errors.MethodNotAllowed(f"{req.method} is not allowed on pull_policies/{name}")


async def _scan(app: App, req: Request) -> None:
    from ..scan.service import ScanFailed

    service = app.scans
    if service is None:
        raise errors.BadRequest("no scanner is configured ([scanners.<name>])")
    body = await _json_body(req)
    image, scanner, wait = body.get("image"), body.get("scanner"), body.get("wait", True)
    if not isinstance(image, str) or not isinstance(scanner, str | None):
        raise errors.BadRequest('expected {"image": "repo:tag", "scanner": NAME (optional)}')
    repo, digest = await service.resolve_image(image)
    try:
        tasks = service.scan_image(repo, digest, "manual", scanner)
    except ScanFailed as exc:
        raise errors.BadRequest(str(exc)) from None
    if not tasks:
        raise errors.BadRequest(f"{image}: no image manifest to scan in it")
    if wait:
        with trio.move_on_after(service.settings.scan.timeout + 5):
            for task in tasks:
                await task.done.wait()
    scans = [
        {"digest": t.digest, "scanner": t.scanner,
         "state": ("failed" if t.error else "done") if t.done.is_set() else "running",
         "severity": t.severity, "error": t.error}
        for t in tasks
    ]  # fmt: skip
    await req.respond_json(200, {"image": image, "repository": repo, "digest": digest,
                                 "scans": scans})  # fmt: skip


async def _report(app: App, req: Request) -> None:
    from ..scan.service import stored_report

    image = req.query.get("image", "")
    scanner = req.query.get("scanner") or None
    service = app.scans
    if service is None:
        raise errors.BadRequest("no scanner is configured ([scanners.<name>])")
    repo, digest = await service.resolve_image(image)
    manifests = []
    for child in service.image_manifests(repo, digest):
        found = stored_report(app, repo, child, scanner)
        if found is None:
            manifests.append({"digest": child, "scanned": False})
            continue
        record, report = found
        manifests.append(
            {"digest": child, "scanned": True, "record": record, "report": dict(report.raw)}
        )
    await req.respond_json(200, {"image": image, "repository": repo, "digest": digest,
                                 "manifests": manifests})  # fmt: skip


def _submit(engine: Any, body: dict[str, Any], parse_images: Any) -> Any:
    from ..preheat.engine import PreheatError
    from ..preheat.policy import Platform, Selector

    unknown = set(body) - {"policy", "images", "providers", "platforms"}
    if unknown:
        raise PreheatError(
            f"unknown key {sorted(unknown)[0]!r} (expected policy, images, providers, platforms)"
        )
    if "policy" in body:
        policy = engine.policies.get(body["policy"]) if isinstance(body["policy"], str) else None
        if policy is None:
            defined = ", ".join(sorted(engine.policies)) or "none"
            raise PreheatError(f"no preheat policy {body['policy']!r} (defined: {defined})")
        return engine.submit("manual", policy=policy)
    images = body.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise PreheatError('expected "policy": NAME or "images": ["repo:tag", ...]')
    if len(images) > 1000:
        raise PreheatError("at most 1000 images in one job")
    providers = body.get("providers") or ["site"]
    if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
        raise PreheatError('"providers": expected a list of provider names')
    platforms = body.get("platforms") or []
    if not isinstance(platforms, list) or not all(isinstance(p, str) for p in platforms):
        raise PreheatError('"platforms": expected a list such as ["linux/amd64"]')
    try:
        selector = Selector(platforms=tuple(Platform.parse(p) for p in platforms))
    except ValueError as exc:
        raise PreheatError(str(exc)) from None
    return engine.submit(
        "manual", images=parse_images(images), providers_=providers, selector=selector
    )


async def status(app: App) -> dict[str, Any]:
    stats = app.store.stats()
    stats["version"] = __version__
    summed = await metricsum.totals(app.metrics, app.worker_sockets())
    stats["sendfile_socket_bytes"] = int(summed.get("edgecache_sendfile_socket_bytes", 0))
    hits = int(summed.get('edgecache_proxy_requests_total{result="hit"}', 0))
    misses = int(summed.get('edgecache_proxy_requests_total{result="miss"}', 0))
    stats["proxy_hit_ratio"] = round(hits / (hits + misses), 4) if hits + misses else None
    stats["proxy_hits"], stats["proxy_misses"] = hits, misses
    stats.update(await trio.to_thread.run_sync(_content_stats, app))
    stats["gc_runs"] = app.housekeeper.runs
    stats["evicted_images"] = app.housekeeper.evicted_images
    stats["scrub"] = await app.housekeeper.scrub.status()
    stats["workers"] = app.workers_status()
    if app.preheat is not None:
        stats["preheat"] = app.preheat.status()
    if app.notifier is not None:
        stats["notifications"] = app.notifier.status()
    if app.scans is not None:
        stats["scanners"] = app.scans.status()
    site = app.fetcher.site
    if site is not None:
        fetched = 'edgecache_upstream_bytes_total{{upstream="peer {}"}}'
        served = 'edgecache_peer_served_bytes_total{{peer="{}"}}'
        stats["peers"] = site.status(
            {url: summed.get(fetched.format(url), 0) for url in site.peers},
            {url: summed.get(served.format(url), 0) for url in site.peers},
        )
        stats["uplink_bytes"] = int(
            sum(
                value
                for key, value in summed.items()
                if key.startswith("edgecache_upstream_bytes_total{")
                and 'upstream="peer ' not in key
            )
        )
    return stats


def _content_stats(app: App) -> dict[str, Any]:
    """Bytes linked into each repository (shared content counts in each), oldest content."""
    index = app.store.index
    by_repo: dict[str, int] = defaultdict(int)
    oldest: float | None = None
    with index.env.begin() as txn:
        blobs = index.db["blobs"]
        for key, _ in txn.cursor(db=index.db["links"]):
            repo, digest = key.decode().split("\0")
            raw = txn.get(digest.encode(), db=blobs)
            if raw is None:
                continue
            record = json.loads(raw)
            by_repo[repo] += int(record["size"])
            created = float(record.get("created", 0))
            oldest = created if oldest is None else min(oldest, created)
    access = index.access_times()
    least_recent = min(access.items(), key=lambda item: item[1]) if access else None
    return {
        "bytes_by_repository": dict(sorted(by_repo.items(), key=lambda kv: -kv[1])),
        "oldest_content_age_seconds": round(time.time() - oldest) if oldest else None,
        "least_recently_pulled": (
            {
                "repository": least_recent[0][0],
                "digest": least_recent[0][1],
                "seconds_ago": round(time.time() - least_recent[1]),
            }
            if least_recent
            else None
        ),
    }
