"""`Upstream`: what the cache asks of one upstream registry.

Every call goes through the upstream's circuit breaker and (optionally) a deadline covering
the whole call, token fetch and retries included: a tag revalidation must never hold a pull of
cached content longer than its deadline. Blob streams have no total deadline, only the idle
timeout between reads; retries apply to opening a stream, and a stream that breaks mid-way is
resumed by the caller with a new `open_blob` at the offset it reached.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import httpx
import trio

from edgecache import __version__
from edgecache.config import UpstreamConfig
from edgecache.oci import mediatypes
from edgecache.oci.digest import Digest
from edgecache.upstream import rawget
from edgecache.upstream.auth import pull_scope
from edgecache.upstream.breaker import CircuitBreaker
from edgecache.upstream.documents import filter_referrers, manifest_media_type, tag_page
from edgecache.upstream.errors import (
    UpstreamCorrupt,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from edgecache.upstream.headers import (
    link_next,
    parse_content_range,
    parse_digest_header,
    parse_length,
)
from edgecache.upstream.session import (
    MAX_REDIRECTS,
    REDIRECTS,
    SIGNATURE_HEADER,
    Session,
    describe_transport_error,
    read_limited,
)

T = TypeVar("T")

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# A blob body that states no size (chunked, and no manifest declared one) stops here.
MAX_UNSIZED_BLOB = 64 << 30
# Tag lists of big repositories run to MiBs (every CI build tagged); still bounded.
MAX_TAG_PAGE_SIZE = 16 * 1024 * 1024
MAX_TAG_PAGES = 1000
MANIFEST_ACCEPT = ", ".join(
    (
        mediatypes.OCI_INDEX,
        mediatypes.OCI_MANIFEST,
        mediatypes.DOCKER_LIST,
        mediatypes.DOCKER_MANIFEST,
    )
)
EMPTY_REFERRERS = json.dumps(
    {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
).encode()
log = logging.getLogger("edgecache.upstream")
USER_AGENT = f"edgecache/{__version__}"

# Closing a half-read response must not hang a cancelled caller.
_CLOSE_GRACE = 2.0


def upstream_repo(repo: str, is_docker_hub: bool) -> str:
    """Docker Hub's official images live under library/: `nginx` is `library/nginx` there."""
    if is_docker_hub and "/" not in repo:
        return f"library/{repo}"
    return repo


@dataclass(frozen=True)
class RemoteInfo:
    digest: Digest | None
    media_type: str | None
    size: int | None


@dataclass(frozen=True)
class RemoteManifest:
    data: bytes
    media_type: str
    digest: Digest
    # What edgecache peers add (edgecache-tag-age: seconds since the member confirmed the
    # tag upstream); empty from any other registry.
    own: Mapping[str, str] = field(default_factory=dict)


class BlobStream:
    """An open blob GET. `offset`: where the bytes start (the asked offset on 206, 0 when the
    upstream ignored Range). `total`: the whole blob's size if the upstream said."""

    def __init__(
        self, upstream: str, response: httpx.Response, offset: int, total: int | None
    ) -> None:
        self.upstream = upstream
        self.offset = offset
        self.total = total
        self._response = response
        self.received = 0
        self.what = f"GET {response.url.path}"
        self.length = parse_length(response.headers.get("content-length"))  # of this body

    async def chunks(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """The body; `chunk_size` coalesces network reads (fewer, larger disk writes)."""
        try:
            async for chunk in self._response.aiter_bytes(chunk_size):
                self.received += len(chunk)
                yield chunk
        except httpx.TransportError as exc:
            at = self.offset + self.received
            raise UpstreamUnavailable(
                self.upstream,
                f"GET {self._response.url.path}: {describe_transport_error(exc)} at byte {at}",
            ) from None
        except httpx.DecodingError as exc:  # a content-coding it claimed and did not keep
            raise UpstreamProtocolError(
                self.upstream, f"GET {self._response.url.path}: undecodable body ({exc})"
            ) from None


@dataclass
class RawBlob:
    """A blob response whose body a worker thread reads (see rawget.pump). `offset` and
    `total` as in BlobStream; `response.length` is this response's body length."""

    upstream: str
    response: rawget.RawResponse
    offset: int
    total: int | None
    what: str

    def close(self) -> None:
        self.response.close()


class Upstream:
    def __init__(
        self,
        config: UpstreamConfig,
        *,
        breaker: CircuitBreaker | None = None,
        session: Session | None = None,
        max_manifest_size: int = MAX_MANIFEST_SIZE,
        manifest_timeout: float | None = None,
        max_unsized_blob: int = MAX_UNSIZED_BLOB,
        signer: Callable[[str, str], str] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._session = session if session is not None else Session(config, signer=signer)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.max_manifest_size = max_manifest_size
        # The deadline of a manifest call that names none (a tag revalidation names its own).
        self.manifest_timeout = manifest_timeout or None
        self.max_unsized_blob = max_unsized_blob

    def __repr__(self) -> str:
        return f"Upstream({self.name!r}, {self.config.url!r})"

    @property
    def available(self) -> bool:
        """False while the circuit is open: a call now would fail at once."""
        return self.breaker.available

    @property
    def token_fetches(self) -> int:
        return self._session.tokens.fetches

    def upstream_repo(self, repo: str) -> str:
        return upstream_repo(repo, self.config.is_docker_hub)

    async def aclose(self) -> None:
        await self._session.aclose()

    # ---- breaker and deadline ------------------------------------------------------------

    async def _guarded(
        self, what: str, deadline: float | None, call: Callable[[], Awaitable[T]]
    ) -> T:
        if not self.breaker.acquire():
            raise UpstreamUnavailable(
                self.name,
                f"{what}: circuit open after {self.breaker.consecutive_failures} consecutive "
                f"failures; next try in {self.breaker.retry_in():.1f}s",
            )
        verdict = False
        try:
            if deadline is None:
                result = await call()
            else:
                with trio.move_on_after(deadline) as scope:
                    result = await call()
                if scope.cancelled_caught:
                    raise UpstreamUnavailable(self.name, f"{what}: timed out after {deadline:g}s")
        except UpstreamUnavailable:
            self.breaker.failure()
            verdict = True
            raise
        except UpstreamError:
            self.breaker.success()  # it answered: up, even if the answer is "no"
            verdict = True
            raise
        else:
            self.breaker.success()
            verdict = True
            return result
        finally:
            if not verdict:
                self.breaker.release()

    async def get_small(self, path: str, *, deadline: float, limit: int = 1 << 20) -> bytes:
        """GET a path of this upstream's host outside /v2 (a member's peer endpoint)."""
        url = self._session.url(path.lstrip("/"))
        what = f"GET {url.path}"

        async def call() -> bytes:
            response = await self._session.send("GET", url, scope="", headers={})
            try:
                return await self._read_small(response, what, limit)
            finally:
                await response.aclose()

        return await self._guarded(what, deadline, call)

    def _path(self, repo: str, *rest: str) -> httpx.URL:
        return self._session.url("/".join(("v2", self.upstream_repo(repo), *rest)))

    # ---- manifests -----------------------------------------------------------------------

    async def head_manifest(
        self, repo: str, reference: str, *, deadline: float | None = None
    ) -> RemoteInfo:
        url = self._path(repo, "manifests", reference)
        headers = {"Accept": MANIFEST_ACCEPT}

        async def call() -> RemoteInfo:
            response = await self._send("HEAD", url, repo, headers)
            await response.aclose()
            return _info(response)

        deadline = self.manifest_timeout if deadline is None else deadline
        return await self._guarded(f"HEAD {url.path}", deadline, call)

    async def get_manifest(
        self, repo: str, reference: str, *, deadline: float | None = None
    ) -> RemoteManifest:
        url = self._path(repo, "manifests", reference)
        headers = {"Accept": MANIFEST_ACCEPT}
        what = f"GET {url.path}"
        requested = parse_digest_header(reference) if ":" in reference else None

        async def call() -> RemoteManifest:
            response = await self._send("GET", url, repo, headers)
            try:
                data = await self._read_small(response, what, self.max_manifest_size)
            finally:
                await response.aclose()
            announced = parse_digest_header(response.headers.get("docker-content-digest"))
            expected = requested or announced
            digest = Digest.of_bytes(data, expected.algorithm if expected else "sha256")
            if expected is not None and expected != digest:
                raise UpstreamCorrupt(
                    self.name, f"{what}: body has digest {digest}, expected {expected}"
                )
            own = {k: v for k, v in response.headers.items() if k.startswith("edgecache-")}
            return RemoteManifest(
                data, manifest_media_type(response.headers.get("content-type"), data), digest, own
            )

        deadline = self.manifest_timeout if deadline is None else deadline
        return await self._guarded(what, deadline, call)

    # ---- blobs ---------------------------------------------------------------------------

    async def head_blob(
        self, repo: str, digest: Digest, *, deadline: float | None = None
    ) -> RemoteInfo:
        url = self._path(repo, "blobs", str(digest))

        async def call() -> RemoteInfo:
            response = await self._send("HEAD", url, repo, {})
            await response.aclose()
            return _info(response)

        return await self._guarded(f"HEAD {url.path}", deadline, call)

    @asynccontextmanager
    async def open_blob(
        self, repo: str, digest: Digest, offset: int = 0, extra: Mapping[str, str] | None = None
    ) -> AsyncIterator[BlobStream]:
        url = self._path(repo, "blobs", str(digest))
        what = f"GET {url.path}"
        # identity: a content-coded body could not be resumed by byte offset.
        headers = {"Accept-Encoding": "identity", **(extra or {})}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"

        async def call() -> httpx.Response:
            return await self._send("GET", url, repo, headers)

        response = await self._guarded(what, None, call)
        try:
            yield self._blob_stream(response, offset, what)
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + _CLOSE_GRACE
                await response.aclose()

    def _blob_stream(self, response: httpx.Response, offset: int, what: str) -> BlobStream:
        length = parse_length(response.headers.get("content-length"))
        if response.status_code != 206:
            return BlobStream(self.name, response, 0, length)
        content_range = parse_content_range(response.headers.get("content-range"))
        if content_range is None or content_range.start != offset:
            raise UpstreamProtocolError(
                self.name,
                f"{what}: asked for bytes from {offset}, got Content-Range "
                f"{response.headers.get('content-range')!r}",
            )
        return BlobStream(self.name, response, offset, content_range.total)

    async def raw_blob(
        self, repo: str, digest: Digest, offset: int = 0, extra: Mapping[str, str] | None = None
    ) -> RawBlob | None:
        """A blob GET answered with a plain 2xx and a Content-Length, its head read, for a
        worker thread to read the body (rawget.py). None: make the request with open_blob,
        which handles everything else (auth refresh, retries, error answers)."""
        if not self._session.raw_blobs or not self.breaker.available:
            return None
        url = self._path(repo, "blobs", str(digest))
        try:
            authorization = await self._session.authorization(pull_scope(self.upstream_repo(repo)))
        except Exception as exc:  # a token the httpx path will fetch (and retry, and explain)
            log.debug("upstream %s: GET %s through httpx: %s", self.name, url.path, exc)
            return None
        config = self.config
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Range": f"bytes={offset}-"} if offset > 0 else {}
            headers.update(extra or {})
            if authorization is not None and self._session.is_home(url):
                headers["Authorization"] = authorization
            if self._session.signer is not None and self._session.is_home(url):
                headers[SIGNATURE_HEADER] = self._session.signer("GET", url.raw_path.decode())
            get = partial(
                rawget.open_get,
                url,
                headers,
                connect_timeout=config.connect_timeout,
                idle_timeout=config.idle_timeout,
                tls=self._session.tls,
                user_agent=USER_AGENT,
            )
            try:
                # Abandoned on cancel: the thread ends within the timeouts, and the socket of
                # a response nobody takes is closed when the result is dropped.
                response = await trio.to_thread.run_sync(get, abandon_on_cancel=True)
            except rawget.Fallback as exc:
                log.debug("upstream %s: GET %s through httpx: %s", self.name, url.path, exc)
                return None
            location = response.headers.get("location")
            if response.status in REDIRECTS and location:
                response.close()
                url = response.url.join(location)
                continue
            if response.status not in (200, 206):
                response.close()
                return None
            start: int = 0
            total: int | None = response.length
            if response.status == 206:
                content_range = parse_content_range(response.headers.get("content-range"))
                if content_range is None or content_range.start != offset:
                    response.close()
                    return None  # httpx's path says what is wrong with it
                start, total = offset, content_range.total
            self.breaker.success()
            return RawBlob(self.name, response, start, total, f"GET {url.path}")
        return None

    # ---- listings ------------------------------------------------------------------------

    async def tags(
        self, repo: str, *, page_size: int | None = None, deadline: float | None = None
    ) -> list[str]:
        """Every tag, following rel="next" pages. `page_size` asks for pages of n (registries
        that paginate only when asked, like distribution, then send Link headers)."""
        first = self._path(repo, "tags", "list")
        if page_size is not None:
            first = first.copy_merge_params({"n": str(page_size)})
        what = f"GET {first.path}"

        async def call() -> list[str]:
            tags: list[str] = []
            url: httpx.URL | None = first
            seen: set[str] = set()
            while url is not None:
                if str(url) in seen or len(seen) >= MAX_TAG_PAGES:
                    raise UpstreamProtocolError(self.name, f"{what}: pagination does not end")
                seen.add(str(url))
                response = await self._send("GET", url, repo, {"Accept": "application/json"})
                try:
                    body = await self._read_small(response, what, MAX_TAG_PAGE_SIZE)
                finally:
                    await response.aclose()
                tags.extend(tag_page(self.name, what, body))
                target = link_next(response.headers.get("link"))
                url = response.url.join(target) if target else None
            return tags

        return await self._guarded(what, deadline, call)

    async def referrers(
        self,
        repo: str,
        digest: Digest,
        artifact_type: str | None = None,
        *,
        deadline: float | None = None,
    ) -> bytes:
        """The referrers index JSON; an empty index when the upstream has no referrers API."""
        url = self._path(repo, "referrers", str(digest))
        if artifact_type:
            url = url.copy_merge_params({"artifactType": artifact_type})
        what = f"GET {url.path}"

        async def call() -> bytes:
            try:
                response = await self._send("GET", url, repo, {"Accept": mediatypes.OCI_INDEX})
            except UpstreamNotFound:
                return EMPTY_REFERRERS
            try:
                body = await self._read_small(response, what, self.max_manifest_size)
            finally:
                await response.aclose()
            applied = response.headers.get("oci-filters-applied", "")
            if artifact_type and "artifactType" not in applied:
                body = filter_referrers(self.name, what, body, artifact_type)
            return body

        return await self._guarded(what, deadline, call)

    # ---- helpers -------------------------------------------------------------------------

    async def _send(
        self, method: str, url: httpx.URL, repo: str, headers: dict[str, str]
    ) -> httpx.Response:
        return await self._session.send(
            method, url, scope=pull_scope(self.upstream_repo(repo)), headers=headers
        )

    async def _read_small(self, response: httpx.Response, what: str, limit: int) -> bytes:
        length = parse_length(response.headers.get("content-length"))
        if length is not None and length > limit:
            raise UpstreamTooLarge(self.name, f"{what}: {length} bytes, limit is {limit}")
        try:
            data = await read_limited(response, limit)
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(
                self.name, f"{what}: {describe_transport_error(exc)}"
            ) from None
        except httpx.DecodingError as exc:  # a content-coding it claimed and did not keep
            raise UpstreamProtocolError(self.name, f"{what}: undecodable body ({exc})") from None
        if data is None:
            raise UpstreamTooLarge(self.name, f"{what}: body exceeds the limit of {limit} bytes")
        return data


def _info(response: httpx.Response) -> RemoteInfo:
    content_type = response.headers.get("content-type")
    return RemoteInfo(
        digest=parse_digest_header(response.headers.get("docker-content-digest")),
        media_type=mediatypes.base_type(content_type) if content_type else None,
        size=parse_length(response.headers.get("content-length")),
    )
