"""Peers: three real edgecache processes (each an owner and a worker) as one site.

The upstream is a real docker-registry behind a byte-counting relay (tests/faultproxy.py); the
nodes share a secret file and list each other in [peers]. What is checked, all on loopback:
- one image pulled through every node crosses the uplink once (blob bytes <= 1.02x), every
  body verified, and every node ends holding every blob;
- a blob's miss goes to the node that owns it by rendezvous (peers/ring.py), not the uplink;
- a peer request with a bad, stale or unknown-member signature gets 401 and is logged, a
  signed write gets 403, and a node without [peers] ignores the header;
- loop guard: a peer's request for a blob a third node owns goes to the uplink, never on;
- the owner killed (kill -9) mid-stream: the client's download completes, verified, from the
  next candidate; a blackholed member and one answering 500 cost a bounded delay;
- 3 x 16 clients at once pull one uncached image: the uplink carries it about once;
- a rolling restart under load (clients falling through hosts as containerd does): no pull
  fails;
- members found by DNS (a private /etc/hosts per node), this node found among them;
- pushed content pulls from every node (relayed, stored only where it was pushed);
- uplink down: an image cached on one node pulls from every node; probes see members go
  and come back; a real containerd, configured by the real `mirror-config --peers`, pulls
  through one node and falls through to the next when it is down.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from edgecache.peers import ring, sign
from edgecache.peers import site as site_module
from tests.faultproxy import FaultProxy
from tests.integration.test_mirror_config_ctr import served
from tests.integration.test_proxy import metric
from tests.integration.test_proxy_faults import Image, push_layers
from tests.support import (
    LOOPBACK,
    Containerd,
    EdgecacheServer,
    admin,
    default_edgecache_argv,
    free_port,
    in_ci,
    make_image,
    oci_manifest,
    push_blob,
    require_tool,
    wait_for,
)
from tests.upstreams import OCI_MANIFEST, RunningUpstream, start_registry

MiB = 1 << 20
UPSTREAM = "lab"
SECRET = b"site-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        yield registry


@pytest.fixture
def relay(upstream: RunningUpstream) -> Iterator[FaultProxy]:
    host, _, port = upstream.host.rpartition(":")
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


def site_config(
    relay: FaultProxy, members: list[str], me: str, secret_file: Path, extra: str = ""
) -> str:
    listed = ", ".join(f'"{m}"' for m in members)
    return (
        f'[upstreams.{UPSTREAM}]\nurl = "{relay.url}"\nretries = 1\n\n'
        f'[peers]\nmembers = [{listed}]\nself = "{me}"\nsecret_file = "{secret_file}"\n' + extra
    )


def make_site(
    tmp_path: Path, relay: FaultProxy, n: int = 3, extra: str = ""
) -> list[EdgecacheServer]:
    """n nodes of one site (not started), each knowing all n."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    secret_file = tmp_path / "peer-secret"
    secret_file.write_bytes(SECRET + b"\n")
    os.chmod(secret_file, 0o600)
    ports = [free_port() for _ in range(n)]
    members = [f"http://{LOOPBACK}:{port}" for port in ports]
    return [
        EdgecacheServer(
            tmp_path / f"node{i}",
            config_text=site_config(relay, members, members[i], secret_file, extra),
            listen=f"{LOOPBACK}:{ports[i]}",
        )
        for i in range(n)
    ]


@contextmanager
def running(nodes: list[EdgecacheServer]) -> Iterator[list[EdgecacheServer]]:
    """Stop (by pid) whichever of `nodes` were started, however the block ends."""
    try:
        yield nodes
    finally:
        for node in reversed(nodes):
            if node.proc is not None:
                node.__exit__(None, None, None)


@pytest.fixture
def site(tmp_path: Path, relay: FaultProxy) -> Iterator[list[EdgecacheServer]]:
    with running(make_site(tmp_path, relay)) as nodes:
        for node in nodes:
            node.start()
        yield nodes


def image(upstream: RunningUpstream, name: str, layers: int = 3, size: int = 4 * MiB) -> Image:
    seed = hashlib.sha256(name.encode()).digest()
    return push_layers(
        upstream,
        name,
        "v1",
        [hashlib.sha256(seed + bytes([i])).digest() * (size // 32) for i in range(layers)],
    )


def pull(node: EdgecacheServer, img: Image) -> None:
    """The manifest by tag and every blob, each body checked against its digest."""
    with httpx.Client(base_url=node.url, timeout=60) as client:
        response = client.get(
            f"/v2/{UPSTREAM}/{img.repo}/manifests/{img.tag}", headers={"Accept": OCI_MANIFEST}
        )
        assert response.status_code == 200, response.text
        for digest, size in img.blobs.items():
            response = client.get(f"/v2/{UPSTREAM}/{img.repo}/blobs/{digest}")
            assert response.status_code == 200, response.text
            assert len(response.content) == size
            assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest


def assert_stale_tag(node: EdgecacheServer, repo: str, tag: str, img: Image) -> None:
    """`repo:tag` through `node` is `img`'s manifest, answered with the stale warning."""
    with httpx.Client(base_url=node.url, timeout=60) as client:
        got = client.get(f"/v2/{UPSTREAM}/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert got.status_code == 200, got.text
    assert got.headers["docker-content-digest"] == img.digest
    assert got.content == img.manifest
    assert "Response is Stale" in got.headers["warning"]


def peer_bytes(node: EdgecacheServer, peer: EdgecacheServer) -> float:
    """Blob bytes `node` fetched from `peer` (its upstream_bytes counter for that peer)."""
    with httpx.Client(base_url=node.url) as client:
        return metric(client, "edgecache_upstream_bytes_total", f'{{upstream="peer {peer.url}"}}')


def uplink_bytes(node: EdgecacheServer) -> float:
    with httpx.Client(base_url=node.url) as client:
        return metric(client, "edgecache_upstream_bytes_total", f'{{upstream="{UPSTREAM}"}}')


def test_an_image_crosses_the_uplink_once_for_the_whole_site(
    site: list[EdgecacheServer], upstream: RunningUpstream, relay: FaultProxy
) -> None:
    img = image(upstream, "site/once")
    blob_bytes = sum(img.blobs.values())
    for node in site:
        pull(node, img)
    # Manifests are revalidated by each node asked (three small GETs); blobs cross once.
    sent = relay.bytes_to_client
    assert blob_bytes <= sent <= 1.02 * blob_bytes + 3 * 64 * 1024, (sent, blob_bytes)
    assert sum(uplink_bytes(node) for node in site) == blob_bytes
    # Every node holds every blob: the uplink is not asked again, whichever node is asked.
    before = relay.bytes_to_client
    for node in site:
        pull(node, img)
    assert relay.bytes_to_client - before < 3 * 64 * 1024
    for node in site:
        with httpx.Client(base_url=node.url) as client:
            for digest in img.blobs:
                head = client.head(f"/v2/{UPSTREAM}/{img.repo}/blobs/{digest}")
                assert head.status_code == 200


def test_a_preheat_on_one_node_warms_the_whole_site(
    site: list[EdgecacheServer], upstream: RunningUpstream, relay: FaultProxy
) -> None:
    """Preheat's site provider: the node's fetches go through the blobs' owners, so every
    blob ends up on its owner too, and a pull through any other node costs the uplink no blob
    bytes."""
    img = image(upstream, "site/preheated")
    blob_bytes = sum(img.blobs.values())
    first = site[0]
    with httpx.Client(base_url=first.url, timeout=60) as client:
        started = client.post(
            "/_edgecache/admin/preheat/run",
            json={"images": [f"{UPSTREAM}/{img.repo}:{img.tag}"]},
            headers={"Authorization": f"Bearer {first.admin_token}"},
        )
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]

        def ended() -> dict[str, object] | None:
            record = client.get(
                f"/_edgecache/admin/preheat/jobs/{job_id}",
                headers={"Authorization": f"Bearer {first.admin_token}"},
            ).json()
            return record if record["state"] not in ("queued", "running") else None

        job = wait_for(ended, timeout=60, what="the preheat job to end")
    assert job["state"] == "succeeded", job
    assert sum(uplink_bytes(node) for node in site) == blob_bytes
    before = relay.bytes_to_client
    for node in site[1:]:
        pull(node, img)
    # Two manifest revalidations, no blob bytes.
    assert relay.bytes_to_client - before < 2 * 64 * 1024
    assert sum(uplink_bytes(node) for node in site) == blob_bytes


def test_a_capped_preheat_caps_the_owners_uplink_fetch_too(
    site: list[EdgecacheServer], upstream: RunningUpstream, relay: FaultProxy
) -> None:
    """The blob's owner is another node: it downloads from the uplink for the preheating
    node, at the policy's cap too (the cap travels with the peer request), not at full speed."""
    img = image(upstream, "site/capped", layers=1, size=24 * MiB)
    layer = max(img.blobs, key=lambda d: img.blobs[d])
    owner = ring.order([n.url for n in site], layer)[0]
    node = next(n for n in site if n.url != owner)
    token = {"Authorization": f"Bearer {node.admin_token}"}
    policy = {"name": "capped", "repositories": [f"{UPSTREAM}/**"],
              "watch": [f"{UPSTREAM}/{img.repo}:{img.tag}"], "bandwidth": "6MB"}  # fmt: skip
    with httpx.Client(base_url=node.url, timeout=60) as client:
        assert client.put("/_edgecache/admin/preheat/policies/capped", json=policy,
                          headers=token).status_code == 200  # fmt: skip
    done = node.cli("preheat", "--data", str(node.data), "run", "capped", "--follow", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    # 24 MiB at 6 MB/s after a one-second burst, less what the sockets' buffers (a few MB)
    # take early: the uplink's bytes took more than a second (a lower bound; uncapped, the
    # owner reads them over loopback in about a tenth of that).
    assert relay.last_byte_at - relay.first_byte_at >= 1.0
    assert sum(uplink_bytes(n) for n in site) == sum(img.blobs.values())


def test_a_miss_asks_the_owner(site: list[EdgecacheServer], upstream: RunningUpstream) -> None:
    img = image(upstream, "site/owner", layers=4, size=2 * MiB)
    members = {node.url: node for node in site}
    asked = site[0]
    for digest, size in img.blobs.items():
        owners = ring.order(members, digest)
        with httpx.Client(base_url=asked.url, timeout=60) as client:
            response = client.get(f"/v2/{UPSTREAM}/{img.repo}/blobs/{digest}")
            assert response.status_code == 200
            assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
        owner = members[owners[0]]
        if owner is asked:
            continue
        # The asked node got the bytes from the owner, which got them from the uplink.
        assert peer_bytes(asked, owner) >= size
        assert uplink_bytes(owner) >= size
    # Status (admin API and the CLI) and /metrics say who is who and what went where.
    status = admin(asked, "GET", "status")
    rows = {row["member"]: row for row in status["peers"]}
    assert set(rows) == set(members)
    assert rows[asked.url]["state"] == "self"
    for url, node in members.items():
        if node is asked:
            continue
        assert rows[url]["state"] == "up"
        assert rows[url]["fetched_from"] == peer_bytes(asked, node)
        # The owners answered the asked node's requests, and count what they sent it.
        served = admin(node, "GET", "status")
        served_rows = {row["member"]: row for row in served["peers"]}
        assert served_rows[asked.url]["served_to"] >= rows[url]["fetched_from"]
    assert status["uplink_bytes"] == uplink_bytes(asked)
    printed = asked.cli("status", "--data", str(asked.data), check=True).stdout
    assert "peers" in printed and all(url in printed for url in members)
    with httpx.Client(base_url=asked.url) as client:
        for url, node in members.items():
            if node is not asked:
                assert metric(client, "edgecache_peer_up", f'{{peer="{url}"}}') == 1.0


def signed_get(node: EdgecacheServer, path: str, value: str) -> httpx.Response:
    with httpx.Client(base_url=node.url, timeout=30) as client:
        return client.get(path, headers={sign.HEADER: value})


def test_bad_signatures_are_refused_and_logged(
    site: list[EdgecacheServer], upstream: RunningUpstream
) -> None:
    img = image(upstream, "site/auth", layers=1, size=MiB)
    node, other = site[0], site[1]
    digest = img.layers[0]
    path = f"/v2/{UPSTREAM}/{img.repo}/blobs/{digest}"
    cases = {
        "wrong secret": sign.sign(b"another-secret-0123456789", other.url, "GET", path),
        "stale": sign.sign(SECRET, other.url, "GET", path, now=lambda: 1_000_000_000.0),
        "not a member": sign.sign(SECRET, "http://127.0.0.9:1", "GET", path),
        "another path": sign.sign(SECRET, other.url, "GET", path + "x"),
        "malformed": "v1 nonsense",
    }
    for why, value in cases.items():
        response = signed_get(node, path, value)
        assert response.status_code == 401, why
        assert response.json()["errors"][0]["code"] == "UNAUTHORIZED", why
    assert node.log_text().count("peer request refused") >= len(cases)
    assert SECRET.decode() not in node.log_text()
    # Nothing was fetched for them.
    assert uplink_bytes(node) == 0
    # A correctly signed read works; a signed write is refused.
    good = signed_get(node, path, sign.sign(SECRET, other.url, "GET", path))
    assert good.status_code == 200
    assert "sha256:" + hashlib.sha256(good.content).hexdigest() == digest
    # A node asking itself (listed under a second name) is answered at once, not served.
    itself = signed_get(node, path, sign.sign(SECRET, node.url, "GET", path))
    assert itself.status_code == 403
    upload = f"/v2/{UPSTREAM}/{img.repo}/blobs/uploads/"
    with httpx.Client(base_url=node.url) as client:
        response = client.post(
            upload, headers={sign.HEADER: sign.sign(SECRET, other.url, "POST", upload)}
        )
    assert response.status_code == 403


def test_a_peer_request_is_never_forwarded(
    site: list[EdgecacheServer], upstream: RunningUpstream
) -> None:
    img = image(upstream, "site/loop", layers=6, size=MiB)
    members = {node.url: node for node in site}
    # A blob the lowest-ranked node is asked for by a peer: it has members above it, and
    # would ask them for its own client; for a peer it asks the uplink only.
    for digest in img.layers:
        order = ring.order(members, digest)
        low, sender = members[order[-1]], members[order[0]]
        path = f"/v2/{UPSTREAM}/{img.repo}/blobs/{digest}"
        response = signed_get(low, path, sign.sign(SECRET, sender.url, "GET", path))
        assert response.status_code == 200
        assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
        for node in site:
            if node is not low:
                assert peer_bytes(low, node) == 0
    assert sum(uplink_bytes(node) for node in site) == sum(img.blobs[d] for d in img.layers)


def test_without_peers_the_header_means_nothing(tmp_path: Path, upstream: RunningUpstream) -> None:
    img = image(upstream, "site/alone", layers=1, size=MiB)
    config = f'[upstreams.{UPSTREAM}]\nurl = "{upstream.url}"\n'
    with EdgecacheServer(tmp_path / "alone", config_text=config) as node:
        path = f"/v2/{UPSTREAM}/{img.repo}/blobs/{img.layers[0]}"
        response = signed_get(node, path, "v1 forged 0 0")
        assert response.status_code == 200
        assert "peer request" not in node.log_text()


def test_the_owner_killed_mid_stream_costs_the_client_nothing(
    site: list[EdgecacheServer], upstream: RunningUpstream, relay: FaultProxy
) -> None:
    img = image(upstream, "site/killed", layers=1, size=16 * MiB)
    digest, size = img.layers[0], img.blobs[img.layers[0]]
    members = {node.url: node for node in site}
    ranked = [members[url] for url in ring.order(members, digest)]
    owner, asked = ranked[0], ranked[-1]  # the asked node has the owner above it
    # The owner's uplink transfer is held a quarter of the way in: the asked node then holds
    # what the owner streamed it, and waits for the rest.
    relay.hold_after(size // 4, count=1)
    result: dict[str, object] = {}

    def client() -> None:
        with httpx.Client(base_url=asked.url, timeout=60) as c:
            response = c.get(f"/v2/{UPSTREAM}/{img.repo}/blobs/{digest}")
            result["status"] = response.status_code
            result["digest"] = "sha256:" + hashlib.sha256(response.content).hexdigest()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: relay.holding == 1, timeout=30, what="the owner's uplink to be held")
        wait_for(lambda: peer_bytes(asked, owner) > 0, timeout=30, what="bytes from the owner")
        owner.kill9()
    finally:
        relay.release()
        thread.join(timeout=90)
    assert result == {"status": 200, "digest": digest}
    # The rest came from the next candidate or the uplink, resumed at the byte reached: the
    # uplink carried the blob at most once more than ideal (the owner's lost transfer).
    assert relay.bytes_to_client <= 2 * size + 64 * 1024
    assert "failed at byte" in asked.log_text()


class _Answer500(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_blackholed_peer_and_a_failing_peer_cost_a_bounded_delay(
    tmp_path: Path, upstream: RunningUpstream, relay: FaultProxy
) -> None:
    """Two members that never serve: one accepts connections and never answers, one answers
    500. Pulls through a real node complete, each blob's answer starts within the budget
    (the peer idle timeout, not the client's), and the blackholed member is skipped once its
    circuit opened (at most FAILURES timeouts, plus a trial after the cooldown)."""
    img = image(upstream, "site/blackhole", layers=8, size=MiB)
    blackhole = socket.socket()
    blackhole.bind((LOOPBACK, 0))
    blackhole.listen(64)  # never accepted: connections complete, nothing ever answers
    failing = ThreadingHTTPServer((LOOPBACK, 0), _Answer500)
    threading.Thread(target=failing.serve_forever, args=(0.05,), daemon=True).start()
    secret_file = tmp_path / "peer-secret"
    secret_file.write_bytes(SECRET)
    port = free_port()
    me = f"http://{LOOPBACK}:{port}"
    dead = f"http://{LOOPBACK}:{blackhole.getsockname()[1]}"
    members = [me, dead, f"http://{LOOPBACK}:{failing.server_address[1]}"]
    config = site_config(relay, members, me, secret_file)
    try:
        with EdgecacheServer(
            tmp_path / "node", config_text=config, listen=f"{LOOPBACK}:{port}"
        ) as node:
            slowest = 0.0
            with httpx.Client(base_url=node.url, timeout=60) as client:
                for digest, size in img.blobs.items():
                    started = time.monotonic()
                    with client.stream("GET", f"/v2/{UPSTREAM}/{img.repo}/blobs/{digest}") as r:
                        slowest = max(slowest, time.monotonic() - started)
                        assert r.status_code == 200
                        body = r.read()
                    assert len(body) == size
                    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
            assert slowest < site_module.IDLE_TIMEOUT + 10, slowest
            timeouts = node.log_text().count(f"peer {dead} failed")
            asked_dead = sum(1 for d in img.blobs if dead in ring.above(members, me, d))
            assert 1 <= timeouts <= site_module.FAILURES + 1, (timeouts, asked_dead)
    finally:
        failing.shutdown()
        failing.server_close()
        blackhole.close()


def test_with_the_uplink_down_an_image_cached_on_one_node_pulls_from_every_node(
    tmp_path: Path, upstream: RunningUpstream, relay: FaultProxy
) -> None:
    """Site-wide stale: node B pulled the image alone (A and C were down), then the uplink
    went down and A and C came up. Through A and C the image pulls by tag and by digest,
    each manifest and blob from B, verified, the tag answered with the stale warning."""
    img = image(upstream, "site/offline", layers=3, size=2 * MiB)
    a, b, c = make_site(tmp_path, relay)
    with running([a, b, c]):
        b.start()
        pull(b, img)
        relay.refuse()
        a.start()
        c.start()
        for node in (a, c):
            pull(node, img)  # by tag, then every blob by digest (all checked)
            assert_stale_tag(node, img.repo, img.tag, img)
            with httpx.Client(base_url=node.url, timeout=60) as client:
                by_digest = client.get(
                    f"/v2/{UPSTREAM}/{img.repo}/manifests/{img.digest}",
                    headers={"Accept": OCI_MANIFEST},
                )
                assert by_digest.status_code == 200 and by_digest.content == img.manifest
                head = client.head(
                    f"/v2/{UPSTREAM}/{img.repo}/manifests/{img.tag}",
                    headers={"Accept": OCI_MANIFEST},
                )
                assert head.status_code == 200
        # What is not cached anywhere still fails, with a precise 503, not a hang.
        with httpx.Client(base_url=a.url, timeout=60) as client:
            missing = client.get(f"/v2/{UPSTREAM}/{img.repo}/manifests/v2")
            assert missing.status_code == 503
            assert missing.json()["errors"][0]["code"] == "UNAVAILABLE"


def test_probes_see_members_go_down_and_come_back(tmp_path: Path, relay: FaultProxy) -> None:
    """With no request at all, a member that is not running is marked down (skipped) by the
    probes, and up again once it answers."""
    a, b = make_site(tmp_path, relay, n=2, extra="probe_interval = 0.2\n")
    with running([a, b]):
        a.start()

        url = f"http://{b.listen}"  # its member URL (b.url is known once it runs)

        def state() -> str:
            return {r["member"]: r["state"] for r in admin(a, "GET", "status")["peers"]}[url]

        def up() -> float:
            with httpx.Client(base_url=a.url) as client:
                return metric(client, "edgecache_peer_up", f'{{peer="{url}"}}')

        wait_for(lambda: state() == "open", timeout=30, what="the probes to mark b down")
        assert up() == 0.0
        b.start()
        wait_for(lambda: state() == "up", timeout=30, what="the probes to mark b up")
        assert up() == 1.0
        assert f"peer {url} is down" in a.log_text()
        assert f"peer {url} is up" in a.log_text()


def test_containerd_pulls_through_one_node_and_falls_through_to_the_next(
    tmp_path: Path, upstream: RunningUpstream, relay: FaultProxy
) -> None:
    """A real containerd, configured by `edgecache mirror-config containerd --peers` (the
    real CLI): node A first, then the other members. It pulls through A while the blobs A
    lacks come from their owners; with A stopped, a fresh containerd falls through to B
    (not to the upstream, its fallback), which has the blobs it or C owns: only those that
    A alone held (A owned them) cross the uplink again."""
    require_tool("containerd")
    require_tool("ctr")
    ref = make_image(tmp_path / "img", [3 * MiB, 2 * MiB, 1 * MiB, 300 * 1024], seed=77)
    upstream.push_image(ref, "team/app:v1")
    name = f"{relay.host}/team/app:v1"  # the host containerd sends as ns: the uplink's
    a, b, c = make_site(tmp_path / "site", relay)
    with running([a, b, c]):
        for node in (a, b, c):
            node.start()
        assert a.config_path is not None
        hosts = tmp_path / "certs.d"
        result = a.cli(
            "mirror-config", "containerd", "--url", a.url, "--peers",
            "--config", str(a.config_path), "--write", str(hosts),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        listed = (hosts / f"127.0.0.1_{relay.port}_" / "hosts.toml").read_text()
        assert listed.index(a.url) < listed.index(b.url) and c.url in listed

        def pull_with_fresh_containerd() -> None:
            with (
                tempfile.TemporaryDirectory(prefix="ec-peer-ctr-") as base,
                Containerd(base) as daemon,
            ):
                daemon.ctr(
                        "images", "pull", "--hosts-dir", str(hosts), "--snapshotter",
                        "native", name, timeout=120,
                    )  # fmt: skip

        pull_with_fresh_containerd()
        uplink_after_first = relay.bytes_to_client
        assert peer_bytes(a, b) + peer_bytes(a, c) > 0  # blobs owned by others came from them
        a.stop()
        with httpx.Client(base_url=b.url) as client:
            before = served(client, "blob")
        pull_with_fresh_containerd()  # through B (A refuses connections)
        with httpx.Client(base_url=b.url) as client:
            assert served(client, "blob") - before >= 3  # B answered (config and layers)
        members = {f"http://{n.listen}": n for n in (a, b, c)}
        layout = Path(ref.split(":")[1]) / "blobs" / "sha256"
        only_on_a = sum(
            blob.stat().st_size
            for blob in layout.iterdir()
            if members[ring.order(members, f"sha256:{blob.name}")[0]] is a
        )
        assert relay.bytes_to_client - uplink_after_first <= only_on_a + 64 * 1024


def test_pushed_content_pulls_from_every_node_and_stays_where_it_was_pushed(
    tmp_path: Path, relay: FaultProxy
) -> None:
    a, b = make_site(tmp_path, relay, n=2, extra="\n[auth]\nanonymous_push = true\n")
    with running([a, b]):
        a.start()
        b.start()
        layer = os.urandom(3 * MiB + 5)
        config_blob = b'{"architecture":"amd64","os":"linux"}'
        manifest = oci_manifest(config_blob, [layer])
        with httpx.Client(base_url=a.url, timeout=60) as client:
            layer_digest = push_blob(client, "team/app", layer)
            push_blob(client, "team/app", config_blob)
            put = client.put(
                "/v2/team/app/manifests/v1",
                content=manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert put.status_code == 201, put.text
        manifest_digest = put.headers["docker-content-digest"]
        with httpx.Client(base_url=b.url, timeout=60) as client:
            for ref in ("v1", manifest_digest):
                got = client.get(f"/v2/team/app/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
                assert got.status_code == 200, got.text
                assert got.content == manifest
                assert got.headers["docker-content-digest"] == manifest_digest
            blob = client.get(f"/v2/team/app/blobs/{layer_digest}")
            assert blob.status_code == 200 and blob.content == layer
            head = client.head(f"/v2/team/app/blobs/{layer_digest}")
            assert head.status_code == 200
            assert head.headers["content-length"] == str(len(layer))
            # What no member has is still a precise 404.
            missing = client.get("/v2/team/app/manifests/v2")
            assert missing.status_code == 404
            assert missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            # Another repository does not see it (the cross-repository rule holds via peers).
            other = client.get(f"/v2/team/other/blobs/{layer_digest}")
            assert other.status_code == 404
        # B relayed, stored nothing: the copy stays where it was pushed.
        assert "team/app" not in admin(b, "GET", "status")["bytes_by_repository"]
        # A peer's request is answered from the node's own store, never relayed on.
        path = f"/v2/team/app/blobs/{layer_digest}"
        signed = signed_get(b, path, sign.sign(SECRET, f"http://{a.listen}", "GET", path))
        assert signed.status_code == 404


def test_members_found_by_dns(tmp_path: Path, upstream: RunningUpstream, relay: FaultProxy) -> None:
    """[peers] dns: three nodes on 127.0.0.2-4, one port, no members listed and no self: each
    runs in a mount namespace of its own whose /etc/hosts gives the name all three addresses
    (as a headless Service's DNS would), finds the others and itself, and the site works."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        message = "needs root and unshare(1) for a private /etc/hosts"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"127.0.0.{i} ecpeers.test\n" for i in (2, 3, 4)))
    secret_file = tmp_path / "peer-secret"
    secret_file.write_bytes(SECRET)
    config = (
        f'[upstreams.{UPSTREAM}]\nurl = "{relay.url}"\nretries = 1\n\n'
        f'[peers]\ndns = "ecpeers.test:{port}"\nsecret_file = "{secret_file}"\n'
        "probe_interval = 0.5\n"
    )
    in_namespace = [unshare, "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"']
    nodes = [
        EdgecacheServer(
            tmp_path / f"node{i}",
            argv=[*in_namespace, str(hosts), *default_edgecache_argv()],
            config_text=config,
            listen=f"127.0.0.{i}:{port}",
        )
        for i in (2, 3, 4)
    ]
    img = image(upstream, "site/dns", layers=4, size=MiB)
    with running(nodes):
        for node in nodes:
            node.start()
        urls = {f"http://127.0.0.{i}:{port}" for i in (2, 3, 4)}

        def members_up(node: EdgecacheServer) -> set[str]:
            rows = admin(node, "GET", "status")["peers"]
            return {row["member"] for row in rows if row["state"] in ("self", "up")}

        # Found by DNS, and up (the first probes of members still starting failed).
        for node in nodes:
            wait_for(lambda n=node: members_up(n) == urls, timeout=30, what="DNS members up")
            assert "peers: this node is http://" + node.listen in node.log_text()
        pull(nodes[0], img)
        blob_bytes = sum(img.blobs.values())
        assert sum(uplink_bytes(node) for node in nodes) == blob_bytes
        fetched = sum(peer_bytes(nodes[0], other) for other in nodes[1:])
        owned_elsewhere = sum(
            size
            for digest, size in img.blobs.items()
            if ring.order(urls, digest)[0] != f"http://{nodes[0].listen}"
        )
        assert fetched == owned_elsewhere


def test_three_nodes_sixteen_clients_each_one_uncached_image(
    site: list[EdgecacheServer], upstream: RunningUpstream, relay: FaultProxy
) -> None:
    """3 x 16 clients pull one uncached image at once, 16 through each node: the uplink
    carries it about once (<= 1.02 of its blob bytes), every body verifies, and every node
    ends holding every blob."""
    img = image(upstream, "site/stampede", layers=4, size=8 * MiB)
    barrier = threading.Barrier(48)
    failures: list[str] = []

    def client(node: EdgecacheServer) -> None:
        try:
            barrier.wait(timeout=60)
            pull(node, img)
        except Exception as exc:  # reported below with the others
            failures.append(f"{node.url}: {exc!r}")

    threads = [threading.Thread(target=client, args=(node,)) for node in site for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert failures == []
    blob_bytes = sum(img.blobs.values())
    assert sum(uplink_bytes(node) for node in site) <= 1.02 * blob_bytes
    assert relay.bytes_to_client <= 1.02 * blob_bytes + 3 * 64 * 1024
    for node in site:
        stored = admin(node, "GET", "status")["bytes_by_repository"]
        assert stored[f"{UPSTREAM}/{img.repo}"] >= blob_bytes


def pull_through_any(hosts: list[str], img: Image) -> None:
    """One pull as containerd does with several hosts: each request goes to the first host
    that answers it (a refused or broken connection, or a 5xx, moves to the next)."""

    def fetch(path: str) -> bytes:
        errors = []
        for host in hosts:
            try:
                with httpx.Client(base_url=host, timeout=30) as client:
                    response = client.get(path, headers={"Accept": OCI_MANIFEST})
                if response.status_code < 500:
                    assert response.status_code == 200, (host, path, response.text)
                    return response.content
                errors.append(f"{host}: {response.status_code}")
            except httpx.TransportError as exc:
                errors.append(f"{host}: {exc!r}")
        raise AssertionError(f"every host failed {path}: {errors}")

    manifest = fetch(f"/v2/{UPSTREAM}/{img.repo}/manifests/{img.tag}")
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == img.digest
    for digest in img.blobs:
        body = fetch(f"/v2/{UPSTREAM}/{img.repo}/blobs/{digest}")
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest


def test_a_rolling_restart_under_load_fails_no_pull(
    site: list[EdgecacheServer], upstream: RunningUpstream
) -> None:
    """Each node is restarted in turn (SIGTERM, which drains it, then start) while 9 clients
    pull continuously, each through its own node first and the others after it: no pull
    fails, every body verifies."""
    images = [image(upstream, f"site/rolling{i}", layers=3, size=MiB) for i in range(3)]
    urls = [node.url for node in site]
    stop = threading.Event()
    pulls: list[int] = []
    failures: list[str] = []

    def client(first: int, img: Image) -> None:
        hosts = urls[first:] + urls[:first]
        while not stop.is_set():
            try:
                pull_through_any(hosts, img)
                pulls.append(1)
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i % 3, images[i // 3])) for i in range(9)]
    for thread in threads:
        thread.start()
    try:
        for node in [*site, None]:
            done = len(pulls)
            wait_for(lambda d=done: len(pulls) >= d + 9, timeout=60, what="9 more pulls")
            if node is not None:
                node.stop()
                node.restart()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert failures == []
    assert len(pulls) >= 36


def test_with_the_uplink_down_a_tag_another_node_saw_move_is_answered_as_it_saw_it(
    tmp_path: Path, upstream: RunningUpstream, relay: FaultProxy
) -> None:
    """A and B cached app:v1; the tag moved upstream and only B pulled it since; then the
    uplink went down. A, unable to revalidate, asks the members how long ago they confirmed
    the tag: B's is more recent and names the new digest, which A answers (marked stale),
    where alone it would have answered the old one."""
    old = image(upstream, "site/moved", layers=1, size=MiB)
    a, b = make_site(tmp_path, relay, n=2)
    with running([a, b]):
        a.start()
        b.start()
        pull(a, old)
        pull(b, old)
        new = push_layers(upstream, old.repo, old.tag, [os.urandom(MiB)])
        assert new.digest != old.digest
        pull(b, new)  # B confirms the move (tag_ttl 0: every pull revalidates)
        relay.refuse()
        assert_stale_tag(a, old.repo, old.tag, new)
        # And its blobs pull from B, the uplink still down.
        pull(a, new)


def test_an_uplink_that_drops_mid_body_is_resumed_not_refetched_through_a_member(
    site: list[EdgecacheServer], upstream: RunningUpstream, relay: FaultProxy
) -> None:
    """The owner's uplink transfer is cut mid-body: the owner resumes it from the uplink with
    Range (as a single node does), rather than asking a member, which would fetch the whole
    blob over the uplink again."""
    img = image(upstream, "site/dropped", layers=1, size=16 * MiB)
    digest, size = img.layers[0], img.blobs[img.layers[0]]
    members = {node.url: node for node in site}
    owner = members[ring.order(members, digest)[0]]
    relay.cut_after(size // 3, count=1)
    with httpx.Client(base_url=owner.url, timeout=60) as client:
        response = client.get(f"/v2/{UPSTREAM}/{img.repo}/blobs/{digest}")
    assert response.status_code == 200
    assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
    assert relay.cuts == 1
    assert relay.bytes_to_client <= size + 64 * 1024
    assert sum(uplink_bytes(node) for node in site) == size
