"""A real containerd pull through edgecache, cold and warm, as a ratio to pulling directly.

    .venv/bin/python benchmarks/containerd_pull.py [--rounds 3] [--layers 4] [--layer-mib 48]
        [--fetch-only] [--tls] [--workdir /tmp/edgecache-bench] [--json FILE] [--record [FILE]]

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
/metrics (blob GETs answered). Rounds alternate the order of direct and the edgecache pair
(_harness.py; cold always before warm); ratios are per round, then the median.
Targets (issue 3): cold <= 1.1x direct, warm <= 1.0x direct.
With --tls, two edgecaches over TLS (a self-signed EC certificate, given to containerd as the
hosts.toml `ca`) instead of one over plain HTTP: `[server] alpn` with http/1.1 first (the
default) and with h2 first, which containerd's Go client then takes (issue 9: which ALPN
order to ship).
"""

from __future__ import annotations

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h
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


def blob_gets(url: str) -> int:
    context = c.client_tls_context([]) if url.startswith("https") else None
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10, context=context).read()
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


GOALS = {"direct": "-", "cold": "<= 1.1x", "warm": "<= 1.0x"}


def main() -> int:
    b = h.Bench("containerd_pull", __doc__, rounds=3)
    b.ap.add_argument("--layers", type=int, default=4)
    b.ap.add_argument("--layer-mib", type=int, default=48)
    b.ap.add_argument("--timeout", type=float, default=300)
    b.ap.add_argument(
        "--fetch-only",
        action="store_true",
        help="`ctr content fetch` (download only) instead of `ctr images pull` (+ unpack)",
    )
    b.ap.add_argument("--tls", action="store_true", help="over TLS, http/1.1 or h2 first")
    a = b.parse()
    img = build_tar_image(a.workdir / f"layout-tar-{a.layers}x{a.layer_mib}", a.layers, a.layer_mib)
    size = p.image_bytes(img)
    fo = img.manifest_digest if a.fetch_only else ""
    with b:
        upstream = b.own(c.Registry(b.run_dir / "upstream").start())
        c.push_image(upstream.port, REPO, img, TAG)
        host = f"{c.LOOPBACK}:{upstream.port}"
        ref = f"{host}/{REPO}:{TAG}"
        direct_dir = b.run_dir / "hosts-direct" / f"{c.LOOPBACK}_{upstream.port}_"
        direct_dir.mkdir(parents=True)
        (direct_dir / "hosts.toml").write_text(f'server = "http://{host}"\n')
        # Unmeasured warm-up: page cache of the upstream's files, containerd binaries.
        ctr_pull(ref, direct_dir.parent, a.timeout, fo)
        if a.tls:
            cert, key = c.make_cert(b.run_dir / "tls")
            tls = f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
            caches = [
                h.edgecache(f"edgecache {first}-first", upstream_name=host, config=tls + alpn)
                for first, alpn in (
                    ("h1", 'alpn = ["http/1.1", "h2"]\n'),
                    ("h2", 'alpn = ["h2", "http/1.1"]\n'),
                )
            ]
            ca = ["--ca-file", str(cert)]
        else:
            caches, ca = [h.edgecache(upstream_name=host)], []
        for rnd, _, t in b.schedule(["direct", *caches]):
            if t == "direct":
                b.record("direct", rnd, seconds=ctr_pull(ref, direct_dir.parent, a.timeout, fo))
                c.log(f"  {b.records[-1]['seconds']:.2f} s")
                continue
            assert isinstance(t, h.Target)
            slug = t.name.replace(" ", "-")
            with t.running(b.run_dir / f"{slug}{rnd}", upstream.url) as srv:
                assert isinstance(srv, c.Edgecache) and srv.config_path is not None
                hosts = b.run_dir / f"hosts-{slug}{rnd}"
                subprocess.run(
                    [
                        c.EDGECACHE, "mirror-config", "containerd", "--url", srv.url,
                        "--config", str(srv.config_path), "--write", str(hosts), *ca,
                    ],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                for label in (f"{t.name} cold", f"{t.name} warm"):
                    before = blob_gets(srv.url)
                    secs = ctr_pull(ref, hosts, a.timeout, fo)
                    served = blob_gets(srv.url) - before
                    c.log(f"  {label}: {secs:.2f} s, edgecache answered {served} blob GETs")
                    if served < len(img.blobs):
                        raise RuntimeError(
                            f"{label}: edgecache served {served} blob GETs < "
                            f"{len(img.blobs)}: containerd fell back to the upstream"
                        )
                    m = p.metrics(srv.port, tls=a.tls)  # cumulative: after warm, cold + warm
                    b.record(
                        label,
                        rnd,
                        seconds=secs,
                        upstream_bytes=m.get("edgecache_upstream_bytes_total"),
                        blob_fetches=m.get("edgecache_upstream_blob_fetches_total"),
                    )
    table = b.table(
        [
            h.name_col("pull"),
            *h.metric("seconds", "seconds", "{:.2f}", baseline="direct"),
            ("target", lambda g: GOALS[g.name.rsplit(" ", 1)[-1]]),
        ],
        baseline="direct",
    )
    ups = " / ".join(
        f"{(r['upstream_bytes'] or 0) / size:.3f}"
        for r in b.records
        if r["target"].endswith(" warm")
    )
    header = b.header(
        f"ctr 1.6 {'content fetch' if fo else 'images pull --snapshotter native'}; "
        f"image {a.layers} x {a.layer_mib} MiB tar layers = {size} bytes; fresh containerd root "
        f"per pull; edgecache upstream bytes / image per round (cold + warm): {ups}"
    )
    b.report(header, [table], image_bytes=size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
