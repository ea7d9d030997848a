"""Pull-through decisions for manifests, tags, tag lists and referrers of proxied repositories.

- A manifest by digest is immutable: once cached it is served without asking upstream.
- A tag is revalidated with a HEAD (Docker Hub does not count HEADs against its pull limit)
  when older than `tag_ttl`, under its own short deadline; only a changed digest costs a GET.
  Concurrent pulls of one tag share one revalidation.
- Upstream trouble (unreachable, timeout, 5xx, 429, auth) never fails a pull of what is
  cached: the cached manifest is served, marked stale. Only never-cached content fails.
- With peers (edgecache/peers/), a manifest the uplink cannot give (unreachable, failing) is
  asked of the other members, each within peers/site.py ANSWER_BUDGET: an image cached on any live
  node pulls from every node while the uplink is down ("site-wide stale"). A tag learnt that
  way is answered with the stale warning and is not marked as confirmed upstream. A peer's own
  request is answered from this node's cache and uplink only (never asked on).
- Tag lists and referrers are kept in memory for `list_ttl`, at most `list_cache_entries` of
  them (least recently used dropped first): the keys are whatever repository names clients send,
  and 20,000 random names once grew this cache by 13 MiB. An upstream 404 is remembered for
  NOT_FOUND_TTL, so a client repeating a name that does not exist costs one upstream request,
  and concurrent lookups of one list share one request (single-flight).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..bounded import BoundedCache
from ..config import ProxyConfig
from ..oci import errors
from ..oci.digest import Digest
from ..oci.manifest import parse_manifest
from ..oci.names import Reference
from ..store import ManifestInfo, Store
from ..upstream import RemoteInfo, Upstream, UpstreamError, UpstreamNotFound
from ..upstream.client import RemoteManifest
from ..upstream.documents import referrers_document
from .failures import upstream_failures
from .fetch import Fetcher
from .flight import SingleFlight
from .owner import TAG_AGE, seconds
from .routing import Target

if TYPE_CHECKING:
    from ..peers.site import Site

log = logging.getLogger("edgecache.proxy")

STALE_WARNING = '110 edgecache "Response is Stale: upstream {name} unavailable ({reason})"'

NOT_FOUND_TTL = 30.0  # short: a repository created upstream shows up soon
# Tags confirmed upstream: a forgotten entry only costs one more revalidation HEAD.
CHECKED_ENTRIES = 50_000
RESOLVED_ENTRIES = 10_000


@dataclass(frozen=True)
class _NotFound:
    """A remembered upstream 404 for a list (raised again, as a copy, while it is fresh)."""

    error: UpstreamNotFound


@dataclass(frozen=True)
class ManifestResult:
    info: ManifestInfo | None  # cached (or just fetched) manifest
    remote: RemoteInfo | None = None  # HEAD of an uncached manifest answered from upstream
    warning: str | None = None  # set when serving stale content


@dataclass(frozen=True)
class _Fetched:
    info: ManifestInfo
    peer: str | None = None  # the member it came from (the uplink failed), or None


class ManifestProxy:
    def __init__(self, store: Store, config: ProxyConfig, nursery: trio.Nursery) -> None:
        self.store = store
        self.config = config
        self.flights: SingleFlight[object] = SingleFlight(nursery)
        # When each (store repo, tag) was last confirmed upstream: in memory, so a pull does
        # not cost an LMDB write. After a restart every tag is revalidated once.
        self._checked: BoundedCache[tuple[str, str], float] = BoundedCache(CHECKED_ENTRIES)
        self.lists: BoundedCache[tuple[str, ...], object] = BoundedCache(config.list_cache_entries)
        self.stale_served = 0
        # (store repo, digest) -> tag, from HEADs of uncached tags awaiting the GET by digest.
        self._resolved: BoundedCache[tuple[str, str], str] = BoundedCache(RESOLVED_ENTRIES)
        self.site: Site | None = None  # the members asked when the uplink fails
        # A manifest this repository did not hold was stored (a proxy pull's preheat event).
        self.on_new_manifest: Callable[[str, str | None, ManifestInfo], None] = (
            lambda repo, tag, info: None
        )

    async def manifest(
        self,
        target: Target,
        upstream: Upstream,
        ref: Reference,
        head: bool,
        *,
        via_peers: bool = True,
    ) -> ManifestResult:
        """`via_peers` False: a peer's request (answered from the cache and the uplink)."""
        via_peers = via_peers and self.site is not None
        if ref.digest is not None:
            cached = self.store.manifest(target.store_repo, str(ref.digest))
            if cached is not None:
                return ManifestResult(cached)
            if head:
                try:
                    return ManifestResult(None, await self._remote_head(upstream, target, ref))
                except errors.Unavailable:
                    if not via_peers:
                        raise
                    # The uplink failed: a member's copy, stored here, answers the HEAD.
            # containerd resolves a tag with HEAD, then GETs by digest: the tag it resolved
            # is recorded with the manifest, so the image still pulls by tag when offline.
            tag = self._resolved.pop((target.store_repo, str(ref.digest)))
            fetched = await self._fetch(target, upstream, str(ref.digest), tag, via_peers)
            return self._result(fetched, upstream)
        assert ref.tag is not None
        return await self._by_tag(target, upstream, ref.tag, head, via_peers)

    def _result(self, fetched: _Fetched, upstream: Upstream) -> ManifestResult:
        if fetched.peer is None:
            return ManifestResult(fetched.info)
        return self._stale(fetched.info, upstream, f"answered by peer {fetched.peer}")

    async def _by_tag(
        self, target: Target, upstream: Upstream, tag: str, head: bool, via_peers: bool
    ) -> ManifestResult:
        cached = self.store.manifest(target.store_repo, tag)
        key = (target.store_repo, tag)
        if cached is None:
            if head:
                try:
                    remote = await self._remote_head(upstream, target, Reference(tag=tag))
                except errors.Unavailable:
                    if not via_peers:
                        raise
                else:
                    if remote.digest is not None:
                        self._remember_resolution(target.store_repo, str(remote.digest), tag)
                    return ManifestResult(None, remote)
            fetched = await self._fetch(target, upstream, tag, tag, via_peers)
            return self._result(fetched, upstream)
        checked = self._checked.get(key)
        if checked is not None and time.monotonic() - checked < self.config.tag_ttl:
            return ManifestResult(cached)
        try:
            result = await self.flights.run(
                ("reval", *key), lambda: self._revalidate(target, upstream, tag)
            )
        except UpstreamNotFound:
            if self.config.follow_deletions:
                await self.store.delete_tag(target.store_repo, tag)
                raise errors.ManifestUnknown(
                    f"{target.remote_repo}:{tag} was deleted at {upstream.name}"
                ) from None
            return self._stale(cached, upstream, "tag not found upstream")
        except (UpstreamError, errors.Unavailable) as exc:
            if via_peers:
                newer = await self.flights.run(
                    ("site-tag", *key), lambda: self._newer_on_site(target, tag, cached)
                )
                if isinstance(newer, _Fetched):
                    return self._result(newer, upstream)
            return self._stale(cached, upstream, str(exc))
        assert isinstance(result, ManifestInfo)
        return ManifestResult(result)

    async def _newer_on_site(
        self, target: Target, tag: str, cached: ManifestInfo
    ) -> _Fetched | None:
        """The uplink cannot confirm a cached tag: the members' copies of it, and how long ago
        each confirmed it upstream (TAG_AGE). One confirmed more recently than this node did
        that names another digest is taken (the tag moved while this node did not look)."""
        mine = self.tag_age(target.store_repo, tag)
        best: tuple[float, str, RemoteManifest] | None = None
        async for url, remote in self._peer_manifests(target, tag):
            age = seconds(remote.own.get(TAG_AGE))
            if age is not None and (best is None or age < best[0]):
                best = (age, url, remote)
        if best is None or best[2].digest == cached.digest:
            return None
        if mine is not None and mine <= best[0]:
            return None
        info = await self._store(target, best[2], tag, tag, f"peer {best[1]}")
        log.info(
            "%s:%s: the uplink is unavailable; %s confirmed it %.0f s ago as %s",
            target.store_repo, tag, best[1], best[0], best[2].digest,
        )  # fmt: skip
        return _Fetched(info, best[1])

    def tag_age(self, store_repo: str, tag: str) -> float | None:
        """Seconds since the tag was last confirmed upstream (None: not in memory)."""
        checked = self._checked.get((store_repo, tag))
        return None if checked is None else max(0.0, time.monotonic() - checked)

    def list_age(self, *key: str) -> float | None:
        """Seconds since a tag list or referrers list (key as _cached_list's) came from
        upstream; None when it is not cached, a 404, or older than list_ttl."""
        age = self.lists.age(key)
        if age is None or age >= self.config.list_ttl or isinstance(self.lists.get(key), _NotFound):
            return None
        return age

    def _remember_resolution(self, store_repo: str, digest: str, tag: str) -> None:
        self._resolved.put((store_repo, digest), tag)

    def _stale(self, cached: ManifestInfo, upstream: Upstream, reason: str) -> ManifestResult:
        self.stale_served += 1
        reason = reason.replace('"', "'")[:200]
        return ManifestResult(
            cached, warning=STALE_WARNING.format(name=upstream.name, reason=reason)
        )

    async def refresh_tag(self, target: Target, upstream: Upstream, tag: str) -> ManifestInfo:
        """The tag as the uplink has it now, fetched and stored if it moved (a watched tag,
        a preheat): whatever tag_ttl says. Upstream errors are raised, never answered stale."""
        if self.store.manifest(target.store_repo, tag) is None:
            return (await self._fetch(target, upstream, tag, tag)).info
        result = await self.flights.run(
            ("reval", target.store_repo, tag), lambda: self._revalidate(target, upstream, tag)
        )
        assert isinstance(result, ManifestInfo)
        return result

    async def _revalidate(self, target: Target, upstream: Upstream, tag: str) -> ManifestInfo:
        remote = await upstream.head_manifest(
            target.remote_repo, tag, deadline=self.config.revalidate_timeout
        )
        cached = self.store.manifest(target.store_repo, tag)
        if cached is not None and remote.digest == cached.digest:
            self._checked.put((target.store_repo, tag), time.monotonic())
            return cached
        return (await self._fetch(target, upstream, tag, tag, via_peers=False)).info

    async def _fetch(
        self,
        target: Target,
        upstream: Upstream,
        reference: str,
        tag: str | None,
        via_peers: bool = False,
    ) -> _Fetched:
        # A peer's request never shares a flight that asks peers: two nodes' flights could
        # then wait on each other.
        result = await self.flights.run(
            ("get", target.store_repo, reference, via_peers),
            lambda: self._get_and_store(target, upstream, reference, tag, via_peers),
        )
        assert isinstance(result, _Fetched)
        return result

    async def _get_and_store(
        self,
        target: Target,
        upstream: Upstream,
        reference: str,
        tag: str | None,
        via_peers: bool,
    ) -> _Fetched:
        what = f"manifest {reference}"
        peer = None
        try:
            with upstream_failures(upstream.name, what, target.remote_repo, errors.ManifestUnknown):
                remote = await upstream.get_manifest(target.remote_repo, reference)
        except errors.Unavailable:
            found = await self._from_peers(target, reference) if via_peers else None
            if found is None:
                raise
            peer, remote = found
        source = f"upstream {upstream.name}" if peer is None else f"peer {peer}"
        info = await self._store(target, remote, reference, tag, source)
        return _Fetched(info, peer)

    async def _store(
        self,
        target: Target,
        remote: RemoteManifest,
        reference: str,
        tag: str | None,
        source: str,
    ) -> ManifestInfo:
        """Store a manifest from the uplink (the tag is then marked as confirmed) or from a
        member (`source` "peer ...": not confirmed by this node), declare its children's
        sizes."""
        try:
            manifest = parse_manifest(remote.data, remote.media_type)
        except errors.OCIError as exc:
            raise errors.BadGateway(
                f"{source} sent an invalid manifest {reference} of "
                f"{target.remote_repo}: {exc.message}"
            ) from None
        new = self.store.resolve(target.store_repo, str(remote.digest)) is None
        # Children are fetched lazily, by digest, when clients ask for them.
        await self.store.put_manifest(
            target.store_repo, remote.data, manifest, remote.digest, tag, require_children=False
        )
        # A later download of a child stops at the size declared here (cache/fetch.py). Only
        # the uplink's manifests declare: a member's answer is not authenticated (peers/sign.py
        # signs requests), and a declared size outlives the outage, for every repository.
        sizes = {str(d.digest): d.size for d in manifest.blob_children}
        if sizes and source.startswith("upstream "):
            await trio.to_thread.run_sync(self.store.index.declare_sizes, sizes)
        if tag is not None and source.startswith("upstream "):
            self._checked.put((target.store_repo, tag), time.monotonic())
        info = self.store.manifest(target.store_repo, str(remote.digest))
        assert info is not None
        if new:
            self.on_new_manifest(target.store_repo, tag, info)
        return info

    async def _from_peers(
        self, target: Target, reference: str
    ) -> tuple[str, RemoteManifest] | None:
        """A member's copy of a manifest the uplink could not give."""
        async for found in self._peer_manifests(target, reference):
            return found
        return None

    async def _peer_manifests(
        self, target: Target, reference: str
    ) -> AsyncIterator[tuple[str, RemoteManifest]]:
        """The members' valid copies of a manifest (peers/site.py Site.manifests)."""
        assert self.site is not None
        async for peer, remote in self.site.manifests(target.store_repo, reference):
            try:
                parse_manifest(remote.data, remote.media_type)
            except errors.OCIError as exc:
                log.info("manifest %s of %s: %s: %s", reference, target.store_repo, peer.name, exc)
                continue
            yield peer.config.url, remote

    async def _remote_head(self, upstream: Upstream, target: Target, ref: Reference) -> RemoteInfo:
        what = f"manifest {ref}"
        with upstream_failures(upstream.name, what, target.remote_repo, errors.ManifestUnknown):
            return await upstream.head_manifest(target.remote_repo, str(ref))

    async def refetch(
        self, target: Target, upstream: Upstream, fetcher: Fetcher, digest: Digest, kind: str
    ) -> bool:
        """Fetch content again that the scrub quarantined: a manifest now (the caller may be
        a client waiting for it), a blob in the background (joiners stream it as usual)."""
        if kind == "manifest":
            await self._fetch(target, upstream, str(digest), None, self.site is not None)
            return True
        _, fd = fetcher.join(upstream, target.remote_repo, target.store_repo, digest)
        os.close(fd)
        return True

    # ---- lists ---------------------------------------------------------------------------

    async def tags(self, target: Target, upstream: Upstream) -> list[str]:
        async def fetch() -> object:
            return await upstream.tags(target.remote_repo)

        try:
            value = await self._cached_list(("tags", target.store_repo), fetch)
        except UpstreamNotFound:
            raise errors.NameUnknown(
                f"repository {target.remote_repo} is not known at {upstream.name}"
            ) from None
        except (UpstreamError, errors.Unavailable):
            # What we know locally is better than an error.
            local = self.store.tags(target.store_repo)
            if not local:
                raise errors.Unavailable(f"upstream {upstream.name} is unreachable") from None
            return local
        assert isinstance(value, list)
        return value

    async def referrers(
        self, target: Target, upstream: Upstream, subject: Digest, artifact_type: str | None
    ) -> list[dict[str, object]]:
        async def fetch() -> object:
            raw = await upstream.referrers(target.remote_repo, subject, None)
            # Untrusted: any JSON failure (too deep, not an object) is a protocol error.
            _, manifests = referrers_document(upstream.name, f"referrers of {subject}", raw)
            return [m for m in manifests if isinstance(m, dict)]

        try:
            value = await self._cached_list(("referrers", target.store_repo, str(subject)), fetch)
        except (UpstreamError, errors.Unavailable, ValueError):
            value = self.store.referrers(target.store_repo, subject)
        assert isinstance(value, list)
        if artifact_type is not None:
            value = [d for d in value if d.get("artifactType") == artifact_type]
        return value

    async def _cached_list(
        self, key: tuple[str, ...], fetch: Callable[[], Awaitable[object]]
    ) -> object:
        entry = self.lists.get(key)
        age = self.lists.age(key)
        if isinstance(entry, _NotFound):
            if age is not None and age < NOT_FOUND_TTL:
                raise copy.copy(entry.error)
            entry = None
        elif entry is not None and age is not None and age < self.config.list_ttl:
            return entry

        async def work() -> object:
            try:
                value = await fetch()
            except UpstreamNotFound as exc:
                if entry is None:  # a list we had stays served stale, as before
                    self.lists.put(key, _NotFound(exc))
                raise
            self.lists.put(key, value)
            return value

        try:
            return await self.flights.run(("list", *key), work)
        except (UpstreamError, errors.Unavailable):
            if entry is not None:
                return entry
            raise
