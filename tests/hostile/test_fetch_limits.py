"""Upstream bodies are bounded and timed: declared sizes, unsized bodies, manifest deadlines,
and slow links that must still stream.

Two upstreams: a real docker-registry (a blob file on its disk made longer than the size the
manifest declared), and, for what no real registry does on purpose, a small scripted one
in a thread here (an endless chunked body, a manifest or a blob that trickles and stops).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.hostile.clients import http1_get
from tests.support import LOOPBACK, EdgecacheServer, sha256_bytes, wait_for
from tests.upstreams import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, RunningUpstream

PROMPT = 10.0  # well under every upstream timeout configured below
MAX_UNSIZED = 1 << 20
# What a trickling upstream sends before it pauses: more than the first read of a response
# (64 KiB, head included), less than any batch a reader could wait for (128 KiB, 1 MiB).
PART = 100 << 10
# Under MAX_UNSIZED: the chunked one states no size.
TRICKLED = {repo: os.urandom(512 << 10) for repo in ("trickle", "trickle-chunked")}


class Scripted(ThreadingHTTPServer):
    """A registry that misbehaves on purpose, by repository name."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.release = threading.Event()  # lets the trickling answers go on
        self.endless_sent = 0
        self.endless_done = threading.Event()  # the cache hung up on the endless body

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Scripted

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        path = self.path
        if path == "/v2/":
            self._head(200, {"Content-Length": "2"})
            self.wfile.write(b"{}")
        elif path.startswith("/v2/endless/blobs/"):
            self._head(200, {"Transfer-Encoding": "chunked"})
            piece = os.urandom(64 << 10)
            try:
                while True:
                    self._chunk(piece)
                    self.server.endless_sent += len(piece)
            except OSError:
                self.server.endless_done.set()
        elif path.startswith("/v2/trickle/blobs/"):
            data = TRICKLED["trickle"]
            self._head(200, {"Content-Length": str(len(data))})
            self.wfile.write(data[:PART])
            self.wfile.flush()
            self.server.release.wait(60)
            self.wfile.write(data[PART:])
        elif path.startswith("/v2/trickle-chunked/blobs/"):
            data = TRICKLED["trickle-chunked"]
            self._head(200, {"Transfer-Encoding": "chunked"})
            self._chunk(data[:PART])
            self.server.release.wait(60)
            self._chunk(data[PART:])
            self.wfile.write(b"0\r\n\r\n")
        elif path.startswith("/v2/slow/manifests/"):
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()
            self._head(200, {"Content-Type": OCI_MANIFEST, "Content-Length": str(len(body))})
            self.wfile.write(body[:10])
            self.wfile.flush()
            self.server.release.wait(60)
            self.wfile.write(body[10:])
        else:
            self._head(404, {"Content-Length": "0"})


@pytest.fixture(scope="module")
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, scripted: Scripted, upstream: RunningUpstream
) -> Iterator[EdgecacheServer]:
    config = (
        f"[limits]\nmax_unsized_blob = {MAX_UNSIZED}\n"
        "[proxy]\nmanifest_timeout = 1.0\n"
        # Idle timeouts far above PROMPT: only the limits under test can end things early.
        f'[upstreams.fake]\nurl = "{scripted.url}"\nretries = 1\nidle_timeout = 60.0\n'
        f'[upstreams.lab]\nurl = "{upstream.url}"\nretries = 1\nidle_timeout = 60.0\n'
    )
    with EdgecacheServer(tmp_path_factory.mktemp("cache"), config_text=config) as server:
        yield server


def test_blob_longer_than_its_manifest_declares_is_not_downloaded(
    cache: EdgecacheServer, upstream: RunningUpstream
) -> None:
    layer = os.urandom(2 << 20)
    digest = upstream.push_blob("long/app", layer)
    config = upstream.push_blob("long/app", b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest, "size": len(layer)}],
    }
    upstream.push_manifest("long/app", "v1", json.dumps(manifest).encode())
    hexd = digest.split(":", 1)[1]
    data = upstream.registry.root / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    data.write_bytes(layer + os.urandom(16 << 20))  # the upstream now says 18 MiB
    with cache.client(timeout=PROMPT) as client:
        r = client.get("/v2/lab/long/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200, r.text
        r = client.get(f"/v2/lab/long/app/blobs/{digest}")
    assert r.status_code == 503, r.text[:300]
    message = r.json()["errors"][0]["message"]
    assert re.search(rf"the manifest declared {len(layer)}\b", message), message
    assert not (cache.data / "blobs" / "sha256" / hexd[:2] / hexd).exists()


def test_endless_unsized_body_stops_at_the_maximum(
    cache: EdgecacheServer, scripted: Scripted
) -> None:
    digest = sha256_bytes(b"never")
    started = time.monotonic()
    path = f"/v2/fake/endless/blobs/{digest}"
    outcome = http1_get(LOOPBACK, cache.port, path, timeout=PROMPT, max_body=8 * MAX_UNSIZED)
    assert time.monotonic() - started < PROMPT
    assert not outcome.complete
    assert len(outcome.body) <= MAX_UNSIZED
    # And edgecache hung up on the upstream instead of reading on for ever.
    wait_for(scripted.endless_done.is_set, timeout=PROMPT, what="the cache to hang up")
    assert scripted.endless_sent < 64 * MAX_UNSIZED
    assert not any((cache.data / "blobs").rglob(digest.split(":", 1)[1]))


@pytest.mark.parametrize("repo", ["trickle", "trickle-chunked"])
def test_slow_upstream_streams_as_bytes_arrive(
    cache: EdgecacheServer, scripted: Scripted, repo: str
) -> None:
    """All the upstream sent before its pause reaches the client during the pause (no 128 KiB
    or 1 MiB batch has to fill first); then the whole blob arrives and checks out."""
    scripted.release.clear()
    data = TRICKLED[repo]
    digest = sha256_bytes(data)
    sock = socket.create_connection((LOOPBACK, cache.port), timeout=PROMPT)
    try:
        sock.sendall(f"GET /v2/fake/{repo}/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = bytearray()

        def first_part_arrived() -> bool:
            sock.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                received.extend(sock.recv(1 << 20))
            return b"\r\n\r\n" in received and _decode(bytes(received))[:PART] == data[:PART]

        wait_for(first_part_arrived, timeout=PROMPT, what="the first bytes before the pause")
        scripted.release.set()
        sock.settimeout(PROMPT)
        while not _body_done(bytes(received)):
            chunk = sock.recv(1 << 20)
            assert chunk, "connection closed early"
            received.extend(chunk)
    finally:
        sock.close()
    body = _decode(bytes(received))
    assert hashlib.sha256(body).hexdigest() == digest.split(":", 1)[1]


def _body_done(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"content-length: (\d+)", head.lower())
    if match:
        return len(body) >= int(match.group(1))
    return body.endswith(b"\r\n0\r\n\r\n")


def _decode(raw: bytes) -> bytes:
    """The body so far of a response read so far (chunked or not)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out = bytearray()
    while b"\r\n" in body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        out += rest[:size]
        if size == 0 or len(rest) < size + 2:
            break
        body = rest[size + 2 :]
    return bytes(out)


def test_manifest_fetch_has_a_deadline(cache: EdgecacheServer, scripted: Scripted) -> None:
    scripted.release.clear()
    started = time.monotonic()
    with cache.client(timeout=PROMPT) as client:
        r = client.get("/v2/fake/slow/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 503, r.text
    assert "timed out after 1s" in r.json()["errors"][0]["message"]
    assert time.monotonic() - started < PROMPT
    scripted.release.set()
