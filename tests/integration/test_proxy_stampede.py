"""Stampede: many clients pull the same uncached image through edgecache at once.

50 clients, one 512 MiB image (4 layers of 128 MiB) that edgecache has never seen: the
upstream must serve it about once (upstream bytes / image size <= 1.02) and every client must
get every byte right. Clients are threads with streaming httpx GETs that hash as they read, so
memory stays flat (50 x 512 MiB would be 25 GiB held otherwise).

This is the heaviest test of the suite (25 GiB through edgecache on loopback) and it runs in
CI: single-flight under load is the point of the pull-through cache. On the 2-core CI machine
it took about 3.5 minutes at the time of writing, most of it edgecache's CPU on the in-flight
(pread) serving path; marked `slow` so it can be deselected locally with -m "not slow".
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.test_proxy import metric
from tests.integration.test_proxy_faults import Image, push_layers
from tests.support import EdgecacheServer, wait_for
from tests.upstreams import OCI_MANIFEST, RunningUpstream, start_registry

MiB = 1 << 20
UPSTREAM = "lab"
LABEL = f'{{upstream="{UPSTREAM}"}}'
CLIENTS = int(os.environ.get("EDGECACHE_STAMPEDE_CLIENTS", "50"))
LAYER_SIZE = 128 * MiB
LAYERS = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        yield registry


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[EdgecacheServer]:
    config = f'[upstreams.{UPSTREAM}]\nurl = "{upstream.url}"\nretries = 1\n'
    with EdgecacheServer(tmp_path_factory.mktemp("cache"), config_text=config) as server:
        yield server


def stream_digest(client: httpx.Client, url: str, stop_after: int | None = None) -> str:
    """GET `url`, hashing while streaming; with `stop_after`, hang up after that many bytes."""
    h = hashlib.sha256()
    read = 0
    with client.stream("GET", url) as response:
        assert response.status_code == 200, response.read().decode(errors="replace")
        for chunk in response.iter_raw(MiB):
            h.update(chunk)
            read += len(chunk)
            if stop_after is not None and read >= stop_after:
                return ""  # leaving the block closes the connection mid-body
    return "sha256:" + h.hexdigest()


def pull_image(cache: EdgecacheServer, image: Image, barrier: threading.Barrier) -> dict[str, str]:
    """One client: the manifest by tag, then every blob; digest of each body as received."""
    # One connection per client: no pooled connection shared between clients.
    with httpx.Client(base_url=cache.url, timeout=120) as client:
        barrier.wait(timeout=60)
        response = client.get(
            f"/v2/{UPSTREAM}/{image.repo}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST}
        )
        assert response.status_code == 200, response.text
        got = {image.digest: "sha256:" + hashlib.sha256(response.content).hexdigest()}
        for digest in image.blobs:
            got[digest] = stream_digest(client, f"/v2/{UPSTREAM}/{image.repo}/blobs/{digest}")
        return got


def upstream_served(upstream: RunningUpstream, image: Image) -> int:
    return sum(upstream.served_bytes(digest) for digest in image.blobs)


def test_fifty_clients_one_uncached_image_one_upstream_fetch(
    cache: EdgecacheServer, upstream: RunningUpstream
) -> None:
    layers = [os.urandom(LAYER_SIZE) for _ in range(LAYERS)]
    image = push_layers(upstream, "team/huge", "v1", layers)
    del layers
    size = sum(image.blobs.values())
    with cache.client() as client:
        bytes_before = metric(client, "edgecache_upstream_bytes_total", LABEL)
        fetches_before = metric(client, "edgecache_upstream_blob_fetches_total", LABEL)

    barrier = threading.Barrier(CLIENTS)
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda _: pull_image(cache, image, barrier), range(CLIENTS)))

    expected = {image.digest: image.digest, **{d: d for d in image.blobs}}
    wrong = [i for i, got in enumerate(results) if got != expected]
    assert not wrong, f"clients {wrong} got wrong bytes: {results[wrong[0]]}"
    served = upstream_served(upstream, image)
    assert served / size <= 1.02, f"upstream served {served} bytes for a {size}-byte image"
    with cache.client() as client:
        received = metric(client, "edgecache_upstream_bytes_total", LABEL) - bytes_before
        fetches = metric(client, "edgecache_upstream_blob_fetches_total", LABEL) - fetches_before
    assert received / size <= 1.02, f"edgecache received {received} bytes for {size}"
    assert fetches == len(image.blobs)


def hang_up_stampede(
    cache: EdgecacheServer, url: str, clients: int, quitter: Callable[[int], bool]
) -> list[str]:
    """`clients` concurrent GETs of `url`; those with quitter(i) hang up after the first MiB."""
    barrier = threading.Barrier(clients)

    def pull(i: int) -> str:
        with httpx.Client(base_url=cache.url, timeout=120) as client:
            barrier.wait(timeout=60)
            return stream_digest(client, url, stop_after=MiB if quitter(i) else None)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(pull, range(clients)))


def assert_cached_without_new_fetch(
    cache: EdgecacheServer, upstream: RunningUpstream, url: str, digest: str, fetches_before: float
) -> None:
    """The blob got stored by its one fetch; a later GET is served without the upstream."""
    blob_path = cache.data / "blobs" / "sha256" / digest[7:9] / digest[7:]
    wait_for(blob_path.exists, timeout=60, what=f"{digest} to be stored")
    served = upstream.settled_served_bytes(digest, LAYER_SIZE)
    with cache.client() as client:
        assert stream_digest(client, url) == digest
        fetches = metric(client, "edgecache_upstream_blob_fetches_total", LABEL) - fetches_before
    assert fetches == 1
    assert upstream.served_bytes(digest) == served == LAYER_SIZE


def test_half_the_clients_hang_up_early(cache: EdgecacheServer, upstream: RunningUpstream) -> None:
    clients = 8
    image = push_layers(upstream, "team/quitters", "v1", [os.urandom(LAYER_SIZE)])
    [layer] = image.layers
    url = f"/v2/{UPSTREAM}/{image.repo}/blobs/{layer}"
    with cache.client() as client:
        fetches_before = metric(client, "edgecache_upstream_blob_fetches_total", LABEL)
    results = hang_up_stampede(cache, url, clients, quitter=lambda i: i % 2 == 1)
    assert results[0::2] == [layer] * (clients // 2)
    assert results[1::2] == [""] * (clients // 2)
    assert_cached_without_new_fetch(cache, upstream, url, layer, fetches_before)


def test_every_client_hangs_up_and_the_fetch_still_completes(
    cache: EdgecacheServer, upstream: RunningUpstream
) -> None:
    clients = 8
    image = push_layers(upstream, "team/all-quit", "v1", [os.urandom(LAYER_SIZE)])
    [layer] = image.layers
    url = f"/v2/{UPSTREAM}/{image.repo}/blobs/{layer}"
    with cache.client() as client:
        fetches_before = metric(client, "edgecache_upstream_blob_fetches_total", LABEL)
    results = hang_up_stampede(cache, url, clients, quitter=lambda i: True)
    assert results == [""] * clients
    # Every client is gone after 1 MiB of a 128 MiB blob: the fetch was still running.
    blob_path = cache.data / "blobs" / "sha256" / layer[7:9] / layer[7:]
    assert not blob_path.exists(), "the fetch finished before the clients hung up: test is moot"
    assert_cached_without_new_fetch(cache, upstream, url, layer, fetches_before)


def blob_gets_handled(client: httpx.Client) -> int:
    """Blob GETs edgecache finished handling, whatever their status."""
    samples = re.findall(
        r"^edgecache_http_requests_total\{([^}]*)\} (\S+)$", client.get("/metrics").text, re.M
    )
    return int(
        sum(float(v) for labels, v in samples if 'route="blob"' in labels and "GET" in labels)
    )


def test_hung_up_clients_stop_being_served(
    cache: EdgecacheServer, upstream: RunningUpstream
) -> None:
    """A client that hangs up mid-blob costs nothing more: its handler stops reading the
    growing temp file and sending (the fetch goes on for the cache's sake only)."""
    clients = 4
    size = 64 * MiB
    image = push_layers(upstream, "team/gone", "v1", [os.urandom(size)])
    [layer] = image.layers
    url = f"/v2/{UPSTREAM}/{image.repo}/blobs/{layer}"
    metric_name = "edgecache_served_bytes_total"
    with cache.client() as client:
        served_before = metric(client, metric_name, '{path="inflight"}')
        handled_before = blob_gets_handled(client)
    assert hang_up_stampede(cache, url, clients, quitter=lambda i: True) == [""] * clients
    with cache.client() as client:
        # A request is counted when its handler ends; the inflight bytes are then final.
        wait_for(
            lambda: blob_gets_handled(client) >= handled_before + clients,
            timeout=60,
            what="the handlers of the hung-up clients to end",
        )
        sent = metric(client, metric_name, '{path="inflight"}') - served_before
    # Each client read 1 MiB; allow for what socket buffers absorbed before the hang-up.
    assert sent <= clients * 16 * MiB, (
        f"edgecache sent {sent / MiB:.0f} MiB to {clients} clients that hung up after 1 MiB "
        f"of a {size // MiB} MiB blob: it keeps streaming to closed connections"
    )
