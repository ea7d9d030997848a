"""Cold-cache stampede: C concurrent full pulls of one uncached image, edgecache vs registry.

    .venv/bin/python benchmarks/cold_stampede.py [--clients 1,16,64] [--rounds 2]
        [--layers 4] [--layer-mib 64] [--workdir /tmp/edgecache-bench] [--json FILE]

Upstream: a plain docker-registry holding one image of random-byte layers (default 4 x 64 MiB).
Each cache reaches it through its own FaultProxy (tests/faultproxy.py, no fault armed) whose
byte counter is the "bytes pulled from upstream". Each measurement starts a fresh cache: a new
edgecache (new data dir, `[upstreams.up] url = <proxy>`, pulled at /v2/up/<repo>/...) or a new
`docker-registry` with `proxy: remoteurl: <proxy>` and an empty storage dir (pulled at
/v2/<repo>/...). So every pull is cold, in every round.

C clients (one process + one keep-alive connection each, started together) each GET the
manifest by tag, then every blob by digest (layers in order, then config), sha256-verified.
Reported: wall time (first client start -> last client end), upstream bytes / image size
(after the upstream went quiet for 1 s, so background fetches count), upstream requests, and
time to first byte of the first layer per client (from that client's start) as p50/p99.
Rounds interleave the targets (order alternates per round); medians over rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _pull as p

REPO = "bench/stampede"
TAG = "latest"


def measure(
    target: str, clients: int, upstream: c.Registry, img: c.Image, base: Path, timeout: float
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
            cpu0 = c.cpu_seconds(srv.pid)
            res = c.run_clients_results(
                p.full_pull,
                [(srv.port, prefix, TAG, img.manifest_digest)] * clients,
                timeout,
            )
            ok = [r for r in res if r[0] == "ok"]
            errors = [r[3] for r in res if r[0] != "ok"]
            wall = max(r[2] for r in ok) - min(r[1] for r in ok) if ok else float("nan")
            p.settle(fp)
            cpu = c.cpu_seconds(srv.pid) - cpu0
            out: dict[str, Any] = {
                "target": target,
                "clients": clients,
                "ok": len(ok),
                "errors": errors[:3],
                "wall": wall,
                "upstream_bytes": fp.bytes_to_client,
                "upstream_requests": fp.requests,
                "upstream_connections": fp.connections,
                "ttfb": [r[3]["ttfb"] for r in ok],
                "server_cpu": cpu,
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


def profile(
    clients: int, seconds: int, upstream: c.Registry, img: c.Image, base: Path, suffix: str = ""
) -> str:
    """py-spy (raw stacks, 200 Hz, --nonblocking) of edgecache during a cold `clients` pull."""
    fp = p.FaultProxy(c.LOOPBACK, upstream.port).start()
    srv = c.Edgecache(base / "ec", config=p.edgecache_config(fp.url)).start()
    stem = Path(__file__).resolve().parent / f"profile-cold-{clients}{suffix}"
    raw = stem.with_suffix(".collapsed")
    try:
        spy = subprocess.Popen(
            [
                str(c.VENV_BIN / "py-spy"), "record", "--nonblocking", "-r", "200",
                "--pid", str(srv.pid), "--duration", str(seconds), "-f", "raw", "-o", str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        res = c.run_clients_results(
            p.full_pull, [(srv.port, f"{p.UP_NAME}/{REPO}", TAG, img.manifest_digest)] * clients
        )
        spy.wait(seconds + 60)
        walls = max(r[2] for r in res) - min(r[1] for r in res)
    finally:
        srv.stop()
        fp.close()
        shutil.rmtree(base, ignore_errors=True)
    summary = c.summarize_collapsed(raw)
    stem.with_suffix(".txt").write_text(summary)
    return f"py-spy of a cold {clients}-client pull ({walls:.1f} s): {raw.name}\n{summary}"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer-mib", type=int, default=64)
    ap.add_argument("--targets", default="edgecache,registry")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgecache-bench"))
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--profile", type=int, metavar="C", help="only py-spy edgecache during a cold C-client pull"
    )
    ap.add_argument("--profile-seconds", type=int, default=15)
    ap.add_argument(
        "--profile-suffix", default="", help="profile files profile-cold-C<SUFFIX>.{collapsed,txt}"
    )
    a = ap.parse_args()
    counts = [int(x) for x in a.clients.split(",")]
    targets = a.targets.split(",")
    a.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = a.workdir / f"stampede-{int(time.time())}"
    img = c.build_image(a.workdir / f"layout-{a.layers}x{a.layer_mib}", a.layers, a.layer_mib)
    size = p.image_bytes(img)
    load0 = c.loadavg()
    started = datetime.datetime.now()
    results: list[dict[str, Any]] = []
    upstream = c.Registry(run_dir / "upstream").start()
    try:
        c.push_image(upstream.port, REPO, img, TAG)
        if a.profile:
            print(
                profile(
                    a.profile,
                    a.profile_seconds,
                    upstream,
                    img,
                    run_dir / "profile",
                    a.profile_suffix,
                )
            )
            return 0
        for r in range(a.rounds):
            for n in counts:
                order = targets if r % 2 == 0 else targets[::-1]
                for t in order:
                    c.log(f"round {r + 1}: {t}, {n} clients (load {c.loadavg()}) ...")
                    v = measure(t, n, upstream, img, run_dir / f"{t}-{n}-{r}", a.timeout)
                    v["round"] = r + 1
                    results.append(v)
                    c.log(
                        f"  ok {v['ok']}/{n} wall {v['wall']:.2f} s, upstream "
                        f"{v['upstream_bytes'] / size:.3f}x image in {v['upstream_requests']} "
                        f"requests, ttfb p50 {p.quantile(v['ttfb'], 0.5):.3f} s p99 "
                        f"{p.quantile(v['ttfb'], 0.99):.3f} s, cpu {v['server_cpu']:.1f} s"
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
            regs = [v for v in results if v["target"] == "registry" and v["clients"] == n]
            walls = [v["wall"] for v in vals]
            ratio = (
                c.median(v["wall"] / b["wall"] for v, b in zip(vals, regs, strict=False))
                if regs and all(v["ok"] for v in vals + regs)
                else float("nan")
            )
            rows.append(
                [
                    n,
                    t,
                    f"{sum(v['ok'] for v in vals)}/{n * len(vals)}",
                    " / ".join(p.fmt_s(w) for w in walls),
                    p.fmt_s(c.median(walls)),
                    "-" if ratio != ratio else f"{ratio:.2f}x",
                    " / ".join(f"{v['upstream_bytes'] / size:.2f}" for v in vals),
                    f"{c.median(v['upstream_requests'] for v in vals):.0f}",
                    f"{c.median(p.quantile(v['ttfb'], 0.5) for v in vals):.3f}",
                    f"{c.median(p.quantile(v['ttfb'], 0.99) for v in vals):.3f}",
                    f"{c.median(v['server_cpu'] for v in vals):.1f}",
                ]
            )
    print()
    print(f"# cold_stampede  {started.isoformat(timespec='seconds')}")
    print(f"# {c.machine()}")
    print(f"# edgecache: {c.edgecache_source()}")
    print(
        f"# image: {a.layers} x {a.layer_mib} MiB random layers + config + manifest = "
        f"{size} bytes; "
        f"{a.rounds} rounds interleaved, fresh cache per measurement; "
        f"load average at start: {load0}, at end: {c.loadavg()}"
    )
    print(
        c.table(
            [
                "clients",
                "target",
                "ok pulls",
                "wall s per round",
                "median wall s",
                "wall ratio to registry",
                "upstream bytes / image per round",
                "upstream requests",
                "TTFB p50 s",
                "TTFB p99 s",
                "server CPU s",
            ],
            rows,
        )
    )
    errs = [v for v in results if v["errors"]]
    for v in errs:
        print(f"# round {v['round']} {v['target']} {v['clients']} clients errors: {v['errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
