"""Progress of a long import or export: a redrawn bar on a terminal, log lines elsewhere.

A bar full of carriage returns is noise in a CI log or a journal, and silence for ten minutes
looks like a hang; so off a terminal a plain line is printed every `interval` seconds (never a
carriage return). On a terminal the bar is redrawn in place with `\r` and always ends with a
newline before anything else is printed: at the end, and also when the work stops early (bad
input, Ctrl-C), so that the error does not run into the bar. Use it as a context manager;
after it closes, late `advance` calls from worker threads draw nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

from ..cliformat import size as human_bytes  # one way to print sizes, here and in `status`

__all__ = ["Progress", "human_bytes"]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        *,
        out: TextIO | None = None,
        tty: bool | None = None,
        interval: float | None = None,
    ) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        # Redraws cost a write syscall each: ten a second look smooth and cost nothing.
        self.interval = interval if interval is not None else (0.1 if self.tty else 10.0)
        self.started = time.monotonic()
        self._last = self.started
        self._lock = threading.Lock()  # entries are read by several threads at once
        self._drawn = False  # a bar is on the terminal's current line
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.finish()
        else:
            self.abandon()

    def abandon(self) -> None:
        """Stop without a summary: end the bar's line so that a message can follow."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._drawn:
                self.out.write("\n")
                self.out.flush()

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.done / max(time.monotonic() - self.started, 1e-6)

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last >= self.interval and not self._closed:
                self._last = now
                self._show(final=False)

    def _line(self) -> str:
        rate = self.rate
        if self.total:
            share = min(self.done / self.total, 1.0)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            return (
                f"{human_bytes(self.done)} of {human_bytes(self.total)} ({share:.0%}), "
                f"{human_bytes(rate)}/s, ETA {_duration(eta)}"
            )
        return f"{human_bytes(self.done)}, {human_bytes(rate)}/s"

    def _show(self, *, final: bool) -> None:
        if self.tty:
            bar = ""
            if self.total:  # a pipe's size is unknown: no bar that would stay empty
                filled = int(min(self.done / self.total, 1.0) * 24)
                bar = " [" + "#" * filled + "." * (24 - filled) + "]"
            end = "\n" if final else ""
            self.out.write(f"\r\x1b[K{self.label}{bar} {self._line()}{end}")
            self._drawn = not final
        else:
            self.out.write(f"{self.label}: {self._line()}\n")
        self.out.flush()

    def finish(self) -> None:
        """The last line: everything was read (a tar's padding and end blocks too)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.done = max(self.done, self.total)
            elapsed = time.monotonic() - self.started
            if self.tty:
                self._show(final=True)
            else:
                self.out.write(
                    f"{self.label}: {human_bytes(self.done)} in {elapsed:.1f}s "
                    f"({human_bytes(self.rate)}/s)\n"
                )
                self.out.flush()
