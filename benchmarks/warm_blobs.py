"""Warm blob serving: full pulls of a ~1 GiB image, edgecache vs nginx (sendfile) vs registry.

    .venv/bin/python benchmarks/warm_blobs.py [--layers 8 --layer-mib 128] [--clients 1,16]
        [--rounds 3] [--no-verify] [--profile] [--workdir /tmp/edgecache-bench]

The image (N layers of random bytes + config + manifest) is written as an OCI layout, pushed
with raw HTTP into edgecache (plain HTTP/1.1, so blobs go through os.sendfile) and into
docker-registry (filesystem storage); nginx serves the same layout files by path
(/v2/<repo>/blobs/sha256:<hex> -> blobs/sha256/<hex>, sendfile on).

Each client is its own process with one keep-alive HTTP/1.1 connection; it GETs every layer in
turn and verifies the sha256 of each (hashing pipelined with receiving, in a second thread).
Aggregate MB/s = all bytes / (last client end - first client start). Rounds are interleaved
(nginx, edgecache, registry, nginx, ...), one unmeasured warm-up pull per target first. The
ratio is the median over rounds of (target / nginx in the same round).

Peak RSS of the edgecache process during the highest-concurrency rounds is sampled from
/proc/<pid>/status (VmRSS every 50 ms, and VmHWM after resetting it via clear_refs).
With --profile, one extra unmeasured edgecache round runs under py-spy (flame graph
benchmarks/profile-warm.svg and a text summary benchmarks/profile-warm.txt).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

REPO = "bench/warm"
HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--layer-mib", type=int, default=128)
    ap.add_argument("--clients", default="1,16", help="comma-separated concurrency levels")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default="nginx,edgecache,registry")
    ap.add_argument(
        "--no-verify", action="store_true", help="skip sha256 (shows the server-bound rate)"
    )
    ap.add_argument("--nginx-workers", default="auto")
    ap.add_argument(
        "--profile", action="store_true", help="py-spy an extra 16-client edgecache round"
    )
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgecache-bench"))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    verify = not a.no_verify
    levels = [int(x) for x in a.clients.split(",")]
    targets = a.targets.split(",")

    a.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = a.workdir / f"warm-{int(time.time())}"
    c.log(f"building image ({a.layers} x {a.layer_mib} MiB) in {a.workdir / 'layout'}")
    img = c.build_image(a.workdir / "layout", a.layers, a.layer_mib)
    procs: dict[str, c.Proc] = {}
    try:
        procs["edgecache"] = c.Edgecache(run_dir / "edgecache").start()
        procs["registry"] = c.Registry(run_dir / "registry").start()
        procs["nginx"] = c.Nginx(
            run_dir / "nginx", img.layout / "blobs" / "sha256", a.nginx_workers
        ).start()
        for name in ("edgecache", "registry"):
            t = time.monotonic()
            c.push_image(procs[name].port, REPO, img)
            c.log(f"pushed to {name} in {time.monotonic() - t:.1f}s")
        layers = img.layers

        cpu: dict[str, list[float]] = {}

        def pull(name: str, n: int, record: bool = False) -> float:
            port = procs[name].port
            cpu0 = c.cpu_seconds(procs[name].pid)
            secs, nbytes = c.run_clients(c.pull_blobs, [(port, REPO, layers, verify)] * n)
            if nbytes != n * img.total:
                raise RuntimeError(f"{name}: got {nbytes} bytes, expected {n * img.total}")
            if record:  # server CPU seconds per GiB served: robust to other load on the box
                cpu.setdefault(f"{n}:{name}", []).append(
                    (c.cpu_seconds(procs[name].pid) - cpu0) / (nbytes / (1 << 30))
                )
            return nbytes / secs / 1e6

        for name in targets:  # warm-up (page cache, connections, imports), not measured
            c.log(f"warm-up {name}: {pull(name, 1):.0f} MB/s")

        results: dict[int, dict[str, list[float]]] = {}
        peak_rss = 0
        for n in levels:
            results[n] = {t: [] for t in targets}
            for r in range(a.rounds):
                for name in targets:
                    if name == "edgecache" and n == max(levels):
                        with c.RSSSampler(procs["edgecache"].pid) as s:
                            v = pull(name, n, True)
                        peak_rss = max(peak_rss, s.peak)
                    else:
                        v = pull(name, n, True)
                    results[n][name].append(v)
                    c.log(f"clients={n} round={r + 1} {name}: {v:.0f} MB/s")

        prof_note = ""
        if a.profile:
            prof_note = "\n" + c.pyspy_profile(
                procs["edgecache"].pid,
                lambda: pull("edgecache", max(levels)),
                a.profile_seconds,
                HERE / "profile-warm",
            )

    finally:
        for p in procs.values():
            p.stop()

    # ------------------------------------------------------------------------- report
    rows = []
    out: dict[str, object] = {}
    for n in levels:
        base = results[n].get("nginx")
        for name in targets:
            vals = results[n][name]
            ratio = ""
            if base:
                ratio = f"{c.median(v / b for v, b in zip(vals, base, strict=False)):.2f}x"
            cpus = cpu.get(f"{n}:{name}", [])
            rows.append(
                [
                    n,
                    name,
                    " / ".join(f"{v:.0f}" for v in vals),
                    f"{c.median(vals):.0f}",
                    ratio,
                    f"{c.median(cpus):.2f}" if cpus else "",
                ]
            )
            out[f"{n}:{name}"] = {
                "mbps": vals,
                "median": c.median(vals),
                "ratio_to_nginx": ratio,
                "server_cpu_s_per_gib": cpus,
            }
    print()
    print(f"# warm_blobs  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# {c.machine()}")
    print(f"# edgecache: {c.edgecache_source()}")
    print(
        f"# image: {a.layers} layers x {a.layer_mib} MiB = {img.total / c.MiB:.0f} MiB; "
        f"sha256 verify: {verify}; rounds: {a.rounds} interleaved; "
        f"nginx workers: {a.nginx_workers}; "
        f"load average at end: {c.loadavg()}"
    )
    print(
        c.table(
            [
                "clients",
                "target",
                "MB/s per round",
                "median MB/s",
                "ratio to nginx (median)",
                "server CPU s/GiB",
            ],
            rows,
        )
    )
    print(
        f"\nedgecache peak RSS during the {max(levels)}-client rounds: {peak_rss / c.MiB:.1f} MiB"
    )
    if prof_note:
        print(prof_note)
    out["peak_rss_bytes"] = peak_rss
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
