"""`If-Range` (RFC 9110 §13.1.5): the Range applies only while the client's validator still
names this representation, otherwise the answer is the whole blob with 200. A client that
resumes a download of the wrong content must not be handed a 206 to splice onto it. Blob
ETags are the quoted digest and no Last-Modified is sent, so only that exact strong tag keeps
the 206: another tag, a weak tag or a date all get the full 200. (Range was honoured whatever
If-Range said.) Manifests ignore Range altogether and always answer 200."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import httpx
import pytest

from tests.support import EdgecacheServer
from tests.upstreams import RunningUpstream, start_registry

BLOB = os.urandom(100_000)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
OTHER = "sha256:" + "0" * 64
RANGE = "bytes=10-19"

MISMATCHES = [
    f'"{OTHER}"',  # another blob's tag
    f'W/"{DIGEST}"',  # weak: never matches in If-Range
    DIGEST,  # unquoted: not an entity-tag
    "Mon, 30 Nov 2026 11:08:09 GMT",  # a date: no Last-Modified was ever sent
    "garbage",
]


def assert_full(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text[:300]
    assert "content-range" not in r.headers
    assert r.content == BLOB


def assert_partial(r: httpx.Response) -> None:
    assert r.status_code == 206, r.text[:300]
    assert r.headers["content-range"] == f"bytes 10-19/{len(BLOB)}"
    assert r.content == BLOB[10:20]


@pytest.fixture(scope="module")
def local(edgecache: EdgecacheServer) -> Iterator[httpx.Client]:
    with edgecache.client() as c:
        r = c.post("/v2/ifrange/app/blobs/uploads/", params={"digest": DIGEST}, content=BLOB)
        assert r.status_code == 201, r.text
        yield c


@pytest.mark.parametrize("if_range", MISMATCHES)
def test_pushed_blob_with_stale_if_range_is_sent_whole(local: httpx.Client, if_range: str) -> None:
    r = local.get(f"/v2/ifrange/app/blobs/{DIGEST}", headers={"Range": RANGE, "If-Range": if_range})
    assert_full(r)


def test_pushed_blob_with_matching_if_range_keeps_the_range(local: httpx.Client) -> None:
    url = f"/v2/ifrange/app/blobs/{DIGEST}"
    etag = local.head(url).headers["etag"]
    assert etag == f'"{DIGEST}"'
    assert_partial(local.get(url, headers={"Range": RANGE, "If-Range": etag}))
    assert_partial(local.get(url, headers={"Range": RANGE}))  # no If-Range: plain Range


def test_manifest_with_range_and_stale_if_range_is_sent_whole(local: httpx.Client) -> None:
    config = b"{}"
    r = local.post(
        "/v2/ifrange/app/blobs/uploads/",
        params={"digest": "sha256:" + hashlib.sha256(config).hexdigest()},
        content=config,
    )
    assert r.status_code == 201, r.text
    manifest = (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:'
        + hashlib.sha256(config).hexdigest().encode()
        + b'","size":2},"layers":[]}'
    )
    r = local.put(
        "/v2/ifrange/app/manifests/v1",
        content=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text
    r = local.get(
        "/v2/ifrange/app/manifests/v1", headers={"Range": "bytes=0-9", "If-Range": f'"{OTHER}"'}
    )
    assert r.status_code == 200, r.text
    assert r.content == manifest


# ------------------------------------------------------------------------ pull-through


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        registry.push_blob("team/app", BLOB)
        yield registry


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[httpx.Client]:
    config = f'[upstreams.lab]\nurl = "{upstream.url}"\nretries = 1\nconnect_timeout = 2.0\n'
    server = EdgecacheServer(tmp_path_factory.mktemp("cache"), config_text=config)
    with server, server.client() as c:
        yield c


def test_proxied_blob_with_stale_if_range_is_sent_whole(cache: httpx.Client) -> None:
    url = f"/v2/lab/team/app/blobs/{DIGEST}"
    # The first request joins the download (bytes streamed as they arrive), the next ones
    # are served from the store: both paths must honour If-Range.
    assert_full(cache.get(url, headers={"Range": RANGE, "If-Range": f'"{OTHER}"'}))
    for if_range in MISMATCHES:
        assert_full(cache.get(url, headers={"Range": RANGE, "If-Range": if_range}))
    assert_partial(cache.get(url, headers={"Range": RANGE, "If-Range": f'"{DIGEST}"'}))
