"""HTTP/2 vs HTTP/1.1 for a large blob from edgecache, over TLS or plain TCP (decides ALPN).

    .venv/bin/python benchmarks/h2_vs_h1_tls.py [--blob-mib 256] [--clients 1,4] [--rounds 3]
        [--transport tls|plain] [--client python|h2load|both]
        [--profile [--profile-proto h1|h2]] [--workdir /tmp/edgecache-bench]

One blob of random bytes is pushed over plain HTTP, then edgecache is restarted on the same
data dir, with `[server] tls_cert/tls_key` (self-signed EC cert made with openssl) for
--transport tls. Over TLS the server cannot use sendfile: blobs go through its pread-chunk path
for both protocols. With --transport plain, HTTP/1.1 gets sendfile and h2c (prior knowledge)
the pread-chunk path: the issue's "h2c at >= 0.8x of plain HTTP/1.1 with the same client".

- python clients (--client python): h1 is a raw socket (ALPN ["http/1.1"] only over TLS),
  recv_into reused buffers, sha256 in a second thread (benchmarks/_common.py H1Client). h2 is
  the `h2` package over a socket (ALPN ["h2"] only), flow control like Go's net/http2
  transport: SETTINGS_INITIAL_WINDOW_SIZE 4 MiB per stream, connection window raised to 1 GiB,
  WINDOW_UPDATE once half a window is consumed (h2's window manager), sha256 in a second
  thread. Its parsing in Python costs more CPU than the server's sending: with it the ratio
  measures the clients as much as the server.
- h2load (--client h2load): nghttp2's h2load, one program for both protocols (--h1, or
  --npn-list=h2 so that ALPN cannot pick http/1.1), its default windows (1 GiB), no digest
  check; the run fails unless h2load reports the intended protocol.

Each client is its own process and connection and GETs the blob once; N clients run at once.
Rounds interleaved (h1, h2, h1, ...). Ratio = median over rounds of h2 / h1 (the same client
kind). With --profile, extra rounds (max clients, --profile-proto h1|h2, the first client kind
of that protocol) run under py-spy: benchmarks/profile-<transport>-<proto>.{svg,collapsed,txt}
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
from _targets import with_workers

REPO = "bench/tls"
HERE = Path(__file__).resolve().parent
STREAM_WINDOW = 4 * c.MiB  # Go: transportDefaultStreamFlow
CONN_WINDOW = 1 << 30  # Go: transportDefaultConnFlow


def _hasher(q: queue.Queue[Any], h: Any) -> None:
    while (item := q.get()) is not None:
        for chunk in item:
            h.update(chunk)


def h2_pull(
    port: int,
    path: str,
    digest: str,
    verify: bool,
    tls: bool,
    *,
    prepare: bool = False,
    prepared: Any = None,
) -> Any:
    if prepare:
        s = socket.create_connection((c.LOOPBACK, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * c.MiB)
        ss = s
        if tls:
            ss = c.client_tls_context(["h2"]).wrap_socket(s, server_hostname="localhost")
            if ss.selected_alpn_protocol() != "h2":
                raise RuntimeError(f"ALPN gave {ss.selected_alpn_protocol()!r}, not h2")
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        S = h2.settings.SettingCodes
        # Effective at once for our own bookkeeping and sent in the first SETTINGS frame.
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                S.ENABLE_PUSH: 0,
                S.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                S.MAX_HEADER_LIST_SIZE: 10 << 20,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(CONN_WINDOW - 65535)
        ss.sendall(conn.data_to_send())
        return ss, conn
    ss, conn = prepared
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "GET"),
            (":scheme", "https" if tls else "http"),
            (":authority", f"localhost:{port}"),
            (":path", path),
            ("user-agent", "edgecache-bench-h2"),
        ],
        end_stream=True,
    )
    ss.sendall(conn.data_to_send())
    h = hashlib.sha256()
    q: queue.Queue[Any] = queue.Queue(maxsize=64)
    t = threading.Thread(target=_hasher, args=(q, h), daemon=True)
    t.start()
    status, total, done = None, 0, False
    batch: list[bytes] = []
    batched = 0
    while not done:
        data = ss.recv(1 << 20)
        if not data:
            raise RuntimeError("connection closed")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(":status")
            elif isinstance(ev, h2.events.DataReceived):
                total += len(ev.data)
                if verify:
                    batch.append(ev.data)
                    batched += len(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                done = True
            elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                raise RuntimeError(f"h2: {ev}")
        out = conn.data_to_send()
        if out:
            ss.sendall(out)
        if batched >= c.MiB or (done and batch):
            q.put(batch)
            batch, batched = [], 0
    q.put(None)
    t.join()
    if status != "200":
        raise RuntimeError(f"h2 status {status}")
    if verify and "sha256:" + h.hexdigest() != digest:
        raise RuntimeError("sha256 mismatch over h2")
    conn.close_connection()
    ss.sendall(conn.data_to_send())
    ss.close()
    return total


def h2load(h1: bool, url: str, n: int, size: int) -> tuple[float, int]:
    """nghttp2's h2load: n connections, one GET each; (seconds, body bytes) as it reports them."""
    argv = ["h2load", "-n", str(n), "-c", str(n), "-m", "1"]
    # Over TLS, h2 only in ALPN: offered both, the server's order would decide.
    proto = ["--h1"] if h1 else ["--npn-list=h2"]
    out = subprocess.run([*argv, *proto, url], check=True, capture_output=True, text=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    secs = re.search(r"finished in ([\d.]+)(m?s),", out)
    spoken = re.search(r"Application protocol: (\S+)", out)
    want = "http/1.1" if h1 else ("h2" if url.startswith("https:") else "h2c")
    if not done or not secs or int(done.group(1)) != n or not spoken or spoken[1] != want:
        raise RuntimeError(f"h2load failed or spoke another protocol than {want}:\n{out}")
    t = float(secs.group(1)) / (1000 if secs.group(2) == "ms" else 1)
    return t, n * size


def h1_pull(
    port: int,
    path: str,
    digest: str,
    verify: bool,
    tls: bool,
    *,
    prepare: bool = False,
    prepared: Any = None,
) -> Any:
    if prepare:
        return c.H1Client(c.LOOPBACK, port, c.client_tls_context(["http/1.1"]) if tls else None)
    cl: c.H1Client = prepared
    n = cl.get(path, digest, verify)
    cl.close()
    return n


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--blob-mib", type=int, default=256)
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--transport",
        choices=["tls", "plain"],
        default="tls",
        help="plain: h2c (prior knowledge) vs plain HTTP/1.1 (sendfile for h1)",
    )
    ap.add_argument(
        "--client",
        choices=["python", "h2load", "both"],
        default="python",
        help="python: the Go-like h2 client and H1Client; h2load: nghttp2's h2load (--h1 for h1)",
    )
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument(
        "--workers", type=int, help="edgecache's [server] workers (default: its own, one per CPU)"
    )
    ap.add_argument(
        "--nginx",
        action="store_true",
        help="with h2load: also nginx (h1 and h2 or h2c) in the same rounds, the reference for "
        "what the client allows",
    )
    ap.add_argument(
        "--profile", action="store_true", help="py-spy an extra h1-over-TLS round (pread path)"
    )
    ap.add_argument("--profile-proto", choices=["h1", "h2"], default="h1")
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgecache-bench"))
    a = ap.parse_args()
    verify = not a.no_verify
    tls = a.transport == "tls"
    levels = [int(x) for x in a.clients.split(",")]
    a.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = a.workdir / f"tls-{int(time.time())}"
    run_dir.mkdir(parents=True)
    img = c.build_image(a.workdir / f"layout-{a.blob_mib}", 1, a.blob_mib)
    digest, size = img.layers[0]
    path = f"/v2/{REPO}/blobs/{digest}"
    cert, key = c.make_cert(run_dir)
    data = run_dir / "edgecache"

    plain = c.Edgecache(data).start()
    try:
        c.push_image(plain.port, REPO, img)
    finally:
        plain.stop()
    config = f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n' if tls else ""
    if a.workers is not None:
        config = with_workers(config, a.workers)
    edge = c.Edgecache(data, config=config or None).start()
    assert edge.url.startswith("https://" if tls else "http://"), edge.url
    negotiated: str | None = "(no TLS)"
    if tls:
        # What a client offering both (Go's / curl's order: h2 first) gets from the default alpn.
        ctx = c.client_tls_context(["h2", "http/1.1"])
        with (
            socket.create_connection((c.LOOPBACK, edge.port)) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as t,
        ):
            negotiated = t.selected_alpn_protocol()
    url = f"{edge.url}{path}"

    def python_client(fn: Any) -> Any:
        return lambda n: c.run_clients(fn, [(edge.port, path, digest, verify, tls)] * n)

    # name -> (run n clients: (seconds, bytes), the h1 row it is compared with)
    clients: dict[str, tuple[Any, str]] = {}
    if a.client in ("python", "both"):
        clients["h1"] = (python_client(h1_pull), "h1")
        clients["h2"] = (python_client(h2_pull), "h1")
    if a.client in ("h2load", "both"):
        clients["h1 h2load"] = (lambda n: h2load(True, url, n, size), "h1 h2load")
        clients["h2 h2load"] = (lambda n: h2load(False, url, n, size), "h1 h2load")
    pids = {proto: edge.pid for proto in clients}
    ref: c.Nginx | None = None
    if a.nginx:
        if a.client == "python":
            raise SystemExit("--nginx needs --client h2load")
        ref = c.Nginx(
            run_dir / "nginx",
            img.layout / "blobs" / "sha256",
            "2",
            tls=(cert, key) if tls else None,
            h2c=not tls,
        ).start()
        ref_h2 = f"http://{c.LOOPBACK}:{ref.h2c_port}{path}" if not tls else f"{ref.url}{path}"
        clients["nginx h1 h2load"] = (
            lambda n: h2load(True, f"{ref.url}{path}", n, size),
            "nginx h1 h2load",
        )
        clients["nginx h2 h2load"] = (lambda n: h2load(False, ref_h2, n, size), "nginx h1 h2load")
        pids["nginx h1 h2load"] = pids["nginx h2 h2load"] = ref.pid
    res: dict[int, dict[str, list[float]]] = {}
    prof = ""
    try:
        cpu: dict[str, list[float]] = {}

        def pull(proto: str, n: int) -> float:
            cpu0 = c.cpu_seconds(pids[proto])
            secs, nbytes = clients[proto][0](n)
            if nbytes != n * size:
                raise RuntimeError(f"{proto}: {nbytes} bytes, expected {n * size}")
            cpu.setdefault(f"{n}:{proto}", []).append(
                (c.cpu_seconds(pids[proto]) - cpu0) / (nbytes / (1 << 30))
            )
            return nbytes / secs / 1e6

        for proto in clients:
            c.log(f"warm-up {proto}: {pull(proto, 1):.0f} MB/s")
        for n in levels:
            res[n] = {p: [] for p in clients}
            for r in range(a.rounds):
                for proto in clients:
                    v = pull(proto, n)
                    res[n][proto].append(v)
                    c.log(f"clients={n} round={r + 1} {proto}: {v:.0f} MB/s")
        if a.profile:
            proto = next(p for p in clients if p.startswith(a.profile_proto))
            prof = c.pyspy_profile(
                edge.pid,
                lambda: pull(proto, max(levels)),
                a.profile_seconds,
                HERE / f"profile-{a.transport}-{a.profile_proto}",
            )
    finally:
        edge.stop()
        if ref is not None:
            ref.stop()
    shutil.rmtree(run_dir, ignore_errors=True)

    rows = []
    for n in levels:
        for proto, (_, base) in clients.items():
            vals = res[n][proto]
            ratio = c.median(v / b for v, b in zip(vals, res[n][base], strict=False))
            same = f"nginx {proto}"  # the same protocol from nginx, in the same rounds
            versus = (
                f"{c.median(v / b for v, b in zip(vals, res[n][same], strict=False)):.2f}x"
                if same in res[n]
                else ""
            )
            rows.append(
                [
                    n,
                    proto,
                    " / ".join(f"{v:.0f}" for v in vals),
                    f"{c.median(vals):.0f}",
                    f"{ratio:.2f}x",
                    *([versus] if ref is not None else []),
                    f"{c.median(cpu[f'{n}:{proto}'][-a.rounds :]):.2f}",
                ]
            )
    body = "TLS (pread path for both)" if tls else "plain TCP (h1: sendfile; h2c: mapped pages)"
    print()
    print(f"# h2_vs_h1_tls  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# {c.machine()}")
    print(f"# edgecache: {c.edgecache_source()}; workers: {a.workers or 'default (one per CPU)'}")
    print(
        f"# blob {a.blob_mib} MiB over {body}, each client one connection, one GET; "
        f"sha256 verify (python clients): {verify}; python h2 windows: stream "
        f"{STREAM_WINDOW >> 20} MiB, connection {CONN_WINDOW >> 20} MiB; h2load: its defaults; "
        f"{a.rounds} rounds interleaved; load average at end: {c.loadavg()}"
    )
    print(f"# server default alpn; a client offering [h2, http/1.1] negotiated: {negotiated}")
    print(
        c.table(
            [
                "clients",
                "protocol",
                "MB/s per round",
                "median MB/s",
                "ratio to h1",
                *(["ratio to nginx"] if ref is not None else []),
                "server CPU s/GiB",
            ],
            rows,
        )
    )
    if prof:
        print()
        print(prof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
