"""Warm blob serving: full pulls of a ~1 GiB image, edgecache vs nginx (sendfile) vs registry.

    .venv/bin/python benchmarks/warm_blobs.py [--layers 8 --layer-mib 128] [--clients 1,16]
        [--rounds 3] [--no-verify] [--profile] [--workers 1,N] [--tls]
        [--workdir /tmp/edgecache-bench] [--json FILE] [--record [FILE]]

The image (N layers of random bytes + config + manifest) is written as an OCI layout, pushed
with raw HTTP into edgecache (plain HTTP/1.1, so blobs go through os.sendfile) and into
docker-registry (filesystem storage); nginx serves the same layout files by path
(/v2/<repo>/blobs/sha256:<hex> -> blobs/sha256/<hex>, sendfile on).

Each client is its own process with one keep-alive HTTP/1.1 connection; it GETs every layer in
turn and verifies the sha256 of each (hashing pipelined with receiving, in a second thread).
Aggregate MB/s = all bytes / (last client end - first client start). Rounds are interleaved
(_harness.py: nginx, edgecache, registry, then the reverse order, ...), one unmeasured warm-up
pull per target first. The ratio is the median over rounds of (target / nginx in the same
round). Server CPU s/GiB: user+system CPU of the server's process tree per GiB served.

Peak RSS of each edgecache during the highest-concurrency rounds is sampled from
/proc/<pid>/status (VmRSS every 50 ms, and VmHWM after resetting it via clear_refs), summed
over its processes (and the largest one given) when it runs workers. --workers 1,2: one
edgecache per `[server] workers` value, each a target of its own.
With --tls, HTTP/1.1 over TLS (a self-signed EC P-256 certificate, ALPN http/1.1; the clients
and the ciphers are the same for every target): nginx (`listen ssl`, its workers) against
edgecache with `[server] tls_cert/tls_key`, where sendfile cannot apply; no registry target.
With --profile, one extra unmeasured edgecache round runs under py-spy (flame graph
benchmarks/profile-warm.svg and a text summary benchmarks/profile-warm.txt).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h

REPO = "bench/warm"
HERE = Path(__file__).resolve().parent


def main() -> int:
    b = h.Bench("warm_blobs", __doc__, rounds=3, workers=True)
    b.ap.add_argument("--layers", type=int, default=8)
    b.ap.add_argument("--layer-mib", type=int, default=128)
    b.ap.add_argument("--clients", default="1,16", help="comma-separated concurrency levels")
    b.ap.add_argument("--targets", default="nginx,edgecache,registry")
    b.ap.add_argument(
        "--no-verify", action="store_true", help="skip sha256 (shows the server-bound rate)"
    )
    b.ap.add_argument("--nginx-workers", default="auto")
    b.ap.add_argument(
        "--profile", action="store_true", help="py-spy an extra 16-client edgecache round"
    )
    b.ap.add_argument("--profile-seconds", type=int, default=10)
    b.ap.add_argument("--tls", action="store_true", help="HTTP/1.1 over TLS (no registry)")
    a = b.parse()
    verify = not a.no_verify
    levels = [int(x) for x in a.clients.split(",")]
    c.log(f"building image ({a.layers} x {a.layer_mib} MiB) in {a.workdir / 'layout'}")
    img = c.build_image(a.workdir / "layout", a.layers, a.layer_mib)
    tls = c.make_cert(a.workdir / "tls") if a.tls else None
    tls_config = f'[server]\ntls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n' if tls else ""
    alpn = ["http/1.1"] if tls else None
    kinds = {
        "nginx": lambda: [h.nginx(img.layout / "blobs" / "sha256", a.nginx_workers, tls=tls)],
        "edgecache": lambda: b.edgecaches(config=tls_config),
        "registry": lambda: [] if tls else [h.registry()],
    }
    targets = [t for kind in a.targets.split(",") for t in kinds[kind]()]
    peak_rss: dict[str, tuple[int, int]] = {}  # edgecache target -> (total, largest process)

    def pull(t: h.Target, n: int) -> dict[str, float]:
        cpu0 = c.cpu_seconds(t.pid)
        secs, nbytes = c.run_clients(c.pull_blobs, [(t.port, REPO, img.layers, verify, alpn)] * n)
        if nbytes != n * img.total:
            raise RuntimeError(f"{t.name}: got {nbytes} bytes, expected {n * img.total}")
        # Server CPU seconds per GiB served: robust to other load on the box.
        cpu = (c.cpu_seconds(t.pid) - cpu0) / (nbytes / (1 << 30))
        return {"mbps": nbytes / secs / 1e6, "cpu_s_per_gib": cpu}

    prof_note = ""
    with b:
        b.start(targets)
        for t in targets:
            if t.kind != "nginx":
                c.push_image(t.port, REPO, img, tls=tls is not None)
        for t in targets:  # warm-up (page cache, connections, imports), not measured
            c.log(f"warm-up {t.name}: {pull(t, 1)['mbps']:.0f} MB/s")
        for rnd, n, t in b.schedule(targets, levels):
            if t.kind == "edgecache" and n == max(levels):
                with c.RSSSampler(t.pid, tree=True) as s:
                    v = pull(t, n)
                old = peak_rss.get(t.name, (0, 0))
                peak_rss[t.name] = (max(old[0], s.peak), max(old[1], s.peak_one))
            else:
                v = pull(t, n)
            b.record(t.name, rnd, n, **v)
            c.log(f"  {v['mbps']:.0f} MB/s")
        if a.profile:
            e = next(t for t in targets if t.kind == "edgecache")
            prof_note = "\n" + c.pyspy_profile(
                e.pid, lambda: pull(e, max(levels)), a.profile_seconds, HERE / "profile-warm"
            )
    table = b.table(
        [
            h.level_col("clients"),
            h.name_col(),
            *h.metric("MB/s", "mbps", baseline="nginx" if "nginx" in a.targets else None),
            h.median_col("server CPU s/GiB", "cpu_s_per_gib", "{:.2f}"),
        ],
        baseline="nginx",
    )
    header = b.header(
        f"image: {a.layers} layers x {a.layer_mib} MiB = {img.total / c.MiB:.0f} MiB; "
        f"sha256 verify: {verify}; nginx workers: {a.nginx_workers}"
        + ("; HTTP/1.1 over TLS (EC P-256, self-signed)" if tls else "")
    )
    notes = [
        f"{name} peak RSS during the {max(levels)}-client rounds: {total / c.MiB:.1f} MiB"
        + (f" (all processes; largest {one / c.MiB:.1f} MiB)" if one != total else "")
        for name, (total, one) in peak_rss.items()
    ]
    body = [table, "", *notes, *([prof_note] if prof_note else [])]
    b.report(header, body, peak_rss_bytes=peak_rss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
