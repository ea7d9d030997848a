"""The admin API (bearer token from <data>/run/admin-token): what CLI commands ask the server.

GET  status            store statistics: sizes by repository, hit ratio, oldest content
POST gc[?dry_run=true] run garbage collection now (or report what it would free)
GET  gc/history        records of past runs, newest first
POST evict             apply the size / free-disk / age limits now
POST scrub[?wait=false] run a full scrub pass now (verify every stored file) and report it
                       (or only start it)
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import trio

from .. import __version__
from ..oci import errors
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
    else:
        raise errors.NotFound(f"no admin endpoint {method} {req.path}")


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
