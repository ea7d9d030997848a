"""Anonymous pull latency while a password flood runs: before issue 8 vs now, in one run.

    .venv/bin/python benchmarks/auth_flood.py [--before REV] [--rounds 3] [--phase-seconds 10]
        [--flooders 50] [--workdir /tmp/edgecache-bench] [--json FILE] [--record [FILE]]

Why: bcrypt is slow on purpose (~0.25 s a check at cost 12). Before issue 8 it ran on trio's
default worker-thread limiter, the same one file I/O uses, so 50 connections sending wrong
passwords pushed anonymous pulls from milliseconds to seconds.

Targets: two `edgecache serve` processes with the same config (one user, cost-12 bcrypt hash,
anonymous pull) and the same small image pushed (1 MiB layer): "before" runs a `git archive`
of --before (default: the last commit before the issue 8 work), "now" runs the work tree.
Phases, per round and target (target order alternating by round, _harness.py):

    base       the probe alone
    flood-1ip  + N flood connections from 127.0.0.1
    flood-Nip  + N flood connections, each from its own loopback address (127.0.1.x), which a
               per-client rate limit cannot tell apart: only the bounded bcrypt limiter helps
    anon-flood + N connections sending GET /v2/ without credentials as fast as they can: the
               cost of the request rate alone, with no password check in it (the floor of
               what any flood of cheap requests does to a one-process server)

The probe is one keep-alive raw-socket connection: GET manifest by tag, GET the 1 MiB blob
(sha256 checked), in turn, for the whole phase; every request's latency is kept. A flood
connection sends GET /v2/ with Basic credentials of the configured user and a new random
password each time (so no failure cache can answer it), reads the answer, reconnects when the
server closes. Reported: probe p50/p99/max per phase (median over rounds), the ratio of each to
the same target's base in the same round, and what the flood got (statuses per second).
"reconnects": times the probe found its connection closed; hypercorn closes a keep-alive
connection after 1000 requests (keep_alive_max_requests), which this raw client learns only
when the next request fails, so about one per 1000 probe requests is expected.
"""

from __future__ import annotations

import base64
import multiprocessing as mp
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h

BEFORE_DEFAULT = "34d6e18"  # main before the issue 8 work landed


def _config() -> str:
    import bcrypt

    hashed = bcrypt.hashpw(b"right-password", bcrypt.gensalt(12)).decode()
    return f'[auth]\nanonymous_pull = true\n[auth.users]\nadmin = "{hashed}"\n'


# ---------------------------------------------------------------------------- the flood


def _read_response(sock: socket.socket) -> tuple[int, bool]:
    """(status, server wants to close) of one response; raises OSError on a closed socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v.strip())
        elif k == "connection" and "close" in v.lower():
            close = True
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in body")
        body += chunk
    return status, close


def _flood_thread(
    port: int, source: str, stop: threading.Event, counts: dict[str, int], password: bool
) -> None:
    sock: socket.socket | None = None
    while not stop.is_set():
        try:
            if sock is None:
                sock = socket.create_connection(
                    (c.LOOPBACK, port), timeout=30, source_address=(source, 0)
                )
            auth = ""
            if password:
                token = base64.b64encode(b"admin:" + os.urandom(8).hex().encode()).decode()
                auth = f"Authorization: Basic {token}\r\n"
            sock.sendall(f"GET /v2/ HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
            status, close = _read_response(sock)
            counts[str(status)] = counts.get(str(status), 0) + 1
            if close:
                sock.close()
                sock = None
        except OSError as exc:
            counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()


def _flood_process(port: int, sources: list[str], password: bool, stop: Any, out: Any) -> None:
    halt = threading.Event()
    counts: list[dict[str, int]] = [{} for _ in sources]
    threads = [
        threading.Thread(
            target=_flood_thread, args=(port, src, halt, counts[i], password), daemon=True
        )
        for i, src in enumerate(sources)
    ]
    for t in threads:
        t.start()
    stop.wait()
    halt.set()
    for t in threads:
        t.join(60)
    total: dict[str, int] = {}
    for one in counts:
        for k, v in one.items():
            total[k] = total.get(k, 0) + v
    out.put(total)


# ---------------------------------------------------------------------------- the probe


def _probe(port: int, repo: str, img: c.Image, seconds: float) -> tuple[list[float], list[str]]:
    """Latencies of the probe's requests, and the errors it met (each one reconnects)."""
    layer = img.layers[0]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client = c.H1Client(c.LOOPBACK, port)
        try:
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                status, _ = client.get_small(
                    f"/v2/{repo}/manifests/latest", {"Accept": c.OCI_MANIFEST}
                )
                if status != 200:
                    raise c.HTTPError(f"manifest: {status}")
                t1 = time.monotonic()
                client.get(f"/v2/{repo}/blobs/{layer[0]}", layer[0])
                t2 = time.monotonic()
                latencies += [t1 - t0, t2 - t1]
        except (OSError, c.HTTPError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()
    return latencies, errors


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _phase(
    server: c.Edgecache, img: c.Image, sources: list[str], password: bool, seconds: float
) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    flood = None
    if sources:
        flood = ctx.Process(target=_flood_process, args=(server.port, sources, password, stop, out))
        flood.start()
        time.sleep(1.0)  # let the flood reach its steady state before measuring (not sync)
    t0 = time.monotonic()
    latencies, errors = _probe(server.port, "bench/small", img, seconds)
    elapsed = time.monotonic() - t0
    flood_counts: dict[str, int] = {}
    if flood is not None:
        stop.set()
        flood_counts = out.get(timeout=120)
        flood.join(30)
    return {
        "requests": len(latencies),
        "probe_errors": errors,
        "p50_ms": _pct(latencies, 0.5) * 1000,
        "p99_ms": _pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
        "flood_per_s": {k: round(v / elapsed, 1) for k, v in sorted(flood_counts.items())},
    }


def main() -> int:
    b = h.Bench("auth_flood", __doc__, rounds=3)
    b.ap.add_argument("--before", default=BEFORE_DEFAULT)
    b.ap.add_argument("--phase-seconds", type=float, default=10.0)
    b.ap.add_argument("--flooders", type=int, default=50)
    a = b.parse()
    work = a.workdir / "auth-flood"  # the image and the snapshot are kept for the next run
    work.mkdir(parents=True, exist_ok=True)
    img = c.build_image(work / "image", n_layers=1, layer_mib=1)
    snap = c.snapshot(a.before, work / "before-src")
    config = _config()
    targets = [
        h.edgecache("before", config=config, src=str(snap)),
        h.edgecache("now", config=config),
    ]
    # phase -> (flood sources, whether the flood sends passwords)
    phases: dict[str, tuple[list[str], bool]] = {
        "base": ([], False),
        "flood-1ip": ([c.LOOPBACK] * a.flooders, True),
        f"flood-{a.flooders}ip": ([f"127.0.1.{i + 1}" for i in range(a.flooders)], True),
        "anon-flood": ([c.LOOPBACK] * a.flooders, False),
    }
    with b:
        b.start(targets)
        for t in targets:
            c.push_image(t.port, "bench/small", img)
            c.log(f"{t.name}: {t.url}")
        for rnd, _, t in b.schedule(targets):
            for phase, (sources, password) in phases.items():
                c.log(f"  {phase} (load {c.loadavg()})")
                assert isinstance(t.server, c.Edgecache)
                r = _phase(t.server, img, sources, password, a.phase_seconds)
                b.record(t.name, rnd, phase, **r)
                c.log(f"  {r}")
    rows = [
        g for t in targets for g in b.groups(lambda name, _: (name, "base")) if g.name == t.name
    ]
    table = b.table(
        [
            h.name_col(),
            h.level_col("phase"),
            h.median_col("p50 ms", "p50_ms", "{:.1f}"),
            h.median_col("p99 ms", "p99_ms", "{:.1f}"),
            h.median_col("max ms", "max_ms"),
            h.ratio_col("p50/base", "p50_ms"),
            h.ratio_col("p99/base", "p99_ms"),
            h.median_col("probe reqs", "requests", "{}"),
            ("reconnects", lambda g: sum(len(e) for e in g.vals("probe_errors"))),
            (
                "flood answers (last round)",
                lambda g: (
                    ", ".join(f"{k}: {v}/s" for k, v in g.recs[-1]["flood_per_s"].items()) or "-"
                ),
            ),
        ],
        groups=rows,
    )
    header = b.header(
        f"before = {a.before} ({snap}), now = the edgecache above; {a.phase_seconds:.0f} s per "
        f"phase, {a.flooders} flood connections; medians over rounds; ratios to the same "
        "target's base, same round"
    )
    b.report(header, [table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
