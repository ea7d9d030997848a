"""What a serving process that owns nothing answers itself for proxied repositories.

Such a process (server/workers.py) shares the store with the owner but never talks to an
upstream:
- a blob or a manifest by digest that is on disk is served from there;
- a tag is served from disk while the owner's last upstream confirmation of it, learnt from
  the owner's answer (cache/owner.py TAG_AGE), is younger than tag_ttl;
- a tag list or referrers list is the owner's last answer while that is younger than list_ttl
  (LIST_AGE), as the owner caches lists for as long;
- everything else (a miss, a tag due for revalidation, a list not seen lately) raises
  NeedOwner, and the request goes to the owner whole.
Local repositories need no such care: their reads are the store's, in every process.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..bounded import BoundedCache
from ..cache.owner import LIST_AGE, TAG_AGE, Answer, NeedOwner, seconds
from ..cache.routing import Target
from ..config import ProxyConfig
from ..oci import errors
from ..oci.digest import Digest
from ..oci.names import Reference
from ..oci.routes import Route
from .http import Request
from .pull import blob_headers, send_manifest, send_stored

if TYPE_CHECKING:
    from .app import App

TAGS_REMEMBERED = 50_000  # as cache/proxy.py CHECKED_ENTRIES: a forgotten one costs a forward


@dataclass(frozen=True)
class _List:
    """The owner's answer to a tag list or referrers request, kept for list_ttl."""

    fetched: float  # monotonic time the owner fetched it from upstream
    headers: dict[str, str]
    body: bytes


class LocalAnswers:
    def __init__(self, proxy: ProxyConfig) -> None:
        self.tag_ttl = proxy.tag_ttl
        self.list_ttl = proxy.list_ttl
        # (store repo, tag) -> monotonic time the owner last confirmed it upstream.
        self.confirmed: BoundedCache[tuple[str, str], float] = BoundedCache(TAGS_REMEMBERED)
        # (path, query) -> the owner's answer; as bounded as the owner's own list cache.
        self.lists: BoundedCache[tuple[str, str], _List] = BoundedCache(
            proxy.list_cache_entries, ttl=proxy.list_ttl
        )

    def learn(self, req: Request, answer: Answer) -> None:
        """Keep what the owner's answer says may be answered here for a while."""
        now = time.monotonic()
        tag_key = req.extra.get("tag_key")
        tag_age = seconds(answer.own.get(TAG_AGE))
        if tag_key is not None and tag_age is not None:
            self.confirmed.put(tag_key, now - tag_age)
        list_key = req.extra.get("list_key")
        list_age = seconds(answer.own.get(LIST_AGE))
        fresh = list_age is not None and list_age < self.list_ttl
        if list_key is not None and fresh and answer.status == 200 and answer.body is not None:
            assert list_age is not None
            self.lists.put(list_key, _List(now - list_age, dict(answer.headers), answer.body))

    def fresh(self, store_repo: str, tag: str) -> bool:
        confirmed = self.confirmed.get((store_repo, tag))
        return confirmed is not None and time.monotonic() - confirmed < self.tag_ttl


async def get_manifest(app: App, req: Request, route: Route, target: Target) -> None:
    ref = Reference.parse(route.ref or "")
    if ref.tag is not None:
        req.extra["tag_key"] = (target.store_repo, ref.tag)
        if not app.local.fresh(target.store_repo, ref.tag):
            raise NeedOwner("a tag due for revalidation")
    info = app.store.manifest(target.store_repo, str(ref))
    if info is None:
        raise NeedOwner("a manifest not on disk")
    req.extra["cache"] = "hit"
    confirmed = app.local.confirmed.get((target.store_repo, ref.tag)) if ref.tag else None
    if req.peer is not None and confirmed is not None:  # as the owner tells members
        req.headers_out[TAG_AGE] = f"{max(0.0, time.monotonic() - confirmed):.3f}"
    app.housekeeper.pulled(target.store_repo, info.digest)
    await send_manifest(app, req, info, target.store_repo)


async def get_blob(app: App, req: Request, route: Route, target: Target) -> None:
    digest = Digest.parse(route.ref or "")
    info = app.store.blob(target.store_repo, digest)
    if info is None:
        raise NeedOwner("a blob not on disk")
    req.extra["cache"] = "hit"
    headers = blob_headers(digest)
    try:
        await send_stored(app, req, info.path, info.size, headers, req.headers.get("range"))
    except errors.BlobUnknown:
        if req.started:
            raise
        # Its file vanished (a GC between the index and the open) or failed its check (then
        # app.heal raised NeedOwner already): the owner fetches it again, or says it is gone.
        raise NeedOwner("a blob whose file is not there") from None
    app.metrics.proxy_hit()


async def get_list(app: App, req: Request, route: Route, target: Target) -> None:
    """A tag list or referrers of a proxied repository: the owner's answer while it is younger
    than list_ttl (the owner caches lists for as long)."""
    if route.kind == "referrers" and app.store.referrers(
        target.store_repo, Digest.parse(route.ref or "")
    ):
        # This cache attached some itself (reports): the owner adds them to the upstream's.
        raise NeedOwner("referrers with local ones")
    key = (req.path, req.scope.get("query_string", b"").decode("latin-1"))
    req.extra["list_key"] = key
    kept = app.local.lists.get(key)
    if kept is None or time.monotonic() - kept.fetched >= app.local.list_ttl:
        raise NeedOwner(f"{route.kind} of a proxied repository")
    headers = {k: v for k, v in kept.headers.items() if k != "content-length"}
    await req.respond(200, headers, kept.body)


PROXY_ROUTES: dict[tuple[str, str], Callable[[App, Request, Route, Target], Awaitable[None]]] = {
    ("manifest", "GET"): get_manifest,
    ("blob", "GET"): get_blob,
    ("tags", "GET"): get_list,
    ("referrers", "GET"): get_list,
}
