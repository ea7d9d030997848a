"""A client never receives a complete 200 of bytes that do not match the digest it asked for.

The upstream is a real docker-registry whose filesystem storage serves a blob's `data` file
without checking it: overwriting that file with other bytes of the same length makes it lie
about the digest, as a corrupt mirror or a bit-flipping disk would. edgecache streams the
download to its client as it arrives, so the client's body starts before anything could be
verified; what matters is how it ends: short and broken (HTTP/1.1), without its last chunk,
or reset (HTTP/2), and never stored.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.clients import Outcome, h2_get, http1_get
from tests.support import LOOPBACK, EdgecacheServer, make_tls_cert, sha256_bytes, wait_for
from tests.upstreams import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, RunningUpstream

UPSTREAM = "lab"
SIZE = 8 << 20


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls_cert(tmp_path_factory.mktemp("tls"))


def _config(upstream: RunningUpstream, server: str = "") -> str:
    return f'{server}[upstreams.{UPSTREAM}]\nurl = "{upstream.url}"\nretries = 1\n'


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[EdgecacheServer]:
    with EdgecacheServer(tmp_path_factory.mktemp("cache"), config_text=_config(upstream)) as s:
        yield s


@pytest.fixture(scope="module")
def tls_cache(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: RunningUpstream,
    tls_files: tuple[Path, Path, Path],
) -> Iterator[EdgecacheServer]:
    _, cert, key = tls_files
    server = f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\nalpn = ["h2", "http/1.1"]\n'
    config = _config(upstream, server)
    with EdgecacheServer(tmp_path_factory.mktemp("tls-cache"), config_text=config) as s:
        yield s


@pytest.fixture
def ca(tls_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files[0]))


def corrupt_blob(upstream: RunningUpstream, repo: str, *, declare: bool = True) -> str:
    """Push a random blob (and, with `declare`, a manifest naming it), then overwrite the
    registry's file with other bytes of the same length. Returns the blob's digest."""
    data = os.urandom(SIZE)
    digest = upstream.push_blob(repo, data)
    if declare:
        config = upstream.push_blob(repo, b"{}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest, "size": SIZE}],
        }
        upstream.push_manifest(repo, "v1", json.dumps(manifest).encode())
    hexd = digest.split(":", 1)[1]
    path = upstream.registry.root / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    assert path.stat().st_size == SIZE
    path.write_bytes(os.urandom(SIZE))
    return digest


def assert_never_complete(outcome: Outcome, digest: str) -> None:
    if outcome.status == 200:
        assert not outcome.complete, (
            f"a complete 200 of {len(outcome.body)} bytes hashing to {sha256_bytes(outcome.body)}"
            f" was served for {digest}"
        )
        assert len(outcome.body) < SIZE
        # No cache may keep bytes that were still unverified when they were sent.
        assert "immutable" not in outcome.headers.get("cache-control", "")
    else:
        assert outcome.status == 503, outcome


def assert_nothing_stored(
    cache: EdgecacheServer, repo: str, digest: str, ca: ssl.SSLContext | None = None
) -> None:
    hexd = digest.split(":", 1)[1]
    with cache.client(verify=ca or True) as client:
        # Once the fetch has given up (it tries twice; a HEAD meanwhile joins it and fails
        # with it), a HEAD is answered by the upstream: unverified, so not immutable.
        r = wait_for(
            lambda: (
                (r := client.head(f"/v2/{UPSTREAM}/{repo}/blobs/{digest}")).status_code == 200 and r
            ),
            timeout=30,
            what="the failed fetch to end",
        )
        assert "immutable" not in r.headers.get("cache-control", "")
    assert not (cache.data / "blobs" / "sha256" / hexd[:2] / hexd).exists()


def test_http1_plain_never_completes_a_bad_body(
    cache: EdgecacheServer, upstream: RunningUpstream
) -> None:
    digest = corrupt_blob(upstream, "bad/h1")
    outcome = http1_get(LOOPBACK, cache.port, f"/v2/{UPSTREAM}/bad/h1/blobs/{digest}")
    assert_never_complete(outcome, digest)
    assert_nothing_stored(cache, "bad/h1", digest)


def test_h2c_resets_the_stream(cache: EdgecacheServer, upstream: RunningUpstream) -> None:
    digest = corrupt_blob(upstream, "bad/h2c", declare=False)
    outcome = h2_get(LOOPBACK, cache.port, f"/v2/{UPSTREAM}/bad/h2c/blobs/{digest}")
    assert_never_complete(outcome, digest)
    if outcome.status == 200:
        assert outcome.error.startswith("RST_STREAM"), outcome.error  # at once, not a hang
    assert_nothing_stored(cache, "bad/h2c", digest)


def test_h2_over_tls_resets_the_stream(
    tls_cache: EdgecacheServer, upstream: RunningUpstream, ca: ssl.SSLContext
) -> None:
    digest = corrupt_blob(upstream, "bad/h2tls")
    outcome = h2_get(LOOPBACK, tls_cache.port, f"/v2/{UPSTREAM}/bad/h2tls/blobs/{digest}", tls=ca)
    assert_never_complete(outcome, digest)
    if outcome.status == 200:
        assert outcome.error.startswith("RST_STREAM"), outcome.error
    assert_nothing_stored(tls_cache, "bad/h2tls", digest, ca)


def test_http1_over_tls_never_completes_a_bad_body(
    tls_cache: EdgecacheServer, upstream: RunningUpstream, ca: ssl.SSLContext
) -> None:
    digest = corrupt_blob(upstream, "bad/h1tls")
    path = f"/v2/{UPSTREAM}/bad/h1tls/blobs/{digest}"
    outcome = http1_get(LOOPBACK, tls_cache.port, path, tls=ca)
    assert_never_complete(outcome, digest)
    assert_nothing_stored(tls_cache, "bad/h1tls", digest, ca)
