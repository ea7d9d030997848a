"""Site warm-up: a preheat puts one cold image on a 3-node site through a rate-limited uplink,
against the same image pulled cold by the first client on each node, in the same run.

    .venv/bin/python benchmarks/site_warmup.py [--nodes 3] [--uplink-mbps 50] [--layers 8]
        [--layer-mib 128] [--rounds 3] [--targets preheat,peers,independent]
        [--timeout 1800] [--workdir /tmp/edgecache-bench] [--json FILE] [--record [FILE]]

The set-up is site_pull.py's (its helpers are imported, not copied): a plain docker-registry
upstream holding one image of random-byte layers (default 8 x 128 MiB = 1 GiB), reached
through a relay (tests/faultproxy.FaultProxy, `limit_rate`: one token bucket of --uplink-mbps
MB/s, 10^6 bytes/s, for all the nodes of a target) that counts the bytes the upstream sent. A
fresh relay and fresh cold nodes for every measurement. Targets:
- "preheat": N edgecache nodes as one site (`[peers]`, site_pull.site_target). The clock
  starts at `POST /_edgecache/admin/preheat/run` on node 0 with `{"images": ["up/<repo>:<tag>"]}`
  (provider "site": node 0 fetches every blob, each through its owner node) and stops when
  `GET .../preheat/jobs/<id>` shows a final state ("preheat s"; polled every 50 ms). Then one
  client per node pulls the full image (manifest by tag, every blob, sha256-verified:
  _pull.full_pull), all released together: "rollout s" = first client start -> last client
  done, the 6 am rollout on a preheated site;
- "cold (peers)": the same site, no preheat: the first client on each node pulls at once
  (N clients, one per node): "rollout s" = the cold pull's wall;
- "cold (independent)": N nodes without [peers], each fetching over the uplink (optional:
  --targets preheat,peers leaves it out).

Reported per target: preheat s (and the job's state), rollout s, preheat + rollout s, the
per-round ratios to cold (peers) in the same round (median, min-max): rollout (what an
operator cares about) and preheat s / cold wall; uplink bytes / image (relay counter; for
preheat, what the job took and the total once the clients were done and the uplink quiet for
1 s), the uplink's rate between its first and last byte (near the cap: the uplink limited),
bytes fetched between nodes / image, the nodes' CPU seconds and the load average at each
measurement's start and end. The clients of the preheat target start 0.3 s after the job
ended (run_clients_results connects them first): preheat + rollout leaves that gap out.

The code measured is frozen for the run: unless $BENCH_EDGECACHE_SRC names a snapshot
already, the work tree's edgecache/ is copied at start (with its uncommitted edits; no git
call) and every node runs that copy (the harness's snapshot mechanism), so edits made to the
tree during a run do not reach its later measurements.

Node logs of every measurement are kept under <workdir>/site_warmup-<start>-logs/; lines at
warning level or above written while measured are listed under the table. Every process
started (nodes, upstream, relay threads, clients) is stopped on the way out, on an error,
Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
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

# Private helpers of site_pull (Nodes, the targets, the admin / metrics readers, the log
# scan) are used as they are: one site set-up for both benchmarks.
import site_pull as sp

from tests.faultproxy import FaultProxy  # _pull put the repository root on the path

PREHEAT, COLD_PEERS, COLD_INDEP = "preheat", "cold (peers)", "cold (independent)"
FINAL_STATES = ("succeeded", "partial", "failed", "cancelled", "stopped")
NAN = float("nan")


def targets(kinds: str, n: int) -> list[h.Target]:
    """The targets of --targets, on site_pull's site / independent node sets, renamed."""
    make = {
        "preheat": (PREHEAT, sp.site_target),
        "peers": (COLD_PEERS, sp.site_target),
        "independent": (COLD_INDEP, sp.independent_target),
    }
    out = []
    for kind in kinds.split(","):
        if kind not in make:
            raise SystemExit(f"--targets: unknown target {kind!r} (preheat, peers, independent)")
        name, factory = make[kind]
        t = factory(n)
        t.name = name
        out.append(t)
    return out


def freeze_source(workdir: Path) -> str:
    """A copy of the work tree's edgecache/ for the nodes of this run ($BENCH_EDGECACHE_SRC);
    a line for the header naming it and the commit .git/HEAD points at (read, no git)."""
    if os.environ.get("BENCH_EDGECACHE_SRC"):
        return f"code under test: $BENCH_EDGECACHE_SRC = {os.environ['BENCH_EDGECACHE_SRC']}"
    dest = workdir / "src"
    shutil.copytree(
        c.REPO_ROOT / "edgecache", dest / "edgecache", ignore=shutil.ignore_patterns("__pycache__")
    )
    os.environ["BENCH_EDGECACHE_SRC"] = str(dest)
    head = "?"
    with contextlib.suppress(OSError):
        git = c.REPO_ROOT / ".git"
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.exists():
                head = ref_file.read_text().strip()
            else:
                for line in (git / "packed-refs").read_text().splitlines():
                    if line.endswith(" " + ref):
                        head = line.split()[0]
    return (
        f"code under test: a copy of {c.REPO_ROOT}/edgecache taken at start (HEAD "
        f"{head[:12]} plus any uncommitted edits), run by every node"
    )


# ----------------------------------------------------------------------------- preheat


def admin(node: c.Proc, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    assert isinstance(node, c.Edgecache)
    token = (node.data / "run" / "admin-token").read_text().strip()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{node.url.rstrip('/')}/_edgecache/admin/{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


def preheat(node: c.Proc, image: str, timeout: float) -> tuple[float, dict[str, Any]]:
    """POST preheat/run for `image` on `node`, poll the job until it is final: (seconds from
    the POST to seeing it final, the job record)."""
    t0 = time.monotonic()
    status, job = admin(node, "POST", "preheat/run", {"images": [image]})
    if status != 202:
        raise RuntimeError(f"preheat/run answered {status}: {job}")
    deadline = t0 + timeout
    while job.get("state") not in FINAL_STATES:
        if time.monotonic() > deadline:
            job["state"] = f"still {job.get('state')} after {timeout:.0f} s"
            break
        time.sleep(0.05)
        _, job = admin(node, "GET", f"preheat/jobs/{job['id']}")
    return time.monotonic() - t0, job


def job_summary(job: dict[str, Any]) -> str:
    """The job's state, and the errors of what failed."""
    errs = [
        f"{name}: {r.get('error') or r.get('state')}"
        for results in (job.get("results") or {}).values()
        for name, r in results.items()
        if r.get("state") not in ("done", "sent", "skipped")
    ]
    errs += [f"{i['image']}: {i['error']}" for i in job.get("images") or [] if i.get("error")]
    return str(job.get("state")) + (f" ({'; '.join(errs)[:300]})" if errs else "")


# ----------------------------------------------------------------------------- measuring


def measure(
    t: h.Target,
    upstream: c.Proc,
    img: c.Image,
    rate: float,
    workdir: Path,
    logdir: Path,
    timeout: float,
) -> dict[str, Any]:
    """One measurement on fresh cold nodes behind a fresh relay of `rate` bytes/s: for the
    preheat target the preheat job on node 0 then one client per node; for the others, one
    client per node at once."""
    relay = FaultProxy(c.LOOPBACK, upstream.port).start()
    relay.limit_rate(rate)
    since: dict[Path, int] = {}
    out: dict[str, Any] = {"load_start": c.loadavg()}
    try:
        site = t.start(workdir, relay.url)
        assert isinstance(site, sp.Nodes)
        nodes = site.nodes
        if t.name in (PREHEAT, COLD_PEERS):
            sp.wait_site_up(nodes)
        since = {log: log.stat().st_size for log in site.logs()}
        cpu0 = sum(c.cpu_seconds(n.pid) for n in nodes)
        errors: list[str] = []
        out |= {"preheat": NAN, "job_state": "-", "uplink_preheat": NAN, "uplink_busy_pre": NAN}
        if t.name == PREHEAT:
            out["preheat"], job = preheat(nodes[0], f"{t.repo(sp.REPO)}:{sp.TAG}", timeout)
            out["job_state"] = job_summary(job)
            out["job_bytes"] = job.get("bytes")
            out["job_seconds"] = (job.get("finished") or NAN) - (job.get("started") or NAN)
            out["uplink_preheat"] = relay.bytes_to_client
            out["uplink_busy_pre"] = relay.last_byte_at - relay.first_byte_at
            if job.get("state") != "succeeded":
                errors.append(f"preheat job {out['job_state']}")
        args = [(n.port, t.repo(sp.REPO), sp.TAG, img.manifest_digest) for n in nodes]
        try:
            res = c.run_clients_results(p.full_pull, args, timeout)
        except queue.Empty:
            res = []
            errors.append(f"clients timed out after {timeout:.0f} s")
        ok = [r for r in res if r[0] == "ok"]
        errors += [r[3] for r in res if r[0] != "ok"]
        p.settle(relay)
        rollout = max(r[2] for r in ok) - min(r[1] for r in ok) if ok else NAN
        pre = 0.0 if math.isnan(out["preheat"]) else out["preheat"]
        per_node = [sp.upstream_bytes(n) for n in nodes]
        out |= {
            "ok": len(ok),
            "errors": errors[:3],
            "rollout": rollout,
            "total": pre + rollout,
            "ttfb": [r[3]["ttfb"] for r in ok],
            "uplink_bytes": relay.bytes_to_client,
            "uplink_connections": relay.connections,
            "uplink_busy": relay.last_byte_at - relay.first_byte_at,
            "server_cpu": sum(c.cpu_seconds(n.pid) for n in nodes) - cpu0,
            "node_uplink_bytes": [m.get(p.UP_NAME, 0.0) for m in per_node],
            "peer_bytes": sum(v for m in per_node for k, v in m.items() if k.startswith("peer ")),
            "load_end": c.loadavg(),
        }
    finally:
        t.stop()
        relay.close()
        notable = sp.save_logs(t.proc if isinstance(t.proc, sp.Nodes) else None, logdir, since)
        shutil.rmtree(workdir, ignore_errors=True)
    out["log_notable"] = notable
    if notable:
        c.log(f"  notable node log lines ({logdir}): {json.dumps(notable)[:3000]}")
    return out


# -------------------------------------------------------------------------------- report


def per_round_or_dash(header: str, key: str, fmt: Any) -> h.Column:
    def fn(g: h.Group) -> str:
        vals = g.vals(key)
        return "-" if all(math.isnan(v) for v in vals) else " / ".join(fmt(v) for v in vals)

    return header, fn


def median_or_dash(header: str, key: str, fmt: Any) -> h.Column:
    def fn(g: h.Group) -> str:
        vals = [v for v in g.vals(key) if not math.isnan(v)]
        return fmt(c.median(vals)) if vals else "-"

    return header, fn


def cross_ratio(header: str, key: str, base_key: str) -> h.Column:
    """This target's `key` / the baseline's `base_key`, per round, median (min-max)."""

    def fn(g: h.Group) -> str:
        by_round = {r["round"]: r[base_key] for r in g.base}
        rs = [r[key] / by_round[r["round"]] for r in g.recs if r["round"] in by_round]
        return h.fmt_ratio(rs)

    return header, fn


def main() -> int:
    b = h.Bench("site_warmup", __doc__, rounds=3)
    b.ap.add_argument("--nodes", type=int, default=3, help="nodes of each target")
    b.ap.add_argument(
        "--uplink-mbps",
        type=float,
        default=50.0,
        help="uplink cap in MB/s (10^6 bytes per second), shared by a target's nodes",
    )
    b.ap.add_argument("--layers", type=int, default=8)
    b.ap.add_argument("--layer-mib", type=int, default=128)
    b.ap.add_argument("--targets", default="preheat,peers,independent")
    b.ap.add_argument("--timeout", type=float, default=1800, help="seconds per step")
    a = b.parse()
    ts = targets(a.targets, a.nodes)
    # SIGTERM ends the run like Ctrl-C: every process started is stopped (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rate = a.uplink_mbps * 1e6
    img = c.build_image(a.workdir / f"layout-{a.layers}x{a.layer_mib}", a.layers, a.layer_mib)
    size = p.image_bytes(img)
    logs = a.workdir / f"{b.run_dir.name}-logs"
    baseline = COLD_PEERS if any(t.name == COLD_PEERS for t in ts) else None
    with b:
        b.run_dir.mkdir(parents=True, exist_ok=True)
        source = freeze_source(b.run_dir)
        for t in ts:
            b.own(t)
        upstream = b.own(c.Registry(b.run_dir / "upstream").start())
        c.push_image(upstream.port, sp.REPO, img, sp.TAG)
        for rnd, n, t in b.schedule(ts, [a.nodes]):
            slug = "".join(ch if ch.isalnum() else "-" for ch in t.name)
            v = measure(
                t, upstream, img, rate, b.run_dir / f"m{rnd}", logs / f"r{rnd}-{slug}", a.timeout
            )
            b.record(t.name, rnd, n, **v)
            pre = ""
            if t.name == PREHEAT:
                pre = (
                    f"preheat {v['preheat']:.2f} s ({v['job_state']}, uplink "
                    f"{v['uplink_preheat'] / size:.3f}x image, "
                    f"{v['uplink_preheat'] / v['uplink_busy_pre'] / 1e6:.1f} MB/s first-last "
                    "byte), then "
                )
            c.log(
                f"  {pre}ok {v['ok']}/{n} rollout {v['rollout']:.2f} s, uplink "
                f"{v['uplink_bytes'] / size:.3f}x image, between nodes "
                f"{v['peer_bytes'] / size:.2f}x, node cpu {v['server_cpu']:.1f} s, load "
                f"{v['load_start']} -> {v['load_end']}"
                + (f", errors {v['errors']}" if v["errors"] else "")
            )

    def per_image(x: float) -> str:
        return "-" if math.isnan(x) else f"{x / size:.3f}"

    def uplink_rate(g: h.Group) -> str:
        # The preheat target's: while the job ran (the clients' manifest requests, after the
        # 0.3 s gap, would stretch the span of the whole measurement).
        if g.name == PREHEAT:
            bytes_key, span_key = "uplink_preheat", "uplink_busy_pre"
        else:
            bytes_key, span_key = "uplink_bytes", "uplink_busy"
        return f"{c.median(r[bytes_key] / r[span_key] / 1e6 for r in g.recs):.1f}"

    def load_col(g: h.Group) -> str:
        return " / ".join(
            f"{r['load_start'].split()[0]}-{r['load_end'].split()[0]}" for r in g.recs
        )

    cols: list[h.Column] = [
        *p.leading_columns("ok pulls"),
        ("preheat job", lambda g: " / ".join(g.vals("job_state"))),
        per_round_or_dash("preheat s per round", "preheat", p.fmt_s),
        median_or_dash("median preheat s", "preheat", p.fmt_s),
        h.per_round("rollout s per round", "rollout", p.fmt_s),
        h.median_col("median rollout s", "rollout", p.fmt_s),
    ]
    if baseline:
        cols += [
            h.ratio_col(f"rollout ratio to {COLD_PEERS} (median, min-max)", "rollout"),
            cross_ratio(f"preheat s / {COLD_PEERS} rollout s", "preheat", "rollout"),
            cross_ratio(f"preheat + rollout s / {COLD_PEERS} rollout s", "total", "rollout"),
        ]
    if any(t.name == COLD_INDEP for t in ts):
        cols.append(b.ratio_to(f"rollout ratio to {COLD_INDEP}", "rollout", COLD_INDEP))
    cols += [
        per_round_or_dash("uplink bytes / image by preheat", "uplink_preheat", per_image),
        h.per_round("uplink bytes / image in all", "uplink_bytes", per_image),
        ("uplink MB/s first-last byte (preheat: of the job)", uplink_rate),
        h.per_round("bytes between nodes / image", "peer_bytes", per_image),
        h.median_col("nodes' CPU s", "server_cpu", "{:.1f}"),
        ("load (1 min) start-end per round", load_col),
    ]
    table = b.table(cols, baseline=baseline)
    header = b.header(
        source,
        f"image: {a.layers} x {a.layer_mib} MiB random layers + config + manifest = {size} "
        f"bytes; {a.nodes} nodes per target, one client per node; uplink: one relay per "
        f"measurement capped at {a.uplink_mbps:g} MB/s for all the nodes of the target; fresh "
        "cold nodes per measurement; preheat: POST preheat/run on node 0, then the clients",
    )
    notes = [
        f"# round {v['round']} {v['target']}: {'; '.join(str(e) for e in v['errors'])[:300]}"
        for v in b.records
        if v["errors"]
    ]
    for v in b.records:
        for node, lines in v["log_notable"].items():
            notes.append(
                f"# round {v['round']} {v['target']} {node} log: {lines[0]} at warning or "
                f"above while measured, first: {lines[1][:200]}"
            )
    for v in b.records:
        up = v["uplink_bytes"] / size
        if up > 1.02 and v["target"] != COLD_INDEP:
            notes.append(f"# round {v['round']} {v['target']}: uplink {up:.3f}x image (> 1.02x)")
    notes.append(f"# node logs of every measurement: {logs}")
    b.report(header, [table, *notes], image_bytes=size, uplink_rate=rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
