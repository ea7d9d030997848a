"""A site of caches behind one rate-limited uplink: C clients over N nodes pull one cold image.

    .venv/bin/python benchmarks/site_pull.py [--clients 48] [--nodes 3] [--uplink-mbps 50]
        [--layers 8] [--layer-mib 128] [--rounds 2] [--targets peers,independent,registry]
        [--timeout 3600] [--workdir /tmp/edgecache-bench] [--json FILE] [--record [FILE]]

Upstream: a plain docker-registry holding one image of random-byte layers (default 8 x 128 MiB
= 1 GiB). The uplink is a relay (tests/faultproxy.FaultProxy, no fault armed, `limit_rate`)
between the caches and the upstream that caps the bytes it carries from the upstream at
--uplink-mbps MB/s (10^6 bytes/s; one token bucket for all its connections: the N nodes of a
target share it, as at an edge site) and counts them. Requests pass unlimited. A fresh relay
and fresh (cold) caches for every measurement:
- "edgecache peers": N edgecache nodes configured as one site (`[peers] members` = the N
  nodes on fixed loopback ports, `self`, one shared `secret_file`; `[upstreams.up] url` = the
  relay): a miss asks the blob's owner (rendezvous hashing, edgecache/peers/ring.py) first;
- "edgecache independent": the same N nodes without [peers];
- "registry proxies": N docker-registry pull-through caches (`proxy: remoteurl` = the relay).

C clients (one process and one keep-alive connection each, client i on node i mod N, all
released together) each GET the manifest by tag, then every blob (layers in order, then the
config), each sha256-verified (_pull.full_pull). Reported per target: pulls completed, wall
time (first client start -> last client done: every client holds the image), its ratio to
the registry proxies' and to the independent edgecaches' wall in the same round (median,
min-max of the per-round ratios), uplink bytes / image (relay counter, read once the uplink
was quiet for 1 s) and the uplink's mean rate over the wall and between its first and last
byte (near the cap: the uplink was the bottleneck), bytes fetched between nodes / image
(edgecache_upstream_bytes_total{upstream="peer ..."} summed over the nodes), and the nodes'
CPU seconds. Issue target: peers <= 0.4x the registry proxies' wall, <= 1.02x image bytes on
the uplink (checked in a note under the table).

The clients are not free: C clients verify C images with sha256 (~1.1 GB/s per core on the
2-core VM of RESULTS.md), on the same cores as the nodes. With the defaults there, the peers'
wall is the CPU's (53-88 s for 48 x 1 GiB, the uplink at 12-20 MB/s while busy), not the
uplink's ~21 s; the two uplink MB/s columns show which one limited a run (near the cap: the
uplink). --clients 12, or a slower --uplink-mbps, keeps the uplink the bottleneck there.

Each measurement's node logs are kept (copied once the nodes stopped) under
<workdir>/site_pull-<start>-logs/r<round>-<target>/; the lines at warning level or above they
wrote while measured are listed under the table. Every process started (nodes, upstream,
relay threads, clients) is stopped on the way out, on an error, Ctrl-C or SIGTERM too.

Duration: a docker-registry 2.8.2 proxy fetches a blob from the upstream once per concurrent
request (a request that finds the blob in flight streams it from the upstream too), so the
registry proxies' uplink carries about (clients + nodes) images (measured: 15.0x for 12
clients on 3 nodes; cold_stampede's 16 clients on one: 16.75x); with the defaults ~51 x 1 GiB
at 50 MB/s, ~18 min per measurement, against ~0.5 and ~1.5 min for the edgecache targets.
--targets peers,independent leaves them out.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h
import _pull as p

from tests.faultproxy import FaultProxy  # _pull put the repository root on the path

REPO = "bench/site"
TAG = "latest"
PEERS, INDEPENDENT, REGISTRY = "edgecache peers", "edgecache independent", "registry proxies"
SECRET = b"site-pull-bench-secret-0123456789"
# Lines of a node log that are worth a look (edgecache: "WARNING"/"ERROR" level names;
# docker-registry: level=warning/error; either: a Python traceback).
NOTABLE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|level=(warning|error|fatal|panic)|Traceback")


class Node(c.Edgecache):
    """An edgecache on a fixed loopback port: the other members list its URL before it starts."""

    def __init__(self, data: Path, port: int, config: str) -> None:
        super().__init__(data, config=config)
        self.listen_port = port

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        any_port = f"{c.LOOPBACK}:0"
        if any_port not in argv:
            raise RuntimeError(f"Node: no {any_port} to replace in {argv}")
        argv = [f"{c.LOOPBACK}:{self.listen_port}" if x == any_port else x for x in argv]
        super()._spawn(argv, log, env)


class Nodes(c.Proc):
    """The N processes of one target, started in order and stopped (each by its pid) together;
    a start that fails half-way still stops the ones that started."""

    name = "nodes"

    def __init__(self, nodes: list[c.Proc]) -> None:
        super().__init__()
        self.nodes = nodes

    def start(self) -> Nodes:
        for n in self.nodes:
            n.start()
        self.port, self.url = self.nodes[0].port, self.nodes[0].url
        return self

    @property
    def pid(self) -> int:
        return self.nodes[0].pid

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes)

    def check(self) -> None:
        for n in self.nodes:
            n.check()

    def stop(self) -> None:
        for n in reversed(self.nodes):
            with contextlib.suppress(Exception):
                n.stop()

    def logs(self) -> list[Path]:
        return [n.log for n in self.nodes if n.log is not None]


def site_target(n: int) -> h.Target:
    def make(d: Path, up: str | None) -> c.Proc:
        assert up is not None
        d.mkdir(parents=True, exist_ok=True)
        secret = d / "peer-secret"
        secret.write_bytes(SECRET + b"\n")
        os.chmod(secret, 0o600)
        ports = [c.free_port() for _ in range(n)]
        members = [f"http://{c.LOOPBACK}:{port}" for port in ports]
        listed = ", ".join(json.dumps(m) for m in members)
        nodes: list[c.Proc] = []
        for i, port in enumerate(ports):
            config = p.edgecache_config(up) + (
                f"\n[peers]\nmembers = [{listed}]\nself = {json.dumps(members[i])}\n"
                f"secret_file = {json.dumps(str(secret))}\n"
            )
            nodes.append(Node(d / f"node{i}", port, config))
        return Nodes(nodes)

    return h.Target(PEERS, make, kind="edgecache", prefix=f"{p.UP_NAME}/")


def independent_target(n: int) -> h.Target:
    def make(d: Path, up: str | None) -> c.Proc:
        assert up is not None
        return Nodes([c.Edgecache(d / f"node{i}", p.edgecache_config(up)) for i in range(n)])

    return h.Target(INDEPENDENT, make, kind="edgecache", prefix=f"{p.UP_NAME}/")


def registry_target(n: int) -> h.Target:
    def make(d: Path, up: str | None) -> c.Proc:
        return Nodes([c.Registry(d / f"node{i}", proxy_remote=up) for i in range(n)])

    return h.Target(REGISTRY, make, kind="registry")


# ------------------------------------------------------------------------ edgecache state


def admin_status(node: c.Proc) -> dict[str, Any]:
    assert isinstance(node, c.Edgecache)
    token = (node.data / "run" / "admin-token").read_text().strip()
    req = urllib.request.Request(
        f"{node.url.rstrip('/')}/_edgecache/admin/status",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return dict(json.loads(r.read()))


def upstream_bytes(node: c.Proc) -> dict[str, float]:
    """edgecache_upstream_bytes_total by upstream label ("up", "peer http://...")."""
    text = urllib.request.urlopen(f"{node.url.rstrip('/')}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'^edgecache_upstream_bytes_total\{upstream="([^"]*)"\} (\S+)$', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def wait_site_up(nodes: list[c.Proc]) -> None:
    """Every node sees every other member up (circuit closed) before the clients start."""

    def all_up() -> bool:
        for n in nodes:
            rows = admin_status(n).get("peers") or []
            if len(rows) != len(nodes) or any(r["state"] not in ("self", "up") for r in rows):
                return False
        return True

    c.wait_for(all_up, 30, "every member of the site up on every node")


# ----------------------------------------------------------------------------- measuring


def save_logs(site: Nodes | None, dest: Path, since: dict[Path, int]) -> dict[str, list[str]]:
    """Copy the node logs to `dest`; the notable lines each wrote after its offset in `since`
    (the measurement's start: not the start-up), at most 20 per node."""
    found: dict[str, list[str]] = {}
    if site is None:
        return found
    dest.mkdir(parents=True, exist_ok=True)
    for i, log in enumerate(site.logs()):
        with contextlib.suppress(OSError):
            shutil.copyfile(log, dest / f"node{i}.log")
            with open(log, "rb") as f:
                f.seek(since.get(log, 0))
                text = f.read().decode(errors="replace")
            lines = [x for x in text.splitlines() if NOTABLE.search(x)]
            if lines:
                found[f"node{i}"] = [f"({len(lines)} lines)", *lines[:20]]
    return found


def measure(
    t: h.Target,
    upstream: c.Proc,
    img: c.Image,
    clients: int,
    rate: float,
    workdir: Path,
    logdir: Path,
    timeout: float,
) -> dict[str, Any]:
    """One cold pull by `clients` clients spread over the nodes of a fresh `t`, behind a
    fresh relay of `rate` bytes/s to `upstream`."""
    relay = FaultProxy(c.LOOPBACK, upstream.port).start()
    relay.limit_rate(rate)
    since: dict[Path, int] = {}
    out: dict[str, Any] = {}
    try:
        site = t.start(workdir, relay.url)
        assert isinstance(site, Nodes)
        nodes = site.nodes
        if t.name == PEERS:
            wait_site_up(nodes)
        since = {log: log.stat().st_size for log in site.logs()}
        cpu0 = sum(c.cpu_seconds(n.pid) for n in nodes)
        args = [
            (nodes[i % len(nodes)].port, t.repo(REPO), TAG, img.manifest_digest)
            for i in range(clients)
        ]
        t0 = time.monotonic()
        errors: list[str] = []
        try:
            res = c.run_clients_results(p.full_pull, args, timeout)
        except queue.Empty:
            res = []
            errors.append(f"timed out after {timeout:.0f} s")
        wall_all = time.monotonic() - t0
        ok = [r for r in res if r[0] == "ok"]
        errors[:0] = [r[3] for r in res if r[0] != "ok"]
        wall = max(r[2] for r in ok) - min(r[1] for r in ok) if ok else float("nan")
        p.settle(relay)
        out = {
            "ok": len(ok),
            "errors": errors[:3],
            "wall": wall,
            "wall_incl_failures": wall_all,
            "ttfb": [r[3]["ttfb"] for r in ok],
            "uplink_bytes": relay.bytes_to_client,
            "uplink_connections": relay.connections,
            "uplink_busy": relay.last_byte_at - relay.first_byte_at,
            "server_cpu": sum(c.cpu_seconds(n.pid) for n in nodes) - cpu0,
        }
        if t.kind == "edgecache":
            per_node = [upstream_bytes(n) for n in nodes]
            out["node_uplink_bytes"] = [m.get(p.UP_NAME, 0.0) for m in per_node]
            out["peer_bytes"] = sum(
                v for m in per_node for k, v in m.items() if k.startswith("peer ")
            )
            if t.name == PEERS:
                out["peer_status"] = [admin_status(n).get("peers") for n in nodes]
    finally:
        t.stop()
        relay.close()
        notable = save_logs(t.proc if isinstance(t.proc, Nodes) else None, logdir, since)
        shutil.rmtree(workdir, ignore_errors=True)
    out["log_notable"] = notable
    if notable:
        c.log(f"  notable node log lines ({logdir}): {json.dumps(notable)[:3000]}")
    return out


def main() -> int:
    b = h.Bench("site_pull", __doc__, rounds=2)
    b.ap.add_argument("--clients", type=int, default=48, help="clients, spread over the nodes")
    b.ap.add_argument("--nodes", type=int, default=3, help="nodes of each target")
    b.ap.add_argument(
        "--uplink-mbps",
        type=float,
        default=50.0,
        help="uplink cap in MB/s (10^6 bytes per second), shared by a target's nodes",
    )
    b.ap.add_argument("--layers", type=int, default=8)
    b.ap.add_argument("--layer-mib", type=int, default=128)
    b.ap.add_argument("--targets", default="peers,independent,registry")
    b.ap.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    a = b.parse()
    try:
        targets_by_kind = {
            "peers": site_target,
            "independent": independent_target,
            "registry": registry_target,
        }
        targets = [targets_by_kind[k](a.nodes) for k in a.targets.split(",")]
    except KeyError as e:
        raise SystemExit(f"--targets: unknown target {e} (peers, independent, registry)") from None
    # SIGTERM ends the run like Ctrl-C: every process started is stopped (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rate = a.uplink_mbps * 1e6
    img = c.build_image(a.workdir / f"layout-{a.layers}x{a.layer_mib}", a.layers, a.layer_mib)
    size = p.image_bytes(img)
    logs = a.workdir / f"{b.run_dir.name}-logs"
    with b:
        for t in targets:
            b.own(t)
        upstream = b.own(c.Registry(b.run_dir / "upstream").start())
        c.push_image(upstream.port, REPO, img, TAG)
        for rnd, n, t in b.schedule(targets, [a.clients]):
            slug = "".join(ch if ch.isalnum() else "-" for ch in t.name)
            v = measure(
                t, upstream, img, n, rate, b.run_dir / f"m{rnd}", logs / f"r{rnd}-{slug}", a.timeout
            )
            b.record(t.name, rnd, n, **v)
            peer = f", between nodes {v['peer_bytes'] / size:.2f}x" if "peer_bytes" in v else ""
            c.log(
                f"  ok {v['ok']}/{n} wall {v['wall']:.2f} s, uplink "
                f"{v['uplink_bytes'] / size:.3f}x image ({v['uplink_bytes'] / v['wall'] / 1e6:.1f}"
                f" MB/s over the wall, {v['uplink_connections']} connections){peer}, "
                f"node cpu {v['server_cpu']:.1f} s"
                + (f", errors {v['errors']}" if v["errors"] else "")
            )

    def per_image(x: float) -> str:
        return f"{x / size:.2f}"

    def peer_col(g: h.Group) -> str:
        vals = [r["peer_bytes"] / size for r in g.recs if "peer_bytes" in r]
        return " / ".join(f"{x:.2f}" for x in vals) if vals else "-"

    def uplink_rate(header: str, span: str) -> h.Column:
        def fn(g: h.Group) -> str:
            return f"{c.median(r['uplink_bytes'] / r[span] / 1e6 for r in g.recs):.1f}"

        return header, fn

    table = b.table(
        [
            *p.leading_columns("ok pulls"),
            h.per_round("wall s per round", "wall", p.fmt_s),
            h.median_col("median wall s", "wall", p.fmt_s),
            h.ratio_col(f"wall ratio to {REGISTRY} (median, min-max)", "wall"),
            b.ratio_to(f"wall ratio to {INDEPENDENT}", "wall", INDEPENDENT),
            h.per_round("uplink bytes / image per round", "uplink_bytes", per_image),
            uplink_rate("uplink MB/s over the wall", "wall"),
            uplink_rate("uplink MB/s first-last byte", "uplink_busy"),
            ("bytes between nodes / image", peer_col),
            h.median_col("nodes' CPU s", "server_cpu", "{:.1f}"),
        ],
        baseline=REGISTRY,
    )
    header = b.header(
        f"image: {a.layers} x {a.layer_mib} MiB random layers + config + manifest = {size} "
        f"bytes; {a.nodes} nodes per target, {a.clients} clients (client i on node i mod "
        f"{a.nodes}); uplink: one relay per measurement capped at {a.uplink_mbps:g} MB/s for "
        "all the nodes of the target; fresh caches per measurement"
    )
    notes = [
        f"# round {v['round']} {v['target']}: {v['level'] - v['ok']} pulls failed, e.g. "
        f"{v['errors'][0]}"
        for v in b.records
        if v["errors"]
    ]
    for v in b.records:
        for node, lines in v["log_notable"].items():
            notes.append(
                f"# round {v['round']} {v['target']} {node} log: {lines[0]} at warning or "
                f"above while measured, first: {lines[1][:200]}"
            )
    peers = [g for g in b.groups(REGISTRY) if g.name == PEERS]
    if peers:
        g = peers[0]
        up = max(g.vals("uplink_bytes")) / size
        verdict = f"# issue target: {PEERS} uplink bytes <= 1.02x image: max {up:.3f}x"
        verdict += " (met)" if up <= 1.02 else " (NOT met)"
        rs = g.ratios("wall")
        if rs:
            verdict += f"; wall <= 0.40x of {REGISTRY}: median {c.median(rs):.2f}x"
            verdict += " (met)" if c.median(rs) <= 0.40 else " (NOT met)"
        notes.append(verdict)
    notes.append(f"# node logs of every measurement: {logs}")
    b.report(header, [table, *notes], image_bytes=size, uplink_rate=rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
