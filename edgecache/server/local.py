"""What a serving process that owns nothing answers itself for proxied repositories.

Such a process (server/workers.py) shares the store with the owner but never talks to an
upstream: a blob or a manifest by digest that is on disk is served from there; a tag is served
from disk while the owner's last upstream confirmation of it, learnt from the owner's answer
(cache/owner.py TAG_AGE), is younger than tag_ttl; everything else (a miss, a tag due for
revalidation, tag lists and referrers, which the owner caches in memory) raises NeedOwner and
the request goes to the owner whole. Local repositories need no such care: their reads are
the store's, in every process.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..bounded import BoundedCache
from ..cache.owner import NeedOwner
from ..cache.routing import Target
from ..oci import errors
from ..oci.digest import Digest
from ..oci.names import Reference
from ..oci.routes import Route
from .http import Request
from .pull import blob_headers, send_manifest, send_stored

if TYPE_CHECKING:
    from .app import App

TAGS_REMEMBERED = 50_000  # as cache/proxy.py CHECKED_ENTRIES: a forgotten one costs a forward


class LocalAnswers:
    def __init__(self, tag_ttl: float) -> None:
        self.tag_ttl = tag_ttl
        # (store repo, tag) -> monotonic time the owner last confirmed it upstream.
        self.confirmed: BoundedCache[tuple[str, str], float] = BoundedCache(TAGS_REMEMBERED)

    def learn(self, req: Request, tag_age: str | None) -> None:
        """Remember what the owner's answer to a forwarded tag request said about the tag."""
        key = req.extra.get("tag_key")
        if key is None or tag_age is None:
            return
        try:
            age = float(tag_age)
        except ValueError:
            return
        self.confirmed.put(key, time.monotonic() - max(0.0, age))

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
    app.housekeeper.pulled(target.store_repo, info.digest)
    await send_manifest(app, req, info)


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


async def _owner_only(app: App, req: Request, route: Route, target: Target) -> None:
    raise NeedOwner(f"{route.kind} of a proxied repository")


PROXY_ROUTES: dict[tuple[str, str], Callable[[App, Request, Route, Target], Awaitable[None]]] = {
    ("manifest", "GET"): get_manifest,
    ("blob", "GET"): get_blob,
    ("tags", "GET"): _owner_only,
    ("referrers", "GET"): _owner_only,
}
