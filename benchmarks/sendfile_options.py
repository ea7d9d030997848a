"""Micro-benchmark: kernel cost of os.sendfile per GiB under the socket options edgecache uses.

    .venv/bin/python benchmarks/sendfile_options.py [--clients 4] [--gib 4] [--rounds 3]
        [--workdir /tmp/edgecache-bench] [--json FILE] [--record [FILE]]

No HTTP: one sender process serves C loopback connections with non-blocking os.sendfile of a
page-cached file (a select loop standing in for trio's epoll loop, like zerocopy.py: at most
MAX_CALL bytes per call, then poll), C receiver processes recv_into a reused buffer (no hash).
Variants: TCP_NODELAY on (what trio/hypercorn set) vs off vs TCP_CORK around the body (nginx
`tcp_nopush`), and 1 MiB vs 8 MiB per call. Reports sender CPU seconds per GiB (user+sys of
the sending process, from getrusage) and MB/s; the sender CPU is what would be saved.
Rounds interleave the variants (_harness.py: order alternating by round); ratio = median of the
per-round ratios to today's variant.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h


def sender(
    ls: socket.socket,
    path: str,
    nconn: int,
    per_conn: int,
    nodelay: bool,
    cork: bool,
    max_call: int,
    out,
) -> None:
    conns = []
    for _ in range(nconn):
        s, _ = ls.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if nodelay else 0)
        if cork:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        s.setblocking(False)
        conns.append(s)
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    state: dict[int, list[Any]] = {
        s.fileno(): [s, 0, per_conn] for s in conns
    }  # sock, offset, left
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    while state:
        _, w, _ = select.select([], list(state), [])
        for fno in w:
            s, off, rem = state[fno]
            try:
                n = os.sendfile(fno, fd, off % size, min(max_call, rem, size - off % size))
            except BlockingIOError:
                continue
            off += n
            rem -= n
            if rem == 0:
                if cork:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
                del state[fno]
            else:
                state[fno] = [s, off, rem]
    t1 = time.monotonic()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out.put((t1 - t0, cpu, r1.ru_stime - r0.ru_stime))
    for s in conns:
        s.close()


def receiver(port: int, total: int) -> None:
    s = socket.create_connection((c.LOOPBACK, port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * c.MiB)
    buf = memoryview(bytearray(4 * c.MiB))
    got = 0
    while got < total:
        n = s.recv_into(buf)
        if not n:
            break
        got += n
    s.close()


def one(
    path: str, nconn: int, per_conn: int, nodelay: bool, cork: bool, max_call: int
) -> tuple[float, float]:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    ls = socket.socket()
    ls.bind((c.LOOPBACK, 0))
    ls.listen(64)
    port = ls.getsockname()[1]
    out = ctx.Queue()
    sp = ctx.Process(target=sender, args=(ls, path, nconn, per_conn, nodelay, cork, max_call, out))
    sp.start()
    rps = [ctx.Process(target=receiver, args=(port, per_conn)) for _ in range(nconn)]
    for p in rps:
        p.start()
    secs, cpu, _sys = out.get(timeout=300)
    for p in [*rps, sp]:
        p.join(30)
    ls.close()
    gib = nconn * per_conn / (1 << 30)
    return cpu / gib, nconn * per_conn / secs / 1e6


def main() -> int:
    b = h.Bench("sendfile_options", __doc__, rounds=3)
    b.ap.add_argument("--clients", type=int, default=4)
    b.ap.add_argument("--gib", type=float, default=4.0, help="total GiB per variant and round")
    a = b.parse()
    img = c.build_image(a.workdir / "layout", 8, 128)  # reuse the warm_blobs image's first layer
    path = str(img.blob_path(img.layers[0][0]))
    per_conn = int(a.gib * (1 << 30) / a.clients)
    variants = [
        ("NODELAY on, 1 MiB/call (edgecache today)", True, False, 1 << 20),
        ("NODELAY on, 8 MiB/call", True, False, 8 << 20),
        ("NODELAY off, 1 MiB/call", False, False, 1 << 20),
        ("TCP_CORK, 1 MiB/call (nginx tcp_nopush)", True, True, 1 << 20),
    ]
    for rnd, _, (name, nd, cork, mc) in b.schedule(variants, label=lambda v: v[0]):
        cpu, mbps = one(path, a.clients, per_conn, nd, cork, mc)
        b.record(name, rnd, cpu_s_per_gib=cpu, mbps=mbps)
        c.log(f"  {cpu:.3f} s/GiB {mbps:.0f} MB/s")
    today = variants[0][0]
    table = b.table(
        [
            h.name_col("variant"),
            h.per_round("sender CPU s/GiB per round", "cpu_s_per_gib", "{:.3f}"),
            h.median_col("median", "cpu_s_per_gib", "{:.3f}"),
            h.ratio_col("ratio to today (median, min-max)", "cpu_s_per_gib"),
            h.median_col("median MB/s", "mbps"),
        ],
        baseline=today,
    )
    header = b.header(
        f"{a.clients} connections, {a.gib} GiB per variant and round, receivers do not hash"
    )
    b.report(header, [table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
