"""The GC mark in a child process, so that it never competes with serving for the GIL.

The mark is pure Python over every record of one LMDB snapshot (110k records: 2 s idle,
5-14 s on a loaded box). Run in a worker thread it held the GIL long enough to raise the
event loop's p99 latency 2.7-5x for its whole duration (benchmarks/RESULTS.md section 5).
LMDB lets another process read the same environment, so the server starts
`edgecache _gc-mark` (the same executable: the pyinstaller binary or `python -m edgecache`),
hands it the job on stdin and reads the Plan back from stdout. Both ends are this program,
so the job and the answer are pickles.

The sweep stays in the server (it must decide inside the write transactions that race with
pushes and fetches, and runs in small batches anyway).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import trio

from ..config import Config
from ..store.collect import Plan

COMMAND = "_gc-mark"


@dataclass(frozen=True)
class MarkJob:
    data: str
    config: Config  # for is_proxied: the same routing as the server's
    in_flight: frozenset[str]
    now: float


def child_argv() -> list[str]:
    if getattr(sys, "frozen", False):  # the pyinstaller binary runs itself
        return [sys.executable, COMMAND]
    # -P: not the working directory first on sys.path, where a directory named "edgecache" (a
    # data directory, say) would be imported instead of this package.
    return [sys.executable, "-P", "-m", "edgecache", COMMAND]


async def mark_in_child(job: MarkJob) -> tuple[Plan, dict[str, Any]]:
    """The Plan and its summary, computed by a child process. Raises ChildFailed."""
    try:
        done = await trio.run_process(
            child_argv(), stdin=pickle.dumps(job), capture_stdout=True, capture_stderr=True
        )
    except subprocess.CalledProcessError as exc:
        raise ChildFailed(
            f"exit {exc.returncode}: {exc.stderr.decode(errors='replace')[-2000:]}"
        ) from None
    except OSError as exc:
        raise ChildFailed(f"could not start {child_argv()[0]}: {exc}") from None
    # Unpickling a large plan takes a moment: not on the event loop.
    plan, summary = await trio.to_thread.run_sync(pickle.loads, done.stdout)
    return plan, summary


class ChildFailed(Exception):
    pass


def main() -> int:
    """`edgecache _gc-mark`: read a MarkJob on stdin, write (Plan, summary) to stdout."""
    from ..cache.routing import resolve
    from ..store import Store
    from ..store.collect import mark

    job: MarkJob = pickle.load(sys.stdin.buffer)
    store = Store.open(job.data)
    try:
        gc = job.config.gc
        plan = mark(
            store.index,
            grace=gc.grace,
            delete_untagged=gc.delete_untagged,
            is_proxied=lambda repo: resolve(job.config, repo, None).proxied,
            in_flight=job.in_flight,
            now=job.now,
        )
        sys.stdout.buffer.write(pickle.dumps((plan, plan.summary())))
        sys.stdout.buffer.flush()
    finally:
        store.close()
    return 0
