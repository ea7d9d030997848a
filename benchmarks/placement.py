"""Rendezvous placement (edgecache/peers/ring.py) of blobs over a site: spread, and moves.

    .venv/bin/python benchmarks/placement.py [--nodes 3,10,100,1000] [--digests 20000]
        [--seed 1] [--check 200] [--json FILE] [--record [FILE]]

A simulation, no servers: for a site of N nodes (member URLs http://10.42.x.y:5000), which
node owns each of D blob digests (`ring.order(members, digest)[0]`), and what moves when one
node joins (a new URL) and when one node leaves (a seeded random member). Digests: D seeded
sha256 digests; sizes: a seeded draw from an assumed skewed mix of container blobs (25% small
configs / metadata, log-normal median 8 KiB; 75% layers, log-normal median 4 MiB, sigma 1.8,
so p90 ~40 MiB and p99 ~260 MiB, capped at 400 MiB), not a measured data set.

Printed per N:
- load spread: max / mean of the digests owned per node and of the bytes owned per node
  (ideal 1.00), next to the same for an owner drawn uniformly at random per digest (seeded):
  what any hash placement of these digests can expect, since with D / N digests per node
  the counts scatter (at 1000 nodes, 20 per node) and a few large layers dominate bytes;
- join: the share of digests and of bytes whose owner changes (ideal 1 / (N + 1)), all of
  them to the new node; leave: the same (ideal 1 / N, exactly the leaver's share), and the
  largest share of the leaver's digests that one remaining node takes over (ideal
  1 / (N - 1), or 1 / (digests moved) when fewer moved: rendezvous spreads them, where a
  ring without virtual nodes hands them all to the next node); for contrast, the share a
  modulo hash (int(digest) mod N) moves on a join (N / (N + 1)).

How it stays fast: ring.order sorts N weights per digest, and 1000 nodes x 20,000 digests is
20M sha256 weights (~20 s of CPU here). Each (member, digest) weight is computed once, with
ring.weight itself, in a fork pool over the CPUs; each digest keeps its owner and runner-up
(ties broken by name, as ring.order does) and whether the joiner outscores the owner. That
is all a join or leave needs: under rendezvous hashing a join changes the owner only where
the new member outscores it, a leave only where the leaver owned (the runner-up takes
over). A sample of --check digests per N is checked against ring.order itself (the full
order, the order without the leaver, with the joiner); the run stops on any difference.
The defaults take ~20 s on 2 idle cores (--digests scales it linearly).
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root: edgecache
import _common as c
import _harness as h

from edgecache.peers import ring

KiB, MiB = 1 << 10, 1 << 20
MAX_SIZE = 400 * MiB

# Set before the pool forks: the members being placed over, and the one that joins.
MEMBERS: list[str] = []
JOINER = ""


def member(i: int) -> str:
    return f"http://10.42.{i // 250}.{i % 250 + 2}:5000"


def blobs(n: int, seed: int) -> list[tuple[str, int]]:
    """n (digest, size): seeded digests, sizes from the assumed mix (see the docstring)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        digest = "sha256:" + hashlib.sha256(f"placement {seed} {i}".encode()).hexdigest()
        if rng.random() < 0.25:
            size = rng.lognormvariate(math.log(8 * KiB), 1.0)
        else:
            size = rng.lognormvariate(math.log(4 * MiB), 1.8)
        out.append((digest, max(1, min(MAX_SIZE, int(size)))))
    return out


def _place(keys: list[str]) -> list[tuple[int, int, bool]]:
    """Per digest: (owner index, runner-up index, whether JOINER outscores the owner)."""
    weight = ring.weight
    members = MEMBERS
    out = []
    for key in keys:
        ws = [weight(m, key) for m in members]
        i1 = _best(ws, members)
        top = (ws[i1], members[i1])
        ws[i1] = -1  # weights are >= 0: the runner-up is now the best
        i2 = _best(ws, members) if len(ws) > 1 else -1
        out.append((i1, i2, (weight(JOINER, key), JOINER) > top))
    return out


def _best(ws: list[int], members: list[str]) -> int:
    """The index of the highest weight; a tie (never seen) goes to the larger name."""
    top = max(ws)
    if ws.count(top) == 1:
        return ws.index(top)
    return max((i for i, w in enumerate(ws) if w == top), key=lambda i: members[i])


def place(members: list[str], joiner: str, keys: list[str]) -> list[tuple[int, int, bool]]:
    global MEMBERS, JOINER
    MEMBERS, JOINER = members, joiner
    ncpu = len(os.sched_getaffinity(0))
    if ncpu == 1 or len(members) * len(keys) < 200_000:
        return _place(keys)
    step = math.ceil(len(keys) / (4 * ncpu))
    chunks = [keys[i : i + step] for i in range(0, len(keys), step)]
    with mp.get_context("fork").Pool(ncpu) as pool:
        return [x for part in pool.map(_place, chunks) for x in part]


def check(
    members: list[str],
    joiner: str,
    leaver: int,
    keys: list[str],
    placed: list[tuple[int, int, bool]],
) -> None:
    """The derived owners against ring.order itself, on these keys."""
    without = [m for i, m in enumerate(members) if i != leaver]
    for key, (i1, i2, joins) in zip(keys, placed, strict=True):
        full = ring.order(members, key)
        want_leave = members[i2] if i1 == leaver else members[i1]
        got = {
            "owner": full[0],
            "runner-up": full[1] if len(full) > 1 else None,
            "owner after the leave": ring.order(without, key)[0],
            "owner after the join": ring.order([*members, joiner], key)[0],
        }
        expected = {
            "owner": members[i1],
            "runner-up": members[i2] if i2 >= 0 else None,
            "owner after the leave": want_leave,
            "owner after the join": joiner if joins else members[i1],
        }
        if got != expected:
            raise SystemExit(f"placement differs from ring.order for {key}: {got} != {expected}")


def spread(owner: list[int], sizes: list[int], n: int) -> tuple[float, float]:
    """max / mean of the digests and of the bytes owned per node."""
    count, size = [0] * n, [0] * n
    for o, s in zip(owner, sizes, strict=True):
        count[o] += 1
        size[o] += s
    return max(count) / (len(owner) / n), max(size) / (sum(sizes) / n)


def simulate(n: int, items: list[tuple[str, int]], seed: int, sample: int) -> dict[str, Any]:
    t0 = time.monotonic()
    keys = [d for d, _ in items]
    sizes = [s for _, s in items]
    total = sum(sizes)
    members = [member(i) for i in range(n)]
    joiner = member(n)
    leaver = random.Random(seed * 1_000_003 + n).randrange(n)
    placed = place(members, joiner, keys)
    t_place = time.monotonic() - t0
    rng = random.Random(seed + n)
    picks = sorted(rng.sample(range(len(keys)), min(sample, len(keys))))
    check(members, joiner, leaver, [keys[i] for i in picks], [placed[i] for i in picks])
    owner = [o for o, _, _ in placed]
    count_spread, bytes_spread = spread(owner, sizes, n)
    random_owner = [rng.randrange(n) for _ in keys]
    rcount_spread, rbytes_spread = spread(random_owner, sizes, n)
    joined = [i for i, (_, _, j) in enumerate(placed) if j]
    left = [i for i, (o, _, _) in enumerate(placed) if o == leaver]
    taken: dict[int, int] = {}
    for i in left:
        taken[placed[i][1]] = taken.get(placed[i][1], 0) + 1
    modulo = sum(1 for k in keys if int(k[7:], 16) % n != int(k[7:], 16) % (n + 1))
    return {
        "digests": len(keys),
        "per_node": len(keys) / n,
        "count_spread": count_spread,
        "bytes_spread": bytes_spread,
        "random_count_spread": rcount_spread,
        "random_bytes_spread": rbytes_spread,
        "join_moved": len(joined) / len(keys),
        "join_moved_bytes": sum(sizes[i] for i in joined) / total,
        "join_ideal": 1 / (n + 1),
        "leave_moved": len(left) / len(keys),
        "leave_moved_bytes": sum(sizes[i] for i in left) / total,
        "leave_ideal": 1 / n,
        "leave_max_taker": max(taken.values()) / len(left) if left else math.nan,
        # As spread as can be: over the N - 1 others, or one digest each when fewer moved.
        "leave_taker_ideal": max(1 / (n - 1), 1 / len(left)) if left else math.nan,
        "modulo_join_moved": modulo / len(keys),
        "checked": len(picks),
        "weights": (n + 1) * len(keys),
        "place_s": t_place,
        "seconds": time.monotonic() - t0,
    }


def main() -> int:
    b = h.Bench("placement", __doc__, rounds=None, workdir=False)
    b.ap.add_argument("--nodes", default="3,10,100,1000", help="site sizes")
    b.ap.add_argument("--digests", type=int, default=20000)
    b.ap.add_argument("--seed", type=int, default=1)
    b.ap.add_argument(
        "--check", type=int, default=200, help="digests per site size checked against ring.order"
    )
    a = b.parse()
    sizes = [int(x) for x in a.nodes.split(",")]
    if min(sizes) < 2:
        raise SystemExit("--nodes: sites of at least 2 nodes (a leave must leave someone)")
    items = blobs(a.digests, a.seed)
    total = sum(s for _, s in items)
    with b:
        for n in sizes:
            c.log(f"{n} nodes x {a.digests} digests (load {c.loadavg()}) ...")
            v = simulate(n, items, a.seed, a.check)
            b.record("rendezvous", 1, n, **v)
            c.log(
                f"  {v['seconds']:.1f} s ({v['weights'] / v['place_s'] / 1e6:.2f}M weights/s); "
                f"spread {v['count_spread']:.2f} count, {v['bytes_spread']:.2f} bytes; join "
                f"{v['join_moved']:.4f} (ideal {v['join_ideal']:.4f}), leave "
                f"{v['leave_moved']:.4f} (ideal {v['leave_ideal']:.4f})"
            )

    pct = "{:.2%}"
    spread_table = b.table(
        [
            h.level_col("nodes"),
            h.median_col("digests per node (mean)", "per_node", "{:.0f}"),
            h.median_col("owned digests max/mean", "count_spread", "{:.2f}"),
            h.median_col("same, random owner", "random_count_spread", "{:.2f}"),
            h.median_col("owned bytes max/mean", "bytes_spread", "{:.2f}"),
            h.median_col("same, random owner", "random_bytes_spread", "{:.2f}"),
            ("ideal", lambda g: "1.00"),
        ]
    )
    moves_table = b.table(
        [
            h.level_col("nodes"),
            h.median_col("join: digests moved", "join_moved", pct),
            h.median_col("bytes moved", "join_moved_bytes", pct),
            h.median_col("ideal 1/(N+1)", "join_ideal", pct),
            h.median_col("leave: digests moved", "leave_moved", pct),
            h.median_col("bytes moved", "leave_moved_bytes", pct),
            h.median_col("ideal 1/N", "leave_ideal", pct),
            h.median_col("most of them to one node", "leave_max_taker", pct),
            h.median_col("ideal max(1/(N-1), 1/moved)", "leave_taker_ideal", pct),
            h.median_col("modulo hash: join moves", "modulo_join_moved", pct),
            h.median_col("checked vs ring.order", "checked", "{:.0f} ok"),
            h.median_col("s", "seconds", "{:.1f}"),
        ]
    )
    header = b.header(
        f"{a.digests} digests (seed {a.seed}), {total / (1 << 30):.1f} GiB in all: 25% "
        "log-normal(8 KiB, 1.0), 75% log-normal(4 MiB, 1.8) capped at 400 MiB; members "
        "http://10.42.x.y:5000; the leaver a seeded random member, the joiner a new URL"
    )
    b.report(header, [spread_table, "", moves_table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
