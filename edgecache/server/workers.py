"""Several serving processes for one `edgecache serve`: one data directory, one port, every core.

`[server] workers` processes serve (0: one per CPU). The first, the owner, is the one the
operator started: it holds the data-directory lock and alone talks to upstreams, accepts
pushes, and runs GC, eviction, the scrub and the admin API. It starts the others as
`edgecache _worker` (the same executable, as gc/markchild.py does).

Every process binds the one address with SO_REUSEPORT, and the kernel spreads new connections
over their sockets. (One socket shared by all, the first design, went to whichever process
woke first, which then took every connection waiting: 4 connections opened at once all went
to one process in 8 tries out of 10.) The process that accepts a connection answers what is
on disk: blobs by sendfile, manifests, tags, referrers of local repositories, proxied content
whose tags are fresh (server/local.py). For the rest it asks the owner and relays the answer
(cache/owner.py): so there is one upstream fetch per blob however many processes want it, and
joiners stream as bytes arrive. LMDB is made for several processes on one environment: every
process reads the index directly and a worker writes only last-pull times. GC cannot pull a
file from under a worker: a worker serves from a descriptor it opened, which an unlink does
not touch, and writes nothing but through the owner.

Each worker gets its job as a pickle on stdin, which then stays open: when the owner dies, even
by SIGKILL, the worker reads end-of-file and shuts down rather than serving on alone. (Not
PR_SET_PDEATHSIG: trio starts processes from a worker thread, and that signal follows the end
of the thread, not of the process: it stopped healthy workers once trio retired the thread.)
A worker also listens on <data>/run/worker-N.sock, where the owner asks it for its /metrics. A
worker that exits is started again (after a pause if it keeps dying young); the others, and their
connections, are not touched (connections still waiting in its accept queue are reset by the
kernel, as at any crash). SIGTERM to the owner drains every process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ..config import Config

log = logging.getLogger("edgecache.workers")

COMMAND = "_worker"
# A worker that dies sooner than this after its start is started again only after a pause
# that doubles each time (up to MAX_PAUSE): a worker that cannot start must not spin.
YOUNG = 10.0
MAX_PAUSE = 30.0
# How long a worker may drain its connections after SIGTERM: hypercorn's graceful_timeout
# (server/run.py) and a margin.
GRACE = 7.0


@dataclass(frozen=True)
class WorkerJob:
    number: int
    config: Config
    listen: str  # host:port the owner bound, with SO_REUSEPORT: so does the worker
    owner_socket: str
    own_socket: str


def owner_socket(run_dir: Path) -> Path:
    return run_dir / "owner.sock"


def worker_socket(run_dir: Path, number: int) -> Path:
    return run_dir / f"worker-{number}.sock"


def unix_listener(path: Path) -> socket.socket:
    """A listening Unix socket only this user can connect to (a stale one is replaced)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


def child_argv() -> list[str]:
    if getattr(sys, "frozen", False):  # the pyinstaller binary runs itself
        return [sys.executable, COMMAND]
    # -P: not the working directory first on sys.path, where a directory named "edgecache" (a
    # data directory, say) would be imported instead of this package.
    return [sys.executable, "-P", "-m", "edgecache", COMMAND]


@dataclass
class _Worker:
    number: int
    process: trio.Process | None = None
    started: float = 0.0
    restarts: int = 0


class Supervisor:
    """Starts workers 1..count-1, starts again any that exits, and stops them all."""

    def __init__(self, config: Config, run_dir: Path, listen: str, count: int) -> None:
        self.config = config
        self.run_dir = run_dir
        self.listen = listen
        self.workers = [_Worker(n) for n in range(1, count)]
        self.stopping = False
        self._told: set[trio.Process] = set()  # sent SIGTERM already

    def sockets(self) -> list[str]:
        return [str(worker_socket(self.run_dir, w.number)) for w in self.workers]

    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [{"worker": 0, "pid": os.getpid(), "owner": True}]
        for w in self.workers:
            alive = w.process is not None and w.process.returncode is None
            rows.append(
                {
                    "worker": w.number,
                    "pid": w.process.pid if alive and w.process else None,
                    # It binds its socket just before it starts to accept connections.
                    "serving": alive and worker_socket(self.run_dir, w.number).exists(),
                    "restarts": w.restarts,
                    "up_seconds": round(time.monotonic() - w.started, 1) if alive else 0,
                }
            )
        return rows

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(self._keep, worker)
            task_status.started()

    async def _keep(self, worker: _Worker) -> None:
        pause = 1.0
        while not self.stopping:
            job = WorkerJob(
                worker.number,
                self.config,
                self.listen,
                str(owner_socket(self.run_dir)),
                str(worker_socket(self.run_dir, worker.number)),
            )
            code = await self._run_once(worker, job)
            if self.stopping:
                return
            lived = time.monotonic() - worker.started
            log.warning(
                "worker %d exited (%s) after %.1fs; starting it again",
                worker.number,
                _exit_text(code),
                lived,
            )
            worker.restarts += 1
            if lived < YOUNG:
                await trio.sleep(pause)
                pause = min(MAX_PAUSE, pause * 2)
            else:
                pause = 1.0

    async def _run_once(self, worker: _Worker, job: WorkerJob) -> int:
        payload = pickle.dumps(job)
        Path(job.own_socket).unlink(missing_ok=True)  # a killed one's: not "serving" yet
        worker.started = time.monotonic()  # also when it cannot start: then it pauses too
        try:
            process = await trio.lowlevel.open_process(child_argv(), stdin=subprocess.PIPE)
        except OSError as exc:
            log.error("cannot start worker %d: %s", worker.number, exc)
            return -1
        worker.process = process
        assert process.stdin is not None
        try:
            with contextlib.suppress(trio.BrokenResourceError):  # it died at once: see wait()
                await process.stdin.send_all(struct.pack("!I", len(payload)) + payload)
            return await process.wait()  # stdin stays open: its end tells the worker we died
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:  # cancelled: the owner is going away
                    await _end(process, GRACE, self._told)
                await process.stdin.aclose()
            self._told.discard(process)

    async def stop(self) -> None:
        """SIGTERM every worker (each drains its connections) and wait for them to exit."""
        self.stopping = True
        running = [w.process for w in self.workers if w.process and w.process.returncode is None]
        async with trio.open_nursery() as nursery:
            for process in running:
                nursery.start_soon(_end, process, GRACE, self._told)


async def _end(process: trio.Process, grace: float, told: set[trio.Process]) -> None:
    """SIGTERM (once: a worker that has begun to drain must not be told again), then SIGKILL
    after `grace`."""
    if process.returncode is None and process not in told:
        told.add(process)
        process.send_signal(signal.SIGTERM)
    with trio.move_on_after(grace):
        await process.wait()
        return
    log.warning("worker pid %d did not stop in %.0fs; killing it", process.pid, grace)
    process.kill()
    await process.wait()


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def read_job() -> WorkerJob:
    """The job the owner wrote on our stdin (length-prefixed pickle: both ends are us)."""
    stdin = sys.stdin.buffer
    (length,) = struct.unpack("!I", stdin.read(4))
    job = pickle.loads(stdin.read(length))
    assert isinstance(job, WorkerJob)
    return job


def main() -> int:
    """`edgecache _worker`: serve as one of the owner's workers until told to stop."""
    from ..usererror import UserError
    from .run import serve_worker

    try:
        job = read_job()
    except (struct.error, EOFError, pickle.UnpicklingError):
        print("edgecache _worker: started by the server only", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=job.config.server.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[w{job.number}]: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        trio.run(serve_worker, job)
    except UserError as exc:  # e.g. its address taken meanwhile: the owner starts it again
        log.error("worker %d: %s", job.number, exc)
        return 1
    return 0
