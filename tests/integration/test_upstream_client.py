"""The upstream client against real docker-registry upstreams (anonymous, basic, token auth),
plus small scripted HTTP servers for the faults a real registry will not produce on demand
(503 bursts, Retry-After, stalls, cut bodies, redirects to storage hosts)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
import trio

from edgecache.config import UpstreamConfig
from edgecache.oci.digest import Digest
from edgecache.upstream import (
    CircuitBreaker,
    Upstream,
    UpstreamAuthError,
    UpstreamCorrupt,
    UpstreamNotFound,
    UpstreamTooLarge,
    UpstreamUnavailable,
    rawget,
)
from tests.support import LOOPBACK, free_port, wait_for
from tests.upstreams import (
    FLAVOURS,
    PushedImage,
    RunningUpstream,
    start_registry,
)

MISSING = Digest.parse("sha256:" + "0" * 64)


@pytest.fixture(scope="module", params=FLAVOURS)
def upstream(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp(f"upstream-{request.param}"), request.param) as up:
        yield up


@pytest.fixture(scope="module")
def image(upstream: RunningUpstream) -> PushedImage:
    return upstream.push_test_image("team/app", tags=("v1",))


def config_for(up: RunningUpstream, **overrides: object) -> UpstreamConfig:
    fields: dict[str, object] = {
        "name": "test-upstream",
        "url": up.url,
        "username": up.username or "",
        "password": up.password or "",
        "connect_timeout": 5.0,
        "idle_timeout": 10.0,
    }
    fields.update(overrides)
    return UpstreamConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def client(upstream: RunningUpstream) -> AsyncIterator[Upstream]:
    u = Upstream(config_for(upstream))
    try:
        yield u
    finally:
        await u.aclose()


# ------------------------------------------------------------------- real registry


async def test_manifest_by_tag_and_digest(client: Upstream, image: PushedImage) -> None:
    info = await client.head_manifest(image.repo, "v1")
    assert str(info.digest) == image.digest
    assert info.size == len(image.manifest)
    assert info.media_type == "application/vnd.oci.image.manifest.v1+json"

    by_tag = await client.get_manifest(image.repo, "v1")
    assert by_tag.data == image.manifest
    assert str(by_tag.digest) == image.digest
    assert by_tag.media_type == "application/vnd.oci.image.manifest.v1+json"

    by_digest = await client.get_manifest(image.repo, image.digest, deadline=10)
    assert by_digest == by_tag


async def test_blob_head_open_and_resume_offset(
    client: Upstream, upstream: RunningUpstream, image: PushedImage
) -> None:
    digest = Digest.parse(image.layer_digest)
    info = await client.head_blob(image.repo, digest)
    assert info.size == len(image.layer)

    async with client.open_blob(image.repo, digest) as stream:
        whole = b"".join([c async for c in stream.chunks()])
    assert (stream.offset, stream.total) == (0, len(image.layer))
    assert whole == image.layer

    offset = 100_003
    async with client.open_blob(image.repo, digest, offset) as stream:
        tail = b"".join([c async for c in stream.chunks()])
    assert (stream.offset, stream.total) == (offset, len(image.layer))
    assert tail == image.layer[offset:]
    # The registry's own log agrees: the whole blob once, then only the tail.
    served = len(image.layer) * 2 - offset
    wait_for(
        lambda: upstream.served_bytes(image.layer_digest) == served,
        timeout=5,
        what=f"the registry log to show {served} bytes served",
    )
    assert upstream.request_count(f"/blobs/{image.layer_digest}", "GET") == 2


async def test_tags(client: Upstream, upstream: RunningUpstream) -> None:
    tags = ("a1", "b2", "c3", "d4", "e5")
    upstream.push_test_image("team/paged", tags=tags)
    # distribution 2.8.2 ignores n= on tag lists (no Link header, all tags at once, unsorted):
    # Link following is covered by the scripted server below.
    assert sorted(await client.tags("team/paged", page_size=2)) == list(tags)
    assert sorted(await client.tags("team/paged")) == list(tags)


async def test_not_found(client: Upstream, image: PushedImage) -> None:
    with pytest.raises(UpstreamNotFound):
        await client.get_manifest(image.repo, "no-such-tag")
    with pytest.raises(UpstreamNotFound):
        await client.head_manifest("team/never-pushed", "v1")
    with pytest.raises(UpstreamNotFound):
        await client.head_blob(image.repo, MISSING)
    with pytest.raises(UpstreamNotFound):
        async with client.open_blob(image.repo, MISSING):
            pass
    assert client.available  # answers are not failures: the breaker stays closed


async def test_referrers_without_api_is_empty_index(client: Upstream, image: PushedImage) -> None:
    # distribution 2.8 has no referrers API (404): an empty OCI index, not an error.
    body = await client.referrers(image.repo, Digest.parse(image.digest))
    assert b'"manifests": []' in body


@pytest.mark.parametrize("upstream", ["basic", "token"], indirect=True)  # anonymous: any creds
async def test_wrong_password_is_auth_error(upstream: RunningUpstream, image: PushedImage) -> None:
    u = Upstream(config_for(upstream, password="wrong-password-xyz"))
    try:
        with pytest.raises(UpstreamAuthError) as caught:
            await u.head_manifest(image.repo, "v1")
        assert "wrong-password-xyz" not in str(caught.value)
        assert "wrong-password-xyz" not in repr(caught.value)
    finally:
        await u.aclose()


@pytest.mark.parametrize("upstream", ["basic"], indirect=True)  # the one refusing anonymous
async def test_no_credentials_where_required(upstream: RunningUpstream, image: PushedImage) -> None:
    u = Upstream(config_for(upstream, username="", password=""))
    try:
        with pytest.raises(UpstreamAuthError, match="none configured"):
            await u.get_manifest(image.repo, "v1")
    finally:
        await u.aclose()


@pytest.mark.parametrize("upstream", ["token"], indirect=True)
async def test_token_cached_per_scope_and_single_flight(
    upstream: RunningUpstream, image: PushedImage
) -> None:
    tokens = upstream.token_server
    assert tokens is not None
    upstream.push_test_image("team/other", tags=("v1",))
    u = Upstream(config_for(upstream))
    try:
        before = tokens.count()
        await u.get_manifest(image.repo, "v1")
        await u.get_manifest(image.repo, "v1")
        await u.head_manifest(image.repo, "v1")
        assert tokens.count() - before == 1

        # Many concurrent requests in a scope with no token yet: still one fetch.
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(u.head_manifest, "team/other", "v1")
        assert tokens.count("repository:team/other:pull") == 1
        assert tokens.requests[-1].user == upstream.username
    finally:
        await u.aclose()


@pytest.mark.parametrize("upstream", ["token"], indirect=True)
async def test_anonymous_token_pull(upstream: RunningUpstream, image: PushedImage) -> None:
    """Docker Hub style: no credentials, the token server grants anonymous pull."""
    u = Upstream(config_for(upstream, username="", password=""))
    try:
        manifest = await u.get_manifest(image.repo, "v1")
        assert str(manifest.digest) == image.digest
        assert upstream.token_server.requests[-1].user is None
    finally:
        await u.aclose()


# ------------------------------------------------------------------------ outages


@pytest.fixture
def stopped_upstream(tmp_path: object) -> Iterator[RunningUpstream]:
    with start_registry(str(tmp_path), "anonymous") as up:
        up.push_test_image("team/app")
        up.stop()
        yield up


async def test_stopped_registry_fails_fast(stopped_upstream: RunningUpstream) -> None:
    u = Upstream(config_for(stopped_upstream, retries=2))
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable, match="connection failed"):
            await u.head_manifest("team/app", "v1")
        # Refused connections plus two jittered backoffs (<= 0.2 + 0.4 s).
        assert time.monotonic() - started < 3
    finally:
        await u.aclose()


async def test_breaker_opens_then_fails_fast(stopped_upstream: RunningUpstream) -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=60)
    u = Upstream(config_for(stopped_upstream, retries=0), breaker=breaker)
    try:
        for _ in range(3):
            with pytest.raises(UpstreamUnavailable, match="connection failed"):
                await u.get_manifest("team/app", "v1")
        assert not u.available
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable, match="circuit open"):
            async with u.open_blob("team/app", MISSING):
                pass
        assert time.monotonic() - started < 0.1
    finally:
        await u.aclose()


async def test_breaker_half_open_trial_closes_it(
    upstream: RunningUpstream, image: PushedImage
) -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0])
    breaker.failure()
    breaker.failure()
    u = Upstream(config_for(upstream), breaker=breaker)
    try:
        with pytest.raises(UpstreamUnavailable, match="circuit open"):
            await u.head_manifest(image.repo, "v1")
        now[0] = 10.0
        assert u.available
        assert str((await u.head_manifest(image.repo, "v1")).digest) == image.digest
        assert breaker.consecutive_failures == 0 and u.available
    finally:
        await u.aclose()


# ---------------------------------------------------------------- scripted faults


@dataclass
class Scripted:
    """A raw HTTP/1.1 server on 127.0.0.1: each request gets the next scripted reply.

    A reply is bytes (sent, then the connection closes) or a callable that gets the stream
    and may stall or cut. Every request's head is recorded."""

    replies: list[bytes | Callable[[trio.SocketStream], Awaitable[None]]]
    port: int = 0
    requests: list[str] = field(default_factory=list)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(65536)
            if not data:
                return
            head += data
        self.requests.append(head.decode("latin-1"))
        reply = (
            self.replies.pop(0) if self.replies else b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n"
        )
        if isinstance(reply, bytes):
            await stream.send_all(reply)
        else:
            await reply(stream)
        await stream.aclose()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def http(status: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def scripted_config(url: str, **overrides: object) -> UpstreamConfig:
    fields: dict[str, object] = {"name": "scripted", "url": url, "connect_timeout": 2.0}
    fields.update(overrides)
    return UpstreamConfig(**fields)  # type: ignore[arg-type]


MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
OK_MANIFEST = http(
    "200 OK", {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, MANIFEST
)


async def test_retries_5xx_and_honours_retry_after(nursery: trio.Nursery) -> None:
    server = Scripted(
        [
            http("503 Busy", {"Retry-After": "0"}),
            http("429 Slow", {"Retry-After": "1"}),
            OK_MANIFEST,
        ]
    )
    await nursery.start(server.serve)
    u = Upstream(scripted_config(server.url, retries=3))
    started = time.monotonic()
    manifest = await u.get_manifest("repo", "latest")
    assert manifest.data == MANIFEST
    assert len(server.requests) == 3
    assert time.monotonic() - started >= 1.0  # waited the Retry-After: 1
    await u.aclose()


async def test_5xx_after_retries_is_unavailable(nursery: trio.Nursery) -> None:
    server = Scripted([http("502 Bad Gateway")] * 3)
    await nursery.start(server.serve)
    u = Upstream(scripted_config(server.url, retries=2))
    with pytest.raises(UpstreamUnavailable, match=r"HTTP 502 \(after 3 attempts\)"):
        await u.head_manifest("repo", "latest")
    await u.aclose()


async def test_deadline_covers_a_silent_upstream(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    server = Scripted([silent])
    await nursery.start(server.serve)
    u = Upstream(scripted_config(server.url, idle_timeout=60.0))
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match=r"timed out after 0\.3s"):
        await u.head_manifest("repo", "latest", deadline=0.3)
    assert time.monotonic() - started < 2
    await u.aclose()


async def test_blob_stream_cut_and_stall_are_unavailable(nursery: trio.Nursery) -> None:
    async def cut(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 300)

    async def stall(stream: trio.SocketStream) -> None:
        await stream.send_all(
            b"HTTP/1.1 206 Partial\r\nContent-Length: 700\r\n"
            b"Content-Range: bytes 300-999/1000\r\n\r\n" + b"y" * 100
        )
        await trio.sleep_forever()  # fmt: skip

    server = Scripted([cut, stall])
    await nursery.start(server.serve)
    u = Upstream(scripted_config(server.url, idle_timeout=0.5))
    got = b""
    with pytest.raises(UpstreamUnavailable, match="connection lost"):
        async with u.open_blob("repo", MISSING) as stream:
            assert stream.total == 1000
            async for chunk in stream.chunks():
                got += chunk
    assert got == b"x" * 300
    with pytest.raises(UpstreamUnavailable, match="timed out waiting for data"):
        async with u.open_blob("repo", MISSING, 300) as stream:
            assert (stream.offset, stream.total) == (300, 1000)
            async for _ in stream.chunks():
                pass
    assert "Range: bytes=300-" in server.requests[1]
    await u.aclose()


async def test_redirect_to_storage_drops_authorization(nursery: trio.Nursery) -> None:
    storage = Scripted([http("200 OK", {}, b"blob-bytes")])
    await nursery.start(storage.serve)
    registry = Scripted([http("307 Temporary Redirect", {"Location": f"{storage.url}/b?sig=1"})])
    await nursery.start(registry.serve)
    u = Upstream(scripted_config(registry.url, token="static-secret-token"))
    async with u.open_blob("repo", MISSING) as stream:
        assert b"".join([c async for c in stream.chunks()]) == b"blob-bytes"
    assert "authorization: bearer static-secret-token" in registry.requests[0].lower()
    assert "authorization" not in storage.requests[0].lower()
    await u.aclose()


async def test_raw_blob_follows_redirects_and_keeps_authorization_home(
    nursery: trio.Nursery,
) -> None:
    """The thread-read blob path (rawget) makes the same requests as the httpx one."""
    storage = Scripted([http("200 OK", {}, b"blob-bytes")])
    await nursery.start(storage.serve)
    registry = Scripted([http("307 Temporary Redirect", {"Location": f"{storage.url}/b?sig=1"})])
    await nursery.start(registry.serve)
    u = Upstream(scripted_config(registry.url, token="static-secret-token"))
    raw = await u.raw_blob("repo", MISSING)
    assert raw is not None and (raw.offset, raw.total) == (0, 10)
    out = bytearray()
    await trio.to_thread.run_sync(
        lambda: rawget.pump(
            raw.response, raw.response.length, out.extend, lambda n: None, chunk=1 << 20
        )
    )
    raw.close()
    assert out == b"blob-bytes"
    assert "authorization: bearer static-secret-token" in registry.requests[0].lower()
    assert "authorization" not in storage.requests[0].lower()
    assert storage.requests[0].startswith("GET /b?sig=1 ")
    await u.aclose()


@pytest.mark.parametrize(
    "reply",
    [
        http("401 Unauthorized", {"WWW-Authenticate": 'Bearer realm="http://127.0.0.1:9/t"'}),
        http("503 Service Unavailable"),
        http("404 Not Found"),
    ],
    ids=["401", "503", "404"],
)
async def test_raw_blob_leaves_every_other_answer_to_httpx(
    nursery: trio.Nursery, reply: bytes
) -> None:
    registry = Scripted([reply])
    await nursery.start(registry.serve)
    u = Upstream(scripted_config(registry.url))
    assert await u.raw_blob("repo", MISSING) is None
    await u.aclose()


async def test_raw_blob_leaves_a_failing_token_fetch_to_httpx(nursery: trio.Nursery) -> None:
    dead = free_port()  # the token realm: nothing listens there
    challenge = {"WWW-Authenticate": f'Bearer realm="http://{LOOPBACK}:{dead}/t",service="s"'}
    registry = Scripted([http("401 Unauthorized", challenge)] * 3)
    await nursery.start(registry.serve)
    u = Upstream(scripted_config(registry.url, retries=0))
    assert await u.raw_blob("repo", MISSING) is None  # no challenge known yet: 401
    with pytest.raises(UpstreamUnavailable, match="token request"):
        async with u.open_blob("repo", MISSING):
            pass
    # The challenge is known now and its token cannot be had: still httpx's to explain.
    assert await u.raw_blob("repo", MISSING) is None
    await u.aclose()


async def test_tags_follow_link_pages(nursery: trio.Nursery) -> None:
    def page(tags: str, link: str | None) -> bytes:
        headers = {"Content-Type": "application/json"}
        if link:
            headers["Link"] = link
        return http("200 OK", headers, b'{"name":"r","tags":[' + tags.encode() + b"]}")

    server = Scripted(
        [
            page('"a","b"', '</v2/r/tags/list?n=2&last=b>; rel="next"'),
            page('"c","d"', '<list?n=2&last=d>; rel="next"'),  # relative to the page URL
            page('"e"', None),
        ]
    )
    await nursery.start(server.serve)
    u = Upstream(scripted_config(server.url))
    assert await u.tags("r", page_size=2) == ["a", "b", "c", "d", "e"]
    paths = [r.split(" ")[1] for r in server.requests]
    assert paths == [
        "/v2/r/tags/list?n=2",
        "/v2/r/tags/list?n=2&last=b",
        "/v2/r/tags/list?n=2&last=d",
    ]
    await u.aclose()


def token_reply(token: str) -> bytes:
    body = f'{{"token":"{token}","expires_in":300}}'.encode()
    return http("200 OK", {"Content-Type": "application/json"}, body)


async def test_refused_token_is_refreshed_once(nursery: trio.Nursery) -> None:
    tokens = Scripted([token_reply("tok-1"), token_reply("tok-2"), token_reply("tok-3")])
    await nursery.start(tokens.serve)
    challenge = {"WWW-Authenticate": f'Bearer realm="{tokens.url}/token",service="svc"'}
    registry = Scripted(
        [
            http("401 Unauthorized", challenge),  # first contact: anonymous
            OK_MANIFEST,  # with tok-1
            http("401 Unauthorized", challenge),  # tok-1 revoked
            OK_MANIFEST,  # with tok-2
            http("401 Unauthorized", challenge),  # tok-2 refused
            http("401 Unauthorized", challenge),  # and tok-3 too: final
        ]
    )
    await nursery.start(registry.serve)
    u = Upstream(scripted_config(registry.url, username="bob", password="pw-xyz"))
    assert (await u.get_manifest("team/app", "v1")).data == MANIFEST
    assert (await u.get_manifest("team/app", "v1")).data == MANIFEST
    auth = [r.lower().split("authorization: ")[1].split("\r\n")[0] for r in registry.requests[1:]]
    assert auth[:3] == ["bearer tok-1", "bearer tok-1", "bearer tok-2"]
    assert "scope=repository%3ateam%2fapp%3apull" in tokens.requests[0].lower()
    assert "authorization: basic " in tokens.requests[0].lower()
    with pytest.raises(UpstreamAuthError, match=r"access denied \(HTTP 401\)") as caught:
        await u.get_manifest("team/app", "v1")
    assert "tok-" not in str(caught.value) and "pw-xyz" not in str(caught.value)
    assert len(tokens.requests) == 3 and len(registry.requests) == 6
    await u.aclose()


async def test_challenge_scope_is_added_to_the_token_request(nursery: trio.Nursery) -> None:
    """ECR Public names a scope of its own ("aws") in its challenge."""
    tokens = Scripted([token_reply("tok-1"), token_reply("tok-2")])
    await nursery.start(tokens.serve)
    challenge = f'Bearer realm="{tokens.url}/token",service="public.ecr.aws",scope="aws"'
    registry = Scripted(
        [http("401 Unauthorized", {"WWW-Authenticate": challenge}), OK_MANIFEST, OK_MANIFEST]
    )
    await nursery.start(registry.serve)
    u = Upstream(scripted_config(registry.url))
    await u.get_manifest("r", "v1")
    await u.get_manifest("r", "v1")
    assert len(tokens.requests) == 1
    line = tokens.requests[0].split("\r\n")[0]
    assert "scope=repository%3Ar%3Apull&scope=aws&service=public.ecr.aws" in line
    await u.aclose()


async def test_manifest_digest_mismatch_and_size_limit(nursery: trio.Nursery) -> None:
    server = Scripted([OK_MANIFEST, OK_MANIFEST])
    await nursery.start(server.serve)
    u = Upstream(scripted_config(server.url), max_manifest_size=len(MANIFEST) - 1)
    with pytest.raises(UpstreamTooLarge, match=f"limit is {len(MANIFEST) - 1}"):
        await u.get_manifest("r", "v1")
    u.max_manifest_size = 4 << 20
    with pytest.raises(UpstreamCorrupt, match=f"expected {MISSING}"):
        await u.get_manifest("r", str(MISSING))
    await u.aclose()
