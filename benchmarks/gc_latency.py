"""GC over a large index: run time, and request latency during GC vs without, in one run.

    .venv/bin/python benchmarks/gc_latency.py [--repos 100] [--manifests 10000]
        [--blobs-per-manifest 10] [--clients 8] [--phase-seconds 10] [--json FILE]
        [--record [FILE]] [--offline-mark N]

Data: the data directory is populated directly (before the server starts) with the store's own
code: `Store.open(DIR)`, each blob through `BlobWriter` -> `seal` -> `publish_file` inside
`Index.commit_blob(repo, digest, size, publish)`, each manifest through `seal_bytes` ->
`publish_file` inside `Index.commit_manifest(repo, digest, size, record, tag, None, publish)`,
with the record `put_manifest` builds. Only durability is switched off in the populating
process (os.fsync a no-op, LMDB opened with sync=False; one env.sync + os.sync at the end),
or 110k fsynced files and transactions would take many minutes.
Shape (defaults): 100 repositories x 100 manifests, tags v0..v99; every manifest is an OCI image
manifest (1 config + 9 layers) of 10 own blobs of 1-4 KiB random bytes = 100k blobs + 10k
manifests. Then every other manifest is deleted (`Index.delete_manifest`: unlinked, untagged),
so about half of everything (50k blobs + 5k manifests) is garbage.

Server: `edgecache serve` with `[gc] grace = 0.0` (delete_untagged default off: the deleted
manifests are unlinked, so they are garbage either way).
Load: N client processes (default 8), one keep-alive raw-socket connection each, run through the
whole benchmark; each request is a GET of a random live manifest by tag (Accept: OCI manifest,
sha256 checked) or of a random live blob (sha256 checked), 50/50. Per request: wall-clock start
and latency. Phases, back to back on the same server and the same clients:

    idle (2 dry runs, no load) | base1 (T s) | dry (dry runs back to back, >= T s) |
    base2 (T s) | gc (real run, then more runs back to back until >= T s) | base3 (T s)

GC is triggered with POST /_edgecache/admin/gc[?dry_run=true] (Authorization: Bearer
<DIR/run/admin-token>); each run's JSON record gives started/ended (server wall clock, the
same clock as the clients' time.time()). Latencies are reported per phase and for the requests
that started inside the first real run's [started, ended] window (the run that sweeps);
later runs in the gc phase find nothing to free (a mark over the remaining index only).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import multiprocessing as mp
import os
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h

# Filled before the client processes fork (inherited, not pickled).
LIVE_TAGS: list[tuple[str, str, str]] = []  # repo, tag, manifest digest
LIVE_BLOBS: list[tuple[str, str, int]] = []  # repo, digest, size


# ------------------------------------------------------------------------------ populate


def populate(
    data: Path, repos: int, manifests: int, per_manifest: int, seed: int
) -> dict[str, Any]:
    """Run in a child process (it patches os.fsync and lmdb.open)."""
    src = os.environ.get("BENCH_EDGECACHE_SRC")
    if src:
        sys.path.insert(0, src)
    import lmdb

    import edgecache.store.index as index_mod
    from edgecache.oci.digest import Digest
    from edgecache.store import Store
    from edgecache.store.files import BlobWriter, publish_file, seal_bytes

    os.fsync = lambda fd: None  # type: ignore[assignment]  # durability off while populating
    real_open = lmdb.open

    def open_nosync(*a: Any, **kw: Any) -> Any:
        kw["sync"] = False
        return real_open(*a, **kw)

    index_mod.lmdb.open = open_nosync  # type: ignore[assignment]

    rng = random.Random(seed)
    t0 = time.monotonic()
    store = Store.open(data)
    layout, index = store.layout, store.index
    per_repo = manifests // repos
    live_tags: list[tuple[str, str, str]] = []
    live_blobs: list[tuple[str, str, int]] = []
    deleted: list[tuple[str, str]] = []
    blob_bytes = 0
    for r in range(repos):
        repo = f"gcbench/r{r:03d}"
        for m in range(per_repo):
            blobs = []
            for _ in range(per_manifest):
                size = rng.randint(1024, 4096)
                body = rng.randbytes(size)
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                w = BlobWriter.in_tmp(layout)
                w.write(body)
                d = Digest.parse(digest)
                w.seal(d)
                index.commit_blob(repo, digest, size, partial(publish_file, layout, w.path, d))
                blobs.append((digest, size))
                blob_bytes += size
            cfg, layers = blobs[0], blobs[1:]
            doc = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": c.OCI_MANIFEST,
                    "config": {"mediaType": c.OCI_CONFIG, "digest": cfg[0], "size": cfg[1]},
                    "layers": [
                        {"mediaType": c.OCI_LAYER, "digest": dg, "size": s} for dg, s in layers
                    ],
                    "annotations": {"bench": f"{repo}:{m}"},
                }
            ).encode()
            mdigest = "sha256:" + hashlib.sha256(doc).hexdigest()
            record = {
                "media_type": c.OCI_MANIFEST,
                "size": len(doc),
                "blobs": [dg for dg, _ in blobs],
                "manifests": [],
                "subject": None,
                "artifact_type": c.OCI_CONFIG,
            }
            md = Digest.parse(mdigest)
            writer = seal_bytes(layout, doc, md)
            publish = partial(publish_file, layout, writer.path, md)
            tag = f"v{m}"
            index.commit_manifest(repo, mdigest, len(doc), record, tag, None, publish)
            if m % 2:
                deleted.append((repo, mdigest))
            else:
                live_tags.append((repo, tag, mdigest))
                live_blobs.extend((repo, dg, s) for dg, s in blobs)
    t_write = time.monotonic() - t0
    for repo, mdigest in deleted:
        assert index.delete_manifest(repo, mdigest)
    counts = index.counts()
    index.env.sync(True)
    store.close()
    os.sync()
    return {
        "populate_s": round(time.monotonic() - t0, 1),
        "write_s": round(t_write, 1),
        "blob_bytes": blob_bytes,
        "deleted_manifests": len(deleted),
        "counts": counts,
        "live_tags": live_tags,
        "live_blobs": live_blobs,
    }


def _populate_child(args: tuple[Any, ...], out: Path) -> None:
    out.write_text(json.dumps(populate(*args)))


# --------------------------------------------------------------------------------- load


def client(n: int, port: int, seed: int, start: Any, stop: Any, out: str) -> None:
    rng = random.Random(seed)
    conn = c.H1Client(c.LOOPBACK, port)
    recs: list[tuple[float, float, str, int]] = []  # start wall time, latency s, kind, ok
    accept = {"Accept": c.OCI_MANIFEST}
    errors: list[str] = []
    reconnects = 0
    start.wait()
    try:
        while not stop.is_set():
            w0, t0, kind = time.time(), time.perf_counter(), "?"
            try:
                if rng.random() < 0.5:
                    kind = "m"
                    repo, tag, digest = rng.choice(LIVE_TAGS)
                    w0, t0 = time.time(), time.perf_counter()
                    status, body = conn.get_small(f"/v2/{repo}/manifests/{tag}", accept)
                    good = "sha256:" + hashlib.sha256(body).hexdigest() == digest
                    if status != 200 or not good:
                        raise c.HTTPError(f"manifest {repo}:{tag}: {status} digest ok {good}")
                else:
                    kind = "b"
                    repo, digest, size = rng.choice(LIVE_BLOBS)
                    w0, t0 = time.time(), time.perf_counter()
                    got = conn.get(f"/v2/{repo}/blobs/{digest}", digest, True)
                    if got != size:
                        raise c.HTTPError(f"blob {repo}@{digest}: {got} bytes, not {size}")
                recs.append((w0, time.perf_counter() - t0, kind, 1))
            except Exception as e:
                with contextlib.suppress(Exception):
                    conn.close()
                conn = c.H1Client(c.LOOPBACK, port)
                if isinstance(e, c.HTTPError) and str(e) == "connection closed in headers":
                    # hypercorn closes a connection after keep_alive_max_requests (1000): a
                    # reconnect, not an error; that request is not recorded.
                    reconnects += 1
                    continue
                recs.append((w0, time.perf_counter() - t0, kind, 0))
                errors.append(f"{time.time():.3f} {type(e).__name__}: {e}")
    finally:
        Path(out).write_text(json.dumps({"recs": recs, "errors": errors, "reconnects": reconnects}))
        with contextlib.suppress(Exception):
            conn.close()


# ---------------------------------------------------------------------------- measuring


def post_gc(port: int, token: str, dry: bool) -> dict[str, Any]:
    conn = http.client.HTTPConnection(c.LOOPBACK, port, timeout=1800)
    path = "/_edgecache/admin/gc" + ("?dry_run=true" if dry else "")
    conn.request("POST", path, body=b"", headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"POST {path}: {r.status} {body[:300]!r}")
    rec: dict[str, Any] = json.loads(body)
    return rec


def quant(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def stats(recs: list[tuple[float, float, str, int]], t0: float, t1: float) -> dict[str, Any]:
    sel = [r for r in recs if t0 <= r[0] < t1]
    out: dict[str, Any] = {"seconds": round(t1 - t0, 2), "requests": len(sel)}
    out["req_s"] = round(len(sel) / (t1 - t0), 1) if t1 > t0 else 0
    for kind in ("m", "b"):
        lats = [r[1] * 1000 for r in sel if r[2] == kind]
        out[kind] = {
            "n": len(lats),
            "errors": sum(1 for r in sel if r[2] == kind and not r[3]),
            "p50": round(quant(lats, 0.50), 2),
            "p99": round(quant(lats, 0.99), 2),
            "max": round(max(lats), 2) if lats else float("nan"),
        }
    return out


def offline_mark(data: Path, rounds: int) -> list[dict[str, float]]:
    """`collect.mark` (N times), then one real `collect.sweep` of the last plan, on the populated
    index in this process: no server, no load (run in a child)."""
    src = os.environ.get("BENCH_EDGECACHE_SRC")
    if src:
        sys.path.insert(0, src)
    from edgecache.store import Store
    from edgecache.store.collect import mark, sweep

    store = Store.open(data)
    out = []
    for _ in range(rounds):
        w0, c0 = time.monotonic(), time.process_time()
        plan = mark(store.index, grace=0.0, delete_untagged=False, is_proxied=lambda r: False)
        out.append(
            {
                "wall_s": round(time.monotonic() - w0, 2),
                "cpu_s": round(time.process_time() - c0, 2),
                "candidates": len(plan.candidates),
            }
        )
    w0, c0 = time.monotonic(), time.process_time()
    res = sweep(store.index, store.layout, plan, grace=0.0)
    out.append(
        {
            "sweep_wall_s": round(time.monotonic() - w0, 2),
            "sweep_cpu_s": round(time.process_time() - c0, 2),
            "deleted": len(res.deleted),
        }
    )
    store.close()
    return out


def main() -> None:
    b = h.Bench("gc_latency", __doc__, rounds=None)
    b.ap.add_argument("--repos", type=int, default=100)
    b.ap.add_argument("--manifests", type=int, default=10000)
    b.ap.add_argument("--blobs-per-manifest", type=int, default=10)
    b.ap.add_argument("--clients", type=int, default=8)
    b.ap.add_argument("--phase-seconds", type=float, default=10.0)
    b.ap.add_argument("--seed", type=int, default=1)
    b.ap.add_argument(
        "--offline-mark",
        type=int,
        metavar="N",
        help="only populate, then time N marks and one sweep (collect) with no server, no load",
    )
    a = b.parse()
    with b:
        measure(b, a)


def measure(b: h.Bench, a: Any) -> None:
    global LIVE_TAGS, LIVE_BLOBS
    run_dir = b.run_dir
    run_dir.mkdir(parents=True)
    ec_target = h.edgecache(config="[gc]\ngrace = 0.0\n")
    data = run_dir / "edgecache"  # where ec_target keeps its data: populated before it starts
    c.log(f"populating {data} (load {c.loadavg()}) ...")
    ctx = mp.get_context("fork")
    pop_out = run_dir / "populate.json"
    p = ctx.Process(
        target=_populate_child,
        args=((data, a.repos, a.manifests, a.blobs_per_manifest, a.seed), pop_out),
    )
    p.start()
    p.join()
    if p.exitcode != 0:
        raise SystemExit(f"populate failed: exit {p.exitcode}")
    pop = json.loads(pop_out.read_text())
    LIVE_TAGS = [tuple(x) for x in pop.pop("live_tags")]  # type: ignore[misc]
    LIVE_BLOBS = [tuple(x) for x in pop.pop("live_blobs")]  # type: ignore[misc]
    c.log(f"  populated in {pop['populate_s']} s: {pop['counts']}")
    if a.offline_mark:
        q = ctx.Queue()
        p = ctx.Process(target=lambda: q.put(offline_mark(data, a.offline_mark)))
        p.start()
        marks = q.get()
        p.join()
        header = b.header(f"--offline-mark: index {pop['counts']}")
        b.report(header, [str(m) for m in marks], populate=pop, marks=marks)
        return

    ec = b.own(ec_target).start(run_dir)
    result: dict[str, Any] = {"populate": pop}
    try:
        token = (data / "run" / "admin-token").read_text().strip()
        start, stop = ctx.Event(), ctx.Event()
        outs = [str(run_dir / f"client-{i}.json") for i in range(a.clients)]
        procs = [
            ctx.Process(target=client, args=(i, ec.port, a.seed * 1000 + i, start, stop, outs[i]))
            for i in range(a.clients)
        ]
        for pr in procs:
            pr.start()
        time.sleep(0.5)
        load_start = c.loadavg()
        phases: list[tuple[str, float, float, float]] = []  # name, t0, t1, server cpu s
        runs: dict[str, list[dict[str, Any]]] = {"dry (idle server)": [], "dry": [], "gc": []}
        # Two dry runs before the clients start: the mark's cost with nothing else to do.
        for _ in range(2):
            runs["dry (idle server)"].append(post_gc(ec.port, token, dry=True))
        start.set()
        time.sleep(2.0)  # warm-up, not measured
        T = a.phase_seconds

        def phase(name: str, body: Any) -> None:
            cpu0, t0 = c.cpu_seconds(ec.pid), time.time()
            c.log(f"phase {name} (load {c.loadavg()}) ...")
            body(t0)
            t1 = time.time()
            phases.append((name, t0, t1, c.cpu_seconds(ec.pid) - cpu0))

        def idle(t0: float) -> None:
            time.sleep(T)

        def gc_loop(kind: str) -> Any:
            def body(t0: float) -> None:
                while True:
                    rec = post_gc(ec.port, token, dry=(kind == "dry"))
                    runs[kind].append(rec)
                    freed = rec.get("freed", {})
                    c.log(
                        f"  {kind} run {rec['ended'] - rec['started']:.2f} s, candidates "
                        f"{rec['candidates']}, freed {freed.get('objects', '-')}"
                    )
                    if time.time() - t0 >= T:
                        break

            return body

        phase("base1", idle)
        phase("dry", gc_loop("dry"))
        phase("base2", idle)
        phase("gc", gc_loop("gc"))
        phase("base3", idle)
        stop.set()
        for pr in procs:
            pr.join(60)
        load_end = c.loadavg()
        recs: list[tuple[float, float, str, int]] = []
        client_errors: list[str] = []
        reconnects = 0
        for o in outs:
            got = json.loads(Path(o).read_text())
            recs.extend(tuple(r) for r in got["recs"])  # type: ignore[misc]
            client_errors.extend(got["errors"])
            reconnects += got["reconnects"]
        ec.check()
    finally:
        ec.stop()

    by_phase = {
        name: dict(stats(recs, t0, t1), cpu_s=round(cpu, 1)) for name, t0, t1, cpu in phases
    }
    base_recs = [
        r for name, t0, t1, _ in phases if name.startswith("base") for r in recs if t0 <= r[0] < t1
    ]
    base_all = stats(base_recs, min(r[0] for r in base_recs), max(r[0] for r in base_recs) + 1e-6)
    base_s = sum(t1 - t0 for name, t0, t1, _ in phases if name.startswith("base"))
    base_all["seconds"], base_all["req_s"] = round(base_s, 2), round(len(base_recs) / base_s, 1)
    first = runs["gc"][0]
    in_first = stats(recs, first["started"], first["ended"])
    dry0 = runs["dry"][0]
    in_dry0 = stats(recs, dry0["started"], dry0["ended"])
    # The real run begins with the same mark as a dry run: split it at the loaded dry run's
    # duration (approximately mark, then sweep).
    mark_end = first["started"] + (dry0["ended"] - dry0["started"])
    in_first_mark = stats(recs, first["started"], mark_end)
    in_first_sweep = stats(recs, mark_end, first["ended"])
    result.update(
        phases=by_phase,
        baseline_pooled=base_all,
        during_first_gc=in_first,
        during_first_gc_mark=in_first_mark,
        during_first_gc_sweep=in_first_sweep,
        during_first_dry=in_dry0,
        runs=runs,
        client_errors=client_errors,
        load_start=load_start,
        load_end=load_end,
    )
    counts = pop["counts"]
    header = b.header(
        f"index: {counts['blobs']} blob records ({counts['manifests']} manifests), "
        f"{pop['deleted_manifests']} manifests deleted before the run; populated in "
        f"{pop['populate_s']} s; {a.clients} clients, 50/50 manifest by tag / blob; "
        f"load average with the clients connected: {load_start}, at their end: {load_end}"
    )
    body: list[str] = []
    rows = []
    for kind, lst in runs.items():
        for i, rec in enumerate(lst):
            if i >= 3 and len(lst) > 4:  # the rest in one line: same state, nothing left to free
                rest = lst[3:]
                times = [r["ended"] - r["started"] for r in rest]
                rows.append(
                    [
                        f"{kind} {i + 1}-{len(lst)}",
                        f"median {c.median(times):.2f}",
                        "/".join(sorted({str(r["candidates"]) for r in rest})),
                        "-",
                        "/".join(
                            sorted({str(r.get("freed", {}).get("objects", "-")) for r in rest})
                        ),
                        "-",
                        "-",
                    ]
                )
                break
            fr = rec.get("freed", {})
            rows.append(
                [
                    f"{kind} {i + 1}",
                    f"{rec['ended'] - rec['started']:.2f}",
                    rec["candidates"],
                    f"{rec['candidate_bytes'] / c.MiB:.1f}",
                    fr.get("objects", "-"),
                    f"{fr['bytes'] / c.MiB:.1f}" if fr else "-",
                    json.dumps(rec.get("skipped", {})) if not rec["dry_run"] else "-",
                ]
            )
    body.append(
        c.table(
            [
                "run",
                "run time s",
                "candidates",
                "candidate MiB",
                "freed objects",
                "freed MiB",
                "skipped",
            ],
            rows,
        )
    )
    body.append("")
    rows = []

    def row(label: str, s: dict[str, Any], cpu: Any = "-") -> list[Any]:
        return [
            label,
            s["seconds"],
            s["req_s"],
            f"{s['m']['p50']} / {s['m']['p99']} / {s['m']['max']}",
            f"{s['b']['p50']} / {s['b']['p99']} / {s['b']['max']}",
            f"{s['m']['errors']} / {s['b']['errors']}",
            cpu,
        ]

    for name, s in by_phase.items():
        rows.append(row(f"phase {name}", s, s["cpu_s"]))
    rows.append(row("baseline (base1-3 pooled)", base_all))
    rows.append(row("inside dry run 1", in_dry0))
    rows.append(row("inside real gc run 1", in_first))
    rows.append(row("  its first dry-run-1 seconds (~mark)", in_first_mark))
    rows.append(row("  the rest (~sweep)", in_first_sweep))
    body.append(
        c.table(
            [
                "window",
                "s",
                "req/s",
                "manifest p50 / p99 / max ms",
                "blob p50 / p99 / max ms",
                "errors m / b",
                "server CPU s",
            ],
            rows,
        )
    )
    body.append("")
    for kind in ("m", "b"):
        name = {"m": "manifest", "b": "blob"}[kind]
        base99 = base_all[kind]["p99"]
        body.append(
            f"p99 {name}: inside gc run 1 / baseline = "
            f"{in_first[kind]['p99'] / base99:.2f}x, "
            f"whole gc phase / baseline = {by_phase['gc'][kind]['p99'] / base99:.2f}x, "
            f"inside dry run 1 / baseline = {in_dry0[kind]['p99'] / base99:.2f}x, "
            f"gc run 1 ~mark / ~sweep part / baseline = {in_first_mark[kind]['p99'] / base99:.2f}x"
            f" / {in_first_sweep[kind]['p99'] / base99:.2f}x"
        )
    body.append(
        f"\nclient errors: {len(client_errors)}; reconnects after hypercorn's 1000-request "
        f"keep-alive limit (not recorded): {reconnects}"
    )
    body += ["  " + e for e in client_errors[:10]]
    b.report(header, body, **result)


if __name__ == "__main__":
    main()
