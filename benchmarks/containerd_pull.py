"""A real containerd pull through edgecache, cold and warm, as a ratio to pulling directly.

    .venv/bin/python benchmarks/containerd_pull.py [--rounds 3] [--layers 4] [--layer-mib 48]
        [--workdir /tmp/edgecache-bench] [--json FILE]

Upstream: a plain docker-registry holding an image of uncompressed tar layers (each one file of
random bytes, so they unpack). containerd 1.6 (tests/support.py `Containerd`: own root, state
and socket, CRI disabled) runs `ctr images pull --hosts-dir DIR --snapshotter native REF`
with REF = 127.0.0.1:<upstream port>/<repo>:v1, three ways:
- direct: DIR holds only `server = "http://127.0.0.1:<upstream port>"` for that host;
- edgecache cold: DIR written by `edgecache mirror-config containerd --url URL --config FILE
  --write DIR` for a fresh edgecache (new data dir) whose upstream is named 127.0.0.1:<port>;
- edgecache warm: the same edgecache again, now holding the image.
Every pull uses a brand-new containerd (new root: empty content store and snapshots), started
before the timer; the timer covers only `ctr images pull` (fetch + unpack). That edgecache
really served the pull (containerd silently falls back to `server`) is checked from its
/metrics (blob GETs answered). Rounds rotate the order of direct and the edgecache pair
(cold always before warm); ratios are per round, then the median.
Targets (issue 3): cold <= 1.1x direct, warm <= 1.0x direct.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _pull as p

from tests.support import Containerd

REPO = "bench/ctrpull"
TAG = "v1"
_SAMPLE = re.compile(r"^edgecache_http_requests_total\{([^}]*)\} (\S+)$", re.MULTILINE)


def build_tar_image(layout: Path, n_layers: int, layer_mib: int) -> c.Image:
    """An OCI layout whose layers are uncompressed tars of one random file each (cached)."""
    meta = layout / "bench-image.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        if m["n_layers"] == n_layers and m["layer_mib"] == layer_mib:
            manifest = (layout / "blobs/sha256" / m["manifest"].split(":")[1]).read_bytes()
            return c.Image(
                layout,
                tuple(m["config"]),
                [tuple(x) for x in m["layers"]],  # type: ignore[arg-type]
                manifest,
                m["manifest"],
            )
    shutil.rmtree(layout, ignore_errors=True)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def put(data: bytes) -> tuple[str, int]:
        hexd = hashlib.sha256(data).hexdigest()
        (blobs / hexd).write_bytes(data)
        return "sha256:" + hexd, len(data)

    layers = []
    for i in range(n_layers):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            data = os.urandom(layer_mib * c.MiB)
            info = tarfile.TarInfo(f"data/layer{i}.bin")
            info.size = len(data)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
        layers.append(put(buf.getvalue()))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
        }
    ).encode()
    cfg = put(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": c.OCI_MANIFEST,
            "config": {"mediaType": c.OCI_CONFIG, "digest": cfg[0], "size": cfg[1]},
            "layers": [{"mediaType": c.OCI_LAYER, "digest": d, "size": s} for d, s in layers],
        }
    ).encode()
    mdig, _ = put(manifest)
    meta.write_text(
        json.dumps(
            {
                "n_layers": n_layers,
                "layer_mib": layer_mib,
                "config": cfg,
                "layers": layers,
                "manifest": mdig,
            }
        )
    )
    return c.Image(layout, cfg, layers, manifest, mdig)


def blob_gets(port: int) -> int:
    text = urllib.request.urlopen(f"http://{c.LOOPBACK}:{port}/metrics", timeout=10).read()
    total = 0.0
    for labels, value in _SAMPLE.findall(text.decode()):
        f = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if (
            "blob" in f.get("route", "")
            and f.get("method") == "GET"
            and f.get("status")
            in (
                "200",
                "206",
            )
        ):
            total += float(value)
    return int(total)


def ctr_pull(ref: str, hosts_dir: Path, timeout: float, fetch_only: str = "") -> float:
    """Seconds for `ctr images pull` into a brand-new containerd (started before the timer).

    fetch_only = the manifest digest: `ctr content fetch` instead (download only, no unpack).
    """
    base = Path(tempfile.mkdtemp(prefix="ecb-ctr-", dir="/tmp"))
    daemon = Containerd(base)
    try:
        daemon.start()
        t0 = time.monotonic()
        if fetch_only:
            daemon.ctr(
                "content", "fetch", "--hosts-dir", str(hosts_dir), ref,
                namespace="bench", timeout=timeout,
            )  # fmt: skip
        else:
            daemon.ctr(
                "images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native", ref,
                namespace="bench", timeout=timeout,
            )  # fmt: skip
        secs = time.monotonic() - t0
        if fetch_only:
            listing = daemon.ctr("content", "ls", namespace="bench").stdout
            if fetch_only not in listing:
                raise RuntimeError(f"{fetch_only} not in ctr content ls:\n{listing}")
        else:
            listing = daemon.ctr("images", "ls", namespace="bench").stdout
            if ref not in listing:
                raise RuntimeError(f"{ref} not in ctr images ls:\n{listing}")
        return secs
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer-mib", type=int, default=48)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgecache-bench"))
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--fetch-only",
        action="store_true",
        help="`ctr content fetch` (download only) instead of `ctr images pull` (+ unpack)",
    )
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = a.workdir / f"ctrpull-{int(time.time())}"
    img = build_tar_image(a.workdir / f"layout-tar-{a.layers}x{a.layer_mib}", a.layers, a.layer_mib)
    size = p.image_bytes(img)
    fo = img.manifest_digest if a.fetch_only else ""
    load0 = c.loadavg()
    started = datetime.datetime.now()
    res: dict[str, list[float]] = {"direct": [], "edgecache cold": [], "edgecache warm": []}
    extra: list[dict[str, Any]] = []
    upstream = c.Registry(run_dir / "upstream").start()
    try:
        c.push_image(upstream.port, REPO, img, TAG)
        host = f"{c.LOOPBACK}:{upstream.port}"
        ref = f"{host}/{REPO}:{TAG}"
        direct_dir = run_dir / "hosts-direct"
        (direct_dir / f"{c.LOOPBACK}_{upstream.port}_").mkdir(parents=True)
        (direct_dir / f"{c.LOOPBACK}_{upstream.port}_" / "hosts.toml").write_text(
            f'server = "http://{host}"\n'
        )
        # Unmeasured warm-up: page cache of the upstream's files, containerd binaries.
        ctr_pull(ref, direct_dir, a.timeout, fo)
        orders = [["direct", "ec"], ["ec", "direct"]]
        for r in range(a.rounds):
            for what in orders[r % 2]:
                if what == "direct":
                    c.log(f"round {r + 1}: direct (load {c.loadavg()}) ...")
                    res["direct"].append(ctr_pull(ref, direct_dir, a.timeout, fo))
                    c.log(f"  {res['direct'][-1]:.2f} s")
                    continue
                ec = c.Edgecache(
                    run_dir / f"ec{r}", config=f'[upstreams."{host}"]\nurl = "http://{host}"\n'
                ).start()
                try:
                    hosts = run_dir / f"hosts-ec{r}"
                    subprocess.run(
                        [
                            c.EDGECACHE, "mirror-config", "containerd", "--url", ec.url,
                            "--config", str(run_dir / f"ec{r}.toml"), "--write", str(hosts),
                        ],
                        check=True, capture_output=True, text=True,
                    )  # fmt: skip
                    for label in ("edgecache cold", "edgecache warm"):
                        c.log(f"round {r + 1}: {label} (load {c.loadavg()}) ...")
                        before = blob_gets(ec.port)
                        res[label].append(ctr_pull(ref, hosts, a.timeout, fo))
                        served = blob_gets(ec.port) - before
                        c.log(f"  {res[label][-1]:.2f} s, edgecache answered {served} blob GETs")
                        if served < len(img.blobs):
                            raise RuntimeError(
                                f"{label}: edgecache served {served} blob GETs < "
                                f"{len(img.blobs)}: containerd fell back to the upstream"
                            )
                    m = p.metrics(ec.port)
                    extra.append(
                        {
                            "round": r + 1,
                            "upstream_bytes": m.get("edgecache_upstream_bytes_total"),
                            "blob_fetches": m.get("edgecache_upstream_blob_fetches_total"),
                        }
                    )
                finally:
                    ec.stop()
    finally:
        upstream.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps({"image_bytes": size, "res": res, "extra": extra}, indent=1))

    rows = []
    for name, vals in res.items():
        ratio = c.median(v / d for v, d in zip(vals, res["direct"], strict=False))
        rows.append(
            [
                name,
                " / ".join(f"{v:.2f}" for v in vals),
                f"{c.median(vals):.2f}",
                f"{ratio:.2f}x",
                {"direct": "-", "edgecache cold": "<= 1.1x", "edgecache warm": "<= 1.0x"}[name],
            ]
        )
    print()
    print(f"# containerd_pull  {started.isoformat(timespec='seconds')}")
    print(f"# {c.machine()}")
    print(f"# edgecache: {c.edgecache_source()}")
    ups = " / ".join(f"{(e['upstream_bytes'] or 0) / size:.3f}" for e in extra)
    print(
        f"# ctr 1.6 {'content fetch' if fo else 'images pull --snapshotter native'}; "
        f"image {a.layers} x {a.layer_mib} MiB tar "
        f"layers = {size} bytes; fresh containerd root per pull; {a.rounds} rounds; edgecache "
        f"upstream bytes / image per round (cold + warm): {ups}; "
        f"load average at start: {load0}, at end: {c.loadavg()}"
    )
    print(
        c.table(
            ["pull", "seconds per round", "median s", "ratio to direct (median)", "target"], rows
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
