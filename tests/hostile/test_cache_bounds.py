"""Memory a client can make the server hold is bounded: counted in cache entries and upstream
requests (never by RSS or timing), against a real edgecache and a real docker-registry."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support import EdgecacheServer
from tests.upstreams import PushedImage, RunningUpstream

LIST_ENTRIES = 150  # [proxy] list_cache_entries of the server under test


@pytest.fixture(scope="module")
def image(upstream: RunningUpstream) -> PushedImage:
    return upstream.push_test_image("team/app", layer=b"layer of team/app")


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[EdgecacheServer]:
    config = (
        f"[proxy]\nlist_cache_entries = {LIST_ENTRIES}\n\n"
        f'[upstreams.lab]\nurl = "{upstream.url}"\nretries = 1\n'
    )
    with EdgecacheServer(tmp_path_factory.mktemp("cache"), config_text=config) as server:
        yield server


def cache_entries(client: httpx.Client, cache: str) -> int | None:
    text = client.get("/metrics").text
    match = re.search(rf'^edgecache_cache_entries\{{cache="{cache}"\}} (\S+)$', text, re.M)
    return int(float(match.group(1))) if match else None


def test_unknown_repositories_are_negative_cached(
    cache: EdgecacheServer, upstream: RunningUpstream
) -> None:
    names = [f"nope/{secrets.token_hex(6)}" for _ in range(100)]
    with cache.client() as client:
        for _ in range(3):
            for name in names:
                r = client.get(f"/v2/lab/{name}/tags/list")
                assert r.status_code == 404, r.text
                assert r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    asked = sum(upstream.request_count(f"/v2/{name}/tags/list") for name in names)
    assert asked == len(names), f"{asked} upstream requests for {len(names)} unknown names"


def test_concurrent_lookups_of_one_list_cost_one_upstream_request(
    cache: EdgecacheServer, upstream: RunningUpstream, image: PushedImage
) -> None:
    """Waves of concurrent lookups, of a repository that exists and of one that does not:
    one upstream request each (single-flight within a wave, the cache across waves)."""
    missing = f"nope/{secrets.token_hex(6)}"
    with cache.client() as client, ThreadPoolExecutor(16) as pool:
        for _ in range(3):
            found = list(pool.map(lambda _: client.get("/v2/lab/team/app/tags/list"), range(16)))
            assert {r.status_code for r in found} == {200}
            assert all(r.json()["tags"] == ["v1"] for r in found)
            gone = list(pool.map(lambda _: client.get(f"/v2/lab/{missing}/tags/list"), range(16)))
            assert {r.status_code for r in gone} == {404}
    assert upstream.request_count("/v2/team/app/tags/list") == 1
    assert upstream.request_count(f"/v2/{missing}/tags/list") == 1


def test_the_list_cache_stops_at_its_bound(cache: EdgecacheServer, image: PushedImage) -> None:
    """Referrers of random digests (an empty list each: the upstream has no referrers API)
    beyond the bound: the cache holds LIST_ENTRIES and no more."""
    extra = LIST_ENTRIES + 60

    def lookup(_: int) -> int:
        digest = "sha256:" + secrets.token_hex(32)
        with httpx.Client(base_url=cache.url, timeout=60) as client:
            return client.get(f"/v2/lab/team/app/referrers/{digest}").status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lookup, range(extra)))
    assert set(statuses) == {200}
    with cache.client() as client:
        assert cache_entries(client, "proxy_lists") == LIST_ENTRIES


def test_metric_labels_do_not_grow_with_invented_methods(cache: EdgecacheServer) -> None:
    with cache.client() as client:
        for n in range(20):
            r = client.request(f"BREW{n}", "/v2/lab/team/app/tags/list")
            assert r.status_code == 405
        text = client.get("/metrics").text
    assert "BREW" not in text
    assert re.search(r'edgecache_http_requests_total\{[^}]*method="other"[^}]*\} 20\.0', text)
