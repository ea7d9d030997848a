"""Cold-cache stampede: C concurrent full pulls of one uncached image, edgecache vs registry.

    .venv/bin/python benchmarks/cold_stampede.py [--clients 1,16,64] [--rounds 2]
        [--layers 4] [--layer-mib 64] [--workers 1,N] [--workdir /tmp/edgecache-bench]
        [--json FILE] [--record [FILE]]

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
Rounds interleave the targets (_harness.py: order alternating by round); medians over rounds,
wall ratio = median of the per-round ratios to the registry proxy. --workers 1,2: one edgecache
per `[server] workers` value, each a target of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h
import _pull as p

REPO = "bench/stampede"
TAG = "latest"


def profile(
    t: h.Target, clients: int, seconds: int, upstream: c.Proc, img: c.Image, base: Path, suffix: str
) -> str:
    """py-spy (raw stacks, 200 Hz, --nonblocking) of edgecache during a cold `clients` pull."""
    fp = p.FaultProxy(c.LOOPBACK, upstream.port).start()
    stem = Path(__file__).resolve().parent / f"profile-cold-{clients}{suffix}"
    raw = stem.with_suffix(".collapsed")
    try:
        with t.running(base, fp.url) as srv:
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
                p.full_pull, [(srv.port, t.repo(REPO), TAG, img.manifest_digest)] * clients
            )
            spy.wait(seconds + 60)
            walls = max(r[2] for r in res) - min(r[1] for r in res)
    finally:
        fp.close()
        shutil.rmtree(base, ignore_errors=True)
    summary = c.summarize_collapsed(raw)
    stem.with_suffix(".txt").write_text(summary)
    return f"py-spy of a cold {clients}-client pull ({walls:.1f} s): {raw.name}\n{summary}"


def main() -> int:
    b = h.Bench("cold_stampede", __doc__, rounds=2, workers=True)
    b.ap.add_argument("--clients", default="1,16,64")
    b.ap.add_argument("--layers", type=int, default=4)
    b.ap.add_argument("--layer-mib", type=int, default=64)
    b.ap.add_argument("--targets", default="edgecache,registry")
    b.ap.add_argument("--timeout", type=float, default=600)
    b.ap.add_argument(
        "--profile", type=int, metavar="C", help="only py-spy edgecache during a cold C-client pull"
    )
    b.ap.add_argument("--profile-seconds", type=int, default=15)
    b.ap.add_argument(
        "--profile-suffix", default="", help="profile files profile-cold-C<SUFFIX>.{collapsed,txt}"
    )
    a = b.parse()
    counts = [int(x) for x in a.clients.split(",")]
    targets = p.cold_targets(a.targets, b.workers)
    img = c.build_image(a.workdir / f"layout-{a.layers}x{a.layer_mib}", a.layers, a.layer_mib)
    size = p.image_bytes(img)
    with b:
        upstream = b.own(c.Registry(b.run_dir / "upstream").start())
        c.push_image(upstream.port, REPO, img, TAG)
        if a.profile:
            ec = next(t for t in targets if t.kind == "edgecache")
            args = (a.profile_seconds, upstream, img, b.run_dir / "profile", a.profile_suffix)
            print(profile(ec, a.profile, *args))
            return 0
        for rnd, n, t in b.schedule(targets, counts):
            v = p.cold_pull(t, upstream, img, REPO, TAG, n, b.run_dir / f"m{rnd}", a.timeout)
            v["ttfb"] = [x["ttfb"] for x in v.pop("pulls")]
            b.record(t.name, rnd, n, **v)
            c.log(
                f"  ok {v['ok']}/{n} wall {v['wall']:.2f} s, upstream "
                f"{v['upstream_bytes'] / size:.3f}x image in {v['upstream_requests']} "
                f"requests, ttfb p50 {p.quantile(v['ttfb'], 0.5):.3f} s p99 "
                f"{p.quantile(v['ttfb'], 0.99):.3f} s, cpu {v['server_cpu']:.1f} s"
                + (f", errors {v['errors']}" if v["errors"] else "")
            )

    def ttfb(q: float) -> h.Column:
        return (
            f"TTFB p{q * 100:.0f} s",
            lambda g: f"{c.median(p.quantile(x, q) for x in g.vals('ttfb')):.3f}",
        )

    table = b.table(
        [
            *p.leading_columns("ok pulls"),
            h.per_round("wall s per round", "wall", p.fmt_s),
            h.median_col("median wall s", "wall", p.fmt_s),
            h.ratio_col("wall ratio to registry (median, min-max)", "wall"),
            h.per_round("upstream bytes / image per round", "upstream_bytes",
                        lambda x: f"{x / size:.2f}"),
            h.median_col("upstream requests", "upstream_requests"),
            ttfb(0.5),
            ttfb(0.99),
            h.median_col("server CPU s", "server_cpu", "{:.1f}"),
        ],
        baseline="registry",
    )  # fmt: skip
    header = b.header(
        f"image: {a.layers} x {a.layer_mib} MiB random layers + config + manifest = {size} "
        "bytes; fresh cache per measurement"
    )
    notes = [
        f"# round {v['round']} {v['target']} {v['level']} clients errors: {v['errors']}"
        for v in b.records
        if v["errors"]
    ]
    b.report(header, [table, *notes], image_bytes=size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
