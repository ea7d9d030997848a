"""A real containerd pulls through edgecache, configured by `edgecache mirror-config containerd`.

The upstream is a real `docker-registry` on 127.0.0.1:PORT; containerd pulls
`127.0.0.1:PORT/team/app:v1` with `--hosts-dir` pointing at the hosts.toml files the real CLI
wrote, so it asks edgecache (`?ns=127.0.0.1:PORT`) first and the upstream itself only as the
silent fallback (`server`). Metrics tell which one answered.

Then the upstream is stopped for good (the fallback is gone too): a fresh containerd pulls
the same image again, by tag and by digest, from edgecache's cache alone; an image edgecache
never saw fails quickly. Tests run in file order and share the module's upstream and cache.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_mirror_config_ctr import served
from tests.integration.test_proxy import metric
from tests.support import (
    Containerd,
    EdgecacheServer,
    make_image,
    oci_layout_manifest,
    require_tool,
)
from tests.upstreams import RunningUpstream, start_registry

MiB = 1 << 20
UPSTREAM = "lab"
LABEL = f'{{upstream="{UPSTREAM}"}}'
# An uncached pull with the upstream down must fail well before a client would give up.
FAST = 30.0


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    require_tool("containerd")
    require_tool("ctr")
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        yield registry


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream) -> dict[str, str]:
    """In the upstream (real umoci images: containerd unpacks them): team/app:v1, which the
    tests pull, and team/never:v1, which nothing pulls while the upstream is up."""
    refs = {}
    for repo, sizes, seed in (
        ("team/app", [2 * MiB, 300 * 1024, 100], 41),
        ("team/never", [1000], 42),
    ):
        ref = make_image(tmp_path_factory.mktemp("img"), sizes, seed=seed)
        upstream.push_image(ref, f"{repo}:v1")
        refs[repo] = ref
    return refs


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[EdgecacheServer]:
    config = f'[upstreams.{UPSTREAM}]\nurl = "{upstream.url}"\nretries = 1\nconnect_timeout = 2.0\n'
    with EdgecacheServer(tmp_path_factory.mktemp("cache"), config_text=config) as server:
        yield server


@pytest.fixture(scope="module")
def hosts_dir(
    tmp_path_factory: pytest.TempPathFactory, cache: EdgecacheServer, upstream: RunningUpstream
) -> Path:
    """What `edgecache mirror-config containerd --write DIR` writes, with the real CLI."""
    assert cache.config_path is not None
    out = tmp_path_factory.mktemp("certs.d")
    result = cache.cli(
        "mirror-config", "containerd", "--url", cache.url,
        "--config", str(cache.config_path), "--write", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    hosts = out / f"127.0.0.1_{upstream.registry.port}_" / "hosts.toml"
    assert hosts.is_file(), sorted(str(p) for p in out.rglob("*"))
    assert cache.url in hosts.read_text()
    return out


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    """A fresh containerd per test: nothing in its content store (short path for sockets)."""
    with tempfile.TemporaryDirectory(prefix="ec-pctr-") as base, Containerd(base) as daemon:
        yield daemon


def pull(containerd: Containerd, hosts_dir: Path, name: str, *, timeout: float = 120) -> None:
    containerd.ctr(
        "images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native", name,
        timeout=timeout,
    )  # fmt: skip


def image_digest(containerd: Containerd, name: str) -> str | None:
    listing = containerd.ctr("images", "ls").stdout
    match = re.search(rf"^{re.escape(name)}\s+\S+\s+(sha256:[0-9a-f]{{64}})\s", listing, re.M)
    return match.group(1) if match else None


def served_counts(client: httpx.Client) -> tuple[int, int]:
    """(manifest GETs, blob GETs) edgecache answered with 200/206 so far."""
    return served(client, "manifest"), served(client, "blob")


def test_containerd_pulls_through_edgecache(
    upstream: RunningUpstream,
    cache: EdgecacheServer,
    hosts_dir: Path,
    containerd: Containerd,
    images: dict[str, str],
) -> None:
    digest, _ = oci_layout_manifest(images["team/app"])
    name = f"{upstream.host}/team/app:v1"
    with cache.client() as client:
        manifests0, blobs0 = served_counts(client)
        fetches0 = metric(client, "edgecache_upstream_blob_fetches_total", LABEL)
        pull(containerd, hosts_dir, name)
        manifests, blobs = served_counts(client)
        fetches = metric(client, "edgecache_upstream_blob_fetches_total", LABEL) - fetches0
    assert image_digest(containerd, name) == digest
    # Served by edgecache (not by containerd's fallback to the upstream): the manifest, the
    # config and the 3 layers, each fetched from the upstream once.
    assert manifests - manifests0 >= 1 and blobs - blobs0 >= 4, (
        f"edgecache answered {manifests - manifests0} manifest and {blobs - blobs0} blob GETs "
        "with 200/206: containerd fell back to the upstream (see the edgecache log)"
    )
    assert fetches == 4


def pull_offline(
    upstream: RunningUpstream,
    cache: EdgecacheServer,
    hosts_dir: Path,
    containerd: Containerd,
    name: str,
    digest: str,
) -> None:
    """Pull `name` into a fresh containerd with the upstream (and so the fallback) gone."""
    upstream.stop()  # for the rest of the module; idempotent
    with cache.client() as client:
        manifests0, blobs0 = served_counts(client)
        pull(containerd, hosts_dir, name)
        manifests, blobs = served_counts(client)
    assert image_digest(containerd, name) == digest
    assert manifests > manifests0 and blobs - blobs0 >= 4


def test_upstream_stopped_cached_image_pulls_by_digest(
    upstream: RunningUpstream,
    cache: EdgecacheServer,
    hosts_dir: Path,
    containerd: Containerd,
    images: dict[str, str],
) -> None:
    digest, _ = oci_layout_manifest(images["team/app"])
    name = f"{upstream.host}/team/app@{digest}"
    pull_offline(upstream, cache, hosts_dir, containerd, name, digest)


def test_upstream_stopped_cached_image_pulls_by_tag(
    upstream: RunningUpstream,
    cache: EdgecacheServer,
    hosts_dir: Path,
    containerd: Containerd,
    images: dict[str, str],
) -> None:
    """containerd resolved the tag with a HEAD, then fetched the manifest by digest: the
    tag -> digest seen at resolve time must have been recorded for this to work offline."""
    digest, _ = oci_layout_manifest(images["team/app"])
    name = f"{upstream.host}/team/app:v1"
    pull_offline(upstream, cache, hosts_dir, containerd, name, digest)


def test_upstream_stopped_uncached_image_fails_fast(
    upstream: RunningUpstream,
    cache: EdgecacheServer,
    hosts_dir: Path,
    containerd: Containerd,
    images: dict[str, str],
) -> None:
    upstream.stop()  # already stopped when the module runs in order; idempotent
    name = f"{upstream.host}/team/never:v1"
    ctr = [require_tool("ctr"), "--address", str(containerd.address), "--namespace", "x"]
    # A TimeoutExpired here (after FAST seconds) fails the test: it did not fail fast.
    result = subprocess.run(
        [*ctr, "images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native", name],
        capture_output=True,
        text=True,
        timeout=FAST,
        check=False,
    )
    assert result.returncode != 0, result.stdout
    with cache.client(timeout=FAST) as client:
        response = client.head("/v2/team/never/manifests/v1", params={"ns": upstream.host})
        assert response.status_code == 503
        response = client.get("/v2/team/never/manifests/v1", params={"ns": upstream.host})
        assert response.status_code == 503
        assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
