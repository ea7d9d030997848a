"""Flaky uplink: a cold pull through a fault-injecting proxy, edgecache vs docker-registry proxy.

    .venv/bin/python benchmarks/flaky_link.py [--clients 1,16] [--rounds 2] [--layers 4]
        [--layer-mib 64] [--cut-min-mib 8] [--cut-max-mib 32] [--n503 3] [--attempts 3]
        [--workdir /tmp/edgecache-bench] [--json FILE] [--record [FILE]]

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
went quiet for 1 s), upstream connections cut. Rounds interleave the targets (_harness.py: order
alternating by round).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h
import _pull as p

REPO = "bench/flaky"
TAG = "latest"
MiB = c.MiB


def main() -> int:
    b = h.Bench("flaky_link", __doc__, rounds=2)
    b.ap.add_argument("--clients", default="1,16")
    b.ap.add_argument("--layers", type=int, default=4)
    b.ap.add_argument("--layer-mib", type=int, default=64)
    b.ap.add_argument("--cut-min-mib", type=int, default=8)
    b.ap.add_argument("--cut-max-mib", type=int, default=32)
    b.ap.add_argument("--n503", type=int, default=3)
    b.ap.add_argument("--attempts", type=int, default=3)
    b.ap.add_argument("--targets", default="edgecache,registry")
    b.ap.add_argument("--timeout", type=float, default=300)
    a = b.parse()
    counts = [int(x) for x in a.clients.split(",")]
    targets = p.cold_targets(a.targets, None)
    img = c.build_image(a.workdir / f"layout-{a.layers}x{a.layer_mib}", a.layers, a.layer_mib)
    size = p.image_bytes(img)
    with b:
        upstream = b.own(c.Registry(b.run_dir / "upstream").start())
        c.push_image(upstream.port, REPO, img, TAG)
        for rnd, n, t in b.schedule(targets, counts):
            # The same seed for every cache in a round: the same cuts.
            cuts = p.random_offsets(999 + rnd, a.cut_min_mib * MiB, a.cut_max_mib * MiB)

            def arm(fp: p.FaultProxy, cuts: object = cuts) -> None:
                fp.fail_with_503(a.n503)
                fp.cut_after(cuts)

            v = p.cold_pull(
                t, upstream, img, REPO, TAG, n, b.run_dir / f"m{rnd}", a.timeout, a.attempts, arm
            )
            v["client_retries"] = sum(x["retries"] for x in v.pop("pulls"))
            b.record(t.name, rnd, n, **v)
            c.log(
                f"  ok {v['ok']}/{n} wall {v['wall']:.2f} s "
                f"(incl. failures {v['wall_incl_failures']:.1f} s), client retries "
                f"{v['client_retries']}, upstream {v['upstream_bytes'] / size:.3f}x image, "
                f"{v['upstream_requests']} requests, {v['cuts']} cuts, "
                f"{v['failed_503']} x 503" + (f", errors {v['errors']}" if v["errors"] else "")
            )

    table = b.table(
        [
            *p.leading_columns("completed pulls"),
            h.per_round("wall s (completed) per round", "wall", p.fmt_s),
            h.per_round("s until all clients done", "wall_incl_failures", p.fmt_s),
            h.per_round("client retries", "client_retries", str),
            h.per_round("upstream bytes / image", "upstream_bytes", lambda x: f"{x / size:.2f}"),
            h.per_round("upstream cuts", "cuts", str),
            h.per_round("upstream requests", "upstream_requests", str),
        ]
    )
    header = b.header(
        f"image: {a.layers} x {a.layer_mib} MiB random layers = {size} bytes; every upstream "
        f"connection cut after {a.cut_min_mib}-{a.cut_max_mib} MiB (seeded), first {a.n503} "
        f"upstream requests 503; client attempts per document: {a.attempts}"
    )
    notes = [
        f"# round {v['round']} {v['target']} {v['level']} clients: "
        f"{v['level'] - v['ok']} failed, e.g. {v['errors'][0]}"
        for v in b.records
        if v["errors"]
    ]
    b.report(header, [table, *notes], image_bytes=size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
