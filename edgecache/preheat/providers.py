"""Where preheated images go: this site, a Dragonfly manager, a Kraken proxy.

Each provider handles one resolved image at a time and returns the bytes it moved; it raises
`Retry` for what may pass (a dead manager, a 429, an upstream outage) and `Fail` for what will
not (a refused token, a rejected request): the engine retries the first with back-off and
records the second at once.

- site: every blob of the image's (selected) manifests is fetched into this node through the
  one miss path (cache/fetch.py), so with [peers] the owner of each blob fetches it from the
  uplink and this node tees it: the image ends up on the site. A policy's bandwidth cap paces
  those downloads, and a client that wants the same blob meanwhile lifts the cap.
- dragonfly: POST /oapi/v1/jobs on the manager (personal access token), a preheat job whose
  URL is this edgecache's manifest URL and whose headers carry a pull token for that one
  repository; then GET /oapi/v1/jobs/{id} with back-off until SUCCESS or FAILURE. The seed
  peers pull from edgecache with the token: never from the upstream.
- kraken: POST /registry/notifications on the Kraken proxy, a distribution push event per
  single-image manifest (Kraken ignores indexes: an index goes as its platform manifests).
  Kraken answers 200 even when it fails, so the result is "sent" unless a check URL (an
  agent's GET /tags/<repo:tag>) confirms the digest ("done").
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import trio

from ..cache.fetch import Pacer
from ..cache.routing import Target, resolve
from ..oci import errors
from ..oci.digest import Digest
from ..oci.manifest import parse_manifest
from ..oci.mediatypes import is_index_type
from ..oci.names import Reference
from ..store import ManifestInfo
from ..upstream import UpstreamError, UpstreamNotFound
from ..upstream.session import call_service
from .config import ProviderConfig
from .jobs import Image

if TYPE_CHECKING:
    from ..server.app import App
    from .engine import Preheater

log = logging.getLogger("edgecache.preheat")

MAX_POLL = 30.0  # seconds between polls of a provider's job, at most
KRAKEN_EVENTS = "application/vnd.docker.distribution.events.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


class Retry(Exception):
    """A failure that may pass: try again after a back-off (`after`: the provider said when)."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class Fail(Exception):
    """A failure that will not pass by retrying."""


Provider = Callable[["Preheater", ProviderConfig, Image, "Pacer | None"], Awaitable["Outcome"]]


class Outcome:
    def __init__(self, state: str, moved: int = 0, detail: str = "") -> None:
        self.state = state
        self.bytes = moved
        self.detail = detail


# ---- site -------------------------------------------------------------------------------


async def site(
    engine: Preheater, provider: ProviderConfig, image: Image, pace: Pacer | None
) -> Outcome:
    app = engine.app
    target = resolve(app.config, image.repository, None)
    moved = 0
    fetched = 0
    for entry in image.manifests:
        info = await engine.manifest(target, entry["digest"])
        data = await trio.to_thread.run_sync(info.path.read_bytes)
        manifest = parse_manifest(data, info.media_type)
        for child in manifest.blob_children:
            if child.urls:  # a foreign layer: not ours to hold
                continue
            n = await ensure_blob(app, target, child.digest, pace)
            if n >= 0:
                fetched += 1
                moved += n
    detail = f"{fetched} blobs fetched" if fetched else "already on this node"
    return Outcome("done" if fetched else "skipped", moved, detail)


async def ensure_blob(app: App, target: Target, digest: Digest, pace: Pacer | None) -> int:
    """Bytes fetched for the blob, or -1 when this repository had it already (Fail or Retry
    when it cannot be had)."""
    if app.store.blob(target.store_repo, digest) is not None:
        return -1
    if not target.proxied:
        raise Fail(f"blob {digest} of {target.store_repo} is not in the store")
    upstream = app.upstream(target)
    if digest not in app.fetcher.inflight and app.store.has_content(digest):
        # Another repository holds these bytes: linked once the upstream confirms this
        # repository has them too (as a client's pull would).
        try:
            await upstream.head_blob(target.remote_repo, digest)
        except UpstreamNotFound:
            raise Fail(f"blob {digest} is not in {target.remote_repo} upstream") from None
        except UpstreamError as exc:
            raise Retry(f"upstream {upstream.name}: {exc}") from None
        if await app.store.link_blob(target.store_repo, digest) is not None:
            return 0
    fetch, fd = app.fetcher.join(upstream, target.remote_repo, target.store_repo, digest, pace=pace)
    os.close(fd)
    if target.store_repo not in fetch.repos:
        fetch.also_link(target.store_repo)
    while not fetch.finished:
        await fetch.changed()
    if fetch.error is not None:
        if isinstance(fetch.error, errors.BlobUnknown):
            raise Fail(fetch.error.message)
        message = getattr(fetch.error, "message", str(fetch.error))
        raise Retry(message)
    return fetch.upstream_bytes


# ---- dragonfly ----------------------------------------------------------------------------


async def dragonfly(
    engine: Preheater, provider: ProviderConfig, image: Image, pace: Pacer | None
) -> Outcome:
    base = engine.registry_url(provider)
    url = f"{base}/v2/{image.repository}/manifests/{image.digest}"
    token = engine.pull_token(image.repository, provider.timeout)
    platforms = [m["platform"] for m in image.manifests if m.get("platform")] or [None]
    ids = []
    async with engine.client(provider) as client:
        for platform in platforms:
            args: dict[str, Any] = {
                "type": "image",
                "url": url,
                "headers": {"Authorization": f"Bearer {token}"},
                "scope": provider.scope,
                "timeout": int(provider.timeout * 1e9),
            }
            if platform:
                args["platform"] = platform
            body: dict[str, Any] = {"type": "preheat", "args": args}
            if provider.scheduler_cluster_ids:
                body["scheduler_cluster_ids"] = list(provider.scheduler_cluster_ids)
            job = await _df_call(client, provider, "POST", "/oapi/v1/jobs", body)
            job_id = job.get("id")
            if not isinstance(job_id, int | str) or isinstance(job_id, bool):
                raise Fail(f"the manager's answer has no job id: {str(job)[:200]}")
            ids.append(str(job_id))
            await _df_wait(client, provider, str(job_id), platform)
    return Outcome("done", 0, "Dragonfly job " + ", ".join(ids))


def _df_headers(provider: ProviderConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {provider.token}"}


async def _df_call(
    client: httpx.AsyncClient,
    provider: ProviderConfig,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    try:
        response = await call_service(
            client, method, provider.url + path, json=body, headers=_df_headers(provider)
        )
    except httpx.HTTPError as exc:
        raise Retry(f"Dragonfly manager {provider.url}: {type(exc).__name__}: {exc}") from None
    status = response.status_code
    text = printable(response.text[:300])
    if status == 401:
        raise Fail("the Dragonfly manager refused the personal access token (401): is it "
                   f"the right token_file? {text}")  # fmt: skip
    if status == 403:
        raise Fail("the Dragonfly manager refused the personal access token (403: inactive, "
                   f"expired, or without the 'job' scope): {text}")  # fmt: skip
    if status == 429:
        raise Retry("the Dragonfly manager is rate limiting (429)", _retry_after(response))
    if status >= 500:
        raise Retry(f"the Dragonfly manager answered {status}: {text}")
    if status != 200:
        raise Fail(f"the Dragonfly manager answered {status} to {method} {path}: {text}")
    try:
        value = response.json()
    except ValueError:
        raise Retry(f"the Dragonfly manager answered 200 without JSON: {text}") from None
    if not isinstance(value, dict):
        raise Fail(f"the Dragonfly manager's answer is not a job: {text}")
    return value


async def _df_wait(
    client: httpx.AsyncClient, provider: ProviderConfig, job_id: str, platform: str | None
) -> None:
    """Poll the job until it ends, its interval growing to MAX_POLL; transient errors are
    tolerated `retries` times in a row."""
    interval = provider.poll_interval
    failures = 0
    with trio.move_on_after(provider.timeout) as scope:
        while True:
            await trio.sleep(interval)
            interval = min(MAX_POLL, interval * 1.5)
            try:
                job = await _df_call(client, provider, "GET", f"/oapi/v1/jobs/{quote(job_id)}")
            except Retry as exc:
                failures += 1
                if failures > provider.retries:
                    raise
                if exc.after:
                    interval = max(interval, exc.after)
                continue
            failures = 0
            state = str(job.get("state", "")).upper()
            if state == "SUCCESS":
                return
            if state == "FAILURE":
                raise Fail(f"Dragonfly job {job_id}{_on(platform)} failed: {_df_error(job)}")
    if scope.cancelled_caught:
        raise Fail(f"Dragonfly job {job_id}{_on(platform)} did not end in {provider.timeout:g} s")


def _on(platform: str | None) -> str:
    return f" ({platform})" if platform else ""


def _df_error(job: dict[str, Any]) -> str:
    result = job.get("result")
    if isinstance(result, dict):
        for key in ("error", "message", "failure_tasks", "job_states"):
            if result.get(key):
                return str(result[key])[:300]
    return str(result)[:300] if result else "no reason given"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), 300.0)


def printable(text: str) -> str:
    """A service's words, safe for a log line or a terminal (no newlines, no escapes)."""
    return "".join(c if c.isprintable() else "?" for c in text)


# ---- kraken ------------------------------------------------------------------------------


async def kraken(
    engine: Preheater, provider: ProviderConfig, image: Image, pace: Pacer | None
) -> Outcome:
    base = engine.registry_url(provider)
    host = base.split("//", 1)[1]
    events = []
    # Kraken's handler takes only Docker schema 2 manifests (proxy/proxyserver/
    # registry_events.go filters on application/vnd.docker.distribution.manifest.v\d): an OCI
    # manifest would be taken with a 200 and ignored.
    taken = [m for m in image.manifests if m.get("mediaType") == DOCKER_MANIFEST]
    if not taken:
        return Outcome(
            "skipped", 0, "Kraken processes Docker schema 2 manifests only; this image's are "
            f"{', '.join(sorted({str(m.get('mediaType')) for m in image.manifests}))}",
        )  # fmt: skip
    for entry in taken:
        target: dict[str, Any] = {
            "mediaType": entry["mediaType"],
            "digest": entry["digest"],
            "size": entry["size"],
            "length": entry["size"],
            "repository": image.repository,
            "url": f"{base}/v2/{image.repository}/manifests/{entry['digest']}",
        }
        if image.tag and len(taken) == 1:
            target["tag"] = image.tag
        events.append(
            {
                "id": str(uuid.uuid4()),
                "timestamp": _rfc3339(),
                "action": "push",
                "target": target,
                "request": {
                    "id": str(uuid.uuid4()),
                    "host": host,
                    "method": "PUT",
                    "useragent": "edgecache-preheat",
                },
                "source": {"addr": host},
            }
        )
    async with engine.client(provider) as client:
        try:
            response = await call_service(
                client,
                "POST",
                provider.url + "/registry/notifications",
                content=_json_bytes({"events": events}),
                headers={"Content-Type": KRAKEN_EVENTS},
            )
        except httpx.HTTPError as exc:
            raise Retry(f"Kraken proxy {provider.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise Retry(f"the Kraken proxy answered {response.status_code}")
        if response.status_code != 200:
            raise Fail(
                f"the Kraken proxy answered {response.status_code}: "
                f"{printable(response.text[:300])}"
            )
        if not provider.check_url or not image.tag:
            return Outcome("sent", 0, f"{len(events)} push event(s) sent; Kraken does not say "
                           "whether it processed them (no check_url)")  # fmt: skip
        await _kraken_check(client, provider, image)
    return Outcome("done", 0, "the Kraken agent resolves the tag to the digest")


async def _kraken_check(client: httpx.AsyncClient, provider: ProviderConfig, image: Image) -> None:
    name = quote(f"{image.repository}:{image.tag}", safe="")
    url = f"{provider.check_url}/tags/{name}"
    interval = provider.poll_interval
    last = "no answer"
    with trio.move_on_after(provider.timeout):
        while True:
            try:
                response = await call_service(client, "GET", url)
                last = f"{response.status_code} {response.text[:100]!r}"
                if response.status_code == 200 and image.digest in response.text:
                    return
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
            await trio.sleep(interval)
            interval = min(MAX_POLL, interval * 1.5)
    raise Fail(
        f"Kraken took the event, but its agent did not resolve {image.tag} to {image.digest} "
        f"in {provider.timeout:g} s (last answer: {last})"
    )


def _rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _json_bytes(value: object) -> bytes:
    import json

    return json.dumps(value, separators=(",", ":")).encode()


PROVIDERS: dict[str, Provider] = {"site": site, "dragonfly": dragonfly, "kraken": kraken}


async def manifest_info(engine: Preheater, target: Target, reference: str) -> ManifestInfo:
    """A manifest of the image, fetched (and stored) for a proxied repository."""
    app = engine.app
    if not target.proxied:
        info = app.store.manifest(target.store_repo, reference)
        if info is None:
            raise Fail(f"{target.store_repo}: no manifest {reference}")
        return info
    result = await app.proxy.manifest(
        target, app.upstream(target), Reference.parse(reference), head=False
    )
    if result.info is None:
        raise Retry(f"{target.store_repo}: manifest {reference} was not stored")
    return result.info


def is_index(media_type: str) -> bool:
    return is_index_type(media_type)
