"""The OCI distribution API of a real edgecache process, spoken raw over HTTP/1.1 (httpx).

Each test uses its own repository names, so one server per module is shared safely.
Asserted: status codes, headers, bytes and digests, and the OCI error body of every failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import h11
import httpx
import pytest

from tests.support import EdgecacheServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MiB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def assert_error(r: httpx.Response, status: int, *codes: str) -> dict[str, Any]:
    """`r` is an OCI error: the status, a JSON body {"errors":[{"code","message"}]}, a code."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    if r.request.method == "HEAD":
        return {}
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("errors"), list) and body["errors"], body
    for err in body["errors"]:
        assert isinstance(err.get("code"), str), body
        assert isinstance(err.get("message"), str), body
    if codes:
        assert body["errors"][0]["code"] in codes, body
    return dict(body["errors"][0])


# A new connection per request. Keep-alive after an error that was answered before its request
# body was read is tested on its own (test_connection_reusable_after_*); without this, that
# one problem would also fail whichever unrelated test happens to reuse such a connection.
# Real clients (skopeo, oras, containerd) cover keep-alive in their own test modules.
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


@pytest.fixture(scope="module")
def client(edgecache: EdgecacheServer) -> Iterator[httpx.Client]:
    with edgecache.client(limits=NO_KEEPALIVE) as c:
        yield c


def upload(client: httpx.Client, repo: str, data: bytes) -> str:
    """Monolithic POST + PUT upload; returns the digest."""
    digest = digest_of(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    r = client.put(
        r.headers["Location"],
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    return digest


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def push_image(
    client: httpx.Client, repo: str, ref: str, *, seed: str = "", push: bool = True
) -> tuple[bytes, str]:
    """Upload a config and a layer and PUT an OCI image manifest at `ref`.

    Returns (manifest bytes, manifest digest).
    """
    config = canonical({"architecture": "amd64", "os": "linux", "seed": seed or repo + ref})
    layer = os.urandom(1000)
    upload(client, repo, config)
    upload(client, repo, layer)
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
    )
    if push:
        r = put_manifest(client, repo, ref, manifest)
        assert r.status_code == 201, r.text
    return manifest, digest_of(manifest)


def put_manifest(
    client: httpx.Client, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST
) -> httpx.Response:
    return client.put(
        f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type}
    )


def get_manifest(client: httpx.Client, repo: str, ref: str) -> httpx.Response:
    accept = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST])
    return client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept})


# ---------------------------------------------------------------------------- base


def test_base_endpoint(client: httpx.Client) -> None:
    r = client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_health_and_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    client.get("/v2/")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "edgecache_http_requests_total" in r.text
    # The request just made is counted, with its labels.
    counted = [
        line
        for line in r.text.splitlines()
        if line.startswith("edgecache_http_requests_total{") and 'method="GET"' in line
    ]
    assert counted, r.text[:2000]


# -------------------------------------------------------------------------- uploads


def test_monolithic_upload_post_then_put(client: httpx.Client) -> None:
    data = os.urandom(100_000)
    digest = digest_of(data)
    r = client.post("/v2/api/mono/blobs/uploads/")
    assert r.status_code == 202
    assert r.headers["Location"]
    assert r.headers["Docker-Upload-UUID"]
    r = client.put(
        r.headers["Location"],
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"].endswith(f"/v2/api/mono/blobs/{digest}")
    got = client.get(r.headers["Location"])
    assert got.status_code == 200
    assert got.content == data


def test_single_post_with_digest(client: httpx.Client) -> None:
    data = os.urandom(50_000)
    digest = digest_of(data)
    r = client.post(
        "/v2/api/single/blobs/uploads/",
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"].endswith(f"/v2/api/single/blobs/{digest}")
    assert client.get(f"/v2/api/single/blobs/{digest}").content == data


def test_chunked_upload_with_status_and_out_of_order_chunk(client: httpx.Client) -> None:
    repo = "api/chunked"
    data = os.urandom(3 * MiB + 17)
    a, b = 1 * MiB, 2 * MiB + 5
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    location = r.headers["Location"]
    uuid = r.headers["Docker-Upload-UUID"]

    r = client.patch(
        location,
        content=data[:a],
        headers={"Content-Range": f"0-{a - 1}", "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == f"0-{a - 1}"
    assert r.headers["Docker-Upload-UUID"] == uuid
    location = r.headers["Location"]

    # Status of the session: 204, how much the registry has.
    r = client.get(location)
    assert r.status_code == 204
    assert r.headers["Range"] == f"0-{a - 1}"
    assert r.headers["Docker-Upload-UUID"] == uuid
    assert r.headers["Location"]

    # A chunk that does not start where the previous one ended: 416, and nothing changes.
    # (On a connection of its own: test_connection_reusable_after_early_error covers reuse.)
    r = httpx.patch(
        str(client.base_url.join(location)),
        content=data[a + 10 : b],
        headers={"Content-Range": f"{a + 10}-{b - 1}", "Content-Type": "application/octet-stream"},
    )
    assert_error(r, 416)
    r = client.get(location)
    assert r.status_code == 204
    assert r.headers["Range"] == f"0-{a - 1}"

    r = client.patch(
        location,
        content=data[a:b],
        headers={"Content-Range": f"{a}-{b - 1}", "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == f"0-{b - 1}"
    location = r.headers["Location"]

    # The last chunk travels with the closing PUT.
    digest = digest_of(data)
    r = client.put(
        location,
        params={"digest": digest},
        content=data[b:],
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    # The finished session is gone.
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


def exchange_then_reuse(
    server: EdgecacheServer,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> tuple[int, int | None]:
    """Send one request with `body` on a raw HTTP/1.1 connection, read the response, then —
    unless the server said `Connection: close` — send `GET /v2/` on the same connection.

    Returns (first status, second status or None when the server announced the close).
    A server that closes a keep-alive connection it did not announce closing makes the
    second exchange fail: AssertionError, deterministically (no timing involved).
    """
    conn = h11.Connection(h11.CLIENT)
    host = server.host
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:

        def read_response() -> tuple[int, bool]:
            status: int | None = None
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = sock.recv(65536)
                    if not data and status is None:
                        raise AssertionError(
                            "server closed the connection without a response, although its "
                            "previous response did not say `Connection: close`"
                        )
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    assert status is not None
                    return status, conn.their_state is h11.MUST_CLOSE

        request = h11.Request(
            method=method,
            target=target,
            headers=[("Host", host), ("Content-Length", str(len(body))), *headers],
        )
        sock.sendall(conn.send(request))
        try:
            sock.sendall(conn.send(h11.Data(data=body)))
            sock.sendall(conn.send(h11.EndOfMessage()))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early; its response is still to be read
        first, must_close = read_response()
        if must_close:
            return first, None
        assert conn.our_state is h11.DONE
        conn.start_next_cycle()
        try:
            sock.sendall(
                conn.send(h11.Request(method="GET", target="/v2/", headers=[("Host", host)]))
            )
            sock.sendall(conn.send(h11.EndOfMessage()))
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise AssertionError(
                f"server closed the connection after its {first} response, which did not say "
                f"`Connection: close`: the next request on it failed ({exc!r})"
            ) from exc
        second, _ = read_response()
        return first, second


def test_connection_reusable_after_early_error(
    client: httpx.Client, edgecache: EdgecacheServer
) -> None:
    """An error answered before the request body was read must not break the next request on
    the same keep-alive connection: either the body is drained, or the response says
    `Connection: close` so the client opens a new connection."""
    r = client.post("/v2/api/early-error/blobs/uploads/")
    location = r.headers["Location"]
    body = os.urandom(1 * MiB)
    # Control: an accepted chunk keeps the connection usable.
    ok = exchange_then_reuse(
        edgecache, "PATCH", location, [("Content-Range", f"0-{len(body) - 1}")], body
    )
    assert ok == (202, 200)
    first, second = exchange_then_reuse(
        edgecache,
        "PATCH",
        location,
        [("Content-Range", f"5-{len(body) + 4}"), ("Content-Type", "application/octet-stream")],
        body,
    )
    assert first == 416
    assert second in (None, 200)


def test_streamed_patch_without_content_range(client: httpx.Client) -> None:
    repo = "api/streamed"
    data = os.urandom(600_000)
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    location = r.headers["Location"]
    for part in (data[:250_000], data[250_000:]):
        r = client.patch(
            location, content=part, headers={"Content-Type": "application/octet-stream"}
        )
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    r = client.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/{repo}/blobs/{digest_of(data)}").content == data


def test_delete_upload(client: httpx.Client) -> None:
    repo = "api/cancel"
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    location = r.headers["Location"]
    r = client.patch(location, content=b"x" * 1000, headers={"Content-Range": "0-999"})
    assert r.status_code == 202
    location = r.headers["Location"]
    r = client.delete(location)
    assert r.status_code == 204
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(
        client.patch(location, content=b"y", headers={"Content-Range": "1000-1000"}),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    assert_error(
        client.put(location, params={"digest": digest_of(b"x" * 1000)}), 404, "BLOB_UPLOAD_UNKNOWN"
    )


def test_unknown_upload_session(client: httpx.Client) -> None:
    path = "/v2/api/nosession/blobs/uploads/0b7a5a44-5d5c-4a8e-9d57-2bd1d36b9d0c"
    assert_error(client.get(path), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.put(path, params={"digest": digest_of(b"")}), 404, "BLOB_UPLOAD_UNKNOWN")


def test_put_with_wrong_digest_is_rejected_and_invisible(client: httpx.Client) -> None:
    repo = "api/wrongdigest"
    data = os.urandom(10_000)
    claimed = digest_of(b"something else")
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    r = client.put(r.headers["Location"], params={"digest": claimed}, content=data)
    assert_error(r, 400, "DIGEST_INVALID")
    assert client.head(f"/v2/{repo}/blobs/{claimed}").status_code == 404
    assert client.head(f"/v2/{repo}/blobs/{digest_of(data)}").status_code == 404
    # Same for a single POST.
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": claimed}, content=data)
    assert_error(r, 400, "DIGEST_INVALID")
    assert client.head(f"/v2/{repo}/blobs/{claimed}").status_code == 404


def test_put_without_digest_is_rejected(client: httpx.Client) -> None:
    r = client.post("/v2/api/nodigest/blobs/uploads/")
    r = client.put(r.headers["Location"], content=b"abc")
    assert_error(r, 400, "DIGEST_INVALID")


# ---------------------------------------------------------------------------- blobs


def test_blob_get_and_head(client: httpx.Client) -> None:
    data = os.urandom(70_000)
    digest = upload(client, "api/blob", data)
    r = client.get(f"/v2/api/blob/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Type"] == "application/octet-stream"
    r = client.head(f"/v2/api/blob/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == b""
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.headers["Docker-Content-Digest"] == digest


def test_blob_ranges(client: httpx.Client) -> None:
    data = os.urandom(10_000)
    digest = upload(client, "api/range", data)
    url = f"/v2/api/range/blobs/{digest}"
    for header, lo, hi in (
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=9000-", 9000, 9999),
        ("bytes=-10", 9990, 9999),
        ("bytes=9990-20000", 9990, 9999),
    ):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["Content-Range"] == f"bytes {lo}-{hi}/10000", header
        assert int(r.headers["Content-Length"]) == hi - lo + 1
        assert r.content == data[lo : hi + 1], header
    r = client.get(url, headers={"Range": "bytes=10000-10010"})
    assert_error(r, 416)
    assert r.headers.get("Content-Range") == "bytes */10000"


def test_unknown_blob(client: httpx.Client) -> None:
    missing = digest_of(b"never uploaded " + os.urandom(8))
    assert_error(client.get(f"/v2/api/blob/blobs/{missing}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/api/blob/blobs/{missing}").status_code == 404


def test_blob_not_visible_in_other_repository(client: httpx.Client) -> None:
    digest = upload(client, "api/owner", os.urandom(1000))
    assert client.head(f"/v2/api/owner/blobs/{digest}").status_code == 200
    assert_error(client.get(f"/v2/api/stranger/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_cross_repository_mount(client: httpx.Client) -> None:
    data = os.urandom(5000)
    digest = upload(client, "api/mount-src", data)
    r = client.post(
        "/v2/api/mount-dst/blobs/uploads/", params={"mount": digest, "from": "api/mount-src"}
    )
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"].endswith(f"/v2/api/mount-dst/blobs/{digest}")
    assert client.get(f"/v2/api/mount-dst/blobs/{digest}").content == data


def test_cross_repository_mount_falls_back_to_upload(client: httpx.Client) -> None:
    data = os.urandom(5000)
    digest = digest_of(data)
    # The named source does not have it: 202 and an upload session instead.
    r = client.post(
        "/v2/api/mount-dst2/blobs/uploads/", params={"mount": digest, "from": "api/mount-none"}
    )
    assert r.status_code == 202, r.text
    r = client.put(r.headers["Location"], params={"digest": digest}, content=data)
    assert r.status_code == 201
    assert client.get(f"/v2/api/mount-dst2/blobs/{digest}").content == data


def test_delete_blob(client: httpx.Client) -> None:
    digest = upload(client, "api/delblob", os.urandom(1234))
    r = client.delete(f"/v2/api/delblob/blobs/{digest}")
    assert r.status_code == 202
    assert_error(client.get(f"/v2/api/delblob/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert_error(client.delete(f"/v2/api/delblob/blobs/{digest}"), 404, "BLOB_UNKNOWN")


# ------------------------------------------------------------------------ manifests


def test_manifest_put_by_tag_and_get(client: httpx.Client) -> None:
    manifest, digest = push_image(client, "api/image", "v1")
    for ref in ("v1", digest):
        r = get_manifest(client, "api/image", ref)
        assert r.status_code == 200
        assert r.content == manifest
        assert r.headers["Content-Type"] == OCI_MANIFEST
        assert r.headers["Docker-Content-Digest"] == digest
        r = client.head(f"/v2/api/image/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == len(manifest)
        assert r.headers["Docker-Content-Digest"] == digest
        assert r.content == b""


def test_manifest_put_response_headers(client: httpx.Client) -> None:
    manifest, digest = push_image(client, "api/headers", "v1", push=False)
    r = put_manifest(client, "api/headers", "v1", manifest)
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"].endswith(f"/v2/api/headers/manifests/{digest}")
    assert "OCI-Subject" not in r.headers


def test_manifest_put_by_digest(client: httpx.Client) -> None:
    manifest, digest = push_image(client, "api/bydigest", "unused", push=False)
    r = put_manifest(client, "api/bydigest", digest, manifest)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert get_manifest(client, "api/bydigest", digest).content == manifest
    # A body that does not match the digest in the URL.
    other = digest_of(manifest + b" ")
    assert_error(put_manifest(client, "api/bydigest", other, manifest), 400, "DIGEST_INVALID")
    assert_error(get_manifest(client, "api/bydigest", other), 404, "MANIFEST_UNKNOWN")


def test_manifest_bytes_are_kept_exactly(client: httpx.Client) -> None:
    """Whitespace and key order are part of the digest: the registry must not re-serialise."""
    manifest, _ = push_image(client, "api/pretty", "x", push=False)
    pretty = json.dumps(json.loads(manifest), indent=3).encode() + b"\n"
    r = put_manifest(client, "api/pretty", "v1", pretty)
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest_of(pretty)
    assert get_manifest(client, "api/pretty", "v1").content == pretty


def test_oci_index(client: httpx.Client) -> None:
    repo = "api/index"
    m1, d1 = push_image(client, repo, "amd64")
    m2, d2 = push_image(client, repo, "arm64")
    index = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(OCI_MANIFEST, m1, platform={"architecture": "amd64", "os": "linux"}),
                descriptor(OCI_MANIFEST, m2, platform={"architecture": "arm64", "os": "linux"}),
            ],
        }
    )
    r = put_manifest(client, repo, "multi", index, OCI_INDEX)
    assert r.status_code == 201, r.text
    r = get_manifest(client, repo, "multi")
    assert r.status_code == 200
    assert r.content == index
    assert r.headers["Content-Type"] == OCI_INDEX
    assert r.headers["Docker-Content-Digest"] == digest_of(index)
    assert get_manifest(client, repo, d1).content == m1
    assert get_manifest(client, repo, d2).content == m2


def test_docker_schema2_manifest(client: httpx.Client) -> None:
    repo = "api/docker"
    config = canonical({"architecture": "amd64", "os": "linux", "docker": True})
    layer = os.urandom(2000)
    upload(client, repo, config)
    upload(client, repo, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(DOCKER_CONFIG, config),
            "layers": [descriptor(DOCKER_LAYER, layer)],
        },
        indent=3,
    ).encode()
    r = put_manifest(client, repo, "v1", manifest, DOCKER_MANIFEST)
    assert r.status_code == 201, r.text
    r = get_manifest(client, repo, "v1")
    assert r.status_code == 200
    assert r.content == manifest
    assert r.headers["Content-Type"] == DOCKER_MANIFEST
    assert r.headers["Docker-Content-Digest"] == digest_of(manifest)


def test_artifact_with_subject_gets_oci_subject_header(client: httpx.Client) -> None:
    repo = "api/artifact"
    _, subject_digest = push_image(client, repo, "v1")
    subject = get_manifest(client, repo, "v1").content
    empty = b"{}"
    upload(client, repo, empty)
    sbom = b'{"sbom": true}'
    upload(client, repo, sbom)
    artifact = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom.v1+json",
            "config": descriptor(OCI_EMPTY, empty),
            "layers": [descriptor("application/vnd.example.sbom.v1+json", sbom)],
            "subject": descriptor(OCI_MANIFEST, subject),
        }
    )
    r = put_manifest(client, repo, digest_of(artifact), artifact)
    assert r.status_code == 201, r.text
    assert r.headers["OCI-Subject"] == subject_digest
    r = get_manifest(client, repo, digest_of(artifact))
    assert r.content == artifact


def test_manifest_with_missing_blob(client: httpx.Client) -> None:
    repo = "api/missing"
    config = canonical({"architecture": "amd64", "os": "linux"})
    upload(client, repo, config)
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, b"layer never uploaded " + os.urandom(8))],
        }
    )
    assert_error(put_manifest(client, repo, "v1", manifest), 404, "MANIFEST_BLOB_UNKNOWN")
    assert_error(get_manifest(client, repo, "v1"), 404, "MANIFEST_UNKNOWN", "NAME_UNKNOWN")
    # The config itself missing too.
    manifest2 = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, b"no such config" + os.urandom(8)),
            "layers": [],
        }
    )
    assert_error(put_manifest(client, repo, "v2", manifest2), 404, "MANIFEST_BLOB_UNKNOWN")


def test_schema1_manifest_is_rejected(client: httpx.Client) -> None:
    schema1 = json.dumps(
        {
            "schemaVersion": 1,
            "name": "api/schema1",
            "tag": "v1",
            "architecture": "amd64",
            "fsLayers": [],
            "history": [],
            "signatures": [],
        }
    ).encode()
    for media_type in (SCHEMA1, "application/vnd.docker.distribution.manifest.v1+json"):
        r = put_manifest(client, "api/schema1", "v1", schema1, media_type)
        assert_error(r, 400, "MANIFEST_INVALID")


def test_invalid_manifest_bodies(client: httpx.Client) -> None:
    for body in (b"not json", b"[]", b'{"schemaVersion": 2}'):
        assert_error(put_manifest(client, "api/badmanifest", "v1", body), 400, "MANIFEST_INVALID")


def test_manifest_over_4mib_is_rejected(client: httpx.Client) -> None:
    manifest, _ = push_image(client, "api/huge", "x", push=False)
    obj = json.loads(manifest)
    obj["annotations"] = {"padding": "x" * (4 * MiB)}
    body = canonical(obj)
    assert len(body) > 4 * MiB
    assert_error(put_manifest(client, "api/huge", "v1", body), 413)


def test_unknown_manifest(client: httpx.Client) -> None:
    push_image(client, "api/known", "v1")
    assert_error(get_manifest(client, "api/known", "nope"), 404, "MANIFEST_UNKNOWN")
    assert client.head("/v2/api/known/manifests/nope").status_code == 404
    assert_error(
        get_manifest(client, "api/never-pushed", "v1"), 404, "MANIFEST_UNKNOWN", "NAME_UNKNOWN"
    )


def test_delete_manifest_by_digest(client: httpx.Client) -> None:
    repo = "api/delmanifest"
    _, digest = push_image(client, repo, "v1")
    r = client.delete(f"/v2/{repo}/manifests/{digest}")
    assert r.status_code == 202
    assert_error(get_manifest(client, repo, digest), 404, "MANIFEST_UNKNOWN")
    # The tag pointed at the deleted manifest: it no longer resolves.
    assert_error(get_manifest(client, repo, "v1"), 404, "MANIFEST_UNKNOWN")
    assert_error(client.delete(f"/v2/{repo}/manifests/{digest}"), 404, "MANIFEST_UNKNOWN")


def test_delete_tag(client: httpx.Client) -> None:
    repo = "api/deltag"
    manifest, digest = push_image(client, repo, "v1")
    assert put_manifest(client, repo, "v2", manifest).status_code == 201
    r = client.delete(f"/v2/{repo}/manifests/v1")
    assert r.status_code == 202
    assert_error(get_manifest(client, repo, "v1"), 404, "MANIFEST_UNKNOWN")
    # The manifest and the other tag stay.
    assert get_manifest(client, repo, digest).content == manifest
    assert get_manifest(client, repo, "v2").content == manifest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v2"]


# -------------------------------------------------------------------- tags, catalog


def test_tags_list_with_pagination(client: httpx.Client) -> None:
    repo = "api/tags"
    manifest, _ = push_image(client, repo, "a")
    tags = ["a", "b", "c", "d", "e"]
    for tag in tags[1:]:
        assert put_manifest(client, repo, tag, manifest).status_code == 201
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": repo, "tags": tags}

    r = client.get(f"/v2/{repo}/tags/list", params={"n": 2})
    assert r.json()["tags"] == ["a", "b"]
    link = r.headers["Link"]
    assert 'rel="next"' in link
    seen = list(r.json()["tags"])
    while "Link" in r.headers:
        url = r.headers["Link"].split(";")[0].strip().strip("<>")
        r = client.get(url)
        assert r.status_code == 200
        assert len(r.json()["tags"]) <= 2
        seen += r.json()["tags"]
    assert seen == tags

    r = client.get(f"/v2/{repo}/tags/list", params={"n": 10, "last": "b"})
    assert r.json()["tags"] == ["c", "d", "e"]
    assert "Link" not in r.headers


def test_catalog(client: httpx.Client) -> None:
    for name in ("api/cat-one", "api/cat-two"):
        push_image(client, name, "v1")
    r = client.get("/v2/_catalog")
    assert r.status_code == 200
    repos = r.json()["repositories"]
    assert {"api/cat-one", "api/cat-two"} <= set(repos)
    assert repos == sorted(repos)

    r = client.get("/v2/_catalog", params={"n": 1})
    assert len(r.json()["repositories"]) == 1
    assert 'rel="next"' in r.headers["Link"]
    r = client.get("/v2/_catalog", params={"n": 1000, "last": "api/cat-one"})
    assert r.json()["repositories"][0] == "api/cat-two"


# ------------------------------------------------------------------------ referrers


def test_referrers(client: httpx.Client) -> None:
    repo = "api/referrers"
    subject, subject_digest = push_image(client, repo, "v1")
    empty = b"{}"
    upload(client, repo, empty)
    pushed: dict[str, dict[str, Any]] = {}
    for kind, notes in (("sbom", {"org.example.kind": "sbom"}), ("sig", None)):
        payload = f"{kind} payload".encode()
        upload(client, repo, payload)
        obj: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": f"application/vnd.example.{kind}.v1",
            "config": descriptor(OCI_EMPTY, empty),
            "layers": [descriptor(f"application/vnd.example.{kind}.v1", payload)],
            "subject": descriptor(OCI_MANIFEST, subject),
        }
        if notes:
            obj["annotations"] = notes
        body = canonical(obj)
        r = put_manifest(client, repo, digest_of(body), body)
        assert r.status_code == 201, r.text
        pushed[kind] = {"digest": digest_of(body), "size": len(body), "obj": obj}

    r = client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == OCI_INDEX
    index = r.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert set(by_digest) == {p["digest"] for p in pushed.values()}
    for kind, p in pushed.items():
        entry = by_digest[p["digest"]]
        assert entry["mediaType"] == OCI_MANIFEST
        assert entry["size"] == p["size"]
        assert entry["artifactType"] == f"application/vnd.example.{kind}.v1"
        if "annotations" in p["obj"]:
            assert entry["annotations"] == p["obj"]["annotations"]
    assert "OCI-Filters-Applied" not in r.headers

    r = client.get(
        f"/v2/{repo}/referrers/{subject_digest}",
        params={"artifactType": "application/vnd.example.sig.v1"},
    )
    assert r.status_code == 200
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in r.json()["manifests"]] == [pushed["sig"]["digest"]]

    # No referrers: 200 and an empty list, not 404.
    r = client.get(f"/v2/{repo}/referrers/{digest_of(b'nothing refers to this')}")
    assert r.status_code == 200
    assert r.json()["manifests"] == []


def test_referrer_pushed_before_its_subject(client: httpx.Client) -> None:
    """A manifest whose subject does not exist (yet) is accepted, and listed."""
    repo = "api/early-referrer"
    subject, subject_digest = push_image(client, repo, "x", push=False)
    empty = b"{}"
    upload(client, repo, empty)
    body = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.early.v1",
            "config": descriptor(OCI_EMPTY, empty),
            "layers": [descriptor(OCI_EMPTY, empty)],
            "subject": descriptor(OCI_MANIFEST, subject),
        }
    )
    r = put_manifest(client, repo, "early", body)
    assert r.status_code == 201, r.text
    assert r.headers["OCI-Subject"] == subject_digest
    r = client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert [m["digest"] for m in r.json()["manifests"]] == [digest_of(body)]


# ------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    "path",
    [
        "/v2/UPPER/case/tags/list",
        "/v2/double//slash/tags/list",
        "/v2/trailing-/tags/list",
        "/v2/a..b/tags/list",
        "/v2/" + "x" * 300 + "/tags/list",
    ],
)
def test_invalid_repository_name(client: httpx.Client, path: str) -> None:
    assert_error(client.get(path), 400, "NAME_INVALID")
    upload_path = path.replace("/tags/list", "/blobs/uploads/")
    assert_error(client.post(upload_path), 400, "NAME_INVALID")


@pytest.mark.parametrize(
    "digest",
    ["sha256:xyz", "sha256:" + "A" * 64, "sha256:" + "0" * 63, "md5:" + "0" * 32, "nocolon"],
)
def test_invalid_digest(client: httpx.Client, digest: str) -> None:
    assert_error(client.get(f"/v2/api/digests/blobs/{digest}"), 400, "DIGEST_INVALID")
    r = client.post("/v2/api/digests/blobs/uploads/")
    r = client.put(r.headers["Location"], params={"digest": digest}, content=b"abc")
    assert_error(r, 400, "DIGEST_INVALID")


def test_invalid_tag(client: httpx.Client) -> None:
    manifest, _ = push_image(client, "api/badtag", "x", push=False)
    for tag in ("-leading-dash", ".dot", "x" * 129):
        r = put_manifest(client, "api/badtag", tag, manifest)
        assert_error(r, 400, "TAG_INVALID", "MANIFEST_INVALID", "NAME_INVALID")


@pytest.mark.parametrize(
    "reference",
    [".INVALID_MANIFEST_NAME", "-dash", "x" * 129, "sha512:" + "0" * 64, "md5:" + "0" * 32],
)
def test_manifest_reference_that_cannot_exist_is_unknown(
    client: httpx.Client, reference: str
) -> None:
    """The conformance suite's rule: looking up a reference no manifest can have is 404
    MANIFEST_UNKNOWN (not 400), in a repository that exists and in one that does not; only a
    PUT, which would create it, is told the reference is invalid."""
    manifest, _ = push_image(client, "api/lookup", "v1")
    for repo in ("api/lookup", "api/no-such-repo"):
        url = f"/v2/{repo}/manifests/{reference}"
        for method in ("GET", "HEAD", "DELETE"):
            assert_error(client.request(method, url), 404, "MANIFEST_UNKNOWN")
    r = put_manifest(client, "api/lookup", reference, manifest)
    assert_error(r, 400, "TAG_INVALID", "DIGEST_INVALID")
    assert client.get("/v2/api/lookup/tags/list").json()["tags"] == ["v1"]


def test_unknown_route_is_404(client: httpx.Client) -> None:
    r = client.get("/v2/api/x/unknown-endpoint")
    assert r.status_code == 404


# ------------------------------------------------------------------------ auth


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    hashed = bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(rounds=4)).decode()
    config = f'[auth]\nanonymous_push = false\n\n[auth.users]\nalice = "{hashed}"\n'
    with EdgecacheServer(tmp_path_factory.mktemp("edgecache-auth"), config_text=config) as s:
        yield s


def test_push_requires_credentials(auth_server: EdgecacheServer) -> None:
    repo = "auth/app"
    data = os.urandom(3000)
    with auth_server.client(limits=NO_KEEPALIVE) as anon:
        r = anon.post(f"/v2/{repo}/blobs/uploads/")
        err = assert_error(r, 401, "UNAUTHORIZED")
        assert err
        assert r.headers["WWW-Authenticate"] == 'Basic realm="edgecache"'
        assert_error(
            anon.post(
                f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(data)}, content=data
            ),
            401,
            "UNAUTHORIZED",
        )
        r = anon.put(
            f"/v2/{repo}/manifests/v1", content=b"{}", headers={"Content-Type": OCI_MANIFEST}
        )
        assert_error(r, 401, "UNAUTHORIZED")

    with auth_server.client(auth=("alice", "wrong"), limits=NO_KEEPALIVE) as wrong:
        r = wrong.post(f"/v2/{repo}/blobs/uploads/")
        assert_error(r, 401, "UNAUTHORIZED")
        assert r.headers["WWW-Authenticate"].startswith("Basic ")
    with auth_server.client(auth=("mallory", "s3cret-pw"), limits=NO_KEEPALIVE) as unknown_user:
        assert_error(unknown_user.post(f"/v2/{repo}/blobs/uploads/"), 401, "UNAUTHORIZED")

    with auth_server.client(auth=("alice", "s3cret-pw"), limits=NO_KEEPALIVE) as alice:
        r = alice.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        r = alice.put(r.headers["Location"], params={"digest": digest_of(data)}, content=data)
        assert r.status_code == 201, r.text
        manifest, digest = push_image(alice, repo, "v1")

    # Pulls stay anonymous. The base endpoint challenges anonymous callers, because clients
    # (skopeo, docker) decide from its answer whether to send credentials for pushes.
    with auth_server.client(limits=NO_KEEPALIVE) as anon:
        base = anon.get("/v2/")
        assert base.status_code == 401
        assert base.headers["WWW-Authenticate"] == 'Basic realm="edgecache"'
        r = anon.get(f"/v2/{repo}/blobs/{digest_of(data)}")
        assert r.status_code == 200
        assert r.content == data
        r = get_manifest(anon, repo, "v1")
        assert r.status_code == 200
        assert r.content == manifest
        # Deletes need credentials too.
        assert_error(anon.delete(f"/v2/{repo}/manifests/{digest}"), 401, "UNAUTHORIZED")
        assert_error(anon.delete(f"/v2/{repo}/blobs/{digest_of(data)}"), 401, "UNAUTHORIZED")
        assert get_manifest(anon, repo, digest).status_code == 200


def test_connection_reusable_after_401_with_body(auth_server: EdgecacheServer) -> None:
    """A client pushing a body without credentials gets 401 and retries with credentials,
    usually on the same keep-alive connection (what registry clients do)."""
    data = os.urandom(2 * MiB)
    first, second = exchange_then_reuse(
        auth_server,
        "POST",
        f"/v2/auth/reuse/blobs/uploads/?digest={digest_of(data)}",
        [("Content-Type", "application/octet-stream")],
        data,
    )
    assert first == 401
    assert second in (None, 200)


# ------------------------------------------------------------------------ admin


def test_admin_token_file_is_private(edgecache: EdgecacheServer) -> None:
    token_file: Path = edgecache.data / "run" / "admin-token"
    mode = stat.S_IMODE(token_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert len(edgecache.admin_token) >= 16


def test_admin_api_requires_token(client: httpx.Client, edgecache: EdgecacheServer) -> None:
    path = "/_edgecache/admin/status"
    assert_error(client.get(path), 401)
    assert_error(client.get(path, headers={"Authorization": "Bearer not-the-token"}), 401)
    r = client.get(path, headers={"Authorization": f"Bearer {edgecache.admin_token}"})
    assert r.status_code == 200
    assert isinstance(r.json(), dict)
