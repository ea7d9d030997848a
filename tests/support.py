"""Helpers for integration tests that drive real processes and real tools.

Everything here starts real things: the `edgecache serve` process, the upstream
`docker-registry`, `umoci` to build images, `openssl` for certificates. Nothing is mocked.

Rules kept here so every test gets them for free:
- only loopback addresses (127.0.0.1) are used;
- no sleeps for synchronisation: readiness is a condition polled with a deadline;
- only processes started here are ever signalled, and always by their own pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

# How much of a process log to attach to a failing test report.
LOG_TAIL_CHARS = 20_000


# --------------------------------------------------------------------------- tools


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """Absolute path of `name` on PATH.

    Missing tool: a skip locally, a failure when CI=true (CI must have every tool).
    """
    path = shutil.which(name)
    if path is None:
        msg = f"required tool {name!r} is not installed (not on PATH)"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


def require_module(name: str) -> types.ModuleType:
    """Import a Python package a test needs (e.g. "oras.provider"): like require_tool, a skip
    locally when it is not installed and a failure when CI=true."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        msg = f"required Python package {name!r} is not installed ({exc})"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg, allow_module_level=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for tools without port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll `condition` until it returns something truthy; return that.

    This is the only way tests here wait: a condition with a deadline, never a fixed sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = f"\n{on_timeout()}" if on_timeout is not None else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        # Short, bounded back-off between polls of the condition (not a synchronisation sleep).
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 120.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture output; on failure raise with both streams in the message."""
    proc = subprocess.run(
        [os.fspath(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed with exit code {proc.returncode}: {' '.join(map(str, argv))}\n"
            f"--- stdout ---\n{proc.stdout[-LOG_TAIL_CHARS:]}\n"
            f"--- stderr ---\n{proc.stderr[-LOG_TAIL_CHARS:]}"
        )
    return proc


def sha256_file(path: str | os.PathLike[str], bufsize: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ process tracking

# Every process started through this module, so a failing test can show their logs and the
# session can stop any left running (by pid, only ours).
_LIVE: set[_ManagedProcess] = set()
_ALL: weakref.WeakSet[_ManagedProcess] = weakref.WeakSet()


def processes_active_since(t: float) -> list[_ManagedProcess]:
    """Processes running now or started/stopped at monotonic time >= t (for failure logs)."""
    return [p for p in list(_ALL) if p.running() or p.last_event >= t]


def stop_all_processes() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop()


class _ManagedProcess:
    """A subprocess whose stdout/stderr go to a log file; stopped by its own pid only."""

    name = "process"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_event = 0.0
        _ALL.add(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> None:
        assert not self.running(), f"{self.name} already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                # Own process group so a Ctrl-C in the terminal does not race our shutdown.
                start_new_session=True,
            )
        _LIVE.add(self)
        self.last_event = time.monotonic()

    def log_text(self, tail: int = LOG_TAIL_CHARS) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log>"
        return text[-tail:]

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode} during startup\n"
                f"--- log ({self.log_path}) ---\n{self.log_text()}"
            )

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit within `timeout`.

        Returns the exit code, or None if it was not running.
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            _LIVE.discard(self)
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            with open(self.log_path, "ab") as log:
                log.write(f"\n=== did not stop on SIGTERM within {timeout}s: killed\n".encode())
        _LIVE.discard(self)
        self.last_event = time.monotonic()
        return proc.returncode

    def kill9(self) -> None:
        """SIGKILL this process (by its pid) and reap it."""
        proc = self.proc
        assert proc is not None and proc.poll() is None, f"{self.name} is not running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _LIVE.discard(self)
        self.last_event = time.monotonic()


# --------------------------------------------------------------------------- edgecache


def default_edgecache_argv() -> list[str]:
    """The `edgecache` console script installed next to the running interpreter."""
    return [str(Path(sys.executable).parent / "edgecache")]


TEST_WORKERS = 2
# What a server's log never says when nothing is wrong: an unhandled exception anywhere (the
# app's "internal error on ..." 500s, hypercorn's "Error in ASGI Framework", any traceback).
SERVER_BUG = re.compile(r"internal error on |Error in ASGI Framework|^Traceback ")


def _clean_env(env: Mapping[str, str] | None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGECACHE_")}
    if env:
        base.update(env)
    return base


class EdgecacheServer(_ManagedProcess):
    """The real `edgecache serve` process on 127.0.0.1:0 with its own data dir.

    Layout under `base` (a temp dir): `data/` (the data dir), `edgecache.toml` (config, when
    `config_text` is given) and `server.log` (stdout+stderr, attached to failing test reports).
    `argv` is the command prefix (default: the `edgecache` console script of this venv) so
    the same class starts a pyinstaller binary.
    """

    name = "edgecache"

    def __init__(
        self,
        base: str | os.PathLike[str],
        *,
        argv: Sequence[str] | None = None,
        config_text: str | None = None,
        env: Mapping[str, str] | None = None,
        listen: str = f"{LOOPBACK}:0",
        data: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        super().__init__(self.base / "server.log")
        self.argv = list(argv) if argv is not None else default_edgecache_argv()
        self.data = Path(data) if data is not None else self.base / "data"
        self.config_path: Path | None = None
        if config_text is not None:
            self.config_path = self.data.parent / "edgecache.toml"
            self.config_path.write_text(config_text)
        self.env = _clean_env(env)
        if "workers" not in (config_text or "") and "EDGECACHE_SERVER_WORKERS" not in self.env:
            # Every test server has an owner and a worker (the default, one per CPU, would
            # make the suite depend on the machine): every test crosses processes.
            self.env["EDGECACHE_SERVER_WORKERS"] = str(TEST_WORKERS)
        self.listen = listen
        self.startup_timeout = startup_timeout
        self.info: dict[str, Any] = {}

    # -- lifecycle

    def start(self) -> EdgecacheServer:
        self.data.mkdir(parents=True, exist_ok=True)
        if not Path(self.argv[0]).exists() and shutil.which(self.argv[0]) is None:
            pytest.fail(f"edgecache executable not found: {self.argv[0]}", pytrace=False)
        argv = [*self.argv, "serve", "--listen", self.listen, "--data", str(self.data)]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        self._spawn(argv, self.env, cwd=self.base)
        self.info = wait_for(
            self._ready_info,
            timeout=self.startup_timeout,
            what=f"edgecache to write {self.server_json}",
            on_timeout=lambda: f"--- log ({self.log_path}) ---\n{self.log_text()}",
        )
        return self

    def __enter__(self) -> EdgecacheServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        code = self.stop()
        # SIGTERM is the graceful stop: anything but exit code 0 is a bug worth a red test
        # (unless the block already failed: do not hide that error).
        if exc_type is None and code not in (None, 0):
            raise AssertionError(
                f"edgecache exited with code {code} on SIGTERM\n"
                f"--- log ({self.log_path}) ---\n{self.log_text()}"
            )
        # An internal error is a bug even when the client got its bytes (a handler that
        # failed after the body, say): no test provokes one on purpose.
        if exc_type is None:
            for line in self.log_text(tail=1 << 30).splitlines():
                if SERVER_BUG.search(line):
                    raise AssertionError(
                        f"the server logged an internal error: {line}\n"
                        f"--- log ({self.log_path}) ---\n{self.log_text()}"
                    )

    @property
    def server_json(self) -> Path:
        return self.data / "run" / "server.json"

    def _ready_info(self) -> dict[str, Any] | None:
        self._check_alive()
        try:
            info = json.loads(self.server_json.read_text())
        except (FileNotFoundError, ValueError):
            return None
        # After a kill -9 a stale server.json of the previous process may still be there:
        # only the file written by *this* process means ready.
        if info.get("pid") != self.pid:
            return None
        return info if isinstance(info, dict) and info.get("url") else None

    # -- facts about the running server

    @property
    def url(self) -> str:
        assert self.info, "server not started"
        return str(self.info["url"]).rstrip("/")

    @property
    def host(self) -> str:
        """host:port, as registry clients want it (e.g. for skopeo docker:// references)."""
        return httpx.URL(self.url).netloc.decode()

    @property
    def port(self) -> int:
        port = httpx.URL(self.url).port
        assert port is not None
        return port

    @property
    def tls(self) -> bool:
        return bool(self.info.get("tls"))

    @property
    def admin_token(self) -> str:
        return (self.data / "run" / "admin-token").read_text().strip()

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 60.0)
        return httpx.Client(base_url=self.url, **kwargs)

    def cli(
        self, *args: str, check: bool = False, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run another subcommand of the same executable (fsck, status, ...)."""
        return run([*self.argv, *args], check=check, timeout=timeout, env=self.env, cwd=self.base)

    def restart(self) -> EdgecacheServer:
        """Start again on the same data dir and config (after stop() or kill9())."""
        assert not self.running(), "server still running"
        self.info = {}
        return self.start()


def anonymous_push_config(extra: str = "") -> str:
    return "[auth]\nanonymous_push = true\n" + extra


def admin(server: EdgecacheServer, method: str, name: str, **params: str) -> Any:
    """The JSON answer of /_edgecache/admin/<name> (status, gc, scrub, ...), which must be 200."""
    with server.client(timeout=300) as client:
        r = client.request(
            method,
            f"/_edgecache/admin/{name}",
            params=params,
            headers={"Authorization": f"Bearer {server.admin_token}"},
        )
        assert r.status_code == 200, r.text
        return r.json()


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    """A monolithic push (one POST with ?digest=) to edgecache; returns the digest."""
    digest = sha256_bytes(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    return digest


def oci_manifest(config: bytes, layers: Sequence[bytes]) -> bytes:
    """The compact JSON of an OCI image manifest of these blobs."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": sha256_bytes(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": sha256_bytes(layer), "size": len(layer)}
                for layer in layers
            ],
        }
    ).encode()


# ------------------------------------------------------------------------- images


def make_image(
    tmp_path: str | os.PathLike[str],
    layer_sizes: Sequence[int],
    *,
    tag: str = "v1",
    name: str = "layout",
    seed: int | None = None,
) -> str:
    """Build an OCI image layout with umoci: one layer per size (a random file of that size).

    Returns the reference "oci:<layout dir>:<tag>" usable by skopeo. Files are random, so the
    gzip layers are about the requested size and every image has distinct blobs.
    """
    umoci = require_tool("umoci")
    base = Path(tmp_path)
    layout = base / name
    bundle = base / f"{name}-bundle"
    if not layout.exists():
        run([umoci, "init", "--layout", layout])
    run([umoci, "new", "--image", f"{layout}:{tag}"])
    run([umoci, "unpack", "--rootless", "--image", f"{layout}:{tag}", bundle])
    rng = random.Random(seed)
    rootfs = bundle / "rootfs"
    for i, size in enumerate(layer_sizes):
        path = rootfs / f"layer{i}.bin"
        with open(path, "wb") as f:
            remaining = size
            while remaining:
                n = min(remaining, 1 << 20)
                f.write(rng.randbytes(n))
                remaining -= n
        # --refresh-bundle: the next repack diffs against this state, so each layer holds
        # only its own file.
        run([umoci, "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", bundle])
    run(
        [
            umoci,
            "config",
            "--image",
            f"{layout}:{tag}",
            "--config.cmd",
            "/layer0.bin",
            "--config.label",
            "org.example.test=edgecache",
        ]
    )
    run([umoci, "gc", "--layout", layout])
    shutil.rmtree(bundle)
    return f"oci:{layout}:{tag}"


def oci_layout_dir(ref: str) -> Path:
    """The directory of an "oci:<dir>:<tag>" reference."""
    assert ref.startswith("oci:")
    return Path(ref[len("oci:") :].rsplit(":", 1)[0])


def oci_layout_manifest(ref: str) -> tuple[str, bytes]:
    """(digest, raw bytes) of the manifest that `ref`'s tag names in its OCI layout."""
    layout = oci_layout_dir(ref)
    tag = ref.rsplit(":", 1)[1]
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            digest = str(desc["digest"])
            return digest, oci_layout_blob(layout, digest)
    raise KeyError(f"tag {tag} not in {layout}/index.json")


def oci_layout_blob(layout: Path, digest: str) -> bytes:
    algo, hexd = digest.split(":", 1)
    return (layout / "blobs" / algo / hexd).read_bytes()


def oci_layout_blobs(layout: Path) -> dict[str, str]:
    """digest -> sha256 of the file content, for every blob file in the layout."""
    out: dict[str, str] = {}
    root = layout / "blobs"
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[f"{path.parent.name}:{path.name}"] = sha256_file(path)
    return out


# ----------------------------------------------------------------------- registry


class DockerRegistry(_ManagedProcess):
    """The upstream distribution registry (`docker-registry serve`) on 127.0.0.1."""

    name = "docker-registry"

    def __init__(
        self,
        base: str | os.PathLike[str],
        *,
        htpasswd: str | None = None,
        extra_config: str = "",
        startup_timeout: float = 30.0,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """tls: (certificate, key) to serve HTTPS with."""
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        super().__init__(self.base / "registry.log")
        self.tls = tls
        self.root = self.base / "storage"
        self.config_path = self.base / "config.yml"
        self.htpasswd = htpasswd
        self.extra_config = extra_config
        self.startup_timeout = startup_timeout
        self.port = 0

    def _config(self) -> str:
        auth = ""
        if self.htpasswd is not None:
            htfile = self.base / "htpasswd"
            htfile.write_text(self.htpasswd)
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htfile}\n"
        tls = ""
        if self.tls is not None:
            tls = f"  tls:\n    certificate: {self.tls[0]}\n    key: {self.tls[1]}\n"
        return (
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: true\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.root}\n"
            "  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: {LOOPBACK}:{self.port}\n"
            f"{tls}{auth}{self.extra_config}"
        )

    def start(self) -> DockerRegistry:
        binary = require_tool("docker-registry")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path.write_text(self._config())
        self._spawn([binary, "serve", str(self.config_path)], _clean_env(None), cwd=self.base)
        wait_for(
            self._answers,
            timeout=self.startup_timeout,
            what="docker-registry to answer GET /v2/",
            on_timeout=lambda: f"--- log ({self.log_path}) ---\n{self.log_text()}",
        )
        return self

    def _answers(self) -> bool:
        self._check_alive()
        try:
            r = httpx.get(f"{self.url}/v2/", timeout=2.0, verify=False)
        except httpx.TransportError:
            return False
        return r.status_code in (200, 401)

    def __enter__(self) -> DockerRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"


# --------------------------------------------------------------------------- TLS


def make_tls_cert(directory: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """A test CA and a server cert for 127.0.0.1 / ::1 / localhost signed by it (openssl CLI).

    Returns (ca_cert, server_cert, server_key) paths.
    """
    openssl = require_tool("openssl")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = d / "ca.key", d / "ca.pem"
    key, csr, cert = d / "server.key", d / "server.csr", d / "server.pem"
    ext = d / "server.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_cert, "-days", "2",
         "-subj", "/CN=edgecache test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    )  # fmt: skip
    run([openssl, "req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"])
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
    )
    run(
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext]
    )  # fmt: skip
    return ca_cert, cert, key


# --------------------------------------------------------------------------- containerd


class Containerd(_ManagedProcess):
    """A private containerd (own root, state, socket and config) for `ctr` pulls.

    The CRI plugin is disabled (no kubelet here) and the `opt` plugin points into `base`, so
    nothing outside `base` is touched. Needs root, like any containerd.
    """

    name = "containerd"

    def __init__(self, base: str | os.PathLike[str], *, startup_timeout: float = 30.0) -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        super().__init__(self.base / "containerd.log")
        self.address = self.base / "containerd.sock"
        # A unix socket path must fit in sun_path (108 bytes).
        assert len(os.fsencode(self.address)) < 100, f"socket path too long: {self.address}"
        self.config_path = self.base / "config.toml"
        self.startup_timeout = startup_timeout

    def start(self) -> Containerd:
        binary = require_tool("containerd")
        require_tool("ctr")
        self.config_path.write_text(
            "version = 2\n"
            f'root = "{self.base / "root"}"\n'
            f'state = "{self.base / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{self.base / "opt"}"\n'
        )
        argv = [
            binary,
            "--config", str(self.config_path),
            "--root", str(self.base / "root"),
            "--state", str(self.base / "state"),
            "--address", str(self.address),
        ]  # fmt: skip
        self._spawn(argv, _clean_env(None), cwd=self.base)
        wait_for(
            self._answers,
            timeout=self.startup_timeout,
            what="containerd to answer `ctr version`",
            on_timeout=lambda: f"--- log ({self.log_path}) ---\n{self.log_text()}",
        )
        return self

    def _answers(self) -> bool:
        self._check_alive()
        if not self.address.exists():
            return False
        return self.ctr("version", check=False, timeout=10).returncode == 0

    def ctr(
        self,
        *args: str,
        namespace: str = "edgecache-test",
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [require_tool("ctr"), "--address", str(self.address), "--namespace", namespace, *args],
            check=check,
            timeout=timeout,
        )

    def content(self, digest: str, namespace: str = "edgecache-test") -> bytes:
        """The bytes of a blob in containerd's content store (`ctr content get`)."""
        argv = [require_tool("ctr"), "--address", str(self.address), "--namespace", namespace]
        proc = subprocess.run(
            [*argv, "content", "get", digest], capture_output=True, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        return proc.stdout

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
