"""Small-request rate: GET manifest by tag, 64 connections (wrk), edgecache vs docker-registry.

    .venv/bin/python benchmarks/manifest_rate.py [--duration 10] [--connections 64]
        [--threads 2] [--rounds 3] [--workers 1,N] [--compare REV] [--workdir DIR]
        [--json FILE] [--record [FILE]]

A small image (2 layers of 1 MiB) is pushed with raw HTTP into both servers; then
`wrk -c64 -t2 -d10s --latency -H "Accept: <oci manifest>" URL/v2/<repo>/manifests/latest` runs
against each, rounds interleaved (_harness.py: order alternating by round), after an unmeasured
2 s warm-up. The same edgecache's /healthz is measured too, as the framework's floor (hypercorn
+ trio + app dispatch, no store lookup, no file). Every response must be 2xx (wrk's "Non-2xx"
line is checked). Ratio = median over rounds of target / registry in the same round. Server
CPU ms/request = user+system CPU of the server's process tree over the run / requests.
--workers 1,2: one edgecache per `[server] workers` value, each a target of its own.
"""

from __future__ import annotations

import http.client
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h
import _wrk

REPO = "bench/manifest"
MANIFEST = f"/v2/{REPO}/manifests/latest"


def check(port: int, img: c.Image) -> None:
    conn = http.client.HTTPConnection(c.LOOPBACK, port, timeout=10)
    conn.request("GET", MANIFEST, headers={"Accept": c.OCI_MANIFEST})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200 or body != img.manifest:
        raise RuntimeError(f"manifest GET on port {port}: {r.status} {body[:200]!r}")
    conn.close()


def main() -> int:
    b = h.Bench("manifest_rate", __doc__, rounds=3, workers=True)
    _wrk.add_options(b.ap)
    b.ap.add_argument("--no-healthz", action="store_true", help="skip the /healthz floor")
    b.ap.add_argument("--profile", action="store_true", help="py-spy edgecache during extra wrk")
    a = b.parse()
    img = c.build_image(a.workdir / "layout-small", 2, 1)
    servers = [*b.edgecaches(), h.registry()]
    for t in servers:
        t.path = MANIFEST
    targets = list(servers)
    if not a.no_healthz:
        targets += [
            h.Target(f"{t.name} /healthz", shares=t, path="/healthz", kind="healthz")
            for t in servers
            if t.kind == "edgecache"
        ]
    prof = ""
    with b:
        b.start(servers)
        for t in servers:
            c.push_image(t.port, REPO, img)
            check(t.port, img)
            _wrk.wrk(t.url + MANIFEST, 2, a.connections, a.threads)  # warm-up, not measured
        for rnd, _, t in b.schedule(targets):
            cpu0 = c.cpu_seconds(t.pid)
            v = _wrk.run(a, t.url + t.path)
            v["cpu_ms_per_req"] = (c.cpu_seconds(t.pid) - cpu0) * 1e3 / v["reqs"]
            b.record(t.name, rnd, **v)
            c.log(f"  {v['rps']:.0f} req/s p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms")
        if a.profile:
            e = servers[0]
            prof = c.pyspy_profile(
                e.pid,
                lambda: _wrk.wrk(e.url + MANIFEST, 5, a.connections, a.threads),
                10,
                Path(__file__).resolve().parent / "profile-manifest",
            )
    table = b.table([*_wrk.columns("registry"), _wrk.CPU_PER_REQUEST], baseline="registry")
    header = b.header(_wrk.describe(a, f"{MANIFEST} (/healthz for the floor)"))
    b.report(header, [table, *([f"\n{prof}"] if prof else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
