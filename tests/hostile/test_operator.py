"""Everyday operator mistakes, made with the real `edgecache` command as a new user makes them.

Each one must end in one clear line on stderr and a non-zero exit status, never a traceback,
and must change nothing (no half-written export, nothing published from an interrupted
preload). Run as root here, where chmod stops nothing: "unwritable" is a read-only bind
mount in a private mount namespace, or a file where a directory should be.
"""

from __future__ import annotations

import errno
import os
import random
import select
import signal
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.support import (
    LOOPBACK,
    default_edgecache_argv,
    require_tool,
    run,
    wait_for,
)
from tests.unit.transfer.archives import oci_layout

MiB = 1 << 20


def edgecache(
    *args: str | Path, cwd: Path | None = None, timeout: float = 60.0, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECACHE_")}
    argv = [*default_edgecache_argv(), *map(str, args)]
    proc = subprocess.run(
        argv, input=stdin, capture_output=True, timeout=timeout, env=env, cwd=cwd, check=False
    )
    return subprocess.CompletedProcess(
        argv, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode()
    )


Spawn = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start `edgecache ARGS...` in the background; killed (by its pid) if a test leaves it
    running, e.g. blocked on a fifo after a failed assertion."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str | Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*default_edgecache_argv(), *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def one_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The single stderr line of a failed command, which must say each of `fragments`."""
    assert proc.returncode not in (0, None), (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("edgecache"), line
    for fragment in fragments:
        assert fragment in line, line
    return line


# ------------------------------------------------------------------------------------ serve


def test_serve_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = edgecache("serve", "--listen", f"{LOOPBACK}:{port}", "--data", tmp_path / "d")
    one_line(proc, f"{LOOPBACK}:{port}", "in use")
    assert not (tmp_path / "d" / "run" / "server.json").exists()


# Names that fail inside the resolver without a DNS query (tests only talk to loopback).
@pytest.mark.parametrize("host", ["no such host", "no-such..host"])
def test_serve_on_a_host_that_does_not_resolve(tmp_path: Path, host: str) -> None:
    proc = edgecache("serve", "--listen", f"{host}:0", "--data", tmp_path / "d")
    one_line(proc, "cannot listen on", repr(host))


def test_serve_on_an_address_not_of_this_machine(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never assigned to a host; binding fails locally.
    proc = edgecache("serve", "--listen", "192.0.2.1:0", "--data", tmp_path / "d")
    one_line(proc, "192.0.2.1:0", "not one of this machine's")


def test_serve_with_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory\n")
    proc = edgecache("serve", "--listen", f"{LOOPBACK}:0", "--data", tmp_path / "data")
    one_line(proc, "data directory", "is a file, not a directory")
    proc = edgecache("serve", "--listen", f"{LOOPBACK}:0", "--data", tmp_path / "data" / "sub")
    one_line(proc, f"{tmp_path / 'data'} is a file")
    assert (tmp_path / "data").read_text() == "not a directory\n"


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[list[str]]:
    """argv prefix that runs a command with tmp_path/ro mounted read-only (a private mount
    namespace: nothing outside the command sees the mount, and it goes when it exits)."""
    unshare = require_tool("unshare")
    ro = tmp_path / "ro"
    ro.mkdir()
    probe = subprocess.run(
        [unshare, "-m", "sh", "-c", f'mount --bind -o ro "{ro}" "{ro}" && ! touch "{ro}/x"'],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {probe.stderr!r}")
    yield [unshare, "-m", "sh", "-c", f'mount --bind -o ro "{ro}" "{ro}" && exec "$@"', "sh"]


def test_serve_with_a_read_only_data_dir(read_only: list[str], tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    new = run([*read_only, *default_edgecache_argv(), "serve", "--data", ro / "new"], check=False)
    one_line(new, f"{ro / 'new'}", "read-only file system")
    # An existing data directory, mounted read-only afterwards (LMDB cannot take its lock).
    run([*default_edgecache_argv(), "preload", "--data", ro / "old", _tiny_layout(tmp_path)])
    old = run([*read_only, *default_edgecache_argv(), "serve", "--data", ro / "old"], check=False)
    one_line(old, f"{ro / 'old'}", "read-only file system")


def test_config_that_is_a_directory_or_not_text(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    one_line(edgecache("serve", "--config", tmp_path / "conf.d"), "conf.d", "Is a directory")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe[server]\n")
    one_line(edgecache("serve", "--config", tmp_path / "binary.toml"), "not UTF-8")


# ------------------------------------------------------------------- status, gc, mirror-config


@pytest.mark.parametrize("command", ["status", "gc"])
def test_admin_commands_with_a_data_dir_that_is_a_file(tmp_path: Path, command: str) -> None:
    (tmp_path / "data").write_text("")
    one_line(edgecache(command, "--data", tmp_path / "data"), "is a file, not a directory")
    one_line(edgecache(command, "--data", tmp_path / "none"), "no running server found")


def test_mirror_config_written_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "certs.d").write_text("")
    proc = edgecache(
        "mirror-config", "containerd", "--url", "http://edge:5000", "--write", tmp_path / "certs.d"
    )
    one_line(proc, "certs.d is a file, not a directory")


# ---------------------------------------------------------------------------- export


def _tiny_layout(tmp_path: Path) -> Path:
    entries, _ = oci_layout({"team/app:1.0": [b"layer one", b"layer two"]})
    path = tmp_path / "tiny.tar"
    path.write_bytes(entries.tar())
    return path


@pytest.fixture
def data_with_app(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    run([*default_edgecache_argv(), "preload", "--data", data, _tiny_layout(tmp_path)])
    return data


def test_export_into_a_missing_directory(data_with_app: Path, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "app.tar"
    one_line(
        edgecache("export", "--data", data_with_app, "team/app:1.0", "-o", out),
        f"directory {out.parent} does not exist",
    )
    assert not out.parent.exists()


def test_export_onto_a_directory(data_with_app: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    proc = edgecache("export", "--data", data_with_app, "team/app:1.0", "-o", f"{tmp_path}/out/")
    one_line(proc, "is a directory")
    assert list(tmp_path.glob("*.part")) == [] and list((tmp_path / "out").iterdir()) == []


def test_export_from_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    proc = edgecache("export", "--data", tmp_path / "data", "a:1", "-o", tmp_path / "a.tar")
    one_line(proc, "is a file, not a directory")


def test_export_through_a_symlink_keeps_the_link(data_with_app: Path, tmp_path: Path) -> None:
    # As `-o /dev/stdout` with stdout redirected to a file: the link must stay a link.
    target = tmp_path / "real.tar"
    target.write_bytes(b"")
    link = tmp_path / "link.tar"
    link.symlink_to(target)
    proc = edgecache("export", "--data", data_with_app, "team/app:1.0", "-o", link)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    listing = run(["tar", "-tf", target]).stdout.splitlines()
    assert "index.json" in listing


def test_export_to_a_pipe(data_with_app: Path, tmp_path: Path, spawn: Spawn) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = spawn("export", "--data", data_with_app, "team/app:1.0", "-o", fifo)
    with _fifo_reader(fifo, proc) as pipe:
        tar = pipe.read()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    listing = subprocess.run(["tar", "-t"], input=tar, capture_output=True, check=True)
    assert b"index.json" in listing.stdout.split(b"\n")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)  # not renamed over


# ---------------------------------------------------------------------------- preload


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"hello\n", "not a tar archive (6 bytes"),
        (b"", "empty file, not a tar archive"),
        (b"\0" * 4096, "not a tar archive (an empty first block"),
    ],
)
def test_preload_of_a_file_that_is_no_archive(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = tmp_path / "images.txt"
    path.write_bytes(content)
    line = one_line(edgecache("preload", "--data", tmp_path / "data", path), fragment)
    assert "truncated" not in line and "damaged" not in line


def test_preload_of_gzipped_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("meeting notes\n" * 1000)
    run(["gzip", path])
    line = one_line(
        edgecache("preload", "--data", tmp_path / "data", f"{path}.gz"),
        "gzip data whose content is not a tar archive",
    )
    assert "truncated" not in line


def test_preload_from_a_pipe(tmp_path: Path) -> None:
    tar = _tiny_layout(tmp_path).read_bytes()
    for stdin in (tar, subprocess.run(["gzip", "-c"], input=tar, capture_output=True).stdout):
        proc = edgecache("preload", "--data", tmp_path / "data", "/dev/stdin", stdin=stdin)
        assert proc.returncode == 0, proc.stderr
        assert "team/app:1.0 sha256:" in proc.stdout


def _big_layout(tmp_path: Path) -> Path:
    """A plain OCI-layout tar whose last entry is one 32 MiB layer."""
    entries, _ = oci_layout({"big/app:1.0": [random.Random(8).randbytes(32 * MiB)]})
    tar = tmp_path / "big.tar"
    tar.write_bytes(entries.tar())
    return tar


def _exited(proc: subprocess.Popen[str], what: str) -> AssertionError:
    _, err = proc.communicate()
    return AssertionError(f"edgecache exited with {proc.returncode} before {what}: {err}")


def _fifo_writer(path: Path, proc: subprocess.Popen[str]) -> BinaryIO:
    """The write end of a fifo that `proc` reads: a failure, not a hang, if it never does."""

    def opened() -> int | None:
        if proc.poll() is not None:
            raise _exited(proc, f"opening {path}")
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet
                return None
            raise

    fd = wait_for(opened, timeout=30, what=f"edgecache to open {path}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "wb")


def _fifo_reader(path: Path, proc: subprocess.Popen[str]) -> BinaryIO:
    """The read end of a fifo that `proc` writes, once it has written something."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def readable() -> bool:
        if select.select([fd], [], [], 0)[0]:
            return True
        if proc.poll() is not None:
            os.close(fd)
            raise _exited(proc, f"writing to {path}")
        return False

    wait_for(readable, timeout=30, what=f"edgecache to write to {path}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def test_ctrl_c_during_preload_publishes_nothing_and_resumes(tmp_path: Path, spawn: Spawn) -> None:
    tar = _big_layout(tmp_path)
    data = tmp_path / "data"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = spawn("preload", "--data", data, fifo)
    with _fifo_writer(fifo, proc) as pipe, open(tar, "rb") as source:
        # Half the archive, then nothing more: preload waits in a read, mid-layer.
        pipe.write(source.read(tar.stat().st_size // 2))
        pipe.flush()
        wait_for(
            lambda: any(p.name.endswith(".part") for p in (data / "tmp").glob("*")),
            timeout=30,
            what="preload to spool the layer",
        )
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == [err.strip()], err
    assert "interrupted" in err and "run the same command again" in err
    assert out == ""
    left = [p.name for p in (data / "tmp").iterdir()]
    assert not [n for n in left if n.endswith(".part")], left
    assert [n for n in left if n.startswith("preload-sha256-")], left  # verified: kept to resume
    missing = edgecache("export", "--data", data, "big/app:1.0", "-o", tmp_path / "x.tar")
    one_line(missing, "not in the store")
    again = edgecache("preload", "--data", data, tar)
    assert again.returncode == 0, again.stderr
    assert "docker.io/big/app:1.0 sha256:" in again.stdout


def test_ctrl_c_during_export_to_a_pipe(tmp_path: Path, spawn: Spawn) -> None:
    tar = _big_layout(tmp_path)
    data = tmp_path / "data"
    run([*default_edgecache_argv(), "preload", "--data", data, tar])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = spawn("export", "--data", data, "big/app:1.0", "-o", fifo)
    received = 0
    with _fifo_reader(fifo, proc) as pipe:
        received += len(pipe.read(MiB))
        proc.send_signal(signal.SIGINT)
        while chunk := pipe.read(MiB):  # keep reading: the export must not block on a full pipe
            received += len(chunk)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip() == f"edgecache export: interrupted; {fifo} is incomplete", err
    assert received < tar.stat().st_size
