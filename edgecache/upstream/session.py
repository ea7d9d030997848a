"""One upstream's HTTP session: authentication, retries and redirects around httpx.

`Session.send` turns one logical request into as many HTTP exchanges as it takes:
- auth: the first request to a registry goes anonymous; its 401 challenge is remembered, so
  later requests fetch (or reuse) a token for their scope up front instead of paying a 401
  round trip each. A 401 is retried once with a fresh token; a second one is final.
- retries: connection errors, 5xx and 429 per `RetryPolicy`, with Retry-After honoured.
- redirects: followed by hand, because real registries redirect blob GETs to storage hosts
  (S3, a CDN) with signed URLs, and the registry's Authorization header must not go there.
The response it returns is streaming: the caller reads (or not) and closes it.
"""

from __future__ import annotations

import functools
import logging
import random
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import trio

from edgecache.bounded import BoundedCache
from edgecache.config import UpstreamConfig
from edgecache.peers.sign import HEADER as SIGNATURE_HEADER
from edgecache.upstream.auth import (
    BasicCredentials,
    Challenge,
    ChallengeError,
    IssuedToken,
    TokenResponseError,
    choose_challenge,
    parse_token_response,
    parse_www_authenticate,
)
from edgecache.upstream.errors import (
    UpstreamAuthError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from edgecache.upstream.retry import RetryPolicy, parse_retry_after, retryable_status
from edgecache.upstream.tokens import MAX_TOKENS, TokenCache, TokenKey

log = logging.getLogger("edgecache.upstream")

MAX_REDIRECTS = 5
# Token responses are a few KiB; anything much bigger is not a token server.
MAX_TOKEN_RESPONSE = 1 << 20
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _Retryable(Exception):
    """A failure worth another attempt (connection error, 5xx, 429)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason, retry_after)
        self.reason = reason
        self.retry_after = retry_after


def describe_transport_error(exc: httpx.TransportError) -> str:
    """A short reason for a transport failure (httpx messages carry no headers or secrets)."""
    tls = _tls_failure(exc)
    if tls is not None:
        return tls
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connect timed out ({detail})"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out waiting for data ({detail})"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed ({detail})"
    return f"connection lost ({type(exc).__name__}: {detail})"


def _tls_failure(exc: BaseException) -> str | None:
    """What TLS said, when it is why the connection failed (httpx's own message is often
    empty then, and "connection failed" sends an operator to look at the network)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({seen.verify_message or seen})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS failed ({seen.reason or seen})"
        seen = seen.__cause__ or seen.__context__
    return None


def _target(url: httpx.URL) -> str:
    """The request target as sent: path and query."""
    return url.raw_path.decode("ascii")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, url.port or default)


def tls_context(config: UpstreamConfig) -> ssl.SSLContext:
    """The TLS settings of an upstream: its CA file, or nothing checked (insecure, for labs),
    or what httpx trusts by default (certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR).

    One context per (CA file, insecure), shared by every upstream and peer that has those
    settings: loading the roots costs ~50 ms, and a site's members are many clients. Nothing
    changes a context once made (httpx and rawget only wrap sockets with it)."""
    return _tls_context(config.ca_file, config.insecure)


def service_client(ca_file: str = "", headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client for a service edgecache calls (a P2P engine's API, a scanner adapter): its
    CA (or the default roots), 30 s to read, 5 s to connect, redirects not followed (they
    would carry the service's credentials elsewhere)."""
    verify: ssl.SSLContext | bool = _tls_context(ca_file, False) if ca_file else True
    return httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(30.0, connect=5.0),
        headers=headers or {},
        follow_redirects=False,
    )


@functools.lru_cache(maxsize=64)
def _tls_context(ca_file: str, insecure: bool) -> ssl.SSLContext:
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return httpx.create_ssl_context(verify=not insecure)


def make_client(config: UpstreamConfig) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        # read = the idle timeout: no total deadline, a 50 GiB blob only has to keep moving.
        # pool=None: waiting for a free connection is not an upstream failure; callers that
        # care pass a deadline.
        timeout=httpx.Timeout(
            connect=config.connect_timeout,
            read=config.idle_timeout,
            write=config.idle_timeout,
            pool=None,
        ),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=32),
        # HTTP/1.1 only: h2 multiplexes every blob onto one TCP connection and measured slower.
        http1=True,
        http2=False,
        verify=tls_context(config),
        follow_redirects=False,
    )


class Session:
    def __init__(
        self,
        config: UpstreamConfig,
        *,
        client: httpx.AsyncClient | None = None,
        policy: RetryPolicy | None = None,
        rand: Callable[[], float] = random.random,
        signer: Callable[[str, str], str] | None = None,
    ) -> None:
        self.name = config.name
        # Peers (edgecache/peers/): each request to the home host carries SIGNATURE_HEADER,
        # signer(method, path and query) (never sent on a redirect elsewhere).
        self.signer = signer
        self.config = config
        self.base_url = httpx.URL(config.url.rstrip("/") + "/")
        # Blob bodies may bypass httpx (rawget.py) only when httpx would have gone straight to
        # the upstream too: our own client, and no proxy from the environment.
        self.raw_blobs = client is None and not urllib.request.getproxies()
        self.tls = tls_context(config) if self.raw_blobs else None
        self._client = client if client is not None else make_client(config)
        self._policy = policy if policy is not None else RetryPolicy(retries=config.retries)
        self._rand = rand
        self._static = f"Bearer {config.token}" if config.token else None
        self._basic = (
            BasicCredentials(config.username, config.password) if config.username else None
        )
        # The last challenge the registry sent: realm and service are registry-wide.
        self._challenge: Challenge | None = None
        self.tokens = TokenCache()
        # Our pull scope -> the scopes actually requested for it (see _widen_scope); bounded,
        # since scopes name client-chosen repositories (a forgotten one is learnt again).
        self._scopes: BoundedCache[str, str] = BoundedCache(MAX_TOKENS)

    def url(self, path: str) -> httpx.URL:
        return self.base_url.join(path.lstrip("/"))

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---- the request loop --------------------------------------------------------------

    async def send(
        self,
        method: str,
        url: httpx.URL,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A 2xx streaming response, or the UpstreamError that says why there is none."""
        what = f"{method} {url.path}"
        retry = 0
        refreshed = False
        while True:
            try:
                response, used = await self._exchange(method, url, scope, headers or {})
                status = response.status_code
                if status == 401 and used is not _FOREIGN and not refreshed:
                    await response.aclose()  # the headers stay readable
                    challenge = self._learn(response, what)
                    refreshed = True
                    self._forget_token(challenge, scope, used)
                    self._widen_scope(challenge, scope)
                    continue
                if retryable_status(status):
                    retry_after = parse_retry_after(
                        response.headers.get("retry-after"), time.time()
                    )
                    await response.aclose()
                    raise _Retryable(f"HTTP {status}", retry_after)
            except _Retryable as exc:
                if retry >= self._policy.retries:
                    attempts = retry + 1
                    raise UpstreamUnavailable(
                        self.name, f"{what}: {exc.reason} (after {attempts} attempts)"
                    ) from None
                delay = self._policy.delay(retry, exc.retry_after, self._rand)
                log.info(
                    "upstream %s: %s: %s; retry %d/%d in %.2fs",
                    self.name,
                    what,
                    exc.reason,
                    retry + 1,
                    self._policy.retries,
                    delay,
                )
                retry += 1
                await trio.sleep(delay)
                continue
            if 200 <= status < 300:
                return response
            await response.aclose()
            raise self._status_error(status, what)

    def _status_error(self, status: int, what: str) -> Exception:
        if status == 404:
            return UpstreamNotFound(self.name, f"{what}: not found (HTTP 404)")
        if status in (401, 403):
            return UpstreamAuthError(self.name, f"{what}: access denied (HTTP {status})")
        return UpstreamProtocolError(self.name, f"{what}: unexpected HTTP {status}")

    async def _exchange(
        self, method: str, url: httpx.URL, scope: str, headers: Mapping[str, str]
    ) -> tuple[httpx.Response, object]:
        """Send, following redirects. Returns the final response and the credential used
        (the Authorization value, None, or _FOREIGN when the answer came from another host)."""
        authorization = await self._authorization(scope)
        home = _origin(self.base_url)
        for _ in range(MAX_REDIRECTS + 1):
            request_headers = dict(headers)
            at_home = _origin(url) == home
            if authorization is not None and at_home:
                request_headers["Authorization"] = authorization
            if self.signer is not None and at_home:
                request_headers[SIGNATURE_HEADER] = self.signer(method, _target(url))
            request = self._client.build_request(method, url, headers=request_headers)
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                raise _Retryable(describe_transport_error(exc)) from None
            location = response.headers.get("location")
            if response.status_code in REDIRECTS and location:
                await response.aclose()
                url = response.url.join(location)
                if response.status_code == 303 and method != "HEAD":
                    method = "GET"
                continue
            return response, (authorization if at_home else _FOREIGN)
        raise UpstreamProtocolError(
            self.name, f"{method} {url.path}: more than {MAX_REDIRECTS} redirects"
        )

    # ---- authentication ----------------------------------------------------------------

    def _learn(self, response: httpx.Response, what: str) -> Challenge:
        """Remember the challenge of a 401, or fail if there is nothing we can answer."""
        values = response.headers.get_list("www-authenticate")
        if not values:
            raise UpstreamAuthError(self.name, f"{what}: HTTP 401 without a WWW-Authenticate")
        try:
            challenge = choose_challenge(parse_www_authenticate(values))
        except ChallengeError as exc:
            raise UpstreamProtocolError(self.name, f"{what}: {exc}") from None
        if challenge is None:
            schemes = ", ".join(sorted({c.scheme for c in parse_www_authenticate(values)}))
            raise UpstreamAuthError(self.name, f"{what}: unsupported auth scheme(s) {schemes}")
        if self._static is not None:
            raise UpstreamAuthError(self.name, f"{what}: the configured token was refused")
        if challenge.scheme == "basic" and self._basic is None:
            raise UpstreamAuthError(self.name, f"{what}: needs credentials, none configured")
        if challenge.scheme == "bearer":
            try:
                challenge.token_realm()
            except ChallengeError as exc:
                raise UpstreamProtocolError(self.name, f"{what}: {exc}") from None
        self._challenge = challenge
        return challenge

    def _token_key(self, challenge: Challenge, scope: str) -> TokenKey:
        return (challenge.token_realm(), challenge.service or "", self._scopes.get(scope) or scope)

    def _forget_token(self, challenge: Challenge, scope: str, used: object) -> None:
        # Only a token we actually sent was refused; a 401 to an anonymous request says nothing
        # about the token a concurrent request may just have fetched.
        if challenge.scheme == "bearer" and isinstance(used, str) and used.startswith("Bearer "):
            self.tokens.invalidate(self._token_key(challenge, scope), used[len("Bearer ") :])

    def _widen_scope(self, challenge: Challenge, scope: str) -> None:
        """Some registries name a scope of their own in the challenge (ECR Public: "aws"):
        ask for it along with ours from now on, for this repository's requests."""
        if challenge.scheme != "bearer" or not challenge.scope:
            return
        extra = [s for s in challenge.scope.split() if s not in scope.split()]
        if extra and self._scopes.get(scope) is None:
            self._scopes.put(scope, " ".join([scope, *extra]))

    async def authorization(self, scope: str) -> str | None:
        """The Authorization value a request for `scope` carries now (a token is fetched if
        needed), or None before the registry has asked for any."""
        return await self._authorization(scope)

    def is_home(self, url: httpx.URL) -> bool:
        """Whether `url` is on the registry's own origin (where Authorization may go)."""
        return _origin(url) == _origin(self.base_url)

    async def _authorization(self, scope: str) -> str | None:
        if self._static is not None:
            return self._static
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self._basic.header() if self._basic is not None else None
        key = self._token_key(challenge, scope)
        token = await self.tokens.get(key, lambda: self._fetch_token(challenge, scope))
        return f"Bearer {token}"

    async def _fetch_token(self, challenge: Challenge, scope: str) -> IssuedToken:
        realm = httpx.URL(challenge.token_realm())
        # Several scopes are sent as repeated scope parameters (Docker token spec).
        scopes = self._scopes.get(scope) or scope
        params = httpx.QueryParams([("scope", s) for s in scopes.split()])
        if challenge.service:
            params = params.add("service", challenge.service)
        headers = {"Authorization": self._basic.header()} if self._basic is not None else {}
        what = f"token request to {realm.host} for {scope}"
        request = self._client.build_request("GET", realm, params=params, headers=headers)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _Retryable(f"{what}: {describe_transport_error(exc)}") from None
        try:
            status = response.status_code
            if status in (401, 403):
                who = "the configured credentials" if self._basic else "anonymous access"
                raise UpstreamAuthError(self.name, f"{what}: refused {who} (HTTP {status})")
            if retryable_status(status):
                retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
                raise _Retryable(f"{what}: HTTP {status}", retry_after)
            if status != 200:
                raise UpstreamProtocolError(self.name, f"{what}: unexpected HTTP {status}")
            body = await read_limited(response, MAX_TOKEN_RESPONSE)
            if body is None:
                raise UpstreamProtocolError(self.name, f"{what}: response is too large")
        except httpx.TransportError as exc:
            raise _Retryable(f"{what}: {describe_transport_error(exc)}") from None
        finally:
            await response.aclose()
        try:
            return parse_token_response(body)
        except TokenResponseError as exc:
            raise UpstreamProtocolError(self.name, f"{what}: {exc}") from None


_FOREIGN = object()  # marker: the final answer came from a redirect target, not the registry


async def call_service(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    limit: int = 1 << 20,
    deadline: float = 30.0,
    **kwargs: Any,
) -> httpx.Response:
    """One request to a service edgecache calls (a P2P engine, a scanner adapter): the whole
    answer within `deadline` seconds and at most `limit` bytes, or an httpx error (ReadTimeout,
    ReadError) as for any other transport failure: a service that drips or floods costs a
    bounded wait and bounded memory."""
    with trio.move_on_after(deadline) as scope:
        async with client.stream(method, url, **kwargs) as response:
            body = await read_limited(response, limit)
            if body is None:
                raise httpx.ReadError(f"{method} {url}: an answer over {limit} bytes")
            return httpx.Response(
                response.status_code, headers=response.headers, content=body,
                request=response.request,
            )  # fmt: skip
    assert scope.cancelled_caught
    raise httpx.ReadTimeout(f"{method} {url}: no whole answer in {deadline:g} s")


async def read_limited(response: httpx.Response, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds `limit` bytes (never buffers more)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)
