"""A member of the site that lies: what it sends never reaches a client as a good blob, and
never takes the node down.

The lying member is a fake (no real edgecache can be made to send these answers): an HTTP
server in the test process, listed in [peers] and ranked above the real node for the blob,
so the node asks it first. The uplink is a real docker-registry behind FaultProxy, slowed to
4 MB/s so that clients join the download while it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from edgecache.peers import ring
from tests.faultproxy import FaultProxy
from tests.support import LOOPBACK, EdgecacheServer, free_port
from tests.upstreams import RunningUpstream

UPSTREAM = "lab"
SECRET = b"site-secret-0123456789abcdef"

Answer = Callable[[BaseHTTPRequestHandler], None]


def too_short(handler: BaseHTTPRequestHandler) -> None:
    """100 bytes of junk, announced as the whole blob."""
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    handler.wfile.write(b"x" * 100)


def bad_gzip(handler: BaseHTTPRequestHandler) -> None:
    """A chunked body that claims a gzip content-coding and is not gzip."""
    junk = b"this is not gzip at all" * 10
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.send_header("Content-Encoding", "gzip")
    handler.end_headers()
    handler.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(junk), junk))


def trickle(handler: BaseHTTPRequestHandler) -> None:
    """The right size announced, then a byte every 2 s: within every read timeout."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(2 << 20))
    handler.end_headers()
    with contextlib.suppress(OSError):
        for _ in range(60):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(2)  # the fake member's pace, not synchronisation


def serve(answer: Answer, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/readyz":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            answer(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@pytest.fixture
def blob(upstream: RunningUpstream) -> tuple[str, bytes]:
    data = os.urandom(2 << 20)
    return upstream.push_blob("team/app", data), data


@contextmanager
def lying_site(
    tmp_path: Path, upstream: RunningUpstream, digest: str, answer: Answer
) -> Iterator[tuple[EdgecacheServer, FaultProxy]]:
    host, _, port = upstream.host.rpartition(":")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    while True:  # ports where the liar ranks above the node for this blob
        mine, its = free_port(), free_port()
        me, liar = f"http://{LOOPBACK}:{mine}", f"http://{LOOPBACK}:{its}"
        if ring.above([me, liar], me, digest) == [liar]:
            break
    fake = serve(answer, its)
    with FaultProxy(host, int(port)) as relay:
        relay.limit_rate(4e6)
        config = (
            f'[upstreams.{UPSTREAM}]\nurl = "{relay.url}"\nretries = 1\n\n'
            f'[peers]\nmembers = ["{me}", "{liar}"]\nself = "{me}"\nsecret_file = "{secret}"\n'
        )
        try:
            with EdgecacheServer(
                tmp_path / "n", config_text=config, listen=f"{LOOPBACK}:{mine}"
            ) as node:
                yield node, relay
        finally:
            fake.shutdown()
            fake.server_close()


def get(node: EdgecacheServer, digest: str) -> tuple[int, bytes] | str:
    """(status, body) of a whole GET, or the error that broke it off."""
    try:
        with httpx.Client(base_url=node.url, timeout=60) as client:
            response = client.get(f"/v2/{UPSTREAM}/team/app/blobs/{digest}")
            return response.status_code, response.content
    except httpx.HTTPError as exc:
        return type(exc).__name__


def test_a_member_announcing_a_short_blob_never_yields_a_short_200(
    tmp_path: Path, upstream: RunningUpstream, blob: tuple[str, bytes]
) -> None:
    digest, data = blob
    with lying_site(tmp_path, upstream, digest, too_short) as (node, _):
        outcomes: list[tuple[int, bytes] | str] = []

        def client() -> None:
            outcomes.append(get(node, digest))

        clients = [threading.Thread(target=client) for _ in range(6)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=120)
        for outcome in outcomes:
            # A complete answer is the blob; anything else was broken off, never completed.
            if isinstance(outcome, tuple) and outcome[0] == 200:
                assert hashlib.sha256(outcome[1]).hexdigest() == digest[7:]
        assert get(node, digest) == (200, data)


def test_a_member_sending_an_undecodable_body_does_not_take_the_node_down(
    tmp_path: Path, upstream: RunningUpstream, blob: tuple[str, bytes]
) -> None:
    digest, data = blob
    with lying_site(tmp_path, upstream, digest, bad_gzip) as (node, _):
        assert get(node, digest) == (200, data)  # from the uplink, after the member failed
        with httpx.Client(base_url=node.url) as client:
            assert client.get("/healthz").status_code == 200


def test_a_member_trickling_bytes_is_given_up_for_the_uplink(
    tmp_path: Path, upstream: RunningUpstream, blob: tuple[str, bytes]
) -> None:
    """A member that sends a byte every 2 s never trips a read timeout; the download leaves it
    once it moved too little in a window (PEER_WINDOW) and resumes from the uplink. The bytes
    it trickled were junk: the digest catches them, the client streaming them is broken off
    (never a complete 200), and the blob, fetched again, is published right."""
    digest, data = blob
    with lying_site(tmp_path, upstream, digest, trickle) as (node, _):
        first = get(node, digest)
        assert first == (200, data) or isinstance(first, str), first
        assert "bytes in 10 s" in node.log_text()
        assert get(node, digest) == (200, data)
