"""HTTP/2 and TLS: h2c with prior knowledge, h2 over TLS (ALPN), HTTP/1.1 over TLS.

The TLS server uses a certificate for 127.0.0.1 signed by a test CA made with openssl here;
clients verify it against that CA (never verify=False).
"""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    EdgecacheServer,
    make_image,
    make_tls_cert,
    oci_layout_blobs,
    oci_layout_dir,
    oci_layout_manifest,
    require_tool,
    run,
)

MiB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path, Path]
) -> Iterator[EdgecacheServer]:
    _, cert, key = tls_files
    # alpn names h2 first, so an offer of both must get h2 (the server's order decides).
    config = (
        f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\nalpn = ["h2", "http/1.1"]\n\n'
        "[auth]\nanonymous_push = true\n"
    )
    with EdgecacheServer(tmp_path_factory.mktemp("edgecache-tls"), config_text=config) as s:
        yield s


@pytest.fixture(scope="module")
def ca_context(tls_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    ca, _, _ = tls_files
    return ssl.create_default_context(cafile=str(ca))


def push_blob_monolithic(client: httpx.Client, repo: str, data: bytes) -> str:
    """POST + PUT ?digest= upload; returns the digest."""
    digest = digest_of(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    r = client.put(
        location,
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    return digest


def exercise(client: httpx.Client, repo: str, expected_version: str) -> None:
    """Base endpoint, a blob push, full and ranged reads, all over `expected_version`."""
    r = client.get("/v2/")
    assert r.status_code == 200
    assert r.http_version == expected_version

    data = random.Random(repo).randbytes(3 * MiB + 123)
    digest = push_blob_monolithic(client, repo, data)

    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.http_version == expected_version
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == digest

    r = client.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.content == b""

    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=1048570-2097160"})
    assert r.status_code == 206
    assert r.http_version == expected_version
    assert r.headers["Content-Range"] == f"bytes 1048570-2097160/{len(data)}"
    assert r.content == data[1048570:2097161]

    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=-100"})
    assert r.status_code == 206
    assert r.content == data[-100:]

    # Chunked upload over the same protocol.
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    location = r.headers["Location"]
    other = random.Random(repo + "2").randbytes(2 * MiB + 7)
    half = len(other) // 2
    for start, end in ((0, half), (half, len(other))):
        r = client.patch(
            location,
            content=other[start:end],
            headers={
                "Content-Range": f"{start}-{end - 1}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert r.status_code == 202, r.text
        assert r.http_version == expected_version
        location = r.headers["Location"]
    r = client.put(location, params={"digest": digest_of(other)})
    assert r.status_code == 201, r.text
    r = client.get(f"/v2/{repo}/blobs/{digest_of(other)}")
    assert r.content == other


def test_h2c_prior_knowledge(edgecache: EdgecacheServer) -> None:
    assert edgecache.url.startswith("http://")
    with httpx.Client(base_url=edgecache.url, http1=False, http2=True, timeout=60) as client:
        exercise(client, "h2c/blobs", "HTTP/2")


def test_plain_http1_still_works(edgecache: EdgecacheServer) -> None:
    with httpx.Client(base_url=edgecache.url, timeout=60) as client:
        exercise(client, "h1/blobs", "HTTP/1.1")


def test_server_json_reports_tls(tls_server: EdgecacheServer) -> None:
    assert tls_server.tls is True
    assert tls_server.url.startswith("https://127.0.0.1:")


def test_h2_over_tls(tls_server: EdgecacheServer, ca_context: ssl.SSLContext) -> None:
    # http1=False: the client offers only "h2" in ALPN, whatever the server prefers.
    with httpx.Client(
        base_url=tls_server.url, http1=False, http2=True, verify=ca_context, timeout=60
    ) as client:
        exercise(client, "tls/h2", "HTTP/2")


def test_http1_over_tls(tls_server: EdgecacheServer, ca_context: ssl.SSLContext) -> None:
    with httpx.Client(base_url=tls_server.url, verify=ca_context, timeout=60) as client:
        exercise(client, "tls/h1", "HTTP/1.1")


def negotiated_alpn(server: EdgecacheServer, ca: Path, offered: list[str]) -> str | None:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(offered)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.selected_alpn_protocol()


def test_alpn_negotiation(tls_server: EdgecacheServer, tls_files: tuple[Path, Path, Path]) -> None:
    """Each configured protocol is accepted when it is the only one offered; an offer of both
    gets the one the server's `alpn` list names first, whatever the client's order."""
    ca = tls_files[0]
    assert negotiated_alpn(tls_server, ca, ["h2"]) == "h2"
    assert negotiated_alpn(tls_server, ca, ["http/1.1"]) == "http/1.1"
    assert negotiated_alpn(tls_server, ca, ["http/1.1", "h2"]) == "h2"
    assert negotiated_alpn(tls_server, ca, ["h2", "http/1.1"]) == "h2"


def test_default_alpn_accepts_both(tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> None:
    """Without `alpn` in the config, TLS clients can still get either protocol."""
    ca, cert, key = tls_files
    config = f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    with EdgecacheServer(tmp_path / "ec", config_text=config) as server:
        assert negotiated_alpn(server, ca, ["h2"]) == "h2"
        assert negotiated_alpn(server, ca, ["http/1.1"]) == "http/1.1"
        assert negotiated_alpn(server, ca, ["h2", "http/1.1"]) in ("h2", "http/1.1")


def test_untrusted_client_is_refused(tls_server: EdgecacheServer) -> None:
    """Sanity: the certificate really is checked (system CAs do not trust the test CA)."""
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_server.url}/v2/", timeout=10)


def test_skopeo_over_tls(
    tls_server: EdgecacheServer, tls_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A real client verifying the server certificate (containers/image reads certs/ca.crt)."""
    skopeo = require_tool("skopeo")
    ca, _, _ = tls_files
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(ca.read_bytes())
    image = make_image(tmp_path, [1 * MiB, 1000])
    ref = f"docker://{tls_server.host}/tls/app:v1"
    run([skopeo, "--insecure-policy", "copy", "--dest-cert-dir", str(certs), image, ref])
    dest = tmp_path / "pulled"
    run([skopeo, "--insecure-policy", "copy", "--src-cert-dir", str(certs), ref, f"oci:{dest}:v1"])
    assert oci_layout_manifest(f"oci:{dest}:v1") == oci_layout_manifest(image)
    assert oci_layout_blobs(dest) == oci_layout_blobs(oci_layout_dir(image))
