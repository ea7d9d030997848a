"""Warm proxied manifest GET by tag (wrk, 64 connections), edgecache vs docker-registry proxy.

    .venv/bin/python benchmarks/proxy_manifest_rate.py [--duration 10] [--connections 64]
        [--threads 2] [--rounds 3] [--workdir /tmp/edgecache-bench] [--json FILE]

Upstream: a plain docker-registry (JSON access log) holding a small image (2 x 1 MiB layers).
Caches, both pointing straight at the upstream (no FaultProxy here: its per-connection threads
would tax docker-registry, which opens a new upstream connection per tag request):
- edgecache, default revalidation settings (`[proxy] tag_ttl = 0`: every GET by tag asks the
  upstream with a HEAD, concurrent requests share one), /v2/up/<repo>/manifests/latest;
- docker-registry 2.8.2 with `proxy: remoteurl`, /v2/<repo>/manifests/latest.
Both are warmed by one GET of the tag (and a 2 s wrk run) before measuring. Then
`wrk -c64 -t2 -d10s --latency -H 'Accept: <oci manifest>' URL` per target, rounds interleaved;
non-2xx responses and wrk timeouts (2 s) are counted, not fatal. Reported: req/s, p50/p99,
upstream requests per client request, from the upstream's JSON access log (entries of that
measurement window, attributed by User-Agent: edgecache's httpx client says python-httpx),
by method, and server CPU ms/request.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import json
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _pull as p
import manifest_rate as mr

REPO = "bench/proxymanifest"


def check(port: int, path: str, img: c.Image) -> None:
    conn = http.client.HTTPConnection(c.LOOPBACK, port, timeout=30)
    conn.request("GET", path, headers={"Accept": c.OCI_MANIFEST})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    if r.status != 200 or "sha256:" + hashlib.sha256(body).hexdigest() != img.manifest_digest:
        raise RuntimeError(f"manifest GET {path} on port {port}: {r.status} {body[:200]!r}")


def by_method(upstream: c.Registry, skip: int, ua_word: str) -> tuple[Counter[str], int]:
    """Upstream requests after the first `skip` log entries whose User-Agent has `ua_word`
    (or, for ua_word "!python-httpx", does not have "python-httpx"), by method and kind."""
    entries = upstream.access_log()
    cnt: Counter[str] = Counter()
    for e in entries[skip:]:
        ua = str(e.get("http.request.useragent", ""))
        mine = ("python-httpx" not in ua) if ua_word.startswith("!") else (ua_word in ua)
        if not mine:
            continue
        uri = str(e.get("http.request.uri", ""))
        kind = "manifest" if "/manifests/" in uri else ("blob" if "/blobs/" in uri else "other")
        cnt[f"{e.get('http.request.method')} {kind}"] += 1
    return cnt, len(entries)


def wrk(port: int, duration: int, conns: int, threads: int, path: str) -> dict[str, Any]:
    """manifest_rate.wrk, but errors (non-2xx, timeouts) are counted rather than fatal."""
    try:
        v: dict[str, Any] = mr.wrk(port, duration, conns, threads, path)
        v["errors"] = ""
        return v
    except RuntimeError as e:
        out = str(e)
    v = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "reqs": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    }
    for label, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v[key] = (
            float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)] if m else float("nan")
        )
    errs = [
        m.group(0).strip()
        for m in re.finditer(r"(Socket errors:.*|Non-2xx or 3xx responses:.*)", out)
    ]
    v["errors"] = "; ".join(errs)
    return v


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgecache-bench"))
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--profile", action="store_true", help="py-spy edgecache during extra wrk runs at the end"
    )
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = a.workdir / f"proxymanifest-{int(time.time())}"
    img = c.build_image(a.workdir / "layout-small", 2, 1)
    load0 = c.loadavg()
    started = datetime.datetime.now()
    res: dict[str, list[dict[str, Any]]] = {"edgecache": [], "registry": []}
    procs: dict[str, tuple[c.Proc, str, str]] = {}
    upstream = c.Registry(run_dir / "upstream", json_log=True).start()
    try:
        c.push_image(upstream.port, REPO, img)
        up_url = f"http://{c.LOOPBACK}:{upstream.port}"
        ec = c.Edgecache(run_dir / "ec", config=p.edgecache_config(up_url)).start()
        reg = c.Registry(run_dir / "reg", proxy_remote=up_url).start()
        procs["edgecache"] = (ec, "python-httpx", f"/v2/{p.UP_NAME}/{REPO}/manifests/latest")
        procs["registry"] = (reg, "!python-httpx", f"/v2/{REPO}/manifests/latest")
        for _name, (srv, _ua, path) in procs.items():
            check(srv.port, path, img)
            wrk(srv.port, 2, a.connections, a.threads, path)  # warm-up, not measured
            time.sleep(3)  # requests the warm-up left queued drain before measuring
        for r in range(a.rounds):
            order = list(procs) if r % 2 == 0 else list(procs)[::-1]
            for name in order:
                srv, ua, path = procs[name]
                _, skip = by_method(upstream, 0, ua)
                cpu0 = c.cpu_seconds(srv.pid)
                v = wrk(srv.port, a.duration, a.connections, a.threads, path)
                # Requests wrk gave up on (timeouts) may still be queued in the server: let
                # them finish (their upstream requests belong to this window).
                time.sleep(3)
                v["cpu_ms_per_req"] = (c.cpu_seconds(srv.pid) - cpu0) * 1e3 / v["reqs"]
                cnt, _ = by_method(upstream, skip, ua)
                v["upstream_requests"] = sum(cnt.values())
                v["up_per_req"] = v["upstream_requests"] / v["reqs"]
                v["upstream_by_method"] = dict(cnt)
                v["load"] = c.loadavg()
                res[name].append(v)
                c.log(
                    f"round {r + 1} {name}: {v['rps']:.0f} req/s p50 {v['p50_ms']:.2f} ms "
                    f"p99 {v['p99_ms']:.2f} ms, upstream {v['upstream_requests']} requests "
                    f"({v['up_per_req']:.3f}/request) {dict(cnt)}, load {v['load']}"
                    + (f", wrk errors: {v['errors']}" if v["errors"] else "")
                )
            check(srv.port, path, img)
        prof = ""
        if a.profile:
            ec, _, path = procs["edgecache"]
            prof = c.pyspy_profile(
                ec.pid,
                lambda: wrk(ec.port, 5, a.connections, a.threads, path),
                10,
                Path(__file__).resolve().parent / "profile-proxy-manifest",
            )
    finally:
        for srv, _, _ in procs.values():
            srv.stop()
        upstream.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))

    rows = []
    for name, vals in res.items():
        ratio = c.median(v["rps"] / b["rps"] for v, b in zip(vals, res["registry"], strict=False))
        methods: Counter[str] = Counter()
        for v in vals:
            methods.update(v["upstream_by_method"])
        total_reqs = sum(v["reqs"] for v in vals)
        rows.append(
            [
                name,
                " / ".join(f"{v['rps']:.0f}" for v in vals),
                f"{c.median(v['rps'] for v in vals):.0f}",
                f"{c.median(v['p50_ms'] for v in vals):.2f}",
                f"{c.median(v['p99_ms'] for v in vals):.2f}",
                f"{ratio:.2f}x",
                " / ".join(f"{v['up_per_req']:.3f}" for v in vals),
                ", ".join(f"{k} {n / total_reqs:.3f}" for k, n in sorted(methods.items())),
                " / ".join(v["errors"] or "0" for v in vals),
                f"{c.median(v['cpu_ms_per_req'] for v in vals):.3f}",
            ]
        )
    print()
    print(f"# proxy_manifest_rate  {started.isoformat(timespec='seconds')}")
    print(f"# {c.machine()}")
    print(f"# edgecache: {c.edgecache_source()}")
    print(
        f"# wrk -c{a.connections} -t{a.threads} -d{a.duration}s --latency "
        f"-H 'Accept: {c.OCI_MANIFEST}' <manifest by tag>; {a.rounds} rounds interleaved; "
        f"load average at start: {load0}, at end: {c.loadavg()}"
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
                "upstream requests per request",
                "by method, per client request",
                "wrk errors (per round)",
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
