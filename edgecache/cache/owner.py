"""Ask the owner, relay what comes back: the miss path of a serving process that owns nothing.

Content has one owner that may fetch it: inside a node, the process that runs upstream
fetches (the first of `[server] workers`); across a site (the peers issue), the node chosen for
the digest. Everyone else answers what is already on disk and, for the rest, sends the
client's request to the owner and streams the owner's answer back as it arrives: a joiner of
the owner's single download, whichever process or node it is on. So the rules of one node hold
unchanged across processes: one upstream fetch per blob, bytes reach every client as they
arrive, and a body the owner breaks off (a digest that did not verify) is broken off here too,
never finished: h11 reports a body that ended early, and the relay raises instead of ending
the client's response (server/connguard.py then resets that connection or stream).

The request travels as HTTP/1.1 over a Unix socket in <data>/run/ (only the server's user can
connect), with the client's own headers, so the owner authorises it as it would any client;
HOP marks it as forwarded (an owner never forwards it again: the loop guard peers need), and
CLIENT carries the client's address for the owner's per-address limits. What the owner knows
and the asker may use comes back in headers under the same prefix, which are not relayed:
TAG_AGE (how long ago the owner confirmed a tag upstream: the asker answers that tag itself
until it is as old as tag_ttl) and CACHE (hit, miss, joined, stale, for the asker's access log).

Each request opens its own connection: connecting to a Unix socket costs microseconds, and
only misses, pushes and admin requests come this way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11
import trio

from ..oci import errors

if TYPE_CHECKING:
    from ..server.http import Request

log = logging.getLogger("edgecache.owner")

PREFIX = "edgecache-"
HOP = PREFIX + "hop"
CLIENT = PREFIX + "client"
TAG_AGE = PREFIX + "tag-age"
CACHE = PREFIX + "cache"
LIST_AGE = PREFIX + "list-age"
# The request came from the member this names, whose signature the asking process verified.
PEER_VERIFIED = PREFIX + "peer-verified"
# On a member's blob request: the bytes a second its download is capped at (a preheat's
# bandwidth); a download started for it is capped alike (server/proxied.py).
PACE = PREFIX + "pace"
# A list answer (tags, referrers) the asker keeps is at most this large.
LIST_KEPT = 1 << 20

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones each side's HTTP stack writes itself.
_NOT_RELAYED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "date",
        "server",
    }
)
RECEIVE = 1 << 20


@dataclass(frozen=True)
class Answer:
    """What the owner said, as far as the asker may reuse it."""

    status: int
    own: Mapping[str, str]  # the PREFIX headers, which were not relayed
    headers: Mapping[str, str]  # what was relayed
    body: bytes | None  # kept only for a list answer (LIST_AGE) of at most LIST_KEPT bytes


def seconds(text: str | None) -> float | None:
    """An age header's value (TAG_AGE, LIST_AGE): seconds, at least 0; None if not one."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


class NeedOwner(Exception):
    """Raised by a serving process for a request only the owner can answer (a miss, a write,
    the admin API); nothing has been sent to the client yet."""


class OwnerLink:
    def __init__(self, socket_path: str, connect_timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout

    async def forward(self, req: Request) -> Answer:
        """Send `req` to the owner and relay its answer."""
        stream: trio.SocketStream | None = None
        with trio.move_on_after(self.connect_timeout):
            try:
                stream = await trio.open_unix_socket(self.socket_path)
            except OSError as exc:
                raise _unavailable(f"cannot reach it ({exc.strerror or exc})") from None
        if stream is None:
            raise _unavailable("it did not accept the connection in time")
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            await _send_request(req, conn, stream)
            response = await _next(conn, stream)
            while isinstance(response, h11.InformationalResponse):
                response = await _next(conn, stream)
            if not isinstance(response, h11.Response):
                raise _unavailable("it closed the connection without an answer")
            own: dict[str, str] = {}
            headers: dict[str, str] = {}
            for raw_name, raw_value in response.headers:
                name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
                if name.startswith(PREFIX):
                    own[name] = value
                    if name == TAG_AGE and req.peer is not None:
                        headers[name] = value  # for the member that asked (cache/proxy.py)
                elif name not in _NOT_RELAYED:
                    headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if CACHE in own:
                req.extra["cache"] = own[CACHE]
            req.headers_out.clear()  # the owner's answer has its own (OCI-Namespace, Warning)
            if req.unread_body and req.scope.get("http_version") in ("1.0", "1.1"):
                headers["connection"] = "close"  # as Request.respond_error says why
            await req.start(response.status_code, headers)
            kept = bytearray() if LIST_AGE in own and req.method == "GET" else None
            complete = False
            # A client that hangs up stops the relay, and so the owner's sending.
            async with req.until_disconnect():
                while True:
                    event = await _next(conn, stream)
                    if isinstance(event, h11.Data):
                        await req.send(
                            {
                                "type": "http.response.body",
                                "body": bytes(event.data),
                                "more_body": True,
                            }
                        )
                        req.sent_bytes += len(event.data)
                        if kept is not None:
                            kept += event.data
                            if len(kept) > LIST_KEPT:
                                kept = None
                    elif isinstance(event, h11.EndOfMessage):
                        complete = True
                        break
                    else:  # the owner broke the body off: so must we (never a complete answer)
                        raise _unavailable("it broke off the response")
            if complete and not req.disconnected:
                await req.finish()
            body = bytes(kept) if kept is not None and complete else None
            return Answer(response.status_code, own, headers, body)


async def _send_request(req: Request, conn: h11.Connection, stream: trio.SocketStream) -> None:
    """The request and its body, as the client sends it. An owner may answer before it has
    read the whole body (an error: 416, 413, 401) and stop reading: then the rest is not
    sent, and its answer, already on its way, is what the client gets."""

    async def send(event: h11.Request | h11.Data | h11.EndOfMessage) -> bool:
        try:
            await stream.send_all(conn.send(event) or b"")
        except (trio.BrokenResourceError, h11.LocalProtocolError):
            return False  # closed by the owner; or a body unlike its Content-Length
        return True

    if not await send(_request(req)):
        return
    if _has_body(req):
        async for chunk in req.chunks():  # a client that goes away raises here
            if not await send(h11.Data(data=chunk)):
                return
    await send(h11.EndOfMessage())


def _unavailable(why: str) -> errors.OCIError:
    return errors.Unavailable(f"the serving process that owns this request: {why}; retry")


def _has_body(req: Request) -> bool:
    if req.method in ("GET", "HEAD", "DELETE") and "content-length" not in req.headers:
        return "transfer-encoding" in req.headers
    return True


def _request(req: Request) -> h11.Request:
    scope = req.scope
    target = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    headers: list[tuple[bytes, bytes]] = []
    host = False
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.lower()
        if name.startswith(PREFIX.encode()) or name.decode("latin-1") in _NOT_RELAYED:
            continue  # a client cannot speak for the server (CLIENT, HOP)
        if name == b":authority" or name.startswith(b":"):
            continue
        host = host or name == b"host"
        headers.append((name, raw_value))
    if not host:
        headers.append((b"host", b"edgecache"))
    if _has_body(req) and "content-length" not in req.headers:
        headers.append((b"transfer-encoding", b"chunked"))
    elif not _has_body(req) and req.method not in ("GET", "HEAD"):
        headers.append((b"content-length", b"0"))
    client = scope.get("client")
    if client:
        headers.append((CLIENT.encode(), f"{client[0]} {client[1]}".encode()))
    headers.append((HOP.encode(), b"1"))
    if req.peer is not None:
        headers.append((PEER_VERIFIED.encode(), req.peer.encode("latin-1")))
        pace = req.headers.get(PACE)
        if pace is not None:  # a member's capped download (cache/fetch.py)
            headers.append((PACE.encode(), pace.encode("latin-1")))
    return h11.Request(method=req.method, target=target, headers=headers)


async def _next(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            log.warning("the owner's answer was malformed or incomplete: %s", exc)
            raise _unavailable("it sent a malformed or incomplete response") from None
        if event is not h11.NEED_DATA:
            return event  # an event, or PAUSED: never after a whole response (one per connection)
        try:
            data = await stream.receive_some(RECEIVE)
        except trio.BrokenResourceError:  # reset: the owner died (its answer is lost)
            raise _unavailable("it went away") from None
        conn.receive_data(data)  # b"": the end of the stream, which h11 judges
