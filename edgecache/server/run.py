"""Serving: hypercorn's trio worker around the App, plus the run files in <data>/run/."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

import trio
from hypercorn.trio import serve as hypercorn_serve

from ..config import Config, parse_hostport
from ..runfiles import public_config
from ..store.lock import DataDirInUse, DataDirLock
from ..upstream import Upstream
from ..usererror import UserError, data_dir_error, open_store
from . import connguard
from .accesslog import AccessLog
from .app import App
from .startup import banner, listen_socket

log = logging.getLogger("edgecache.server")


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
    hc.keep_alive_timeout = 75
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
            sock = listen_socket(config.server.listen)
        except BaseException:
            store.close()
            raise
    except BaseException:
        data_lock.release()
        raise
    hc = _hypercorn_config(config)
    hc.bind = [f"fd://{sock.detach()}"]
    run_dir = store.layout.run
    # Hex, not urlsafe base64: a token starting with '-' would be read by argparse as an option
    # in `edgecache status --token TOKEN` (CI hit it once in 64 runs).
    token = secrets.token_hex(32)
    _write_private(run_dir / "admin-token", token + "\n")
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
    try:
        async with trio.open_nursery() as nursery:
            # The app's background work (fetches that outlive their client) lives here.
            app = App(config, store, token, nursery, upstreams)
            await nursery.start(app.housekeeper.run)
            nursery.start_soon(store.expire_uploads, config.limits.upload_idle_timeout)
            binds = await nursery.start(_serve_until_signal, app, hc, nursery.cancel_scope)
            url = _connectable(binds[0])
            info = {"url": url, "pid": os.getpid(), "tls": config.server.tls}
            _write_private(server_file, json.dumps(info | public_config(config)) + "\n")
            print(banner(config, binds[0], store.layout.root), file=sys.stderr, flush=True)
    finally:
        with trio.CancelScope(shield=True):
            for upstream in upstreams.values():
                await upstream.aclose()
            if app is not None:
                await app.housekeeper.flush_access()
                app.access_log.close()
        server_file.unlink(missing_ok=True)
        store.close()
        data_lock.release()


async def _serve_until_signal(
    app: App,
    hc: connguard.GuardedConfig,
    background: trio.CancelScope,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def shutdown_trigger() -> None:
            async for signum in signals:
                log.info("signal %s: shutting down", signal.Signals(signum).name)
                return

        await hypercorn_serve(
            app,  # type: ignore[arg-type]
            hc,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
        )
    # Connections are closed: stop what outlived them (fetches, revalidations).
    background.cancel()
