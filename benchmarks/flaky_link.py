"""Flaky uplink: a cold pull through a fault-injecting proxy, edgecache vs docker-registry proxy.

    .venv/bin/python benchmarks/flaky_link.py [--clients 1,16] [--rounds 2] [--layers 4]
        [--layer-mib 64] [--cut-min-mib 8] [--cut-max-mib 32] [--n503 3] [--attempts 3]
        [--workdir /tmp/edgecache-bench] [--json FILE]

Same set-up as cold_stampede.py (plain docker-registry upstream with one image of random-byte
layers, a fresh cache per measurement, each cache behind its own tests/faultproxy.FaultProxy),
but the proxy is armed before the pull:
- `cut_after(random_offsets(seed, 8 MiB, 32 MiB))`: every upstream connection is reset (RST)
  after a random number of response bytes in [8, 32] MiB, so a 64 MiB layer can never come
  down in one connection; the seed is the same for both caches in a round;
- `fail_with_503(3)`: the first 3 upstream requests are answered 503 (Retry-After: 0).

Clients behave like a real puller: a failed GET (error status, connection closed mid-body,
digest mismatch) is retried from the start on a new connection, up to --attempts times per
document; a pull that still fails is counted as failed. Reported: completed pulls, wall time,
client-side retries, upstream bytes / image size (FaultProxy byte counter, after the upstream
went quiet for 1 s), upstream connections cut.
"""

from __future__ import annotations

import argparse
import datetime
import json
import queue
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _pull as p

REPO = "bench/flaky"
TAG = "latest"
MiB = c.MiB


def measure(
    target: str,
    clients: int,
    upstream: c.Registry,
    img: c.Image,
    base: Path,
    a: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    fp = p.FaultProxy(c.LOOPBACK, upstream.port).start()
    srv: c.Proc
    try:
        if target == "edgecache":
            srv = c.Edgecache(base / "ec", config=p.edgecache_config(fp.url)).start()
            prefix = f"{p.UP_NAME}/{REPO}"
        else:
            srv = c.Registry(base / "reg", proxy_remote=fp.url).start()
            prefix = REPO
        try:
            fp.fail_with_503(a.n503)
            fp.cut_after(p.random_offsets(seed, a.cut_min_mib * MiB, a.cut_max_mib * MiB))
            cpu0 = c.cpu_seconds(srv.pid)
            t0 = time.monotonic()
            timed_out = False
            try:
                res = c.run_clients_results(
                    p.full_pull,
                    [(srv.port, prefix, TAG, img.manifest_digest, a.attempts)] * clients,
                    a.timeout,
                )
            except queue.Empty:
                timed_out = True
                res = []
            ok = [r for r in res if r[0] == "ok"]
            errors = [r[3] for r in res if r[0] != "ok"]
            if timed_out:
                errors.append(f"timed out after {a.timeout:.0f} s")
            wall = max(r[2] for r in ok) - min(r[1] for r in ok) if ok else float("nan")
            fail_wall = time.monotonic() - t0
            p.settle(fp)
            out: dict[str, Any] = {
                "target": target,
                "clients": clients,
                "ok": len(ok),
                "errors": errors[:3],
                "wall": wall,
                "wall_incl_failures": fail_wall,
                "client_retries": sum(r[3]["retries"] for r in ok),
                "upstream_bytes": fp.bytes_to_client,
                "upstream_requests": fp.requests,
                "upstream_connections": fp.connections,
                "cuts": fp.cuts,
                "failed_503": fp.failed_requests,
                "server_cpu": c.cpu_seconds(srv.pid) - cpu0,
            }
            if target == "edgecache":
                m = p.metrics(srv.port)
                out["ec_upstream_bytes"] = m.get("edgecache_upstream_bytes_total")
                out["ec_blob_fetches"] = m.get("edgecache_upstream_blob_fetches_total")
            return out
        finally:
            srv.stop()
    finally:
        fp.close()
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer-mib", type=int, default=64)
    ap.add_argument("--cut-min-mib", type=int, default=8)
    ap.add_argument("--cut-max-mib", type=int, default=32)
    ap.add_argument("--n503", type=int, default=3)
    ap.add_argument("--attempts", type=int, default=3)
    ap.add_argument("--targets", default="edgecache,registry")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgecache-bench"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    counts = [int(x) for x in a.clients.split(",")]
    targets = a.targets.split(",")
    a.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = a.workdir / f"flaky-{int(time.time())}"
    img = c.build_image(a.workdir / f"layout-{a.layers}x{a.layer_mib}", a.layers, a.layer_mib)
    size = p.image_bytes(img)
    load0 = c.loadavg()
    started = datetime.datetime.now()
    results: list[dict[str, Any]] = []
    upstream = c.Registry(run_dir / "upstream").start()
    try:
        c.push_image(upstream.port, REPO, img, TAG)
        for r in range(a.rounds):
            for n in counts:
                order = targets if r % 2 == 0 else targets[::-1]
                for t in order:
                    c.log(f"round {r + 1}: {t}, {n} clients (load {c.loadavg()}) ...")
                    v = measure(t, n, upstream, img, run_dir / f"{t}-{n}-{r}", a, 1000 + r)
                    v["round"] = r + 1
                    results.append(v)
                    c.log(
                        f"  ok {v['ok']}/{n} wall {v['wall']:.2f} s "
                        f"(incl. failures {v['wall_incl_failures']:.1f} s), client retries "
                        f"{v['client_retries']}, upstream {v['upstream_bytes'] / size:.3f}x image, "
                        f"{v['upstream_requests']} requests, {v['cuts']} cuts, "
                        f"{v['failed_503']} x 503"
                        + (f", errors {v['errors']}" if v["errors"] else "")
                    )
    finally:
        upstream.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps({"image_bytes": size, "results": results}, indent=1))

    rows = []
    for n in counts:
        for t in targets:
            vals = [v for v in results if v["target"] == t and v["clients"] == n]
            rows.append(
                [
                    n,
                    t,
                    f"{sum(v['ok'] for v in vals)}/{n * len(vals)}",
                    " / ".join(p.fmt_s(v["wall"]) for v in vals),
                    " / ".join(p.fmt_s(v["wall_incl_failures"]) for v in vals),
                    " / ".join(str(v["client_retries"]) for v in vals),
                    " / ".join(f"{v['upstream_bytes'] / size:.2f}" for v in vals),
                    " / ".join(str(v["cuts"]) for v in vals),
                    " / ".join(str(v["upstream_requests"]) for v in vals),
                ]
            )
    print()
    print(f"# flaky_link  {started.isoformat(timespec='seconds')}")
    print(f"# {c.machine()}")
    print(f"# edgecache: {c.edgecache_source()}")
    print(
        f"# image: {a.layers} x {a.layer_mib} MiB random layers = {size} bytes; every upstream "
        f"connection cut after {a.cut_min_mib}-{a.cut_max_mib} MiB (seeded), first {a.n503} "
        f"upstream requests 503; client attempts per document: {a.attempts}; {a.rounds} rounds "
        f"interleaved; load average at start: {load0}, at end: {c.loadavg()}"
    )
    print(
        c.table(
            [
                "clients",
                "target",
                "completed pulls",
                "wall s (completed) per round",
                "s until all clients done",
                "client retries",
                "upstream bytes / image",
                "upstream cuts",
                "upstream requests",
            ],
            rows,
        )
    )
    for v in results:
        if v["errors"]:
            print(
                f"# round {v['round']} {v['target']} {v['clients']} clients: "
                f"{v['clients'] - v['ok']} failed, e.g. {v['errors'][0]}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
