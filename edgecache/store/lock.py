"""Who may change a data directory: one server, or one repair, at a time.

`edgecache serve` holds an exclusive flock on <data>/run/lock for its whole life, and so does
`fsck --repair` while it repairs. Without it a second server on the same directory would sweep
the first one's temp files at start and, when it stops, delete the first one's
run/server.json and admin token; and a repair would delete the temp files of uploads and
fetches in flight (their pushes fail with a 500). The kernel drops the lock when its process
ends, kill -9 included, so a crash never leaves a stale lock behind; the file itself stays
(removing it would let the next two comers lock two different files).

The holder writes its pid and what it is into the file, so that whoever is refused can name
it, with the URL from run/server.json when the holder is a server that has written one. A
preload (which works beside a running server) is told apart by the lock it holds on tmp/
(transfer/spool.py): a repair must not delete its spool files either.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "lock"


@dataclass(frozen=True)
class Holder:
    what: str  # "edgecache serve", "edgecache fsck --repair", "edgecache preload"
    pid: int | None = None
    url: str | None = None

    def __str__(self) -> str:
        facts = [f"pid {self.pid}" if self.pid else "pid unknown"]
        if self.url:
            facts.append(self.url)
        return f"{self.what} ({', '.join(facts)})"


class DataDirInUse(Exception):
    def __init__(self, root: Path, holder: Holder) -> None:
        super().__init__(f"data directory {root} is in use by {holder}")
        self.root = root
        self.holder = holder


class DataDirLock:
    """An exclusive hold on a data directory; `release()` (or process exit) ends it."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    @classmethod
    def acquire(cls, root: Path, what: str, *, with_preloads: bool = False) -> DataDirLock:
        """Raises DataDirInUse naming the holder. `with_preloads` also waits for no preload
        (fsck --repair): a preload starting meanwhile waits for this hold to end."""
        run = root / "run"
        run.mkdir(parents=True, exist_ok=True)
        fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fds = [fd]
        try:
            if not _try_lock(fd, fcntl.LOCK_EX):
                raise DataDirInUse(root, _holder(root))
            if with_preloads and (root / "tmp").is_dir():
                tmp = os.open(root / "tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                fds.append(tmp)
                if not _try_lock(tmp, fcntl.LOCK_EX):
                    raise DataDirInUse(root, Holder("edgecache preload"))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what}).encode(), 0)
        except BaseException:
            for each in fds:
                os.close(each)
            raise
        return cls(fds)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def holder(root: Path) -> Holder | None:
    """Who holds the data directory now (None: nobody). Read-only: safe beside a server."""
    try:
        fd = os.open(root / "run" / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        # A shared lock for an instant: it never blocks a holder, only tells one is there.
        if _try_lock(fd, fcntl.LOCK_SH):
            return None
    finally:
        os.close(fd)
    return _holder(root)


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(root: Path) -> Holder:
    run = root / "run"
    info: dict[str, object] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((run / LOCK_FILE).read_text() or "{}")
    pid = info.get("pid") if isinstance(info.get("pid"), int) else None
    what = str(info.get("what") or "another edgecache process")
    url = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        server = json.loads((run / "server.json").read_text())
        if server.get("pid") == pid:
            url = str(server["url"])
    return Holder(what, pid if isinstance(pid, int) else None, url)


def preload_running(root: Path) -> bool:
    """Whether a preload holds tmp/ (its spool files there are in progress)."""
    try:
        fd = os.open(root / "tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return not _try_lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)
