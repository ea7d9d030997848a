"""Connection-level abuse: the HTTP/2 request limit, and requests with ambiguous framing.

- hypercorn ends an HTTP/2 connection after keep_alive_max_requests (1000). It used to do so
  by a GOAWAY after which it could send nothing, so the streams still in flight hung until
  the 75 s idle timeout. Now they finish, newer streams are refused (retryable), and the
  connection closes with a GOAWAY naming the last stream it processed.
- A request with both Content-Length and Transfer-Encoding is processed with the chunked
  framing (RFC 9112 section 6.3), then its connection is closed (Connection: close): a
  pipelined request behind it, which a proxy in front may have framed differently, is never
  answered.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.hostile.clients import H2Client
from tests.support import LOOPBACK, EdgecacheServer, anonymous_push_config

LIMIT = 1000  # hypercorn's keep_alive_max_requests, which edgecache keeps
PROMPT = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    with EdgecacheServer(tmp_path_factory.mktemp("ec"), config_text=anonymous_push_config()) as s:
        yield s


def test_h2_request_limit_finishes_streams_in_flight(server: EdgecacheServer) -> None:
    client = H2Client(LOOPBACK, server.port, timeout=PROMPT)
    sent: list[int] = []
    try:
        # Up to 20 streams in flight at any time, past the limit, until the server's GOAWAY.
        while not client.closed and client.goaway is None and len(sent) < LIMIT + 100:
            while len(sent) < LIMIT + 100 and sum(not client.done(s) for s in sent) < 20:
                sent.append(client.request("/v2/"))
            client.pump()
        # The GOAWAY comes once the streams in flight are done; then the connection closes.
        while not client.closed:
            client.pump()
    finally:
        client.close()
    assert client.goaway is not None, "the connection ended without a GOAWAY"
    last = client.goaway.last_stream_id
    processed = [s for s in sent if s <= last]
    assert len(processed) == LIMIT
    for stream_id in processed:
        outcome = client.outcomes[stream_id]
        assert outcome.complete and outcome.status == 200, (stream_id, outcome)
    for stream_id in sent:
        if stream_id > last:  # refused or never looked at: never half-answered
            outcome = client.outcomes[stream_id]
            assert outcome.status is None and not outcome.complete, (stream_id, outcome)


def test_httpx_h2_client_goes_on_past_the_limit(server: EdgecacheServer) -> None:
    """A plain h2 client (httpx: the h2 package) pulls on, over a new connection."""
    with httpx.Client(base_url=server.url, http1=False, http2=True, timeout=PROMPT) as client:
        for _ in range(LIMIT + 10):
            r = client.get("/v2/")
            assert r.status_code == 200 and r.http_version == "HTTP/2"


def test_content_length_and_transfer_encoding_close_the_connection(
    server: EdgecacheServer,
) -> None:
    body = b"5\r\nhello\r\n0\r\n\r\n"
    smuggled = b"GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((LOOPBACK, server.port), timeout=PROMPT) as sock:
        sock.sendall(
            b"POST /v2/framing/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + body + smuggled
        )
        answer = b""
        while chunk := sock.recv(65536):  # to the end: the server must close
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 202 "), answer[:300]  # processed, chunked framing won
    assert b"\r\nconnection: close" in head
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # the request behind it is not answered
