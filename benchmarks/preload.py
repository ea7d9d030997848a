"""Preload of a 2 GiB docker-save archive vs `tar -xf` of the same file to the same disk.

Same run, fresh target directories each round, the order alternating (tar first in odd
rounds, preload first in even ones), a `sync` before each. The archive is skopeo-shaped
(`<diff_id>.tar` layers of random bytes, config, manifest.json last). `tar -xf` leaves its
output in the page cache; preload fsyncs every blob before it becomes visible, so tar is
reported both alone and followed by `sync` (the cost of making its output durable).
MiB/s = archive size / seconds; ratios are per round (_harness.py), then the median.

    .venv/bin/python benchmarks/preload.py [--gib 2] [--rounds 3] [--dir /var/tmp]
        [--json FILE] [--record [FILE]]
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h

MiB = 1 << 20


def build_archive(path: Path, gib: float, layer_mib: int = 256) -> int:
    """A docker-save tar of random layers totalling `gib` GiB; returns its size."""
    n_layers = max(1, int(gib * 1024 / layer_mib))
    diff_ids = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for _ in range(n_layers):
            tmp = path.with_suffix(".layer")
            hasher = hashlib.sha256()
            with open(tmp, "wb") as f:
                for _ in range(layer_mib):
                    block = os.urandom(MiB)
                    hasher.update(block)
                    f.write(block)
            diff_ids.append("sha256:" + hasher.hexdigest())
            tar.add(tmp, arcname=f"{hasher.hexdigest()}.tar")
            tmp.unlink()
        config = json.dumps(
            {"architecture": "amd64", "os": "linux",
             "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        ).encode()  # fmt: skip
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps(
            [{"Config": config_name, "RepoTags": ["bench/preload:v1"],
              "Layers": [d[7:] + ".tar" for d in diff_ids]}]
        ).encode()  # fmt: skip
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.stat().st_size


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def preload_argv(data: Path, archive: Path) -> list[str]:
    return [sys.executable, "-m", "edgecache.transfer.cli", "preload", "--data", str(data),
            str(archive)]  # fmt: skip


def main() -> None:
    b = h.Bench("preload", __doc__, rounds=3, workdir=False)
    b.ap.add_argument("--gib", type=float, default=2.0)
    b.ap.add_argument("--dir", default="/var/tmp")
    a = b.parse()
    base = Path(tempfile.mkdtemp(prefix="ec-bench-preload-", dir=a.dir))
    try:
        archive = base / "archive.tar"
        size = build_archive(archive, a.gib)
        mib = size / MiB
        c.log(f"archive: {mib:.0f} MiB in {base}")
        # Alternating which goes first: each one's writes are still being absorbed by the disk
        # (and the deletes of the last round's output) when the other starts.
        for rnd, _, what in b.schedule(["tar", "preload"]):
            subprocess.run(["sync"], check=True)
            if what == "tar":
                out = base / f"tar-{rnd}"
                out.mkdir()
                t_tar = timed(["tar", "-xf", str(archive), "-C", str(out)])
                t_sync = timed(["sync"])
                b.record("tar -xf", rnd, mibps=mib / t_tar)
                b.record("tar -xf + sync", rnd, mibps=mib / (t_tar + t_sync))
                shutil.rmtree(out)
            else:
                data = base / f"data-{rnd}"
                t_pre = timed(preload_argv(data, archive)) + timed(["sync"])
                b.record("preload (+ sync)", rnd, mibps=mib / t_pre)
                shutil.rmtree(data)
            c.log(f"  {b.records[-1]['mibps']:.0f} MiB/s")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    table = b.table(
        [
            h.name_col("step"),
            *h.metric("MiB/s", "mibps", baseline="tar -xf + sync"),
            b.ratio_to("ratio to tar -xf alone", "mibps", "tar -xf"),
        ],
        baseline="tar -xf + sync",
    )
    b.report(b.header(f"archive {mib:.0f} MiB in {a.dir}; `sync` before each step"), [table])


if __name__ == "__main__":
    main()
