"""Warm proxied manifest GET by tag (wrk, 64 connections), edgecache vs docker-registry proxy.

    .venv/bin/python benchmarks/proxy_manifest_rate.py [--duration 10] [--connections 64]
        [--threads 2] [--rounds 3] [--workdir /tmp/edgecache-bench] [--json FILE]
        [--record [FILE]]

Upstream: a plain docker-registry (JSON access log) holding a small image (2 x 1 MiB layers).
Caches, both pointing straight at the upstream (no FaultProxy here: its per-connection threads
would tax docker-registry, which opens a new upstream connection per tag request):
- edgecache, default revalidation settings (`[proxy] tag_ttl = 0`: every GET by tag asks the
  upstream with a HEAD, concurrent requests share one), /v2/up/<repo>/manifests/latest;
- docker-registry 2.8.2 with `proxy: remoteurl`, /v2/<repo>/manifests/latest.
Both are warmed by one GET of the tag (and a 2 s wrk run) before measuring. Then
`wrk -c64 -t2 -d10s --latency -H 'Accept: <oci manifest>' URL` per target, rounds interleaved
(_harness.py: order alternating by round); non-2xx responses and wrk timeouts (2 s) are
counted, not fatal. Reported: req/s, p50/p99, upstream requests per client request, from the
upstream's JSON access log (entries of that measurement window, attributed by User-Agent:
edgecache's httpx client says python-httpx), by method, and server CPU ms/request.
"""

from __future__ import annotations

import hashlib
import http.client
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h
import _pull as p
import _wrk

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


# Which upstream requests are whose (docker-registry's own client does not say python-httpx).
UA = {"edgecache": "python-httpx", "registry": "!python-httpx"}


def measure(t: h.Target, upstream: c.Registry, a: Any) -> dict[str, Any]:
    path = f"/v2/{t.repo(REPO)}/manifests/latest"
    _, skip = by_method(upstream, 0, UA[t.kind])
    cpu0 = c.cpu_seconds(t.pid)
    v = _wrk.run(a, t.url + path, strict=False)
    # Requests wrk gave up on (timeouts) may still be queued in the server: let them finish
    # (their upstream requests belong to this window).
    time.sleep(3)
    v["cpu_ms_per_req"] = (c.cpu_seconds(t.pid) - cpu0) * 1e3 / v["reqs"]
    cnt, _ = by_method(upstream, skip, UA[t.kind])
    v["upstream_requests"] = sum(cnt.values())
    v["up_per_req"] = v["upstream_requests"] / v["reqs"]
    v["upstream_by_method"] = dict(cnt)
    v["load"] = c.loadavg()
    return v


def by_method_per_request(g: h.Group) -> str:
    methods: Counter[str] = Counter()
    for v in g.recs:
        methods.update(v["upstream_by_method"])
    total = sum(v["reqs"] for v in g.recs)
    return ", ".join(f"{k} {n / total:.3f}" for k, n in sorted(methods.items()))


def main() -> int:
    b = h.Bench("proxy_manifest_rate", __doc__, rounds=3)
    _wrk.add_options(b.ap)
    b.ap.add_argument(
        "--profile", action="store_true", help="py-spy edgecache during extra wrk runs at the end"
    )
    a = b.parse()
    img = c.build_image(a.workdir / "layout-small", 2, 1)
    targets = [h.edgecache(upstream_name=p.UP_NAME), h.registry()]
    prof = ""
    with b:
        upstream = b.own(c.Registry(b.run_dir / "upstream", json_log=True).start())
        c.push_image(upstream.port, REPO, img)
        b.start(targets, upstream=upstream.url)
        for t in targets:
            path = f"/v2/{t.repo(REPO)}/manifests/latest"
            check(t.port, path, img)
            _wrk.wrk(t.url + path, 2, a.connections, a.threads, strict=False)  # warm-up
            time.sleep(3)  # requests the warm-up left queued drain before measuring
        for rnd, _, t in b.schedule(targets):
            v = b.record(t.name, rnd, **measure(t, upstream, a))
            c.log(
                f"  {v['rps']:.0f} req/s p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms, "
                f"upstream {v['upstream_requests']} requests ({v['up_per_req']:.3f}/request) "
                f"{v['upstream_by_method']}, load {v['load']}"
                + (f", wrk errors: {v['errors']}" if v["errors"] else "")
            )
            check(t.port, f"/v2/{t.repo(REPO)}/manifests/latest", img)
        if a.profile:
            ec = targets[0]
            url = f"{ec.url}/v2/{ec.repo(REPO)}/manifests/latest"
            prof = c.pyspy_profile(
                ec.pid,
                lambda: _wrk.wrk(url, 5, a.connections, a.threads, strict=False),
                10,
                Path(__file__).resolve().parent / "profile-proxy-manifest",
            )
    table = b.table(
        [
            *_wrk.columns("registry"),
            h.per_round("upstream requests per request", "up_per_req", "{:.3f}"),
            ("by method, per client request", by_method_per_request),
            ("wrk errors (per round)", lambda g: " / ".join(e or "0" for e in g.vals("errors"))),
            _wrk.CPU_PER_REQUEST,
        ],
        baseline="registry",
    )
    header = b.header(_wrk.describe(a, "<manifest by tag>"))
    b.report(header, [table, *([f"\n{prof}"] if prof else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
