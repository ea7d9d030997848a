"""Shared pieces of the pull-through-cache benchmarks (cold_stampede, flaky_link, ...).

A full pull = GET the manifest by tag, then every blob by digest (layers in manifest order,
then the config), on one keep-alive raw-socket connection (`_common.H1Client`), each sha256
verified. The upstream is a plain docker-registry holding the image; each cache under test
reaches it through its own `tests/faultproxy.FaultProxy` (imported from the repository, not
copied), whose counters give the bytes and requests the upstream served to that cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import re
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root: tests.faultproxy
import _common as c
import _harness as h

from tests.faultproxy import FaultProxy, random_offsets

__all__ = ["FaultProxy", "random_offsets"]

UP_NAME = "up"  # edgecache's name for the upstream: project path /v2/up/<repo>/...


def full_pull(
    port: int,
    prefix: str,
    tag: str,
    manifest_digest: str,
    attempts: int = 1,
    *,
    prepare: bool = False,
    prepared: Any = None,
) -> Any:
    """One client's full pull through `port` of /v2/<prefix>/...; dict of measurements.

    ttfb = seconds from the client's start to the first body byte of the first layer.
    attempts > 1: a blob (or manifest) GET that fails is retried on a new connection, as a
    real client would (the bytes already read of that blob are thrown away).
    """
    if prepare:
        return c.H1Client(c.LOOPBACK, port)
    cl: c.H1Client = prepared
    t0 = time.monotonic()
    retries = 0
    errors: list[str] = []

    def attempt(fn: Any) -> Any:
        nonlocal cl, retries
        for i in range(attempts):
            try:
                return fn()
            except (c.HTTPError, OSError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                if i == attempts - 1:
                    raise c.HTTPError(f"gave up after {attempts} attempts: {errors[-3:]}") from e
                retries += 1
                cl.sock.close()
                cl = c.H1Client(c.LOOPBACK, port)
        raise AssertionError

    def manifest() -> bytes:
        status, body = cl.get_small(f"/v2/{prefix}/manifests/{tag}", {"Accept": c.OCI_MANIFEST})
        if status != 200:
            raise c.HTTPError(f"manifest: status {status} {body[:200]!r}")
        if "sha256:" + hashlib.sha256(body).hexdigest() != manifest_digest:
            raise c.HTTPError("manifest digest mismatch")
        return body

    m = json.loads(attempt(manifest))
    blobs = [(x["digest"], x["size"]) for x in m["layers"]]
    blobs.append((m["config"]["digest"], m["config"]["size"]))
    ttfb = None
    total = 0
    for digest, size in blobs:

        def blob(digest: str = digest, size: int = size) -> int:
            n = cl.get(f"/v2/{prefix}/blobs/{digest}", digest, True)
            if n != size:
                raise c.HTTPError(f"size {n} != {size}")
            return n

        total += attempt(blob)
        if ttfb is None:
            ttfb = cl.first_body_at - t0
    cl.close()
    return {"bytes": total, "ttfb": ttfb, "retries": retries}


def cold_pull(
    t: h.Target,
    upstream: c.Proc,
    img: c.Image,
    repo: str,
    tag: str,
    clients: int,
    workdir: Path,
    timeout: float,
    attempts: int = 1,
    arm: Callable[[FaultProxy], None] | None = None,
) -> dict[str, Any]:
    """`clients` concurrent full pulls through a fresh (cold) `t` behind its own FaultProxy.

    arm: faults to set on the proxy once the cache is up. "wall" spans the completed pulls
    (NaN when none completed); the upstream counters are read once it went quiet (`settle`).
    """
    fp = FaultProxy(c.LOOPBACK, upstream.port).start()
    try:
        with t.running(workdir, fp.url) as srv:
            if arm is not None:
                arm(fp)
            cpu0 = c.cpu_seconds(srv.pid)
            t0 = time.monotonic()
            errors: list[str] = []
            try:
                res = c.run_clients_results(
                    full_pull,
                    [(srv.port, t.repo(repo), tag, img.manifest_digest, attempts)] * clients,
                    timeout,
                )
            except queue.Empty:
                res = []
                errors.append(f"timed out after {timeout:.0f} s")
            ok = [r for r in res if r[0] == "ok"]
            errors[:0] = [r[3] for r in res if r[0] != "ok"]
            wall = max(r[2] for r in ok) - min(r[1] for r in ok) if ok else float("nan")
            wall_all = time.monotonic() - t0
            settle(fp)
            out: dict[str, Any] = {
                "ok": len(ok),
                "errors": errors[:3],
                "wall": wall,
                "wall_incl_failures": wall_all,
                "pulls": [r[3] for r in ok],
                "upstream_bytes": fp.bytes_to_client,
                "upstream_requests": fp.requests,
                "upstream_connections": fp.connections,
                "cuts": fp.cuts,
                "failed_503": fp.failed_requests,
                "server_cpu": c.cpu_seconds(srv.pid) - cpu0,
            }
            if t.kind == "edgecache":
                m = metrics(srv.port)
                out["ec_upstream_bytes"] = m.get("edgecache_upstream_bytes_total")
                out["ec_blob_fetches"] = m.get("edgecache_upstream_blob_fetches_total")
            return out
    finally:
        fp.close()


def cold_targets(kinds: str, workers: list[int] | None) -> list[h.Target]:
    """--targets edgecache,registry: the caches of cold_stampede and flaky_link (edgecache once
    per --workers value)."""
    out: list[h.Target] = []
    for kind in kinds.split(","):
        if kind == "edgecache":
            out += h.edgecaches(workers, upstream_name=UP_NAME)
        elif kind == "registry":
            out.append(h.registry())
        else:
            raise SystemExit(f"--targets: unknown target {kind!r} (edgecache, registry)")
    return out


def leading_columns(ok_header: str) -> list[h.Column]:
    """clients, target, and pulls that completed / pulls started over the rounds."""
    return [
        h.level_col("clients"),
        h.name_col(),
        (ok_header, lambda g: f"{sum(g.vals('ok'))}/{g.level * len(g.recs)}"),
    ]


def image_bytes(img: c.Image) -> int:
    """Everything a full pull transfers: layers + config + manifest."""
    return img.total + img.config[1] + len(img.manifest)


def settle(fp: FaultProxy, quiet: float = 1.0, limit: float = 60.0) -> float:
    """Wait until the upstream has sent nothing for `quiet` s (background fetches finished)."""
    t_end = time.monotonic() + limit
    last, since = fp.bytes_to_client, time.monotonic()
    while time.monotonic() < t_end:
        time.sleep(0.1)
        now = fp.bytes_to_client
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return time.monotonic() - since


def edgecache_config(upstream_url: str, **keys: Any) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    return f'[upstreams.{UP_NAME}]\nurl = "{upstream_url}"\n{extra}'


def metrics(port: int, tls: bool = False) -> dict[str, float]:
    """edgecache's /metrics, summed by metric name (labels dropped)."""
    url = f"{'https' if tls else 'http'}://{c.LOOPBACK}:{port}/metrics"
    context = c.client_tls_context([]) if tls else None
    text = urllib.request.urlopen(url, timeout=10, context=context).read()
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})? (\S+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def quantile(xs: list[float], q: float) -> float:
    """Nearest-rank quantile (p99 of 16 values = the largest)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[max(0, math.ceil(q * len(s)) - 1)]


def fmt_s(x: float) -> str:
    return "-" if x != x else (f"{x:.2f}" if x < 10 else f"{x:.1f}")
