"""wrk, the small-request load generator of manifest_rate and proxy_manifest_rate."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, duration: int, conns: int, threads: int, strict: bool = True) -> dict[str, Any]:
    """`wrk -c -t -d --latency -H 'Accept: <oci manifest>' URL`: rps, reqs, p50_ms, p99_ms.

    strict: any non-2xx response or socket error (timeouts included) raises; otherwise they
    are counted in "errors" (a string, "" when none).
    """
    p = subprocess.run(
        ["wrk", f"-c{conns}", f"-t{threads}", f"-d{duration}s", "--latency",
         "-H", f"Accept: {c.OCI_MANIFEST}", url],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    )  # fmt: skip
    out = p.stdout
    errors = [
        m.group(0).strip()
        for m in re.finditer(r"(Socket errors:.*|Non-2xx or 3xx responses:.*)", out)
    ]
    if strict and errors:
        raise RuntimeError(f"wrk saw errors:\n{out}")

    def lat(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * _UNIT_MS[m.group(2)] if m else float("nan")

    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "reqs": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": lat("50%"),
        "p99_ms": lat("99%"),
        "errors": "; ".join(errors),
    }


def add_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)


def run(a: argparse.Namespace, url: str, strict: bool = True) -> dict[str, Any]:
    """One measured wrk run with the options of add_options."""
    return wrk(url, a.duration, a.connections, a.threads, strict)


def describe(a: argparse.Namespace, what: str) -> str:
    return (
        f"wrk -c{a.connections} -t{a.threads} -d{a.duration}s --latency "
        f"-H 'Accept: {c.OCI_MANIFEST}' {what}"
    )


def columns(baseline: str) -> list[h.Column]:
    """req/s (per round, median, ratio), p50 and p99 latency."""
    return [
        h.name_col(),
        *h.metric("req/s", "rps", baseline=baseline),
        h.median_col("p50 ms", "p50_ms", "{:.2f}"),
        h.median_col("p99 ms", "p99_ms", "{:.2f}"),
    ]


CPU_PER_REQUEST = h.median_col("server CPU ms/req", "cpu_ms_per_req", "{:.3f}")
