"""preload's progress bar on a terminal, and the counts preload and export report.

The terminal is a real pseudo-terminal, and the input a fifo fed by the test, so that the bar
is drawn (it redraws ten times a second) before the input ends, well or badly.
"""

from __future__ import annotations

import os
import pty
import random
import re
import select
import subprocess
import time
from pathlib import Path

from tests.support import default_edgecache_argv, run, wait_for
from tests.unit.transfer.archives import oci_layout

MiB = 1 << 20


class Terminal:
    """`edgecache preload --data DATA FIFO` with stdout and stderr on a pty."""

    def __init__(self, data: Path, fifo: Path) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [*default_edgecache_argv(), "preload", "--data", str(data), str(fifo)],
            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        self.output = b""

    def read(self) -> bytes:
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            self.output += chunk
        return self.output

    def finish(self) -> str:
        self.proc.wait(timeout=60)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and select.select([self.master], [], [], 0.1)[0]:
            if len(self.output) == len(self.read()):
                break
        os.close(self.master)
        return self.output.decode(errors="replace")


def _archive(tmp_path: Path) -> bytes:
    entries, _ = oci_layout({"team/app:1.0": [random.Random(5).randbytes(24 * MiB)]})
    return entries.tar()


def _feed(tmp_path: Path, cut: bool) -> tuple[str, int]:
    """Half the archive, until the bar shows; then the rest (or nothing: a truncated input)."""
    tar = _archive(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    term = Terminal(tmp_path / "data", fifo)
    try:
        return _feed_to(term, tar, fifo, cut)
    finally:
        if term.proc.poll() is None:  # a failed wait: never leave it blocked on the fifo
            term.proc.kill()
            term.proc.wait(timeout=30)


def _feed_to(term: Terminal, tar: bytes, fifo: Path, cut: bool) -> tuple[str, int]:

    def opened() -> int | None:
        assert term.proc.poll() is None, term.read()
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return None

    fd = wait_for(opened, timeout=30, what="preload to open the fifo")
    os.set_blocking(fd, True)
    sent = 0
    with os.fdopen(fd, "wb", buffering=0) as pipe:

        def drawn() -> bool:
            # A bar is redrawn when bytes arrive, at most ten times a second: send a little
            # at each poll (never more than half) until one shows.
            nonlocal sent
            if sent < len(tar) // 2:
                sent += pipe.write(tar[sent : sent + MiB // 4])
            return b"\r" in term.read()

        wait_for(drawn, timeout=30, what="a progress bar")
        if not cut:
            pipe.write(tar[sent:])
    text = term.finish()
    return text, term.proc.returncode


def _bar_ended(text: str, marker: str) -> None:
    """`marker` (a summary or an error) starts a line of its own after the bar."""
    before, found, _ = text.partition(marker)
    assert found, text
    assert before.endswith("\n"), repr(text[-400:])
    assert "\r\x1b[Kpreload" in before  # a bar was drawn


def test_an_error_after_the_bar_starts_on_a_new_line(tmp_path: Path) -> None:
    text, code = _feed(tmp_path, cut=True)
    assert code == 1, text
    _bar_ended(text, "edgecache preload: ")
    assert "truncated" in text


def test_the_summary_follows_a_finished_bar(tmp_path: Path) -> None:
    text, code = _feed(tmp_path, cut=False)
    assert code == 0, text
    _bar_ended(text, "preloaded ")
    last_bar = text.rpartition("\r\x1b[K")[2].splitlines()[0]
    assert last_bar.startswith("preload pipe 24.0 MiB, "), last_bar  # all read; no empty bar


def test_preload_and_export_count_the_same_things(tmp_path: Path) -> None:
    layers = [b"first layer" * 100, b"second layer" * 100, b"first layer" * 100]
    entries, digests = oci_layout({"team/app:1.0": layers, "team/other:2.0": layers[:1]})
    archive = tmp_path / "two.tar"
    archive.write_bytes(entries.tar())
    data = tmp_path / "data"
    argv = default_edgecache_argv()
    preloaded = run([*argv, "preload", "--data", data, archive]).stdout
    exported = run(
        [*argv, "export", "--data", data, "team/app:1.0", "team/other:2.0", "-o", tmp_path / "x"]
    ).stdout
    # Two manifests; configs (one per image) and layers (two distinct), each counted once.
    counts = "2 images: 2 manifests, 4 blobs"
    assert f"preloaded {counts} (4 new, " in preloaded, preloaded
    assert re.search(rf"^exported {counts} \(\d+\.\d KiB\) to ", exported, re.MULTILINE), exported
    assert set(digests.values()) <= set(preloaded.split())
