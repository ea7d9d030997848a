"""The ASGI application: routing, authentication, and the one place OCI errors become responses."""

from __future__ import annotations

import errno
import hmac
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from ..cache.fetch import Fetcher
from ..cache.owner import CLIENT, HOP, PEER_VERIFIED, NeedOwner, OwnerLink
from ..cache.proxy import ManifestProxy
from ..cache.routing import Target, resolve
from ..config import Config
from ..gc import Housekeeper
from ..notify import Notifier, make_event
from ..oci import errors
from ..oci.digest import Digest
from ..oci.names import lookup_reference, validate_namespace, validate_repository
from ..oci.routes import Route, parse_v2_path
from ..peers import sign
from ..peers.site import MAX_MEMBERS
from ..scan.gate import Gate
from ..scan.service import peer_reports
from ..store import ManifestInfo, Store
from ..store.keys import check_keys
from ..store.scrub import Verdict
from ..upstream import Upstream
from . import admin, local, metricsum, proxied, pull, push, tokens, zerocopy
from .accesslog import AccessLog
from .auth import Authenticator
from .http import Request
from .manifest_cache import ManifestCache
from .metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from ..preheat.engine import Preheater
    from ..scan.service import ScanService

log = logging.getLogger("edgecache.server")

# A member asks the scan records of a manifest here (scan/gate.py: reports across a site).
PEER_REPORTS = "/_edgecache/peer/reports/"

# A Host header fit to name the token endpoint in a challenge (no quotes, no spaces).
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")

Handler = Callable[["App", Request, Route], Awaitable[None]]

ROUTES: dict[tuple[str, str], Handler] = {
    ("base", "GET"): pull.base,
    ("catalog", "GET"): pull.catalog,
    ("tags", "GET"): pull.tags_list,
    ("manifest", "GET"): pull.get_manifest,
    ("manifest", "PUT"): push.put_manifest,
    ("manifest", "DELETE"): push.delete_manifest,
    ("blob", "GET"): pull.get_blob,
    ("blob", "DELETE"): push.delete_blob,
    ("uploads", "POST"): push.start_upload,
    ("upload", "GET"): push.upload_status,
    ("upload", "PATCH"): push.patch_upload,
    ("upload", "PUT"): push.finish_upload,
    ("upload", "DELETE"): push.cancel_upload,
    ("referrers", "GET"): pull.referrers,
}


ProxyHandler = Callable[["App", Request, Route, Target], Awaitable[None]]

PROXY_ROUTES: dict[tuple[str, str], ProxyHandler] = {
    ("manifest", "GET"): proxied.get_manifest,
    ("blob", "GET"): proxied.get_blob,
    ("tags", "GET"): proxied.tags_list,
    ("referrers", "GET"): proxied.referrers,
}


class App:
    def __init__(
        self,
        config: Config,
        store: Store,
        admin_token: str,
        nursery: trio.Nursery,
        upstreams: Mapping[str, Upstream],
        owner: OwnerLink | None = None,
    ) -> None:
        self.config = config
        # Set in a serving process that owns nothing (server/workers.py): it answers what is
        # on disk and forwards the rest to the owner (cache/owner.py).
        self.owner = owner
        self.local = local.LocalAnswers(config.proxy)
        # Set in the owner: the Unix sockets of the other serving processes (for /metrics).
        self.worker_sockets: Callable[[], list[str]] = list
        self.workers_status: Callable[[], list[dict[str, Any]]] = list
        self.store = store
        self.admin_token = admin_token
        self.upstreams = upstreams
        self.fetcher = Fetcher(store, nursery)
        self.proxy = ManifestProxy(store, config.proxy, nursery)
        self.manifest_cache = ManifestCache()
        self.fetcher.on_disk_full = self._disk_full
        self.housekeeper = Housekeeper(
            store,
            config,
            is_proxied=lambda repo: resolve(config, repo, None).proxied,
            in_flight=lambda: {str(d) for d in self.fetcher.inflight},
        )
        self.auth = Authenticator(config.auth)
        self.access_log = AccessLog(config.server.access_log)
        self.metrics = Metrics(
            lambda: float(store.index.meta_int("store_bytes")),
            lambda: float(zerocopy.ZeroCopyTCPServer.sent_bytes),
        )
        self.fetcher.on_upstream_bytes = self.metrics.upstream_bytes_add
        self.auth.on_event = self.metrics.auth_event
        self.metrics.watch_caches(
            lambda: {"proxy_lists": len(self.proxy.lists), **self.auth.cache_sizes()}
        )
        self.metrics.watch_scrub(self.housekeeper.scrub.progress)
        self.housekeeper.scrub.refetch = self._refetch
        self.manifest_cache.on_corrupt = self.heal
        self.fetcher.on_fetch = self.metrics.upstream_fetch_started
        self.fetcher.on_body = self.metrics.upstream_body_read
        self.ready = False
        self._peer_labels: set[str] = set()
        # Set in the owner when it runs (server/run.py): preheat's engine, which this app's
        # pushes and first proxy pulls hand events to.
        self.preheat: Preheater | None = None
        self.proxy.on_new_manifest = self._pulled_new
        # Webhook notifications ([[notifications.endpoints]]), sent by every serving process
        # for the requests it answers to clients.
        self.notifier: Notifier | None = None
        self.public_url = ""
        # Scanning (scan/): the scans run in the owner; the pull gate in every process.
        self.scans: ScanService | None = None
        self.gate = Gate(self, config.scan)  # with no policy: one counter read per manifest
        self.gate.on_blocked = lambda reason: self.metrics.pulls_blocked.labels(reason).inc()
        self._instance = str(uuid.uuid4())  # a notification's source.instanceID

    def _pulled_new(self, repo: str, tag: str | None, info: ManifestInfo) -> None:
        """A proxied manifest this repository did not hold (a first proxy fetch)."""
        self.event("pull", repo, tag, str(info.digest))

    def event(self, kind: str, repo: str, tag: str | None, digest: str) -> None:
        """A push, preload or first proxy fetch, for preheat's and scanning's triggers (in
        the owner, which makes them all). Preheat acts on a pull by tag only."""
        if self.preheat is not None and (kind != "pull" or tag is not None):
            self.preheat.event(kind, repo, tag, digest)
        if self.scans is not None:
            self.scans.event(kind, repo, digest)

    async def _refetch(self, repo: str, digest: Digest, kind: str) -> bool:
        """Fetch quarantined content of a proxied repository again (the scrub's healing)."""
        target = resolve(self.config, repo, None)
        if not target.proxied:
            return False
        return await self.proxy.refetch(target, self.upstream(target), self.fetcher, digest, kind)

    async def heal(self, verdict: Verdict, kind: str = "manifest") -> bool:
        """A stored file failed its check: quarantine it and fetch it again (the owner's
        job: a process that owns nothing hands the whole request to the owner instead)."""
        if self.owner is not None:
            raise NeedOwner(f"{kind} {verdict.digest} failed its check")
        return await self.housekeeper.scrub.heal(verdict, kind=kind)

    def _disk_full(self) -> None:
        self.metrics.disk_full.inc()
        self.housekeeper.disk_full()

    def upstream(self, target: Target) -> Upstream:
        assert target.upstream is not None
        return self.upstreams[target.upstream.name]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        req = Request.from_scope(scope, receive, send)
        req.body_timeout = self.config.server.body_timeout
        if scope.get("client") is None:
            # Only the Unix sockets in <data>/run/ have no client address: a request from
            # another serving process, answered for it and counted and logged there.
            req.internal = True
            host, _, port = req.headers.get(CLIENT, "").partition(" ")
            if host and port.isdigit():
                scope["client"] = (host, int(port))
            req.peer = req.headers.get(PEER_VERIFIED) or None
        started = time.monotonic()
        try:
            try:
                await self._dispatch(req)
            except NeedOwner:
                assert self.owner is not None and not req.started
                self.metrics.forwarded.inc()
                self.local.learn(req, await self.owner.forward(req))
        except errors.OCIError as error:
            if not req.started:
                await req.respond_error(error)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away; nothing to answer
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                log.exception("I/O error on %s %s", req.method, req.path)
                if not req.started:
                    await req.respond_error(errors.InternalError(f"I/O error: {exc.strerror}"))
            else:
                # The temp file is already gone (writers discard on error); make room.
                self._disk_full()
                if not req.started:
                    await req.respond_error(
                        errors.InsufficientStorage(
                            "the cache's disk is full; eviction has been started, retry later"
                        )
                    )
        except Exception:
            log.exception("internal error on %s %s", req.method, req.path)
            if not req.started:
                await req.respond_error(errors.InternalError("internal server error"))
        finally:
            if req.peer is not None and not req.internal:
                label = self._peer_label(req.peer)
                self.metrics.peer_requests.labels(label).inc()
                self.metrics.peer_served_bytes.labels(label).inc(req.sent_bytes)
            if self.notifier is not None and not req.internal:
                self._notify(req)
            if not req.internal:
                seconds = time.monotonic() - started
                self.metrics.observe(
                    req.extra.get("route", "other"), req.method, req.status, seconds
                )
                self.access_log.record(req, seconds)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _check_peer(self, req: Request) -> None:
        """A request signed by a member of the site (peers/sign.py): note who; a bad or stale
        signature is refused (401) and logged. Without [peers] the header means nothing."""
        value = req.headers.get(sign.HEADER)
        if req.internal or value is None or not self.config.peers.enabled:
            return
        target = req.scope.get("raw_path") or req.path.encode()
        if req.scope.get("query_string"):
            target += b"?" + req.scope["query_string"]
        try:
            req.peer = sign.verify(
                self.config.peers.secret,
                None if self.config.peers.dns else self.config.peers.members,
                value,
                req.method,
                target.decode("latin-1"),
            )
        except sign.BadSignature as exc:
            client = req.scope.get("client") or ("?", 0)
            log.warning(
                "peer request refused: %s %s from %s: %s", req.method, req.path, client[0], exc
            )
            raise errors.Unauthorized(f"peer request refused: {exc}") from None
        if req.peer == self.config.peers.self_url:
            # This node asking itself (listed twice, under two names): answered at once, or
            # it would join its own download and wait out the peer budget.
            raise errors.Denied(
                f"a peer request from this node itself ({req.peer}); is it in peers.members "
                "under two names?"
            )

    async def _dispatch(self, req: Request) -> None:
        self._check_peer(req)
        path = req.path
        if path.startswith("/v2"):
            route = parse_v2_path(path)
            if route is None:
                raise errors.NotFound(f"no such endpoint: {path}")
            method = "GET" if req.method == "HEAD" else req.method
            handler = ROUTES.get((route.kind, method))
            if handler is None:
                allowed = sorted({m for (k, m) in ROUTES if k == route.kind})
                if "GET" in allowed:
                    allowed.append("HEAD")
                error = errors.MethodNotAllowed(f"{req.method} is not allowed on {route.kind}")
                error.headers["Allow"] = ", ".join(sorted(allowed))
                raise error
            req.extra["route"] = route.kind
            req.extra["repo"], req.extra["ref"] = route.name, route.ref
            if req.peer is not None and (method != "GET" or route.kind == "upload"):
                raise errors.Denied("a peer request may only read (GET or HEAD)")
            if self.owner is not None and (method != "GET" or route.kind == "upload"):
                raise NeedOwner("a write")  # before the auth check: the owner makes it
            if req.peer is None:  # a member's signature is its credential
                req.extra["user"] = await self.auth.check(
                    req.method,
                    req.headers.get("authorization"),
                    base=route.kind == "base",
                    client=req.scope.get("client"),
                    repo=route.name,
                    realm_url=self._token_url(req),
                    bound=req.extra,
                )
            ns = req.query.get("ns")
            if ns is not None:
                req.headers_out["OCI-Namespace"] = validate_namespace(ns)
            if route.name is None:
                await handler(self, req, route)
                return
            validate_repository(route.name)
            if route.kind == "manifest" and method in ("GET", "DELETE"):
                # Local and proxied alike: a reference that cannot exist is unknown (404).
                lookup_reference(route.ref or "")
            target = resolve(self.config, route.name, ns)
            if not target.proxied:
                await handler(self, req, route)
                return
            assert target.upstream is not None
            # "<upstream>/<repo>" can outgrow the index's key limit: refuse before fetching.
            check_keys(target.store_repo)
            req.headers_out["OCI-Namespace"] = target.upstream.name
            routes = PROXY_ROUTES if self.owner is None else local.PROXY_ROUTES
            proxy_handler = routes.get((route.kind, method))
            if proxy_handler is None:
                raise errors.MethodNotAllowed(
                    f"{route.name} is a read-only cache of upstream {target.upstream.name}; "
                    "push to a local repository instead"
                )
            await proxy_handler(self, req, route, target)
            return
        if path.startswith(PEER_REPORTS):
            req.extra["route"] = "peer"
            if req.peer is None:
                raise errors.Denied("a peer endpoint: only members of the site ask it, signed")
            try:
                digest = Digest.parse(path[len(PEER_REPORTS) :])
            except errors.DigestInvalid as exc:
                raise errors.BadRequest(exc.message) from None
            await req.respond_json(200, {"reports": peer_reports(self, str(digest))})
            return
        if path == tokens.ENDPOINT:
            req.extra["route"] = "token"
            await tokens.endpoint(self, req)
            return
        if path == "/healthz":
            req.extra["route"] = "health"
            await req.respond(200, {"Content-Type": "text/plain"}, b"ok\n")
            return
        if path == "/readyz":
            req.extra["route"] = "health"
            ok = self.ready
            await req.respond(
                200 if ok else 503,
                {"Content-Type": "text/plain"},
                b"ready\n" if ok else b"starting\n",
            )
            return
        if path == "/metrics":
            req.extra["route"] = "metrics"
            if req.internal and HOP not in req.headers:  # the owner adding up every process's
                body = self.metrics.render()
            elif self.owner is not None:
                raise NeedOwner("the sum of all processes' metrics")
            else:
                body = await metricsum.render_all(self.metrics, self.worker_sockets())
            await req.respond(200, {"Content-Type": CONTENT_TYPE}, body)
            return
        if path.startswith(admin.PREFIX):
            req.extra["route"] = "admin"
            if self.owner is not None:
                raise NeedOwner("the admin API")
            self._check_admin(req)
            await admin.dispatch(self, req)
            return
        raise errors.NotFound(f"no such endpoint: {path}")

    def _notify(self, req: Request) -> None:
        """The registry:2 event of an answered push, pull or delete (edgecache/notify.py)."""
        assert self.notifier is not None
        kind, status, method = req.extra.get("route"), req.status, req.method
        if status == 201 and (method, kind) in (("PUT", "manifest"), ("PUT", "upload"),
                                                 ("POST", "uploads")):  # fmt: skip
            action = "push"
        elif method == "GET" and status in (200, 206) and kind in ("manifest", "blob"):
            action = "pull"
        elif method == "DELETE" and status == 202 and kind in ("manifest", "blob"):
            action = "delete"
        else:
            return
        repo = req.extra.get("repo")
        ref = req.extra.get("ref") or ""
        digest = req.extra.get("digest") or (ref if ":" in ref else "")
        if not repo or (not digest and kind != "manifest"):
            return
        descriptor: dict[str, Any] = {"digest": digest}
        if action != "delete":
            # registry:2 names the size and media type of what moved (bridge.go): the index
            # knows them (one LMDB read), and Content-Length is a range's, not the blob's.
            record = self.store.index.blob(digest) if ":" in digest else None
            media_type = req.extra.get("media_type") if kind == "manifest" else None
            if kind == "manifest":
                manifest = self.store.index.manifest(digest)
                media_type = (manifest or {}).get("media_type") or media_type
            descriptor["mediaType"] = media_type or "application/octet-stream"
            if record is not None:
                descriptor["size"] = int(record["size"])
        client = req.scope.get("client") or ("", 0)
        request = {
            "id": req.extra.get("request_id", ""),
            "addr": f"{client[0]}:{client[1]}",
            "host": req.headers.get("host", ""),
            "method": method,
            "useragent": req.headers.get("user-agent", ""),
        }
        tag = ref if kind == "manifest" and ref and ":" not in ref else None
        # As registry:2 builds it: from the Host the client used.
        host = req.headers.get("host") or req.headers.get(":authority") or ""
        base = (
            f"{'https' if self.config.server.tls else 'http'}://{host}" if host else self.public_url
        )
        try:
            event = make_event(
                action, repo, descriptor, tag=tag, base_url=base, request=request,
                actor=req.extra.get("user"),
                source={"addr": self.config.server.listen, "instanceID": self._instance},
            )  # fmt: skip
        except Exception:
            log.exception("building the notification of %s %s failed", method, req.path)
            return
        self.notifier.emit(event)

    def _peer_label(self, sender: str) -> str:
        """The metrics label of a member: itself, while the labels stay few (with [peers] dns
        any sender holding the secret is one, and labels are never forgotten)."""
        if sender in self.config.peers.members or sender in self._peer_labels:
            return sender
        if len(self._peer_labels) < MAX_MEMBERS:
            self._peer_labels.add(sender)
            return sender
        return "other"

    def _token_url(self, req: Request) -> str | None:
        """The token endpoint as this client reached the server (its Host), for the Bearer
        challenge; None when the Host is not a plain host[:port]."""
        host = req.headers.get("host") or req.headers.get(":authority") or ""
        if not _HOST.fullmatch(host):
            return None
        scheme = "https" if self.config.server.tls else "http"
        return f"{scheme}://{host}{tokens.ENDPOINT}"

    def _check_admin(self, req: Request) -> None:
        header = req.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.admin_token.encode()
        ):
            error = errors.Unauthorized(
                "the admin API needs 'Authorization: Bearer <token>' (the token is in "
                "<data>/run/admin-token)"
            )
            error.headers["WWW-Authenticate"] = 'Bearer realm="edgecache-admin"'
            raise error
