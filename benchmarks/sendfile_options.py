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

With --h2c: what an HTTP/2 body costs the kernel against HTTP/1.1's sendfile, with no HTTP/2
implementation in the way (the floor of issue 9's "h2c >= 0.8x of plain HTTP/1.1"): the same
bytes as 16 KiB DATA frames (the frame size every common client allows; Go's, nghttp2's), a
9-byte frame header before each. Variants: sendfile (HTTP/1.1, edgecache today); sendmsg of
the frame headers and the pages of the mapped file between them, 4 MiB per call (edgecache's
h2c today, server/h2fast.py); a header write and a splice of the frame's pages into a pipe per
frame, the pipe spliced to the socket (zero copy, as nginx's sendfile per DATA frame).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import resource
import select
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
import _harness as h

_socks: dict[int, socket.socket] = {}  # the sender's connections by descriptor


def sender(
    ls: socket.socket,
    path: str,
    nconn: int,
    per_conn: int,
    nodelay: bool,
    cork: bool,
    max_call: int,
    out,
    way: str = "sendfile",
) -> None:
    conns = []
    for _ in range(nconn):
        s, _ = ls.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if nodelay else 0)
        if cork:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        s.setblocking(False)
        conns.append(s)
        _socks[s.fileno()] = s
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    state: dict[int, list[Any]] = {
        s.fileno(): [s, 0, per_conn] for s in conns
    }  # sock, offset, left
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    send = _WAYS[way](fd, size, max_call)
    while state:
        _, w, _ = select.select([], list(state), [])
        for fno in w:
            s, off, rem = state[fno]
            try:
                n = send(fno, off, rem)
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


FRAME = 16 << 10  # DATA frame payload: SETTINGS_MAX_FRAME_SIZE of nghttp2's and Go's clients
_HEAD = struct.Struct(">IBI")  # length (24 bits) << 8 | type, flags, stream id
Send = Any  # (socket fd, stream offset, bytes left) -> stream bytes sent (payload + headers)


def _sendfile(fd: int, size: int, max_call: int) -> Send:
    def send(fno: int, off: int, rem: int) -> int:
        return os.sendfile(fno, fd, off % size, min(max_call, rem, size - off % size))

    return send


def _frames(off: int, budget: int, frames: int) -> list[tuple[int, int]]:
    """The next DATA frames of a body: (file offset, payload length) for stream bytes from
    `off` (a frame boundary), `budget` bytes of stream at most, header included."""
    unit = _HEAD.size + FRAME
    out = []
    k = off // unit
    while budget > _HEAD.size:
        n = min(FRAME, budget - _HEAD.size)
        out.append(((k % frames) * FRAME, n))
        budget -= _HEAD.size + n
        k += 1
    return out


def _sendmsg(fd: int, size: int, max_call: int) -> Send:
    """edgecache's h2c: frame headers and mapped pages in one sendmsg of up to max_call."""
    view = memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ))
    pending: dict[int, list[Any]] = {}  # socket fd: the unsent rest of its last batch

    def send(fno: int, off: int, rem: int) -> int:
        parts = pending.get(fno)
        if not parts:
            parts = []
            for at, n in _frames(off, min(rem, max_call), size // FRAME):
                parts += (_HEAD.pack(n << 8, 0, 1), view[at : at + n])
        sent = _socks[fno].sendmsg(parts[:1024])
        done, left = 0, sent
        while left and left >= len(parts[done]):
            left -= len(parts[done])
            done += 1
        rest = parts[done:]
        if left:
            rest[0] = memoryview(rest[0])[left:]
        pending[fno] = rest
        return sent

    return send


def _splice(fd: int, size: int, max_call: int) -> Send:
    """Zero copy: per frame, its header written into a pipe and its pages spliced in after
    it; the pipe spliced to the socket."""
    pipes: dict[int, tuple[int, int, list[int]]] = {}  # socket fd: read end, write end, [held]

    def send(fno: int, off: int, rem: int) -> int:
        if fno not in pipes:
            r, w = os.pipe()
            fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ 1 MiB (Linux's pipe-max-size)
            pipes[fno] = (r, w, [0])
        r, w, held = pipes[fno]
        if not held[0]:
            # 48 frames: a header's slot and a 16 KiB frame's 4 page slots each, in 256
            for at, n in _frames(off, min(rem, 48 * (_HEAD.size + FRAME)), size // FRAME):
                os.write(w, _HEAD.pack(n << 8, 0, 1))
                got = 0
                while got < n:
                    got += os.splice(fd, w, n - got, offset_src=at + got)
                held[0] += _HEAD.size + n
        n = os.splice(r, fno, held[0], flags=os.SPLICE_F_NONBLOCK)
        held[0] -= n
        return n

    return send


_WAYS = {"sendfile": _sendfile, "sendmsg": _sendmsg, "splice": _splice}


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
    path: str, nconn: int, per_conn: int, nodelay: bool, cork: bool, max_call: int, way: str
) -> tuple[float, float]:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    ls = socket.socket()
    ls.bind((c.LOOPBACK, 0))
    ls.listen(64)
    port = ls.getsockname()[1]
    out = ctx.Queue()
    sp = ctx.Process(
        target=sender, args=(ls, path, nconn, per_conn, nodelay, cork, max_call, out, way)
    )
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
    b.ap.add_argument("--clients", type=int, help="connections (default 4; 1 with --h2c)")
    b.ap.add_argument("--h2c", action="store_true", help="HTTP/2 DATA frame ways vs sendfile")
    b.ap.add_argument("--gib", type=float, default=4.0, help="total GiB per variant and round")
    a = b.parse()
    img = c.build_image(a.workdir / "layout", 8, 128)  # reuse the warm_blobs image's first layer
    path = str(img.blob_path(img.layers[0][0]))
    a.clients = a.clients or (1 if a.h2c else 4)
    per_conn = int(a.gib * (1 << 30) / a.clients)
    variants = [
        ("NODELAY on, 1 MiB/call (edgecache today)", True, False, 1 << 20, "sendfile"),
        ("NODELAY on, 8 MiB/call", True, False, 8 << 20, "sendfile"),
        ("NODELAY off, 1 MiB/call", False, False, 1 << 20, "sendfile"),
        ("TCP_CORK, 1 MiB/call (nginx tcp_nopush)", True, True, 1 << 20, "sendfile"),
    ]
    if a.h2c:
        variants = [
            ("HTTP/1.1: sendfile, 1 MiB/call (edgecache today)", True, False, 1 << 20, "sendfile"),
            ("h2c: sendmsg, headers + mapped pages, 4 MiB (now)", True, False, 4 << 20, "sendmsg"),
            ("h2c: header write + splice per frame (zero copy)", True, False, 1 << 20, "splice"),
        ]  # fmt: skip
    for rnd, _, (name, nd, cork, mc, way) in b.schedule(variants, label=lambda v: v[0]):
        cpu, mbps = one(path, a.clients, per_conn, nd, cork, mc, way)
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
            h.ratio_col("MB/s ratio to today", "mbps"),
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
