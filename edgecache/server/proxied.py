"""Read side of the API for proxied repositories: cache hits, single-flight fetches, stale."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from ..cache import owner
from ..cache.failures import upstream_failures
from ..cache.fetch import PACE, BlobFetch, Pacer, reading
from ..cache.routing import Target
from ..oci import errors, mediatypes
from ..oci.digest import Digest
from ..oci.integers import parse_decimal
from ..oci.manifest import referrers_index
from ..oci.names import Reference
from ..oci.pagination import link_header, paginate, parse_n
from ..oci.ranges import parse_range
from ..oci.routes import Route
from ..preheat.config import MAX_BANDWIDTH, MIN_BANDWIDTH
from ..upstream import Upstream, UpstreamError, UpstreamNotFound
from .http import Request
from .pull import StoredFileBad, blob_headers, requested_range, send_manifest, send_stored

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("edgecache.proxy")


async def get_manifest(app: App, req: Request, route: Route, target: Target) -> None:
    upstream = app.upstream(target)
    ref = Reference.parse(route.ref or "")
    req.extra["cache"] = "hit" if app.store.resolve(target.store_repo, route.ref or "") else "miss"
    # A gated repository answers a HEAD from the stored manifest too: the gate needs it.
    gated = app.gate.policy(target.store_repo) is not None
    result = await app.proxy.manifest(
        target, upstream, ref, head=req.method == "HEAD" and not gated, via_peers=req.peer is None
    )
    if result.warning is not None:
        req.extra["cache"] = "stale"
        req.headers_out["Warning"] = result.warning
        app.metrics.stale_served.labels(upstream.name).inc()
    if result.info is None:
        remote = result.remote
        assert remote is not None
        headers = {"Content-Type": remote.media_type or mediatypes.OCI_MANIFEST}
        if remote.digest is not None:
            headers["Docker-Content-Digest"] = str(remote.digest)
        if remote.size is not None:
            headers["Content-Length"] = str(remote.size)
        await req.start(200, headers)
        await req.finish()
        return
    if ref.tag is not None and (req.peer is not None or (req.internal and not result.warning)):
        # The asking process may answer this tag itself for a while; a member whose uplink
        # failed compares it with its own (cache/proxy.py _newer_on_site), stale or not.
        age = app.proxy.tag_age(target.store_repo, ref.tag)
        if age is not None:
            req.headers_out[owner.TAG_AGE] = f"{age:.3f}"
    app.housekeeper.pulled(target.store_repo, result.info.digest)
    await send_manifest(app, req, result.info, target.store_repo)


async def get_blob(app: App, req: Request, route: Route, target: Target) -> None:
    digest = Digest.parse(route.ref or "")
    # No checkpoint from here to join(): a fetch that just finished has published already.
    fetch = app.fetcher.inflight.get(digest)
    if fetch is None:
        info = app.store.blob(target.store_repo, digest)
        if info is not None and await _send_sound(app, req, info.path, info.size, digest):
            app.metrics.proxy_hit()
            return
        fetch = app.fetcher.inflight.get(digest)  # the bad file's quarantine started one
    upstream = app.upstream(target)
    foreign = fetch is not None and target.store_repo not in fetch.repos
    if foreign or (fetch is None and app.store.has_content(digest)):
        # Another repository pulled (or is pulling) these bytes (a shared base layer): ask
        # upstream only whether this repository has them too, instead of downloading them
        # again. Bytes are never handed to a repository the upstream does not hold them in.
        await _check_upstream_has(upstream, target, digest)
        fetch = app.fetcher.inflight.get(digest)
        if fetch is not None:
            fetch.also_link(target.store_repo)
        else:
            linked = await app.store.link_blob(target.store_repo, digest)
            if linked is not None and await _send_sound(app, req, linked.path, linked.size, digest):
                return
            fetch = app.fetcher.inflight.get(digest)
    if req.method == "HEAD" and fetch is None:
        await _remote_blob_head(req, upstream, target, digest)
        return
    app.metrics.proxy_miss()
    req.extra["cache"] = "joined" if digest in app.fetcher.inflight else "miss"
    fetch, fd = app.fetcher.join(
        upstream,
        target.remote_repo,
        target.store_repo,
        digest,
        via_peers=req.peer is None,
        pace=_pace(req),
    )
    async with reading(fd):
        await fetch.started.wait()
        if fetch.error is not None and (fetch.finished or fetch.written == 0):
            raise fetch.error  # failed for good: an error answer, not a broken 200
        headers = _unverified(blob_headers(digest))
        start, end, status = 0, fetch.total, 200
        range_header = requested_range(req, headers)
        if range_header and fetch.total is not None:
            byte_range = parse_range(range_header, fetch.total)
            if byte_range is not None:
                start, end, status = byte_range.start, byte_range.end + 1, 206
                headers["Content-Range"] = byte_range.content_range(fetch.total)
        if end is not None:
            headers["Content-Length"] = str(end - start)
        await req.start(status, headers)
        if req.method == "HEAD":
            await req.finish()
            return
        async with req.until_disconnect():
            await _stream_growing(app, req, fetch, fd, start, end)
        if not req.disconnected:
            await req.finish()
        app.metrics.served("inflight", req.sent_bytes)


def _pace(req: Request) -> Pacer | None:
    """A member's capped download (a preheat's bandwidth, PACE): one started for it is capped
    alike, so the site's uplink keeps to the cap too. Only from a member (signed)."""
    rate = parse_decimal(req.headers.get(PACE, "")) if req.peer is not None else None
    return Pacer(rate) if rate is not None and MIN_BANDWIDTH <= rate <= MAX_BANDWIDTH else None


async def _send_sound(
    app: App, req: Request, path: os.PathLike[str], size: int, digest: Digest
) -> bool:
    """Serve a stored blob; False (nothing sent) when its file failed the check as it was
    opened: it is quarantined, and fetched again, which the caller then joins."""
    req.extra["cache"] = "hit"
    try:
        await send_stored(app, req, path, size, blob_headers(digest), req.headers.get("range"))
    except StoredFileBad:
        return False
    return True


async def _stream_growing(
    app: App, req: Request, fetch: BlobFetch, fd: int, start: int, end: int | None
) -> None:
    """Bytes [start, end) of a blob being downloaded, sent as they reach the disk (with
    sendfile where the connection allows it).

    The end of the body waits for the digest: the last byte of a sized body (the
    terminating chunk of an unsized one, sent by the caller's finish()) goes only once the
    download is verified and published. A failure before that raises, and the server breaks
    the connection instead of finishing the response (server/connguard.py): a client never
    holds a complete 200 of bytes that did not verify, even if it does not check the digest
    itself.
    """
    generation = fetch.generation
    offset = start
    while True:
        if fetch.generation != generation:
            raise errors.Unavailable(f"upstream sent corrupt bytes for {fetch.digest}")
        if fetch.error is not None:
            raise fetch.error
        verified = fetch.verified
        ready = fetch.written if end is None else min(fetch.written, end)
        if not verified and end is not None:
            ready = min(ready, end - 1)
        if offset < ready:
            await req.send_part(fd, offset, ready - offset, app.config.server.sendfile)
            offset = ready
        elif verified:
            break
        else:
            await fetch.changed()


def _unverified(headers: dict[str, str]) -> dict[str, str]:
    """Headers for bytes that have not verified yet: nothing may cache them as immutable."""
    headers.pop("Cache-Control", None)
    return headers


async def _check_upstream_has(upstream: Upstream, target: Target, digest: Digest) -> None:
    """Raise BlobUnknown when the upstream says its repository does not hold `digest`. Any
    other failure (unreachable, quick with the breaker; refusing credentials) passes, as the
    issue's outage rules say: the bytes are verified by digest and a download could not work
    either."""
    try:
        await upstream.head_blob(target.remote_repo, digest)
    except UpstreamNotFound:
        raise errors.BlobUnknown(
            f"blob {digest} is not in {target.remote_repo} at {upstream.name}"
        ) from None
    except UpstreamError as exc:
        log.warning("serving cached %s to %s unchecked: %s", digest, target.store_repo, exc)


async def _remote_blob_head(
    req: Request, upstream: Upstream, target: Target, digest: Digest
) -> None:
    with upstream_failures(upstream.name, f"blob {digest}", target.remote_repo, errors.BlobUnknown):
        remote = await upstream.head_blob(target.remote_repo, digest)
    headers = _unverified(blob_headers(digest))
    if remote.size is not None:
        headers["Content-Length"] = str(remote.size)
    await req.start(200, headers)
    await req.finish()


async def tags_list(app: App, req: Request, route: Route, target: Target) -> None:
    tags = sorted(await app.proxy.tags(target, app.upstream(target)))
    _list_age(app, req, "tags", target.store_repo)
    n = parse_n(req.query.get("n"))
    page, more = paginate(tags, n, req.query.get("last"))
    headers = {}
    if more and n and page:
        headers["Link"] = link_header(f"/v2/{route.name}/tags/list", n, page[-1])
    await req.respond_json(200, {"name": route.name, "tags": page}, headers)


async def referrers(app: App, req: Request, route: Route, target: Target) -> None:
    subject = Digest.parse(route.ref or "")
    wanted = req.query.get("artifactType")
    descriptors = await app.proxy.referrers(target, app.upstream(target), subject, wanted)
    # And what this cache attached itself (vulnerability reports: scan/service.py), which the
    # upstream does not have.
    known = {d.get("digest") for d in descriptors}
    descriptors = descriptors + [
        d
        for d in app.store.referrers(target.store_repo, subject)
        if d.get("digest") not in known and (wanted is None or d.get("artifactType") == wanted)
    ]
    _list_age(app, req, "referrers", target.store_repo, str(subject))
    headers = {"Content-Type": mediatypes.OCI_INDEX}
    if wanted is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    await req.respond(200, headers, referrers_index(descriptors))


def _list_age(app: App, req: Request, *key: str) -> None:
    """For a serving process that asked: how old the list is (it may answer it itself until
    list_ttl; server/local.py)."""
    if req.internal:
        age = app.proxy.list_age(*key)
        if age is not None:
            req.headers_out[owner.LIST_AGE] = f"{age:.3f}"
