"""Shared pieces of the edgecache benchmarks: processes, a test image, raw-socket clients.

Everything binds to 127.0.0.1 only; every process started here is stopped by its own pid.
Nothing here uses httpx: the measuring clients are raw sockets (recv_into a reused buffer,
sha256 on memoryview slices, hashing pipelined in a second thread), so that one client
connection can take more than a single core's worth of sha256 off the wire.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"
EDGECACHE = str(VENV_BIN / "edgecache")
LOOPBACK = "127.0.0.1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MiB = 1 << 20


# ----------------------------------------------------------------------------- utilities


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    interval = 0.02
    while True:
        r = cond()
        if r:
            return r
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, r in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def edgecache_source() -> str:
    """Which edgecache code the benchmark ran (BENCH_EDGECACHE_SRC snapshot or the work tree)."""
    src = os.environ.get("BENCH_EDGECACHE_SRC")
    if src:
        commit = Path(src, "COMMIT")
        return f"snapshot {src}" + (
            f" of commit {commit.read_text().strip()[:12]}" if commit.exists() else ""
        )
    with contextlib.suppress(Exception):
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "edgecache"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f"work tree {REPO_ROOT} at {head}" + (" (edgecache/ modified)" if dirty else "")
    return f"work tree {REPO_ROOT}"


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, Linux {os.uname().release}"


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status value in bytes (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class RSSSampler:
    """Samples VmRSS of a pid every `interval` s in a thread; resets VmHWM at start.

    tree=True: of the pid and its descendants (worker processes): `peak` is then the largest
    sum over the processes seen in one sample, `peak_one` the largest single process.
    """

    def __init__(self, pid: int, interval: float = 0.05, tree: bool = False) -> None:
        self.pid, self.interval, self.tree = pid, interval, tree
        self.peak = self.peak_one = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _pids(self) -> list[int]:
        return process_tree(self.pid) if self.tree else [self.pid]

    def __enter__(self) -> RSSSampler:
        # "5" resets the peak RSS (VmHWM) of the process (Linux >= 4.0), so VmHWM afterwards
        # covers only the measured phase, not the push that came before it.
        for pid in self._pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        self._t.start()
        return self

    def _sample(self, key: str) -> None:
        sizes = []
        for pid in self._pids():
            with contextlib.suppress(Exception):
                sizes.append(proc_status(pid, key))
        if sizes:
            self.peak = max(self.peak, sum(sizes))
            self.peak_one = max(self.peak_one, *sizes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample("VmRSS")
            self._stop.wait(self.interval)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self._sample("VmHWM")


# -------------------------------------------------------------------------------- image


@dataclass
class Image:
    layout: Path  # OCI layout directory
    config: tuple[str, int]  # digest, size
    layers: list[tuple[str, int]]
    manifest: bytes
    manifest_digest: str

    def blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    @property
    def blobs(self) -> list[tuple[str, int]]:
        return [self.config, *self.layers]

    @property
    def total(self) -> int:
        return sum(s for _, s in self.layers)


def _write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    hexd = hashlib.sha256(data).hexdigest()
    p = layout / "blobs" / "sha256" / hexd
    p.write_bytes(data)
    return "sha256:" + hexd, len(data)


def build_image(layout: Path, n_layers: int, layer_mib: int) -> Image:
    """An OCI layout with `n_layers` layers of random bytes (nothing unpacks them).

    Cached: if `layout` already holds an image of the same shape, it is reused.
    """
    meta = layout / "bench-image.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        if (
            m["n_layers"] == n_layers
            and m["layer_mib"] == layer_mib
            and all(
                (layout / "blobs" / "sha256" / d.split(":")[1]).exists() for d, _ in m["layers"]
            )
        ):
            manifest = (layout / "blobs" / "sha256" / m["manifest"].split(":")[1]).read_bytes()
            return Image(
                layout,
                tuple(m["config"]),
                [tuple(x) for x in m["layers"]],  # type: ignore[arg-type]
                manifest,
                m["manifest"],
            )
    shutil.rmtree(layout, ignore_errors=True)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layers = [_write_blob(layout, os.urandom(layer_mib * MiB)) for _ in range(n_layers)]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
        }
    ).encode()
    cfg = _write_blob(layout, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg[0], "size": cfg[1]},
            "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
        }
    ).encode()
    mdig, msize = _write_blob(layout, manifest)
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": mdig,
                        "size": msize,
                        "annotations": {"org.opencontainers.image.ref.name": "latest"},
                    }
                ],
            }
        )
    )
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
    return Image(layout, cfg, layers, manifest, mdig)


def push_image(
    port: int,
    repo: str,
    img: Image,
    tag: str = "latest",
    blobs: list[tuple[str, int]] | None = None,
    manifest: bool = True,
    tls: bool = False,
) -> None:
    """Monolithic raw-HTTP push (POST upload, PUT ?digest= with the file as body)."""
    conn = (
        http.client.HTTPSConnection(
            LOOPBACK, port, timeout=120, blocksize=4 * MiB, context=client_tls_context([])
        )
        if tls
        else http.client.HTTPConnection(LOOPBACK, port, timeout=120, blocksize=4 * MiB)
    )
    for digest, size in blobs if blobs is not None else img.blobs:
        conn.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        r = conn.getresponse()
        r.read()
        if r.status == 200:
            continue
        conn.request(
            "POST", f"/v2/{repo}/blobs/uploads/", body=b"", headers={"Content-Length": "0"}
        )
        r = conn.getresponse()
        r.read()
        if r.status != 202:
            raise RuntimeError(f"POST upload: {r.status}")
        loc = r.getheader("Location") or ""
        if loc.startswith("http"):
            loc = "/" + loc.split("/", 3)[3]
        sep = "&" if "?" in loc else "?"
        with open(img.blob_path(digest), "rb") as f:
            conn.request(
                "PUT",
                f"{loc}{sep}digest={digest}",
                body=f,
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            )
            r = conn.getresponse()
            body = r.read()
        if r.status != 201:
            raise RuntimeError(f"PUT blob: {r.status} {body[:300]!r}")
    if manifest:
        conn.request(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            body=img.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        r = conn.getresponse()
        body = r.read()
        if r.status != 201:
            raise RuntimeError(f"PUT manifest: {r.status} {body[:300]!r}")
    conn.close()


# ---------------------------------------------------------------------------- processes


class Proc:
    name = "proc"

    def __init__(self) -> None:
        self.p: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""
        self.log: Path | None = None

    def start(self) -> Proc:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        # cwd = the log's directory: `python -m` puts the cwd first on sys.path, and the source
        # under test must be the one chosen by PYTHONPATH, not whatever the caller's cwd holds.
        self.p = subprocess.Popen(
            argv,
            stdout=open(log, "wb"),  # noqa: SIM115 - the child holds it; closed with the process
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=log.parent,
        )

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def stop(self) -> None:
        if self.p is None or self.p.poll() is not None:
            return
        self.p.send_signal(signal.SIGTERM)  # our own child, by pid
        try:
            self.p.wait(15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)

    def listening(self) -> bool:
        self.check()
        return port_open(self.port)

    def check(self) -> None:
        if not self.alive():
            tail = self.log.read_text(errors="replace")[-3000:] if self.log else ""
            raise RuntimeError(f"{self.name} exited early:\n{tail}")


class Edgecache(Proc):
    name = "edgecache"

    def __init__(
        self,
        data: Path,
        config: str | None = None,
        env: dict[str, str] | None = None,
        src: str | None = None,
    ) -> None:
        """src: a source tree (git archive) to run instead of the work tree; default
        $BENCH_EDGECACHE_SRC. Two instances with different `src` compare versions in one run."""
        super().__init__()
        self.data, self.config, self.extra_env = data, config, env or {}
        self.src = src
        self.config_path: Path | None = None

    def start(self) -> Edgecache:
        self.data.mkdir(parents=True, exist_ok=True)
        argv = [EDGECACHE, "serve", "--listen", f"{LOOPBACK}:0", "--data", str(self.data)]
        src = self.src or os.environ.get("BENCH_EDGECACHE_SRC")
        if src:  # a snapshot of the source tree (git archive), run with the venv's interpreter
            argv = [str(VENV_BIN / "python"), "-m", "edgecache", *argv[1:]]
        if self.config:
            cfg = self.data.parent / (self.data.name + ".toml")
            cfg.write_text(self.config)
            argv += ["--config", str(cfg)]
            self.config_path = cfg
        env = dict(os.environ, EDGECACHE_AUTH_ANONYMOUS_PUSH="true", **self.extra_env)
        if src:
            env["PYTHONPATH"] = src
        self._spawn(argv, self.data.parent / (self.data.name + ".log"), env)
        runfile = self.data / "run" / "server.json"

        def ready() -> Any:
            self.check()
            with contextlib.suppress(OSError, ValueError):
                return json.loads(runfile.read_text())
            return None

        info = wait_for(ready, 30, "edgecache server.json")
        self.url = info["url"]
        self.port = int(self.url.rsplit(":", 1)[1].rstrip("/"))
        assert int(info["pid"]) == self.pid, info
        # Measure only once every serving process ([server] workers) accepts connections.
        token = (self.data / "run" / "admin-token").read_text().strip()

        def all_serving() -> bool:
            request = urllib.request.Request(
                f"{self.url}/_edgecache/admin/status", headers={"Authorization": f"Bearer {token}"}
            )
            context = client_tls_context([]) if self.url.startswith("https") else None
            with urllib.request.urlopen(request, timeout=10, context=context) as r:
                rows = json.loads(r.read()).get("workers") or []
            return all(row.get("owner") or row.get("serving") for row in rows)

        wait_for(all_serving, 30, "every edgecache worker")
        return self


class Registry(Proc):
    name = "docker-registry"

    def __init__(self, base: Path, proxy_remote: str | None = None, json_log: bool = False) -> None:
        """proxy_remote: run as a pull-through cache of that registry URL (`proxy: remoteurl`).

        json_log: info-level JSON log with access lines ("response completed"), parsed by
        `access_log()`; otherwise warnings only, access log off (no cost while measuring).
        """
        super().__init__()
        self.base = base
        self.proxy_remote = proxy_remote
        self.json_log = json_log

    def start(self) -> Registry:
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cfg = self.base / "config.yml"
        if self.json_log:
            log_cfg = "log:\n  level: info\n  formatter: json\n"
        else:
            log_cfg = "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        proxy_cfg = f"proxy:\n  remoteurl: {self.proxy_remote}\n" if self.proxy_remote else ""
        cfg.write_text(
            f"version: 0.1\n{log_cfg}"
            f"storage:\n  filesystem:\n    rootdirectory: {self.base / 'storage'}\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: {LOOPBACK}:{self.port}\n"
            f"{proxy_cfg}"
        )
        self._spawn(
            ["docker-registry", "serve", str(cfg)],
            self.base / "registry.log",
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.base)},
        )
        wait_for(self.listening, 30, "docker-registry port")
        self.url = f"http://{LOOPBACK}:{self.port}"
        return self

    def access_log(self) -> list[dict[str, Any]]:
        """The "response completed" entries of a json_log registry (method, uri, written...)."""
        out = []
        assert self.log is not None
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                if str(e.get("msg", "")).startswith("response completed"):
                    out.append(e)
        return out


def make_cert(d: Path) -> tuple[Path, Path]:
    """A self-signed EC certificate for localhost and 127.0.0.1: (cert, key)."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class Nginx(Proc):
    """nginx serving /v2/<repo>/blobs/sha256:<hex> straight from the OCI layout's files
    (over TLS with `tls` = (cert, key): HTTP/1.1 and h2 offered, sendfile then unused; with
    `h2c`, also h2c with prior knowledge on a second port, h2c_port)."""

    name = "nginx"

    def __init__(
        self,
        base: Path,
        blob_dir: Path,
        workers: str = "auto",
        tls: tuple[Path, Path] | None = None,
        h2c: bool = False,
    ) -> None:
        super().__init__()
        self.base, self.blob_dir, self.workers, self.tls = base, blob_dir, workers, tls
        self.h2c_port = free_port() if h2c else 0

    def start(self) -> Nginx:
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        b = self.base
        listen_tls = ""
        if self.tls is not None:
            cert, key = self.tls
            listen_tls = (
                f" ssl http2;\n        ssl_certificate {cert};\n        ssl_certificate_key {key}"
            )
        conf = b / "nginx.conf"
        conf.write_text(f"""
daemon off;
worker_processes {self.workers};
pid {b}/nginx.pid;
error_log {b}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    client_body_temp_path {b}/body; proxy_temp_path {b}/proxy; fastcgi_temp_path {b}/fcgi;
    uwsgi_temp_path {b}/uwsgi; scgi_temp_path {b}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen {LOOPBACK}:{self.port}{listen_tls};
        {f"listen {LOOPBACK}:{self.h2c_port} http2;" if self.h2c_port else ""}
        location ~ "^/v2/.+/blobs/sha256:(?<hex>[0-9a-f]{{64}})$" {{
            alias {self.blob_dir}/$hex;
        }}
    }}
}}
""")
        self._spawn(
            ["nginx", "-e", str(b / "error.log"), "-p", str(b), "-c", str(conf)], b / "stdout.log"
        )
        wait_for(self.listening, 15, "nginx port")
        self.url = f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"
        return self


# -------------------------------------------------------------------- raw HTTP/1.1 client


class HTTPError(Exception):
    pass


def _hash_worker(q: queue.Queue[Any], free: queue.Queue[Any]) -> None:
    while True:
        item = q.get()
        if item is None:
            return
        h, buf, n = item
        if h is not None:
            h.update(memoryview(buf)[:n])
        free.put(buf)


class H1Client:
    """One keep-alive HTTP/1.1 connection (plain or TLS); GETs blobs, verifies sha256.

    Reads with recv_into into a few reused 4 MiB buffers; a second thread hashes full buffers
    while the first receives the next ones (both calls release the GIL).
    """

    NBUF = 4
    BUF = 4 * MiB

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
        if tls is not None:
            s = tls.wrap_socket(s, server_hostname="localhost")
            if s.selected_alpn_protocol() not in (None, "http/1.1"):
                raise HTTPError(f"ALPN picked {s.selected_alpn_protocol()}")
        self.sock = s
        self.host = f"{host}:{port}"
        self.free: queue.Queue[Any] = queue.Queue()
        for _ in range(self.NBUF):
            self.free.put(bytearray(self.BUF))
        self.q: queue.Queue[Any] = queue.Queue()
        self.hasher = threading.Thread(target=_hash_worker, args=(self.q, self.free), daemon=True)
        self.hasher.start()
        self.head = bytearray(64 * 1024)

    def close(self) -> None:
        self.q.put(None)
        self.hasher.join()
        self.sock.close()

    def get(
        self,
        path: str,
        digest: str | None,
        verify: bool = True,
        headers: dict[str, str] | None = None,
    ) -> int:
        """GET `path`; return the body size; raise unless 200 and (if verify) sha256 matches.

        Sets self.first_body_at (time.monotonic() when the first body byte arrived, or when the
        headers did for an empty body).
        """
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}\r\n".encode())
        self.first_body_at = 0.0
        # Headers: read into a small buffer until the blank line (no pipelining, so anything
        # after it is this response's body).
        mv = memoryview(self.head)
        got = 0
        while True:
            n = self.sock.recv_into(mv[got:])
            if n == 0:
                raise HTTPError("connection closed in headers")
            got += n
            end = self.head.find(b"\r\n\r\n", 0, got)
            if end >= 0:
                break
            if got == len(self.head):
                raise HTTPError("headers too long")
        header = bytes(self.head[:end]).decode("latin-1").split("\r\n")
        # "HTTP/1.1 200 " (empty reason phrase, hypercorn) and "HTTP/1.1 200 OK" both parse.
        parts = header[0].split(" ", 2)
        status = int(parts[1])
        length = -1
        for line in header[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v.strip())
            elif k == "transfer-encoding" and "chunked" in v.lower():
                raise HTTPError("chunked responses are not expected for blobs")
        if length < 0:
            raise HTTPError(f"no Content-Length: {header}")
        h = hashlib.sha256() if verify else None
        body0 = got - end - 4
        if body0 > 0 or length == 0:
            self.first_body_at = time.monotonic()
        remaining = length
        # Copy what followed the headers into the first body buffer.
        buf = self.free.get()
        fill = body0
        buf[:body0] = self.head[end + 4 : got]
        remaining -= body0
        bmv = memoryview(buf)
        while remaining > 0:
            want = min(self.BUF - fill, remaining)
            n = self.sock.recv_into(bmv[fill : fill + want])
            if n == 0:
                raise HTTPError("connection closed in body")
            if not self.first_body_at:
                self.first_body_at = time.monotonic()
            fill += n
            remaining -= n
            if fill == self.BUF:
                bmv.release()
                self.q.put((h, buf, fill))
                buf = self.free.get()
                bmv = memoryview(buf)
                fill = 0
        bmv.release()
        self.q.put((h, buf, fill))
        if status != 200:
            raise HTTPError(f"GET {path}: status {status}")
        if h is not None:
            # Wait until the hasher has drained (all buffers back), then compare.
            bufs = [self.free.get() for _ in range(self.NBUF)]
            for b in bufs:
                self.free.put(b)
            if digest is not None and "sha256:" + h.hexdigest() != digest:
                raise HTTPError(f"sha256 mismatch for {path}")
        return length

    def get_small(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET a small document (manifest) on this connection: (status, body)."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise HTTPError("connection closed in headers")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = -1
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
            elif k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                raise HTTPError("chunked responses are not expected")
        if length < 0:
            raise HTTPError(f"no Content-Length: {lines}")
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise HTTPError("connection closed in body")
            body += chunk
        return status, body[:length]


def client_tls_context(alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    return ctx


# ------------------------------------------------------------------ multi-process runner


def _worker(fn: Callable[..., int], args: tuple[Any, ...], start: Any, out: Any) -> None:
    try:
        prep = fn(*args, prepare=True)  # connect before the start line
        start.wait()
        t0 = time.monotonic()
        n = fn(*args, prepared=prep)
        t1 = time.monotonic()
        out.put(("ok", t0, t1, n))
    except BaseException as e:
        out.put(("error", 0.0, 0.0, f"{type(e).__name__}: {e}"))


def run_clients_results(
    fn: Callable[..., Any], args_list: list[tuple[Any, ...]], timeout: float = 300
) -> list[tuple[str, float, float, Any]]:
    """Like run_clients, but every client's (status "ok"/"error", t0, t1, result or message).

    t0/t1 are time.monotonic() in the client (fork: the same clock as the caller's).
    """
    ctx = mp.get_context("fork")
    start = ctx.Event()
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(fn, a, start, out), daemon=True) for a in args_list]
    for p in procs:
        p.start()
    time.sleep(0.3 + 0.01 * len(procs))  # let them connect (outside the measured window)
    start.set()
    results = [out.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(10)
    return results


def run_clients(
    fn: Callable[..., int], args_list: list[tuple[Any, ...]], timeout: float = 300
) -> tuple[float, int]:
    """Run fn(*args) in one process per client, released together; (seconds, bytes) overall.

    fn(*args, prepare=True) is called first (connect), then fn(*args, prepared=<that>).
    """
    results = run_clients_results(fn, args_list, timeout)
    errors = [r[3] for r in results if r[0] != "ok"]
    if errors:
        raise RuntimeError(f"client errors: {errors[:3]}")
    t0 = min(r[1] for r in results)
    t1 = max(r[2] for r in results)
    return t1 - t0, sum(r[3] for r in results)


def pull_blobs(
    port: int,
    repo: str,
    blobs: list[tuple[str, int]],
    verify: bool,
    tls_alpn: list[str] | None = None,
    *,
    prepare: bool = False,
    prepared: Any = None,
) -> Any:
    """A client: one keep-alive connection, GET each blob in order, verify each sha256."""
    if prepare:
        ctx = client_tls_context(tls_alpn) if tls_alpn else None
        return H1Client(LOOPBACK, port, ctx)
    c: H1Client = prepared
    total = 0
    for digest, size in blobs:
        n = c.get(f"/v2/{repo}/blobs/{digest}", digest, verify)
        if n != size:
            raise HTTPError(f"size {n} != {size}")
        total += n
    c.close()
    return total


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ py-spy


def pyspy_profile(pid: int, work: Callable[[], Any], seconds: int, stem: Path) -> str:
    """Run `work` repeatedly while py-spy samples `pid`: <stem>.svg, <stem>.collapsed, <stem>.txt.

    --nonblocking so that sampling never pauses the server; idle (waiting) threads are not
    sampled, so the shares are shares of the CPU time the process actually used.
    """
    pyspy = str(VENV_BIN / "py-spy")
    svg, raw, txt = (stem.with_suffix(s) for s in (".svg", ".collapsed", ".txt"))
    done = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not done.is_set():
                work()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    time.sleep(1.0)
    # Two recordings back to back: the flame graph for people, collapsed stacks for the summary.
    for extra in (["-o", str(svg)], ["-f", "raw", "-o", str(raw)]):
        subprocess.run(
            [
                pyspy,
                "record",
                "--nonblocking",
                "-r",
                "200",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                *extra,
            ],
            check=True,
            capture_output=True,
        )
    done.set()
    t.join(600)
    if errors:
        raise RuntimeError(f"load during profiling failed: {errors[0]}")
    summary = summarize_collapsed(raw)
    txt.write_text(summary)
    return f"py-spy profile: {svg.name}, {raw.name}, summary {txt.name}\n{summary}"


# Leaves that are waits py-spy does not recognise as idle: trio's epoll wait (the event loop
# with nothing to do) and an idle worker thread blocked on its job lock.
IDLE_LEAVES = (
    "EpollIOManager.get_events (trio/_core/_io_epoll.py:243)",
    "WorkerThread._work (trio/_core/_thread_cache.py:211)",
)


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks.

    Shares are of the busy samples: stacks ending in IDLE_LEAVES are counted apart.
    """
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, cnt = line.rpartition(" ")
        if not stack:
            continue
        n = int(cnt)
        frames = stack.split(";")
        if frames[-1] in IDLE_LEAVES:
            idle += n
            continue
        total += n
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    total = max(total, 1)
    lines = [
        f"busy samples (all threads, 200 Hz): {total}; waiting samples left out: {idle}",
        "",
        "top self (leaf) frames, % of busy samples:",
    ]
    for f, n in sorted(self_c.items(), key=lambda x: -x[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {f}")
    lines += ["", "top inclusive frames, % of busy samples:"]
    for f, n in sorted(incl.items(), key=lambda x: -x[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {f}")
    return "\n".join(lines) + "\n"


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (e.g. nginx master + workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for t in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
                todo.extend(int(k) for k in kids)
    return out


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds used so far by pid and its descendants (all threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick


def snapshot(rev: str, dest: Path) -> Path:
    """A `git archive` of `rev` in `dest` (for Edgecache(src=...)); COMMIT names the commit."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    (dest / "COMMIT").write_text(commit + "\n")
    return dest


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
