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
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root: tests.faultproxy
import _common as c

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


def metrics(port: int) -> dict[str, float]:
    """edgecache's /metrics, summed by metric name (labels dropped)."""
    text = urllib.request.urlopen(f"http://{c.LOOPBACK}:{port}/metrics", timeout=10).read()
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
