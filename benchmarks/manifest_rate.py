"""Small-request rate: GET manifest by tag, 64 connections (wrk), edgecache vs docker-registry.

    .venv/bin/python benchmarks/manifest_rate.py [--duration 10] [--connections 64]
        [--threads 2] [--rounds 3] [--workdir /tmp/edgecache-bench]

A small image (2 layers of 1 MiB) is pushed with raw HTTP into both servers; then
`wrk -c64 -t2 -d10s -H "Accept: <oci manifest>" URL/v2/<repo>/manifests/latest` runs against
each, rounds interleaved (edgecache, registry, edgecache, ...). The same edgecache's /healthz
is measured too, as the framework's floor (hypercorn + trio + app dispatch, no store lookup,
no file). Every response must be 2xx
(wrk's "Non-2xx" line is checked). Ratio = median over rounds of edgecache / registry.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

REPO = "bench/manifest"


MANIFEST = f"/v2/{REPO}/manifests/latest"


def wrk(
    port: int, duration: int, conns: int, threads: int, path: str = MANIFEST
) -> dict[str, float]:
    url = f"http://{c.LOOPBACK}:{port}{path}"
    p = subprocess.run(
        [
            "wrk",
            f"-c{conns}",
            f"-t{threads}",
            f"-d{duration}s",
            "--latency",
            "-H",
            f"Accept: {c.OCI_MANIFEST}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    out = p.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*", out)
    if non2xx or errs:
        raise RuntimeError(f"wrk saw errors:\n{out}")

    def lat(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    reqs = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "reqs": reqs, "p50_ms": lat("50%"), "p99_ms": lat("99%")}


def check(port: int, img: c.Image) -> None:
    conn = http.client.HTTPConnection(c.LOOPBACK, port, timeout=10)
    conn.request("GET", f"/v2/{REPO}/manifests/latest", headers={"Accept": c.OCI_MANIFEST})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200 or body != img.manifest:
        raise RuntimeError(f"manifest GET on port {port}: {r.status} {body[:200]!r}")
    conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-healthz", action="store_true", help="skip the /healthz floor measurement")
    ap.add_argument(
        "--profile", action="store_true", help="py-spy edgecache during an extra wrk run"
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgecache-bench"))
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = a.workdir / f"manifest-{int(time.time())}"
    img = c.build_image(a.workdir / "layout-small", 2, 1)
    procs: dict[str, c.Proc] = {}
    res: dict[str, list[dict[str, float]]] = {
        "edgecache": [],
        "registry": [],
        "edgecache /healthz": [],
    }
    try:
        procs["edgecache"] = c.Edgecache(run_dir / "edgecache").start()
        procs["registry"] = c.Registry(run_dir / "registry").start()
        for p in procs.values():
            c.push_image(p.port, REPO, img)
            check(p.port, img)
            wrk(p.port, 2, a.connections, a.threads)  # warm-up, not measured
        # The same server's /healthz: the framework's floor per request (no store, no file).
        targets = [(n, p, MANIFEST) for n, p in procs.items()]
        if not a.no_healthz:
            targets.append(("edgecache /healthz", procs["edgecache"], "/healthz"))
        else:
            del res["edgecache /healthz"]
        for r in range(a.rounds):
            for name, p, path in targets:
                cpu0 = c.cpu_seconds(p.pid)
                v = wrk(p.port, a.duration, a.connections, a.threads, path)
                v["cpu_ms_per_req"] = (c.cpu_seconds(p.pid) - cpu0) * 1e3 / v["reqs"]
                res[name].append(v)
                c.log(
                    f"round {r + 1} {name}: {v['rps']:.0f} req/s "
                    f"p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms"
                )
        prof = ""
        if a.profile:
            e = procs["edgecache"]
            prof = c.pyspy_profile(
                e.pid,
                lambda: wrk(e.port, 5, a.connections, a.threads),
                10,
                Path(__file__).resolve().parent / "profile-manifest",
            )
    finally:
        for p in procs.values():
            p.stop()
    shutil.rmtree(run_dir, ignore_errors=True)

    rows = []
    for name, vals in res.items():
        ratio = c.median(v["rps"] / b["rps"] for v, b in zip(vals, res["registry"], strict=False))
        rows.append(
            [
                name,
                " / ".join(f"{v['rps']:.0f}" for v in vals),
                f"{c.median(v['rps'] for v in vals):.0f}",
                f"{c.median(v['p50_ms'] for v in vals):.2f}",
                f"{c.median(v['p99_ms'] for v in vals):.2f}",
                f"{ratio:.2f}x",
                f"{c.median(v['cpu_ms_per_req'] for v in vals):.3f}",
            ]
        )
    print()
    print(f"# manifest_rate  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# {c.machine()}")
    print(f"# edgecache: {c.edgecache_source()}")
    print(
        f"# wrk -c{a.connections} -t{a.threads} -d{a.duration}s -H 'Accept: {c.OCI_MANIFEST}' "
        f"/v2/{REPO}/manifests/latest; {a.rounds} rounds interleaved; "
        f"load average at end: {c.loadavg()}"
    )
    print(
        c.table(
            [
                "target",
                "req/s per round",
                "median req/s",
                "p50 ms",
                "p99 ms",
                "ratio to registry",
                "server CPU ms/req",
            ],
            rows,
        )
    )
    if prof:
        print()
        print(prof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
