"""Pull-through cache against a real upstream docker-registry, with real clients.

One upstream and one edgecache per module; tests that stop the upstream come last in the file
and restart it (pytest runs a module's tests in file order).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import (
    EdgecacheServer,
    make_image,
    oci_layout_manifest,
    require_tool,
    run,
)
from tests.upstreams import RunningUpstream, start_registry

UPSTREAM = "lab"  # project name of the upstream in edgecache's config


def metric(client: httpx.Client, name: str, labels: str = "") -> float:
    text = client.get("/metrics").text
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        yield registry


def cache_config(upstream: RunningUpstream, extra: str = "") -> str:
    creds = ""
    if upstream.username:
        creds = f'username = "{upstream.username}"\npassword = "{upstream.password}"\n'
    return (
        f'[upstreams.{UPSTREAM}]\nurl = "{upstream.url}"\naliases = ["{upstream.host}"]\n'
        f"retries = 1\nconnect_timeout = 2.0\n{creds}{extra}"
    )


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[EdgecacheServer]:
    config = cache_config(upstream)
    with EdgecacheServer(tmp_path_factory.mktemp("cache"), config_text=config) as server:
        yield server


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream) -> str:
    """An image pushed straight to the upstream as team/app:v1; returns its OCI layout ref."""
    ref = make_image(tmp_path_factory.mktemp("img"), [3 << 20, 200_000], seed=7)
    upstream.push_image(ref, "team/app:v1")
    return ref


def _blobs(layout: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}


def test_skopeo_pulls_through_a_project_path(
    cache: EdgecacheServer, image: str, tmp_path: Path
) -> None:
    skopeo = require_tool("skopeo")
    out = tmp_path / "out"
    run(
        [
            skopeo,
            "copy",
            "--src-tls-verify=false",
            f"docker://{cache.host}/{UPSTREAM}/team/app:v1",
            f"oci:{out}:v1",
        ]
    )
    digest, manifest = oci_layout_manifest(f"oci:{out}:v1")
    src_digest, src_manifest = oci_layout_manifest(image)
    assert manifest == src_manifest and digest == src_digest
    source_layout = Path(image.split(":")[1])
    pulled = _blobs(out)
    for name, data in pulled.items():
        assert hashlib.sha256(data).hexdigest() == name
    assert set(pulled) <= set(_blobs(source_layout))


def test_mirror_mode_by_ns_answers_with_oci_namespace(
    cache: EdgecacheServer, upstream: RunningUpstream, image: str
) -> None:
    host = upstream.host
    with cache.client() as client:
        response = client.get(
            "/v2/team/app/manifests/v1",
            params={"ns": host},
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["oci-namespace"] == UPSTREAM
        _, expected = oci_layout_manifest(image)
        assert response.content == expected


def test_unknown_ns_or_project_is_refused_without_contacting_anyone(
    cache: EdgecacheServer,
) -> None:
    with cache.client() as client:
        response = client.get("/v2/library/nginx/manifests/latest", params={"ns": "evil.example"})
        assert response.status_code == 404
        error = response.json()["errors"][0]
        assert error["code"] == "NAME_UNKNOWN"
        assert "evil.example" in error["message"]


def test_push_to_a_proxied_repository_is_refused(cache: EdgecacheServer) -> None:
    with cache.client() as client:
        response = client.post(f"/v2/{UPSTREAM}/team/app/blobs/uploads/")
        assert response.status_code in (401, 405)


def test_head_of_uncached_blob_is_answered_without_downloading(
    cache: EdgecacheServer, upstream: RunningUpstream, tmp_path: Path
) -> None:
    data = os.urandom(1 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert upstream.push_blob("team/headonly", data) == digest
    with cache.client() as client:
        before = metric(
            client, "edgecache_upstream_blob_fetches_total", f'{{upstream="{UPSTREAM}"}}'
        )
        head = client.head(f"/v2/{UPSTREAM}/team/headonly/blobs/{digest}")
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(data))
        assert head.headers["docker-content-digest"] == digest
        after = metric(
            client, "edgecache_upstream_blob_fetches_total", f'{{upstream="{UPSTREAM}"}}'
        )
        assert after == before
    assert not (cache.data / "blobs" / "sha256" / digest[7:9] / digest[7:]).exists()


def test_concurrent_pulls_of_an_uncached_blob_fetch_it_once(
    cache: EdgecacheServer, upstream: RunningUpstream
) -> None:
    data = os.urandom(16 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert upstream.push_blob("team/big", data) == digest
    label = f'{{upstream="{UPSTREAM}"}}'
    with cache.client() as client:
        fetches_before = metric(client, "edgecache_upstream_blob_fetches_total", label)
        bytes_before = metric(client, "edgecache_upstream_bytes_total", label)

    def pull(_: int) -> str:
        with cache.client() as c:
            got = c.get(f"/v2/{UPSTREAM}/team/big/blobs/{digest}")
            assert got.status_code == 200
            return hashlib.sha256(got.content).hexdigest()

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(pull, range(12)))
    assert results == [digest[7:]] * 12
    with cache.client() as client:
        assert metric(client, "edgecache_upstream_blob_fetches_total", label) - fetches_before == 1
        assert metric(client, "edgecache_upstream_bytes_total", label) - bytes_before == len(data)
        ranged = client.get(
            f"/v2/{UPSTREAM}/team/big/blobs/{digest}", headers={"Range": "bytes=100-199"}
        )
        assert ranged.status_code == 206 and ranged.content == data[100:200]


def test_changed_tag_upstream_is_picked_up(
    cache: EdgecacheServer, upstream: RunningUpstream, tmp_path: Path
) -> None:
    first = make_image(tmp_path / "a", [1000], seed=1)
    second = make_image(tmp_path / "b", [1000], seed=2)
    with cache.client() as client:
        for ref in (first, second):
            upstream.push_image(ref, "team/moving:v")
            digest, _ = oci_layout_manifest(ref)
            got = client.get(
                f"/v2/{UPSTREAM}/team/moving/manifests/v",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            )
            assert got.headers["docker-content-digest"] == digest


def test_inspect_reports_proxied_content(cache: EdgecacheServer) -> None:
    skopeo = require_tool("skopeo")
    result = subprocess.run(
        [
            skopeo,
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{cache.host}/{UPSTREAM}/team/app:v1",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(result.stdout)["schemaVersion"] == 2


def test_shared_layer_is_linked_not_downloaded_again(
    cache: EdgecacheServer, upstream: RunningUpstream
) -> None:
    layer = os.urandom(2 << 20)
    digest = upstream.push_blob("team/base-a", layer)
    assert upstream.push_blob("team/base-b", layer) == digest
    label = f'{{upstream="{UPSTREAM}"}}'
    with cache.client() as client:
        first = client.get(f"/v2/{UPSTREAM}/team/base-a/blobs/{digest}")
        assert first.content == layer
        fetches = metric(client, "edgecache_upstream_blob_fetches_total", label)
        second = client.get(f"/v2/{UPSTREAM}/team/base-b/blobs/{digest}")
        assert second.status_code == 200 and second.content == layer
        assert metric(client, "edgecache_upstream_blob_fetches_total", label) == fetches
        # A repository the upstream does not hold it in gets no bytes from the cache.
        other = client.get(f"/v2/{UPSTREAM}/team/base-c/blobs/{digest}")
        assert other.status_code == 404
        assert other.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_tag_list_and_multi_arch_index_come_through_whole(
    cache: EdgecacheServer, upstream: RunningUpstream
) -> None:
    amd = upstream.push_test_image("team/multi", tags=("amd64-only",))
    arm = upstream.push_test_image("team/multi", tags=("arm64-only",))
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": image.digest,
                    "size": len(image.manifest),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for image, arch in ((amd, "amd64"), (arm, "arm64"))
            ],
        },
        indent=3,  # any formatting: the cache must keep the exact bytes
    ).encode()
    index_digest = upstream.push_manifest(
        "team/multi", "v1", index, "application/vnd.oci.image.index.v1+json"
    )
    with cache.client() as client:
        got = client.get(
            f"/v2/{UPSTREAM}/team/multi/manifests/v1",
            headers={"Accept": "application/vnd.oci.image.index.v1+json"},
        )
        assert got.status_code == 200
        assert got.content == index  # cached whole, never trimmed to a platform
        assert got.headers["docker-content-digest"] == index_digest
        for image in (amd, arm):
            child = client.get(
                f"/v2/{UPSTREAM}/team/multi/manifests/{image.digest}",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            )
            assert child.content == image.manifest
        tags = client.get(f"/v2/{UPSTREAM}/team/multi/tags/list")
        assert tags.status_code == 200
        assert set(tags.json()["tags"]) == {"amd64-only", "arm64-only", "v1"}
        page = client.get(f"/v2/{UPSTREAM}/team/multi/tags/list", params={"n": "2"})
        assert page.json()["tags"] == ["amd64-only", "arm64-only"]
        assert 'rel="next"' in page.headers["link"]


def test_upstream_down_serves_cache_and_fails_fast_otherwise(
    cache: EdgecacheServer, upstream: RunningUpstream, image: str, tmp_path: Path
) -> None:
    skopeo = require_tool("skopeo")
    # Warm the cache with the whole image first.
    run(
        [
            skopeo,
            "copy",
            "--src-tls-verify=false",
            f"docker://{cache.host}/{UPSTREAM}/team/app:v1",
            f"oci:{tmp_path / 'warm'}:v1",
        ]
    )
    upstream.stop()
    out = tmp_path / "offline"
    run(
        [
            skopeo,
            "copy",
            "--src-tls-verify=false",
            f"docker://{cache.host}/{UPSTREAM}/team/app:v1",
            f"oci:{out}:v1",
        ]
    )
    assert oci_layout_manifest(f"oci:{out}:v1") == oci_layout_manifest(image)
    digest, _ = oci_layout_manifest(image)
    run(
        [
            skopeo,
            "copy",
            "--src-tls-verify=false",
            f"docker://{cache.host}/{UPSTREAM}/team/app@{digest}",
            f"oci:{tmp_path / 'bd'}:x",
        ]
    )
    with cache.client(timeout=30) as client:
        stale = client.get(
            f"/v2/{UPSTREAM}/team/app/manifests/v1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert stale.status_code == 200
        assert "Stale" in stale.headers["warning"]
        missing = client.get(f"/v2/{UPSTREAM}/team/never-cached/manifests/v1")
        assert missing.status_code == 503
        assert missing.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert metric(client, "edgecache_stale_served_total", f'{{upstream="{UPSTREAM}"}}') >= 1
