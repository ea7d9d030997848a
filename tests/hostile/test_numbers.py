"""Numbers longer than CPython's int() digit limit (4300) wherever a client writes a number:
`Range`, `Content-Range`, `?n=`, the admin API's `?limit=`. Each was a 500 (ValueError from
int()); now a number of any length is just a large number: a range end past the blob is
clamped (RFC 9110), a start past it is 416, an upload offset no blob can reach is 416 and
leaves the session as it was, a page size is clamped."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import httpx
import pytest

from tests.hostile.raw import assert_no_internal_errors, assert_oci_error, request
from tests.support import EdgecacheServer

HUGE = "1" * 5000  # past sys.get_int_max_str_digits() (4300)
PADDED_5 = "0" * 5000 + "5"  # a small value written with 5001 digits
BLOB = os.urandom(1000)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
REPO = "numbers/app"


@pytest.fixture(scope="module")
def client(edgecache: EdgecacheServer) -> Iterator[httpx.Client]:
    with edgecache.client(limits=httpx.Limits(max_keepalive_connections=0)) as c:
        r = c.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": DIGEST}, content=BLOB)
        assert r.status_code == 201, r.text
        yield c


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        (f"bytes=0-{HUGE}", 0, 999),
        (f"bytes=5-{HUGE}", 5, 999),
        (f"bytes=-{HUGE}", 0, 999),
        (f"bytes={PADDED_5}-9", 5, 9),
        (f"bytes=0-{PADDED_5}", 0, 5),
    ],
    ids=["end", "start-end", "suffix", "padded-start", "padded-end"],
)
def test_huge_range_numbers_are_just_large(
    client: httpx.Client, range_header: str, start: int, end: int
) -> None:
    r = client.get(f"/v2/{REPO}/blobs/{DIGEST}", headers={"Range": range_header})
    assert r.status_code == 206, r.text
    assert r.headers["content-range"] == f"bytes {start}-{end}/1000"
    assert r.content == BLOB[start : end + 1]


@pytest.mark.parametrize("range_header", [f"bytes={HUGE}-", f"bytes={HUGE}-{HUGE}"])
def test_huge_range_start_is_416(client: httpx.Client, range_header: str) -> None:
    r = client.get(f"/v2/{REPO}/blobs/{DIGEST}", headers={"Range": range_header})
    assert r.status_code == 416, r.text
    assert r.json()["errors"][0]["code"] == "RANGE_NOT_SATISFIABLE"
    assert r.headers["content-range"] == "bytes */1000"
    assert len(r.text) < 1000  # the message quotes the header cut short, not 5000 digits


@pytest.mark.parametrize(
    "content_range", [f"0-{HUGE}", f"{HUGE}-{HUGE}", f"bytes 0-{HUGE}/*", f"bytes 0-2/{HUGE}"]
)
def test_huge_content_range_is_416_and_changes_nothing(
    client: httpx.Client, content_range: str
) -> None:
    r = client.post(f"/v2/{REPO}/blobs/uploads/")
    assert r.status_code == 202, r.text
    session = r.headers["location"]
    r = client.patch(
        session,
        content=b"abc",
        headers={"Content-Range": content_range, "Content-Type": "application/octet-stream"},
    )
    if content_range.endswith(f"/{HUGE}"):
        # A total of 5000 digits is a large total; the range itself is fine.
        assert r.status_code == 202, r.text
        assert r.headers["range"] == "0-2"
        return
    assert r.status_code == 416, r.text
    assert r.json()["errors"][0]["code"] == "RANGE_NOT_SATISFIABLE"
    r = client.get(session)
    assert r.status_code == 204, r.text
    assert r.headers["range"] == "0-0"  # nothing was appended
    r = client.patch(
        session,
        content=b"abc",
        headers={"Content-Range": "0-2", "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 202, r.text
    assert r.headers["range"] == "0-2"


@pytest.mark.parametrize("path", ["/v2/_catalog", f"/v2/{REPO}/tags/list"])
def test_huge_page_size_is_clamped(client: httpx.Client, path: str) -> None:
    # Two tags in two repositories, so that a page of one has a next link.
    for repo, tag in ((REPO, "a"), (REPO, "b"), (f"{REPO}-2", "a")):
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": DIGEST}, content=BLOB)
        assert r.status_code == 201, r.text
        manifest = (
            b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
            b'"config":{"mediaType":"application/octet-stream","digest":"'
            + DIGEST.encode()
            + b'","size":1000},"layers":[]}'
        )
        r = client.put(
            f"/v2/{repo}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status_code == 201, r.text
    whole = client.get(path)
    assert whole.status_code == 200, whole.text
    r = client.get(path, params={"n": HUGE})
    assert r.status_code == 200, r.text
    assert r.json() == whole.json()
    assert "link" not in r.headers
    r = client.get(path, params={"n": "0" * 5000 + "1"})
    assert r.status_code == 200, r.text
    key = "tags" if "tags" in path else "repositories"
    assert r.json()[key] == whole.json()[key][:1]
    assert "n=1&" in r.headers["link"]


@pytest.mark.parametrize("n", ["²", "٣", "+5", " 5", "1_0", "-1"])
def test_page_size_that_is_not_ascii_digits_is_refused(client: httpx.Client, n: str) -> None:
    r = client.get("/v2/_catalog", params={"n": n})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


@pytest.mark.parametrize("limit", [HUGE, "²"])
def test_admin_history_limit_of_any_kind_is_not_a_500(
    edgecache: EdgecacheServer, limit: str
) -> None:
    with edgecache.client() as c:
        r = c.get(
            "/_edgecache/admin/gc/history",
            params={"limit": limit},
            headers={"Authorization": f"Bearer {edgecache.admin_token}"},
        )
    assert r.status_code == 200, r.text
    assert isinstance(r.json(), list)


def test_huge_range_on_the_raw_wire(edgecache: EdgecacheServer, client: httpx.Client) -> None:
    """The same through a bare socket, so no client library normalises the header."""
    r = request(
        edgecache, "GET", f"/v2/{REPO}/blobs/{DIGEST}", [(b"Range", f"bytes={HUGE}-".encode())]
    )
    assert_oci_error(r, 416, "RANGE_NOT_SATISFIABLE")


def test_no_internal_errors_were_logged(edgecache: EdgecacheServer) -> None:
    assert_no_internal_errors(edgecache)
