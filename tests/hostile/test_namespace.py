"""`?ns=` (containerd's upstream host) is echoed in the OCI-Namespace response header, so a
value that is not a registry host[:port] must be refused (400 NAME_INVALID) before it reaches
any header: a CR or LF there would split the response, a NUL break it (both were 500s over
HTTP/1.1, and over h2 the CR LF went out on the wire)."""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events
import pytest

from tests.hostile.raw import assert_no_internal_errors, assert_oci_error, request
from tests.support import EdgecacheServer

DIGEST = "sha256:" + "ab" * 32
ROUTES = [
    "/v2/",
    "/v2/_catalog",
    "/v2/team/app/manifests/latest",
    f"/v2/team/app/blobs/{DIGEST}",
    "/v2/team/app/tags/list",
    f"/v2/team/app/referrers/{DIGEST}",
]
# %-encoded as a client would put them in a URL; the server decodes them.
BAD_NS = [
    "evil%0d%0aX-Injected:%201",
    "evil%0aX-Injected:%201",
    "evil%0d",
    "evil%00.example",
    "two%20words",
    "host/path",
    "user@host",
    "host:0",
    "host:65536",
    "host:" + "9" * 5000,
    "x" * 300,
    "-leading.dash",
    "%ff%fe",
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("ns", BAD_NS, ids=lambda ns: ns[:24])
def test_bad_ns_is_name_invalid_and_never_echoed(
    edgecache: EdgecacheServer, route: str, ns: str
) -> None:
    r = request(edgecache, "GET", f"{route}?ns={ns}")
    message = assert_oci_error(r, 400, "NAME_INVALID")
    assert "host[:port]" in message
    assert r.header("oci-namespace") is None, r.head
    assert r.header("x-injected") is None, r.head
    assert b"\x00" not in r.head


def test_bad_ns_on_a_push_changes_nothing(edgecache: EdgecacheServer) -> None:
    r = request(edgecache, "POST", "/v2/nspush/app/blobs/uploads/?ns=evil%0d%0aA:%20b")
    assert_oci_error(r, 400, "NAME_INVALID")
    assert r.header("location") is None
    assert_oci_error(request(edgecache, "GET", "/v2/nspush/app/tags/list"), 404, "NAME_UNKNOWN")


@pytest.mark.parametrize("ns", ["registry.invalid:5000", "[::1]:5000", "Mixed-Case.example"])
def test_a_real_host_is_still_echoed(edgecache: EdgecacheServer, ns: str) -> None:
    # Not configured as an upstream, so nothing is contacted: the answer is NAME_UNKNOWN.
    r = request(edgecache, "GET", f"/v2/team/app/manifests/latest?ns={ns}")
    assert_oci_error(r, 404, "NAME_UNKNOWN")
    assert r.header("oci-namespace") == ns


def test_bad_ns_over_h2_is_refused_too(edgecache: EdgecacheServer) -> None:
    """Over h2 (prior knowledge), the same 400; the h2 client validates what it receives, so
    a CR LF in a response header fails this test as a protocol error."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    with socket.create_connection((edgecache.host.split(":")[0], edgecache.port), 20) as sock:
        conn.initiate_connection()
        conn.send_headers(
            1,
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"edgecache"),
                (b":path", b"/v2/team/app/manifests/latest?ns=evil%0d%0aX-Injected:%201"),
            ],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        status, headers, ended = None, [], False
        while not ended:
            data = sock.recv(65536)
            assert data, "connection closed before the response ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = list(event.headers)
                    status = dict(headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            sock.sendall(conn.data_to_send())
    assert status == b"400", headers
    assert all(name != b"oci-namespace" for name, _ in headers), headers


def test_no_internal_errors_were_logged(edgecache: EdgecacheServer) -> None:
    assert_no_internal_errors(edgecache)
