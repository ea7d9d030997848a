"""Serving: hypercorn's trio worker around the App, plus the run files in <data>/run/."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from hypercorn.trio import serve as hypercorn_serve

from ..cache.owner import OwnerLink
from ..config import Config, parse_hostport
from ..peers.site import Site
from ..runfiles import public_config
from ..store import Store
from ..store.lock import DataDirInUse, DataDirLock
from ..upstream import Upstream
from ..usererror import UserError, data_dir_error, open_store
from . import connguard, tokens
from .accesslog import AccessLog

if TYPE_CHECKING:
    from ..preheat.engine import Preheater
    from ..scan.service import ScanService
from .app import App
from .startup import banner, bound_address, listen_socket
from .workers import Supervisor, WorkerJob, owner_socket, unix_listener

TOKEN_KEY = "token-key"  # in <data>/run/, mode 0600

log = logging.getLogger("edgecache.server")

# A worker writes the last-pull times of what it served at least this often (eviction's LRU).
ACCESS_FLUSH = 10.0


def _hypercorn_config(config: Config) -> connguard.GuardedConfig:
    hc = connguard.GuardedConfig()
    host, port = parse_hostport(config.server.listen)
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if config.server.tls:
        hc.certfile = config.server.tls_cert
        hc.keyfile = config.server.tls_key
    hc.alpn_protocols = list(config.server.alpn)
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    # Large blobs stream for minutes; only idle connections are closed. A read deadline would
    # also cut a long download to a client that sends nothing meanwhile: the deadlines are on
    # sends instead (a client that takes no bytes; connguard.py) and on request bodies (a
    # client that stops sending one; http.py).
    hc.keep_alive_timeout = config.server.idle_timeout
    hc.read_timeout = None
    hc.send_timeout = config.server.send_timeout
    hc.graceful_timeout = 5
    hc.include_server_header = False
    hc.include_date_header = True
    return hc


def _connectable(bind: str) -> str:
    """Turn hypercorn's bind URL into one a local client can connect to."""
    return bind.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


async def serve(config: Config) -> None:
    # Always: it also fixes hypercorn's hang on early answers and adds the connection
    # deadlines; the app decides whether to use the sendfile extension (server.sendfile).
    connguard.install()
    data = Path(config.server.data)
    # Before anything touches the directory: the start-up sweep would delete a running
    # server's temp files, and the finally below its run/server.json.
    try:
        data_lock = DataDirLock.acquire(data, "edgecache serve")
    except DataDirInUse as exc:
        raise UserError(
            f"{exc}; stop it first, or give this server another data directory"
        ) from None
    except OSError as exc:  # a file, or not writable: the first place this shows
        raise data_dir_error(data, exc) from None
    try:
        store = await trio.to_thread.run_sync(lambda: open_store(data, sweep=True))
        try:
            AccessLog(config.server.access_log).close()  # a bad path fails here, not per request
            # One socket per serving process, spread by the kernel: a socket shared by all was
            # drained by whichever process woke first (4 connections at once went to one
            # process in 8 tries out of 10).
            sock = listen_socket(
                config.server.listen, reuseport="first" if config.server.processes > 1 else ""
            )
        except BaseException:
            store.close()
            raise
    except BaseException:
        data_lock.release()
        raise
    hc = _hypercorn_config(config)
    run_dir = store.layout.run
    processes = config.server.processes
    supervisor: Supervisor | None = None
    if processes > 1:
        # The address the workers bind too, and the socket they ask us through.
        internal = unix_listener(owner_socket(run_dir))
        supervisor = Supervisor(config, run_dir, bound_address(sock), processes)
        _bind(hc, sock.detach(), internal.detach(), worker=False)
    else:
        hc.bind = [f"fd://{sock.detach()}"]
    # Hex, not urlsafe base64: a token starting with '-' would be read by argparse as an option
    # in `edgecache status --token TOKEN` (CI hit it once in 64 runs).
    token = secrets.token_hex(32)
    _write_private(run_dir / "admin-token", token + "\n")
    # The bearer tokens' key (server/tokens.py), read by the workers as they start.
    token_key = tokens.new_key()
    _write_private(run_dir / TOKEN_KEY, token_key.hex() + "\n")
    server_file = run_dir / "server.json"
    upstreams = {
        name: Upstream(
            upstream,
            manifest_timeout=config.proxy.manifest_timeout,
            max_unsized_blob=config.limits.max_unsized_blob,
        )
        for name, upstream in config.upstreams.items()
    }
    app: App | None = None
    site: Site | None = None
    try:
        async with trio.open_nursery() as nursery:
            # The app's background work (fetches that outlive their client) lives here.
            app = App(config, store, token, nursery, upstreams)
            app.auth.tokens = tokens.TokenIssuer(token_key, config.auth.token_ttl)
            if config.peers.enabled:
                site = Site(
                    config.peers,
                    config.limits.max_unsized_blob,
                    listen=config.server.listen,
                    scheme="https" if config.server.tls else "http",
                )
                app.fetcher.site = app.proxy.site = site
                up = app.metrics.peer_up
                for url in site.peers:
                    up.labels(url).set(1)
                await nursery.start(site.probe, lambda url, ok: up.labels(url).set(1 if ok else 0))
            await nursery.start(app.housekeeper.run)
            nursery.start_soon(store.expire_uploads, config.limits.upload_idle_timeout)
            await _start_notifier(app, nursery)
            preheater = _preheater(app)
            scans = _scans(app)
            if supervisor is not None:
                app.worker_sockets = supervisor.sockets
                app.workers_status = supervisor.status
                await nursery.start(supervisor.run)
            binds = await nursery.start(_serve_until_signal, app, hc, nursery, supervisor)
            url = _connectable(binds[0])
            app.public_url = preheater.public_url = url
            if scans is not None:
                scans.public_url = url
                await nursery.start(scans.run)
            await nursery.start(preheater.run)
            info = {"url": url, "pid": os.getpid(), "tls": config.server.tls}
            _write_private(server_file, json.dumps(info | public_config(config)) + "\n")
            print(
                banner(config, binds[0], store.layout.root, processes), file=sys.stderr, flush=True
            )
    finally:
        with trio.CancelScope(shield=True):
            for upstream in upstreams.values():
                await upstream.aclose()
            if site is not None:
                await site.aclose()
            if app is not None:
                await app.housekeeper.flush_access()
                app.access_log.close()
        if supervisor is not None:
            owner_socket(run_dir).unlink(missing_ok=True)
        server_file.unlink(missing_ok=True)
        (run_dir / TOKEN_KEY).unlink(missing_ok=True)  # its tokens died with this process
        store.close()
        data_lock.release()


async def serve_worker(job: WorkerJob) -> None:
    """One of the owner's workers (server/workers.py): serves until SIGTERM or the owner's end."""
    config = job.config
    connguard.install()
    store = await trio.to_thread.run_sync(lambda: Store.open(config.server.data))
    hc = _hypercorn_config(config)
    own = unix_listener(Path(job.own_socket))
    public = listen_socket(job.listen, reuseport="join")
    _bind(hc, public.detach(), own.detach(), worker=True)
    owner = OwnerLink(job.owner_socket)
    app: App | None = None
    try:
        async with trio.open_nursery() as nursery:
            app = App(config, store, "", nursery, {}, owner=owner)
            key = bytes.fromhex((store.layout.run / TOKEN_KEY).read_text().strip())
            app.auth.tokens = tokens.TokenIssuer(key, config.auth.token_ttl)
            nursery.start_soon(_flush_access_loop, app, config.eviction.check_interval)
            await _start_notifier(app, nursery)
            nursery.start_soon(_until_owner_gone, nursery.cancel_scope)
            await nursery.start(_serve_until_signal, app, hc, nursery, None)
    finally:
        with trio.CancelScope(shield=True):
            if app is not None:
                await app.housekeeper.flush_access()
                app.access_log.close()
        Path(job.own_socket).unlink(missing_ok=True)
        store.close()


async def _start_notifier(app: App, nursery: trio.Nursery) -> None:
    if not app.config.notifications:
        return
    from ..notify import Notifier

    counter = app.metrics.notifications
    app.notifier = Notifier(
        app.config.notifications, on_result=lambda name, result: counter.labels(name, result).inc()
    )
    await nursery.start(app.notifier.run)


def _preheater(app: App) -> Preheater:
    from ..preheat.engine import Preheater

    preheater = Preheater(app, app.config.preheat)
    metrics = app.metrics
    preheater.on_job_end = lambda job: metrics.preheat_jobs.labels(job.trigger, job.state).inc()
    preheater.on_health = lambda name, up: metrics.preheat_provider_up.labels(name).set(
        1 if up else 0
    )
    preheater.on_bytes = lambda policy, n: metrics.preheat_bytes.labels(policy).inc(n)
    for name in app.config.preheat.providers:
        metrics.preheat_provider_up.labels(name).set(1)
    preheater.on_event = app.event
    app.preheat = preheater
    return preheater


def _scans(app: App) -> ScanService | None:
    if not app.config.scan.scanners:
        return None
    from ..scan.service import ScanService

    service = ScanService(app, app.config.scan)
    metrics = app.metrics
    service.on_result = lambda name, result: metrics.scans.labels(name, result).inc()
    service.on_up = lambda name, up: metrics.scanner_up.labels(name).set(1 if up else 0)
    app.scans = service
    return service


class _QuietInternal(logging.Filter):
    """hypercorn's "Running on" lines for the Unix sockets of <data>/run/ (and, in a worker,
    for the shared port) tell an operator nothing: the banner says where edgecache listens."""

    def __init__(self, worker: bool) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if not message.startswith("Running on"):
            return True
        return not self.worker and "unix:" not in record.getMessage()


def _bind(hc: connguard.GuardedConfig, public: int, internal: int, *, worker: bool) -> None:
    """The listening socket, and a Unix socket of <data>/run/ that is never TLS (hypercorn
    applies its certificate to every `bind`, and to no `insecure_bind`)."""
    hc.bind = [f"fd://{public}"]
    logging.getLogger("hypercorn.error").addFilter(_QuietInternal(worker))
    if hc.ssl_enabled:
        hc.insecure_bind = [f"fd://{internal}"]
    else:
        hc.bind.append(f"fd://{internal}")


async def _flush_access_loop(app: App, interval: float) -> None:
    """Last-pull times of what this worker served, written to the shared index for eviction
    (the owner writes its own the same way)."""
    while True:
        await trio.sleep(min(interval, ACCESS_FLUSH))
        try:
            await app.housekeeper.flush_access()
        except Exception:
            log.exception("recording last-pull times failed; will retry")


async def _until_owner_gone(scope: trio.CancelScope) -> None:
    """Our stdin is the owner's pipe: its end means the owner is gone, so are we."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    async with stream:
        while await stream.receive_some(1024):
            pass
    log.warning("the owner process is gone; stopping")
    scope.cancel()


async def _serve_until_signal(
    app: App,
    hc: connguard.GuardedConfig,
    background: trio.Nursery,
    supervisor: Supervisor | None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # A worker leaves SIGINT (a terminal's Ctrl-C reaches the whole process group) to the
    # owner, which stops the workers itself: so that it never mistakes them for crashed ones.
    signals_handled = (signal.SIGTERM, signal.SIGINT) if app.owner is None else (signal.SIGTERM,)
    if app.owner is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with trio.open_signal_receiver(*signals_handled) as signals:

        async def shutdown_trigger() -> None:
            async for signum in signals:
                log.info("signal %s: shutting down", signal.Signals(signum).name)
                if supervisor is not None:
                    background.start_soon(supervisor.stop)  # they drain while we do
                return

        await hypercorn_serve(
            app,  # type: ignore[arg-type]
            hc,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
        )
    if app.owner is not None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # told once; now it cleans up
    if supervisor is not None:
        await supervisor.stop()  # every worker has exited before we clean up after them
    # Connections are closed: stop what outlived them (fetches, revalidations).
    background.cancel_scope.cancel()
