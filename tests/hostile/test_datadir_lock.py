"""A data directory in use is not touched by a second server or by a repair.

Real processes: a running edgecache with pushes in flight, then what a careless operator
runs next to it (a second `serve` on the same directory, `fsck --repair`). The running server
must not notice: its run files stay, its pushes succeed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import EdgecacheServer, anonymous_push_config, wait_for

MiB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EdgecacheServer]:
    with EdgecacheServer(tmp_path / "ec", config_text=anonymous_push_config()) as s:
        yield s


class HeldPush:
    """A monolithic blob push whose body stops half-way until `finish()`: its bytes sit in
    the server's tmp/ meanwhile."""

    def __init__(self, server: EdgecacheServer, repo: str) -> None:
        self.data = os.urandom(3 * MiB)
        self.digest = digest_of(self.data)
        self._go_on = threading.Event()
        self.status: int | None = None
        self._thread = threading.Thread(target=self._push, args=(server, repo))
        self._thread.start()
        tmp = server.data / "tmp"
        wait_for(
            lambda: any(p.stat().st_size > 0 for p in tmp.iterdir()),
            timeout=30,
            what="the push's bytes in tmp/",
        )

    def _body(self) -> Iterator[bytes]:
        yield self.data[: 2 * MiB]
        self._go_on.wait(timeout=60)
        yield self.data[2 * MiB :]

    def _push(self, server: EdgecacheServer, repo: str) -> None:
        with server.client() as client:
            url = f"/v2/{repo}/blobs/uploads/"
            r = client.post(url, params={"digest": self.digest}, content=self._body())
            self.status = r.status_code

    def finish(self) -> int | None:
        self._go_on.set()
        self._thread.join(timeout=60)
        return self.status


def test_a_second_server_on_a_data_dir_in_use_is_refused(server: EdgecacheServer) -> None:
    run = server.data / "run"
    before = {name: (run / name).read_bytes() for name in ("server.json", "admin-token")}
    push = HeldPush(server, "lock/second")
    try:
        second = subprocess.Popen(
            [*server.argv, "serve", "--listen", "127.0.0.1:0", "--data", str(server.data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=server.base,
        )
        try:
            out, err = second.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            second.terminate()  # it started instead of refusing: stop it, by its own pid
            second.communicate(timeout=30)
            pytest.fail("a second server started on a data directory in use")
    finally:
        status = push.finish()
    assert second.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"pid {server.pid}" in lines[0] and server.url in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    # The first server's run files and pushes are untouched.
    assert {name: (run / name).read_bytes() for name in before} == before
    assert status == 201
    with server.client() as client:
        assert client.get(f"/v2/lock/second/blobs/{push.digest}").content == push.data
        token = {"Authorization": f"Bearer {server.admin_token}"}
        assert client.get("/_edgecache/admin/status", headers=token).status_code == 200


def test_fsck_beside_a_live_server_reports_writes_in_progress_and_never_repairs(
    server: EdgecacheServer,
) -> None:
    with server.client() as client:
        r = client.post("/v2/lock/fsck/blobs/uploads/")
        assert r.status_code == 202
        session = r.headers["Location"]
        first = os.urandom(MiB)
        assert client.patch(session, content=first).status_code == 202
        push = HeldPush(server, "lock/fsck")
        try:
            repair = server.cli("fsck", "--repair", "--data", str(server.data))
            assert repair.returncode != 0
            lines = repair.stderr.strip().splitlines()
            assert len(lines) == 1 and "refused" in lines[0], repair.stderr
            assert f"pid {server.pid}" in lines[0] and server.url in lines[0]
            check = server.cli("fsck", "--data", str(server.data))
            assert check.returncode == 0, check.stdout + check.stderr
            assert "problem:" not in check.stdout
            assert "in progress: tmp/" in check.stdout
            assert f"in progress: uploads/{session.rsplit('/', 1)[1]}" in check.stdout
        finally:
            status = push.finish()
        assert status == 201
        assert client.get(f"/v2/lock/fsck/blobs/{push.digest}").content == push.data
        last = os.urandom(MiB)
        r = client.put(session, params={"digest": digest_of(first + last)}, content=last)
        assert r.status_code == 201, r.text
    server.stop()
    repair = server.cli("fsck", "--repair", "--data", str(server.data))
    assert repair.returncode == 0, repair.stdout + repair.stderr
