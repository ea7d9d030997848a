"""Pull-through cache over a flaky uplink: a FaultProxy between edgecache and a real upstream.

edgecache's only upstream ("lab") is the FaultProxy, which forwards to a real anonymous
`docker-registry`. Content is pushed straight to the registry (never through the proxy), then
pulled through edgecache while the proxy cuts connections at random byte offsets, answers
bursts of 503s, stalls, or refuses everything.

One registry, one proxy and one edgecache for the module; every test heals the proxy first.
The test that takes the upstream away for good comes last in the file (pytest runs a module's
tests in file order) and pulls again everything the earlier tests cached.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.faultproxy import FaultProxy, random_offsets
from tests.integration.test_proxy import metric
from tests.support import EdgecacheServer, require_tool, run, sha256_bytes, wait_for
from tests.upstreams import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, RunningUpstream, start_registry

MiB = 1 << 20
UPSTREAM = "lab"
LABEL = f'{{upstream="{UPSTREAM}"}}'
IDLE_TIMEOUT = 1.0
RETRIES = 3
# Client-side bound for "fails fast": a request that takes longer raises httpx.ReadTimeout
# and fails the test (well under any real client's timeout, which is minutes).
FAST = 10.0


# ------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Image:
    repo: str
    tag: str
    manifest: bytes
    digest: str
    blobs: dict[str, int]  # digest -> size (config first, then layers)

    @property
    def layers(self) -> list[str]:
        return list(self.blobs)[1:]


def push_layers(upstream: RunningUpstream, repo: str, tag: str, layers: list[bytes]) -> Image:
    """Push an OCI image with the given layer bytes straight to the upstream (fast set-up:
    no umoci, no tar; registries and skopeo only check digests)."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_bytes(x) for x in layers]},
        }
    ).encode()
    blobs = {upstream.push_blob(repo, config): len(config)}
    descriptors = []
    for layer in layers:
        digest = upstream.push_blob(repo, layer)
        blobs[digest] = len(layer)
        descriptors.append({"mediaType": OCI_LAYER, "digest": digest, "size": len(layer)})
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": next(iter(blobs)), "size": len(config)},
            "layers": descriptors,
        },
        indent=2,
    ).encode()
    digest = upstream.push_manifest(repo, tag, manifest)
    return Image(repo, tag, manifest, digest, blobs)


def random_layers(seed: int, sizes: list[int]) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for size in sizes]


def get_blob_digest(client: httpx.Client, repo: str, digest: str) -> tuple[int, str]:
    """GET a blob through edgecache, hashing while streaming: (size, digest of the body)."""
    h = hashlib.sha256()
    size = 0
    with client.stream("GET", f"/v2/{UPSTREAM}/{repo}/blobs/{digest}") as response:
        assert response.status_code == 200, response.read().decode(errors="replace")
        for chunk in response.iter_bytes(MiB):
            h.update(chunk)
            size += len(chunk)
    return size, "sha256:" + h.hexdigest()


class BackgroundPull:
    """GET a blob through edgecache in a thread; `finish()` waits and returns (size, digest of
    the body), or raises what the thread met."""

    def __init__(self, cache: EdgecacheServer, repo: str, digest: str) -> None:
        self.result: tuple[int, str] | None = None
        self.error: BaseException | None = None

        def pull() -> None:
            try:
                with cache.client(timeout=60) as client:
                    self.result = get_blob_digest(client, repo, digest)
            except BaseException as exc:  # reported by finish(), in the test's thread
                self.error = exc

        self.thread = threading.Thread(target=pull)
        self.thread.start()

    def finish(self) -> tuple[int, str]:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the pull did not finish within 60 s"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def get_manifest(client: httpx.Client, repo: str, reference: str) -> httpx.Response:
    return client.get(
        f"/v2/{UPSTREAM}/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
    )


def skopeo_pull(cache: EdgecacheServer, ref: str, dest: Path, timeout: float = 120) -> Path:
    """skopeo copy docker://<edgecache>/lab/<ref> to an OCI layout; every blob checked."""
    run(
        [
            require_tool("skopeo"),
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            # The layers are random bytes, not tars: keep them (and so the digests) as they are.
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
            f"docker://{cache.host}/{UPSTREAM}/{ref}",
            f"oci:{dest}:pulled",
        ],
        timeout=timeout,
    )
    return dest


def assert_layout_has(layout: Path, image: Image) -> None:
    """The layout holds the image's manifest bytes and every blob, with the right digests."""
    index = json.loads((layout / "index.json").read_text())
    [desc] = index["manifests"]
    assert desc["digest"] == image.digest
    blob_dir = layout / "blobs" / "sha256"
    assert (blob_dir / image.digest[7:]).read_bytes() == image.manifest
    for digest, size in image.blobs.items():
        data = (blob_dir / digest[7:]).read_bytes()
        assert len(data) == size and sha256_bytes(data) == digest


def blob_gets(upstream: RunningUpstream, digest: str) -> list[tuple[int, int]]:
    """(status, bytes written) of every GET of blob `digest` the upstream answered, in order."""
    return [
        (int(e["http.response.status"]), int(e.get("http.response.written", 0)))
        for e in upstream.registry.log_entries()
        if e.get("http.request.method") == "GET"
        and f"/blobs/{digest}" in str(e.get("http.request.uri", ""))
    ]


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        yield registry


@pytest.fixture(scope="module")
def proxy(upstream: RunningUpstream) -> Iterator[FaultProxy]:
    host, port = upstream.host.rsplit(":", 1)
    with FaultProxy(host, int(port)) as fp:
        yield fp


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, proxy: FaultProxy) -> Iterator[EdgecacheServer]:
    config = (
        f'[upstreams.{UPSTREAM}]\nurl = "{proxy.url}"\n'
        f"retries = {RETRIES}\nconnect_timeout = 2.0\nidle_timeout = {IDLE_TIMEOUT}\n"
    )
    with EdgecacheServer(tmp_path_factory.mktemp("cache"), config_text=config) as server:
        yield server


@pytest.fixture(scope="module")
def cached_images() -> list[Image]:
    """Images earlier tests pulled completely through edgecache (the offline test re-pulls)."""
    return []


@pytest.fixture(autouse=True)
def healed(proxy: FaultProxy) -> Iterator[None]:
    proxy.heal()
    yield
    proxy.heal()


# --------------------------------------------------------------------------- tests


def test_cut_connections_resume_and_upstream_serves_each_blob_about_once(
    cache: EdgecacheServer,
    upstream: RunningUpstream,
    proxy: FaultProxy,
    cached_images: list[Image],
    tmp_path: Path,
) -> None:
    image = push_layers(upstream, "team/cut", "v1", random_layers(11, [4 * MiB, 6 * MiB, 8 * MiB]))
    total = sum(image.blobs.values())
    with cache.client() as client:
        bytes_before = metric(client, "edgecache_upstream_bytes_total", LABEL)
    forwarded_before = proxy.bytes_to_client
    # Every connection (pooled ones too) is reset after a random 256 KiB..3 MiB of response.
    proxy.cut_after(random_offsets(seed=7, low=256 * 1024, high=3 * MiB))
    layout = skopeo_pull(cache, "team/cut:v1", tmp_path / "out")
    cuts = proxy.cuts
    proxy.heal()
    assert cuts >= 3, f"only {cuts} cuts: the test would not show resumes"
    assert_layout_has(layout, image)
    # Resumes, not restarts: edgecache received each byte exactly once, the link carried each
    # byte about once, and every request after a blob's first asked for the rest (206).
    # (The registry's own count, served_bytes(), is no measure here: it counts what it wrote
    # into its socket, and at each cut several MiB sit in loopback socket buffers and are
    # lost: 8 MiB blob, 7 GETs, 27 MB "written". That loss is the cut's, not edgecache's.)
    with cache.client() as client:
        received = metric(client, "edgecache_upstream_bytes_total", LABEL) - bytes_before
    assert received == total
    forwarded = proxy.bytes_to_client - forwarded_before
    assert forwarded <= 1.1 * total + 64 * 1024, (forwarded, total)
    resumes = 0
    for digest in image.blobs:
        statuses = [status for status, _ in blob_gets(upstream, digest)]
        assert statuses[0] == 200 and set(statuses[1:]) <= {206}, (digest, statuses)
        resumes += len(statuses) - 1
    assert 0 < resumes <= cuts
    assert "resuming" in cache.log_text(tail=1 << 20)
    cached_images.append(image)


def test_503_bursts_on_manifests_and_blobs_are_retried(
    cache: EdgecacheServer,
    upstream: RunningUpstream,
    proxy: FaultProxy,
    cached_images: list[Image],
    tmp_path: Path,
) -> None:
    image = push_layers(upstream, "team/burst", "v1", random_layers(12, [2 * MiB, 3 * MiB]))
    with cache.client(timeout=60) as client:
        # A burst as long as the configured retries on the (uncached) manifest by tag.
        proxy.fail_with_503(RETRIES)
        response = get_manifest(client, image.repo, image.tag)
        assert response.status_code == 200, response.text
        assert response.content == image.manifest
        assert proxy.failed_requests >= RETRIES
        # Longer bursts on blob GETs: retried, then resumed by the fetch itself.
        for digest, size in image.blobs.items():
            failed = proxy.failed_requests
            proxy.fail_with_503(2 * RETRIES + 2)
            assert get_blob_digest(client, image.repo, digest) == (size, digest)
            assert proxy.failed_requests - failed == 2 * RETRIES + 2
    cached_images.append(image)

    # A real client while a burst is armed: requests run concurrently, all complete.
    second = push_layers(upstream, "team/burst2", "v1", random_layers(13, [MiB, 2 * MiB, MiB]))
    failed = proxy.failed_requests
    proxy.fail_with_503(RETRIES)
    layout = skopeo_pull(cache, "team/burst2:v1", tmp_path / "out")
    assert proxy.failed_requests - failed == RETRIES
    assert_layout_has(layout, second)
    cached_images.append(second)


def test_stall_before_the_response_is_abandoned_and_retried(
    cache: EdgecacheServer, upstream: RunningUpstream, proxy: FaultProxy
) -> None:
    data = random.Random(21).randbytes(3 * MiB)
    digest = upstream.push_blob("team/stall", data)
    with cache.client() as client:
        bytes_before = metric(client, "edgecache_upstream_bytes_total", LABEL)
    requests = proxy.requests
    proxy.stall()  # every response byte held, connections stay open
    pull = BackgroundPull(cache, "team/stall", digest)
    # edgecache gives up on the silent connection after idle_timeout and asks again.
    wait_for(
        lambda: proxy.requests >= requests + 2,
        timeout=10 * IDLE_TIMEOUT,
        what="edgecache to abandon the stalled request and send another",
    )
    proxy.release()
    assert pull.finish() == (len(data), digest)
    # What the upstream wrote into the stalled connection never reached edgecache (it sat in
    # socket buffers): edgecache received the blob once.
    with cache.client() as client:
        received = metric(client, "edgecache_upstream_bytes_total", LABEL) - bytes_before
    assert received == len(data)


def test_stall_mid_transfer_is_abandoned_and_resumed(
    cache: EdgecacheServer, upstream: RunningUpstream, proxy: FaultProxy
) -> None:
    size = 64 * MiB
    data = random.Random(22).randbytes(size)
    digest = upstream.push_blob("team/stall-mid", data)
    del data
    with cache.client() as client:
        bytes_before = metric(client, "edgecache_upstream_bytes_total", LABEL)
    start = proxy.bytes_to_client
    pull = BackgroundPull(cache, "team/stall-mid", digest)
    # Stall once the first MiB went through: a busy poll (no sleep), so the stall lands
    # early in the 64 MiB body rather than after it.
    wait_for(lambda: proxy.bytes_to_client - start > MiB, timeout=30, interval=0, what="1 MiB")
    proxy.stall()
    at_stall = proxy.bytes_to_client - start
    requests = proxy.requests
    assert at_stall < size // 2, f"the stall came too late ({at_stall} bytes): not mid-body"
    wait_for(
        lambda: proxy.requests > requests,
        timeout=10 * IDLE_TIMEOUT,
        what="edgecache to abandon the stalled transfer and resume it",
    )
    proxy.release()
    assert pull.finish() == (size, digest)
    with cache.client() as client:
        received = metric(client, "edgecache_upstream_bytes_total", LABEL) - bytes_before
    assert received == size  # resumed from where it stopped: nothing received twice
    statuses = [status for status, _ in blob_gets(upstream, digest)]
    assert statuses[0] == 200 and len(statuses) > 1 and set(statuses[1:]) <= {206}, statuses
    assert "resuming" in cache.log_text(tail=1 << 20)


def test_joining_a_fetch_from_another_repository_asks_upstream_first(
    upstream: RunningUpstream, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A download in flight for one repository is shared with another only when the upstream
    says that repository has the blob too; the bytes are then linked into it as well."""
    size = 16 * MiB
    data = random.Random(31).randbytes(size)
    digest = upstream.push_blob("team/join-a", data)
    assert upstream.push_blob("team/join-b", data) == digest
    del data
    # Its own edgecache: the module's idle timeout (1 s) would abandon the stalled download.
    config = f'[upstreams.{UPSTREAM}]\nurl = "{proxy.url}"\nidle_timeout = 60.0\n'
    with EdgecacheServer(tmp_path / "cache", config_text=config) as server:
        admin = {"Authorization": f"Bearer {server.admin_token}"}

        def misses() -> int:
            with server.client() as client:
                return int(
                    client.get("/_edgecache/admin/status", headers=admin).json()["proxy_misses"]
                )

        start = proxy.bytes_to_client
        first = BackgroundPull(server, "team/join-a", digest)
        wait_for(lambda: proxy.bytes_to_client - start > MiB, timeout=30, interval=0, what="1 MiB")
        proxy.stall(open_only=True)  # the download holds mid-body; new connections flow
        with server.client(timeout=FAST) as client:
            other = client.get(f"/v2/{UPSTREAM}/team/join-c/blobs/{digest}")
        assert other.status_code == 404, other.text
        assert other.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        joined_before = misses()
        second = BackgroundPull(server, "team/join-b", digest)
        wait_for(lambda: misses() > joined_before, timeout=FAST, what="team/join-b to join")
        assert proxy.holding == 1  # the download was still in flight all along
        proxy.release()
        assert first.finish() == (size, digest)
        assert second.finish() == (size, digest)
        requests = proxy.requests
        with server.client() as client:
            again = client.get(f"/v2/{UPSTREAM}/team/join-b/blobs/{digest}")
            assert again.status_code == 200 and len(again.content) == size
            fetches = metric(client, "edgecache_upstream_blob_fetches_total", LABEL)
        assert proxy.requests == requests  # linked when published: not even a HEAD upstream
        assert fetches == 1


def test_upstream_gone_cached_images_still_pull_uncached_fail_fast(
    cache: EdgecacheServer,
    upstream: RunningUpstream,
    proxy: FaultProxy,
    cached_images: list[Image],
    tmp_path: Path,
) -> None:
    """Last in the module: the upstream never comes back."""
    warm = push_layers(upstream, "team/offline", "v1", random_layers(31, [MiB, 512 * 1024]))
    skopeo_pull(cache, "team/offline:v1", tmp_path / "warm")
    uncached = push_layers(upstream, "team/never-pulled", "v1", random_layers(32, [4096]))
    images = [*cached_images, warm]

    proxy.refuse()
    proxy.reset_all()  # pooled keep-alive connections die too
    for i, image in enumerate(images):
        by_tag = skopeo_pull(cache, f"{image.repo}:{image.tag}", tmp_path / f"tag{i}")
        assert_layout_has(by_tag, image)
        by_digest = skopeo_pull(cache, f"{image.repo}@{image.digest}", tmp_path / f"dig{i}")
        assert_layout_has(by_digest, image)

    with cache.client(timeout=FAST) as client:
        stale_before = metric(client, "edgecache_stale_served_total", LABEL)
        response = get_manifest(client, warm.repo, warm.tag)
        assert response.status_code == 200
        assert response.content == warm.manifest
        assert "Stale" in response.headers.get("warning", ""), response.headers
        assert metric(client, "edgecache_stale_served_total", LABEL) > stale_before

        # Never cached: a clear OCI error, within the client timeout (FAST).
        for path in (
            f"/v2/{UPSTREAM}/{uncached.repo}/manifests/{uncached.tag}",
            f"/v2/{UPSTREAM}/{uncached.repo}/manifests/{uncached.digest}",
            f"/v2/{UPSTREAM}/{uncached.repo}/blobs/{uncached.layers[0]}",
        ):
            response = client.get(path, headers={"Accept": OCI_MANIFEST})
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert response.json()["errors"][0]["code"] == "UNAVAILABLE", response.text

        # By now the circuit is open: uncached content fails at once, without even trying
        # to connect (the proxy sees no new connection).
        def circuit_open() -> bool:
            r = client.get(f"/v2/{UPSTREAM}/{uncached.repo}/manifests/{uncached.tag}")
            assert r.status_code == 503, r.text
            return "circuit open" in r.json()["errors"][0]["message"]

        wait_for(circuit_open, timeout=3 * FAST, what="the circuit breaker to open")
        connections = proxy.connections
        for _ in range(5):
            response = client.get(f"/v2/{UPSTREAM}/{uncached.repo}/blobs/{uncached.layers[0]}")
            assert response.status_code == 503
            assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert proxy.connections == connections
        # Cached content is still served while the circuit is open.
        response = get_manifest(client, warm.repo, warm.tag)
        assert response.status_code == 200 and response.content == warm.manifest
