"""Preload of a 2 GiB docker-save archive vs `tar -xf` of the same file to the same disk.

Same run, fresh target directories each round, the order alternating (tar first in odd
rounds, preload first in even ones), a `sync` before each. The archive is skopeo-shaped
(`<diff_id>.tar` layers of random bytes, config, manifest.json last). `tar -xf` leaves its
output in the page cache; preload fsyncs every blob before it becomes visible, so tar is
reported both alone and followed by `sync` (the cost of making its output durable).

    .venv/bin/python benchmarks/preload.py [--gib 2] [--rounds 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ec-bench-preload-", dir=args.dir))
    try:
        archive = base / "archive.tar"
        size = build_archive(archive, args.gib)
        print(f"archive: {size / MiB:.0f} MiB, {args.rounds} rounds, dir {base}", flush=True)
        rows = []
        for round_ in range(args.rounds):
            out = base / f"tar-{round_}"
            data = base / f"data-{round_}"
            times: dict[str, tuple[float, float]] = {}
            # Alternate which goes first: each one's writes are still being absorbed by the
            # disk (and the deletes of the last round's output) when the other starts.
            for what in ("tar", "preload") if round_ % 2 == 0 else ("preload", "tar"):
                subprocess.run(["sync"], check=True)
                if what == "tar":
                    out.mkdir()
                    times[what] = (timed(["tar", "-xf", str(archive), "-C", str(out)]),
                                   timed(["sync"]))  # fmt: skip
                else:
                    times[what] = (timed(preload_argv(data, archive)), timed(["sync"]))
            t_tar, t_sync = times["tar"]
            t_pre, t_pre_sync = times["preload"]
            rows.append((t_tar, t_tar + t_sync, t_pre + t_pre_sync))
            print(
                f"round {round_ + 1} ({'tar' if round_ % 2 == 0 else 'preload'} first): "
                f"tar -xf {size / MiB / t_tar:.0f} MB/s, "
                f"tar -xf + sync {size / MiB / (t_tar + t_sync):.0f} MB/s, "
                f"preload {size / MiB / (t_pre + t_pre_sync):.0f} MB/s "
                f"(ratio {(t_tar + t_sync) / (t_pre + t_pre_sync):.2f} of tar+sync, "
                f"{t_tar / (t_pre + t_pre_sync):.2f} of tar alone)",
                flush=True,
            )
            shutil.rmtree(out)
            shutil.rmtree(data)
        tar_only = statistics.median(r[0] for r in rows)
        tar_sync = statistics.median(r[1] for r in rows)
        pre = statistics.median(r[2] for r in rows)
        print(
            f"median: tar -xf {size / MiB / tar_only:.0f} MiB/s, tar -xf + sync "
            f"{size / MiB / tar_sync:.0f} MiB/s, preload {size / MiB / pre:.0f} MiB/s; "
            f"ratio {tar_sync / pre:.2f} (vs tar+sync), {tar_only / pre:.2f} (vs tar alone)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
