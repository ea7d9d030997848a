"""Warm proxied manifest GET rate (wrk, 64 connections) with a severity gate on vs off (issue 12).

    .venv/bin/python benchmarks/gate_rate.py [--duration 10] [--connections 64] [--threads 2]
        [--rounds 3] [--tag-ttl 3600] [--refs tag,digest] [--workdir /tmp/edgecache-bench]
        [--json FILE] [--record [FILE]]

The issue's target: the gate, its decision cached, costs < 10% of the proxied manifest GET rate.

Upstream: a plain docker-registry (JSON access log) holding a small image whose one layer is
the fake scanner's marker layer with no vulnerabilities (`tests/fakes/scanner.marker_layer`).
Two edgecaches proxy it (the pieces of proxy_manifest_rate.py, imported), the same config but
for the gate, both with `[proxy] tag_ttl = --tag-ttl` so that a GET by tag is answered from
the cache without asking the upstream, and the default `[server] workers` (one serving process
per CPU), as proxy_manifest_rate runs it:
- "edgecache gate off": no [[pull_policies]];
- "edgecache gate on": `[[pull_policies]] repositories = ["**"]`, `block_severity = "High"`,
  and `[scanners.fake]`, a FakeScannerAdapter (tests/fakes/scanner.py) run by this script,
  which serves Harbor's adapter API and really pulls the image from that edgecache.
Before measuring, each edgecache fetches the image (one GET of the tag: 200 and the digest
checked); the gate-on one scans it (admin API `POST scan`, waited for, then `GET report` until
every manifest says "scanned"), so the report is stored and every measured GET is decided by
the gate's cached decision; a second image whose marker names a High vulnerability, scanned
the same way, must answer 412 there (the gate is really on) and 200 on the gate-off one. Then,
per reference (by tag: /v2/up/<repo>/manifests/latest; by digest: .../manifests/sha256:...),
a 2 s wrk warm-up on each target, and the measurement:
`wrk -c64 -t2 -d10s --latency -H 'Accept: <oci manifest>' URL`, rounds interleaved
(_harness.py: target order alternating by round). Non-2xx answers and wrk timeouts are counted,
not fatal, and the 200 + digest check is repeated after every measurement. Reported: req/s
(ratio gate on / gate off per round: median, min-max), p50/p99, server CPU ms/request
(/proc, all serving processes) and its ratio, upstream requests per client request (should be
0 with tag_ttl), the load average at the start and end of each measurement.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root: tests.fakes
import _common as c
import _harness as h
import _pull as p
import _wrk
import proxy_manifest_rate as pm

from tests.fakes.scanner import FakeScannerAdapter, marker_layer

REPO = "bench/gaterate"  # the image measured: its report has no vulnerability
VULN_REPO = "bench/gaterate-vuln"  # the gate's sanity check: a High vulnerability, refused
HIGH = {"id": "CVE-2099-0001", "package": "openssl", "version": "3.0.1", "severity": "High"}
OFF, ON = "edgecache gate off", "edgecache gate on"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def scannable_image(layout: Path, vulns: list[dict[str, Any]]) -> c.Image:
    """An OCI layout of a one-layer image the fake scanner can read: its marker layer (the
    findings `vulns`) plus 1 MiB of filler, a config, a manifest."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layer_bytes = marker_layer(vulns, extra_files={"filler": b"\0" * c.MiB})
    # _common._write_blob is private there; reused, not copied.
    layer = c._write_blob(layout, layer_bytes)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    ).encode()
    cfg = c._write_blob(layout, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": c.OCI_MANIFEST,
            "config": {"mediaType": c.OCI_CONFIG, "digest": cfg[0], "size": cfg[1]},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer[0], "size": layer[1]}],
        }
    ).encode()
    digest, _ = c._write_blob(layout, manifest)
    return c.Image(layout, cfg, [layer], manifest, digest)


def admin(t: h.Target, method: str, name: str, body: Any = None, **query: str) -> Any:
    server = t.server
    assert isinstance(server, c.Edgecache)
    token = (server.data / "run" / "admin-token").read_text().strip()
    url = f"{t.url}/_edgecache/admin/{name}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def scan(t: h.Target, image: str) -> dict[str, Any]:
    """Scan `image` on edgecache `t` now (admin API, waited for); the stored report."""
    answer = admin(t, "POST", "scan", {"image": image, "wait": True})
    bad = [s for s in answer["scans"] if s["state"] != "done" or s["error"]]
    if bad:
        raise RuntimeError(f"scan of {image} on {t.name}: {answer}")

    def scanned() -> dict[str, Any] | None:
        report = admin(t, "GET", "report", image=image)
        return report if all(m["scanned"] for m in report["manifests"]) else None

    report: dict[str, Any] = c.wait_for(scanned, 60, f"the report of {image}")
    return report


def status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection(c.LOOPBACK, port, timeout=30)
    conn.request("GET", path, headers={"Accept": c.OCI_MANIFEST})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


def ref_path(t: h.Target, ref: str, img: c.Image) -> str:
    return f"/v2/{t.repo(REPO)}/manifests/" + ("latest" if ref == "tag" else img.manifest_digest)


def upstream_requests(upstream: c.Registry) -> int:
    """Requests the upstream has answered so far: its JSON log's "response completed" lines.
    (Not proxy_manifest_rate.by_method: the Registry.access_log() it calls is, in today's
    _common.py, dead code at the end of make_cert. Measurements run one at a time, so every
    request in a measurement's window is the measured edgecache's.)"""
    assert upstream.log is not None
    text = upstream.log.read_text(errors="replace")
    return text.count('"msg":"response completed')


def measure(t: h.Target, path: str, upstream: c.Registry, a: Any) -> dict[str, Any]:
    """proxy_manifest_rate.measure's measurement for any path (that one is by tag only)."""
    up0 = upstream_requests(upstream)
    load0 = c.loadavg()
    cpu0 = c.cpu_seconds(t.pid)
    v = _wrk.run(a, t.url + path, strict=False)
    time.sleep(3)  # requests wrk gave up on (timeouts) may still be queued in the server
    v["cpu_ms_per_req"] = (c.cpu_seconds(t.pid) - cpu0) * 1e3 / v["reqs"]
    v["upstream_requests"] = upstream_requests(upstream) - up0
    v["up_per_req"] = v["upstream_requests"] / v["reqs"]
    v["load"] = f"{load0.split()[0]}-{c.loadavg().split()[0]}"
    return v


def main() -> int:
    b = h.Bench("gate_rate", __doc__, rounds=3)
    _wrk.add_options(b.ap)
    b.ap.add_argument(
        "--tag-ttl",
        type=float,
        default=3600.0,
        help="[proxy] tag_ttl of both edgecaches (longer than the run: GETs by tag are local "
        "hits; 0 = revalidate every GET, proxy_manifest_rate's setting)",
    )
    b.ap.add_argument("--refs", default="tag,digest", help="what to GET: tag, digest or both")
    a = b.parse()
    refs = [r.strip() for r in a.refs.split(",") if r.strip()]
    if not refs or set(refs) - {"tag", "digest"}:
        b.ap.error("--refs: tag, digest or tag,digest")
    img = scannable_image(b.run_dir / "layout", [])
    vuln = scannable_image(b.run_dir / "layout-vuln", [HIGH])
    base = f"[proxy]\ntag_ttl = {a.tag_ttl:g}\n"
    checks: list[str] = []
    with FakeScannerAdapter("1.1", pending_polls=0) as fake, b:
        gate = (
            f'\n[scanners.fake]\nurl = "{fake.url}"\n\n'
            '[[pull_policies]]\nrepositories = ["**"]\nblock_severity = "High"\n'
        )
        targets = [
            h.edgecache(OFF, config=base, upstream_name=p.UP_NAME),
            h.edgecache(ON, config=base + gate, upstream_name=p.UP_NAME),
        ]
        upstream = b.own(c.Registry(b.run_dir / "upstream", json_log=True).start())
        c.push_image(upstream.port, REPO, img)
        c.push_image(upstream.port, VULN_REPO, vuln)
        if not upstream_requests(upstream):  # the pushes are in it: else the log format changed
            raise RuntimeError(f"no access entry in the upstream's log {upstream.log}")
        b.start(targets, upstream=upstream.url)
        off, on = targets
        for t in targets:  # the first GETs fetch both images from the upstream
            pm.check(t.port, ref_path(t, "tag", img), img)
            pm.check(t.port, f"/v2/{t.repo(VULN_REPO)}/manifests/latest", vuln)
        for repo, ids in ((REPO, []), (VULN_REPO, [HIGH["id"]])):
            report = scan(on, f"{on.repo(repo)}:latest")
            got = [v["id"] for m in report["manifests"] for v in m["report"]["vulnerabilities"]]
            if got != ids:
                raise RuntimeError(f"{repo}: report lists {got}, expected {ids}: {report}")
        for t, want in ((off, 200), (on, 412)):
            answer = status(t.port, f"/v2/{t.repo(VULN_REPO)}/manifests/latest")
            if answer != want:
                raise RuntimeError(f"{t.name}: the High image answered {answer}, expected {want}")
        checks.append(
            f"gate check: the image with a High vulnerability (scanned) answers 412 on '{ON}', "
            f"200 on '{OFF}'; the measured image's report lists no vulnerability; "
            f"scans done by the fake: {len(fake.scans)}"
        )
        for ref in refs:
            for t in targets:
                path = ref_path(t, ref, img)
                pm.check(t.port, path, img)  # the gated GET answers 200 before measuring
                _wrk.wrk(t.url + path, 2, a.connections, a.threads, strict=False)  # warm-up
                time.sleep(3)
        for rnd, ref, t in b.schedule(targets, refs, level_name="(manifest reference)"):
            path = ref_path(t, ref, img)
            v = b.record(t.name, rnd, ref, **measure(t, path, upstream, a))
            c.log(
                f"  {v['rps']:.0f} req/s p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms, "
                f"CPU {v['cpu_ms_per_req']:.3f} ms/req, upstream {v['upstream_requests']} "
                f"requests, load {v['load']}"
                + (f", wrk errors: {v['errors']}" if v["errors"] else "")
            )
            pm.check(t.port, path, img)
        scans_after = len(fake.scans)
    if scans_after != 2:
        checks.append(f"odd: the fake ran {scans_after} scans, expected 2")
    table = b.table(
        [
            h.level_col("by"),
            *_wrk.columns(OFF),
            _wrk.CPU_PER_REQUEST,
            h.ratio_col("CPU/req ratio to gate off (median, min-max)", "cpu_ms_per_req"),
            h.per_round("upstream requests per request", "up_per_req", "{:.3f}"),
            ("wrk errors (per round)", lambda g: " / ".join(e or "0" for e in g.vals("errors"))),
            h.per_round("load (1 min) start-end per round", "load", "{}"),
        ],
        baseline=OFF,
    )
    header = b.header(
        _wrk.describe(a, "<manifest by " + " / by ".join(refs) + ">"),
        f"image: one 1 MiB marker layer (no vulnerabilities) + config; both edgecaches proxy a "
        f"docker-registry upstream with [proxy] tag_ttl = {a.tag_ttl:g}, default [server] "
        f"workers (one per CPU); '{ON}': [[pull_policies]] repositories = [\"**\"], "
        f'block_severity = "High", [scanners.fake] = tests/fakes/scanner.FakeScannerAdapter, '
        "image scanned before measuring",
        *checks,
    )
    b.report(header, [table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
