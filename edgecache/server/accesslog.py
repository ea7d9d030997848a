"""The access log: one line per request, written when the request ends.

    2026-11-30T11:07:59.413+00:00 10.0.0.7 GET /v2/library/nginx/blobs/sha256:9a…?ns=docker.io
        200 1523 3.1ms hit                                           (one line in the log)

Fields: time, client address, method, path, status, body bytes sent, duration, cache outcome.
The outcome is what the handlers recorded in `req.extra["cache"]` for proxied content: `hit`
(served from the store), `miss` (fetched from the upstream now), `joined` (streamed from a
download another request started), `stale` (the upstream failed: the cached copy was served
with a Warning); `refused` when authentication refused the request; `-` otherwise (pushed
repositories, the admin API, health checks).

Never written: the Authorization header, and any query parameter but the few that carry no
secret (`ns`, paging, mounts, artifactType): a client that puts a token in the query string
does not leak it here. Everything that comes from the client is percent-encoded, so a CR, LF
or space in a path cannot forge a line or a field. Status 0 means the client went away before
an answer started.

Where it goes is `[server] access_log`: "stderr" (the default, next to the server's log),
"off", or a file path, appended to and reopened when logrotate moves it away. Lines are
written from the event loop: a short write to a pipe or the page cache, cheaper than handing
each one to a thread.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from ..usererror import UserError, reason
from .http import Request

# Query parameters of the distribution API (and containerd's ns) that hold no secret.
_SHOWN_QUERY = ("ns", "n", "last", "digest", "mount", "from", "artifactType")
# Everything else a client sends is percent-encoded: no spaces, quotes or control characters.
_SAFE = "/:@!$&'()*+,;=-._~"
_REOPEN_CHECK = 1.0  # seconds between checks that a log file was rotated away


def line(req: Request, seconds: float, now: float | None = None) -> str:
    """The access log line of a finished request (without the newline)."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now).astimezone()
    client = req.scope.get("client") or ("-", 0)
    path = quote(req.path, safe=_SAFE)
    shown = [(k, req.query[k]) for k in _SHOWN_QUERY if k in req.query]
    if shown:
        path += "?" + "&".join(f"{k}={quote(v, safe=_SAFE.replace('&', ''))}" for k, v in shown)
    cache = req.extra.get("cache") or ("refused" if req.status in (401, 403) else "-")
    return (
        f"{stamp.isoformat(timespec='milliseconds')} {quote(str(client[0]), safe=_SAFE)} "
        f"{quote(req.method, safe='')} {path} {req.status} {req.sent_bytes} "
        f"{seconds * 1000:.1f}ms {cache}"
    )


class AccessLog:
    """Writes `line`s to stderr, to a file, or nowhere (`target` "off")."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._file: TextIO | None = None
        self._inode: tuple[int, int] | None = None
        self._checked = 0.0
        if target not in ("off", "stderr"):
            self._open()

    @property
    def enabled(self) -> bool:
        return self.target != "off"

    def _open(self) -> None:
        path = Path(self.target)
        try:
            self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            st = os.fstat(self._file.fileno())
        except OSError as exc:
            raise UserError(f"cannot write the access log {path}: {reason(exc)}") from None
        self._inode = (st.st_dev, st.st_ino)

    def _rotated(self) -> bool:
        now = time.monotonic()
        if now - self._checked < _REOPEN_CHECK:
            return False
        self._checked = now
        try:
            st = os.stat(self.target)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._inode

    def record(self, req: Request, seconds: float) -> None:
        if self.target == "off":
            return
        text = line(req, seconds) + "\n"
        if self._file is None:
            out: TextIO = sys.stderr
        else:
            if self._rotated():
                self._file.close()
                try:
                    self._open()
                except UserError:
                    return  # the directory went away: drop lines rather than fail requests
            assert self._file is not None
            out = self._file
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):
            pass  # a full disk or a closed stderr must not fail the request being logged

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
