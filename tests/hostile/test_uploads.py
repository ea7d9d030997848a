"""Upload sessions under attack: racing writers, lying and broken bodies, hoarded sessions.

Against a real edgecache over real sockets. The promise under test: a blob published under a
digest is exactly the bytes that hash to it (read back over HTTP and from the file on disk),
whatever concurrent requests do to its session; a request that fails changes nothing; and a
client cannot hold sessions without bound or for ever.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hostile.raw import send_while_reading
from tests.support import EdgecacheServer, anonymous_push_config, wait_for

MiB = 1 << 20
ROUNDS = 12


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pieces(data: bytes, size: int = 256 << 10) -> Iterator[bytes]:
    """A streamed (chunked) body: the server reads it in many pieces, so writers overlap."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def start(client: httpx.Client, repo: str) -> str:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    return str(r.headers["Location"])


def offset(client: httpx.Client, location: str) -> int:
    r = client.get(location)
    assert r.status_code == 204, r.text
    return int(r.headers["Range"].split("-")[1]) + 1 if r.headers["Range"] != "0-0" else 0


def assert_published(server: EdgecacheServer, client: httpx.Client, repo: str, digest: str) -> None:
    """The blob under `digest` is the bytes that hash to it, over HTTP and on disk."""
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, r.text
    assert digest_of(r.content) == digest
    algorithm, hexdigest = digest.split(":")
    on_disk = server.data / "blobs" / algorithm / hexdigest[:2] / hexdigest
    assert digest_of(on_disk.read_bytes()) == digest


# A request the server refused before reading its body (a 416 with Connection: close) may
# reach the client as a closed connection while it is still sending: counted as refused.
REFUSED = 416


def race(*calls: Callable[[], int]) -> list[int]:
    """Run the calls at once, each in its own thread (and HTTP connection); their statuses."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except (httpx.WriteError, httpx.RemoteProtocolError):
            results[i] = REFUSED
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        assert isinstance(result, int), result
    return results


def request(server: EdgecacheServer, method: str, url: str, **kwargs: Any) -> Callable[[], int]:
    def call() -> int:
        with server.client() as client:
            return client.request(method, url, **kwargs).status_code

    return call


def test_racing_writers_never_publish_bytes_unlike_their_digest(
    edgecache: EdgecacheServer,
) -> None:
    repo = "hostile/race"
    seen: dict[str, set[tuple[int, ...]]] = {"patches": set(), "patch-put": set(), "put-del": set()}
    with edgecache.client() as client:
        for round_ in range(ROUNDS):
            # Two PATCHes with the same body: whatever order they run in, a session that
            # accepted both holds body+body.
            body = os.urandom(3 * MiB)
            location = start(client, repo)
            statuses = race(
                request(edgecache, "PATCH", location, content=pieces(body)),
                request(edgecache, "PATCH", location, content=pieces(body)),
            )
            seen["patches"].add(tuple(sorted(statuses)))
            assert set(statuses) <= {202, 416}, statuses
            expected = body * statuses.count(202)
            assert offset(client, location) == len(expected)
            r = client.put(location, params={"digest": digest_of(expected)})
            assert r.status_code == 201, f"round {round_}: {statuses} then {r.text}"
            assert_published(edgecache, client, repo, digest_of(expected))

            # A PATCH racing the finishing PUT.
            first, more = os.urandom(MiB), os.urandom(3 * MiB)
            location = start(client, repo)
            assert client.patch(location, content=first).status_code == 202
            patch, put = race(
                request(edgecache, "PATCH", location, content=pieces(more)),
                request(edgecache, "PUT", location, params={"digest": digest_of(first)}),
            )
            seen["patch-put"].add((patch, put))
            assert (patch, put) in {(404, 201), (416, 201), (202, 416), (202, 400)}, (patch, put)
            if put == 201:
                assert_published(edgecache, client, repo, digest_of(first))
            if put == 416:  # the PATCH went first and the session goes on
                r = client.put(location, params={"digest": digest_of(first + more)})
                assert r.status_code == 201, r.text
                assert_published(edgecache, client, repo, digest_of(first + more))

            # A finishing PUT racing a DELETE: the session is published or cancelled, not both.
            first, last = os.urandom(MiB), os.urandom(3 * MiB)
            location = start(client, repo)
            assert client.patch(location, content=first).status_code == 202
            put, delete = race(
                request(
                    edgecache,
                    "PUT",
                    location,
                    params={"digest": digest_of(first + last)},
                    content=pieces(last),
                ),
                request(edgecache, "DELETE", location),
            )
            seen["put-del"].add((put, delete))
            assert (put, delete) in {(201, 404), (404, 204), (416, 204)}, (put, delete)
            if put == 201:
                assert_published(edgecache, client, repo, digest_of(first + last))
            assert client.get(location).status_code == 404
    assert list((edgecache.data / "uploads").iterdir()) == []
    # Not vacuous: some writers really met (one was refused as the session was busy).
    assert any(REFUSED in outcome for outcomes in seen.values() for outcome in outcomes), seen


def held_body(first: bytes, rest: bytes, go_on: threading.Event) -> Iterator[bytes]:
    yield first
    go_on.wait(timeout=60)
    yield rest


def upload_file(server: EdgecacheServer, location: str) -> Path:
    return server.data / "uploads" / location.rsplit("/", 1)[1]


def test_a_write_to_a_busy_session_is_refused_with_where_it_stands(
    edgecache: EdgecacheServer,
) -> None:
    repo = "hostile/busy"
    with edgecache.client() as client:
        location = start(client, repo)
        assert client.patch(location, content=b"a" * 1000).status_code == 202
        go_on = threading.Event()
        first, rest = os.urandom(2 * MiB), os.urandom(MiB)
        statuses: list[int] = []
        writer = threading.Thread(
            target=lambda: statuses.append(
                request(edgecache, "PATCH", location, content=held_body(first, rest, go_on))()
            )
        )
        writer.start()
        try:
            # The first request holds the session once its first piece is on disk.
            file = upload_file(edgecache, location)
            wait_for(lambda: file.stat().st_size > 1000, timeout=30, what="the first PATCH")
            for method, params in (("PATCH", {}), ("PUT", {"digest": digest_of(b"x")})):
                r = client.request(method, location, params=params, content=b"intruder")
                assert r.status_code == 416, r.text
                assert r.json()["errors"][0]["code"] == "RANGE_NOT_SATISFIABLE"
                assert "another request is writing" in r.json()["errors"][0]["message"]
                assert r.headers["Location"] == location
                assert r.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]
                assert r.headers["Range"] == "0-999"  # what completed requests wrote
            assert offset(client, location) == 1000
        finally:
            go_on.set()
            writer.join(timeout=60)
        assert statuses == [202]
        whole = b"a" * 1000 + first + rest
        r = client.put(location, params={"digest": digest_of(whole)})
        assert r.status_code == 201, r.text
        assert_published(edgecache, client, repo, digest_of(whole))


@pytest.mark.parametrize("size", [20, 5])
def test_a_patch_unlike_its_content_range_is_refused_and_changes_nothing(
    edgecache: EdgecacheServer, size: int
) -> None:
    with edgecache.client() as client:
        location = start(client, "hostile/range")
        assert client.patch(location, content=b"a" * 100).status_code == 202
        # Chunked, so no Content-Length tells the server the body's size up front.
        r = client.patch(
            location, headers={"Content-Range": "100-109"}, content=pieces(b"b" * size, 4)
        )
        assert r.status_code == 416, r.text
        assert "Content-Range" in r.json()["errors"][0]["message"]
        assert r.headers["Range"] == "0-99"
        assert offset(client, location) == 100
        assert upload_file(edgecache, location).stat().st_size == 100
        r = client.patch(location, headers={"Content-Range": "100-109"}, content=b"c" * 10)
        assert r.status_code == 202, r.text
        r = client.put(location, params={"digest": digest_of(b"a" * 100 + b"c" * 10)})
        assert r.status_code == 201, r.text


def test_a_closing_put_is_held_to_its_content_range(edgecache: EdgecacheServer) -> None:
    """The closing PUT may carry the last chunk: its Content-Range counts as a PATCH's."""
    with edgecache.client() as client:
        location = start(client, "hostile/put-range")
        assert client.patch(location, content=b"a" * 100).status_code == 202
        whole = b"a" * 100 + b"z" * 10
        for bad in ("90-99", "100-119"):  # not where the session stands; not the body's size
            r = client.put(
                location,
                params={"digest": digest_of(whole)},
                headers={"Content-Range": bad},
                content=pieces(b"z" * 10, 4),
            )
            assert r.status_code == 416, r.text
            assert r.headers["Range"] == "0-99"
            assert offset(client, location) == 100
        r = client.put(
            location,
            params={"digest": digest_of(whole)},
            headers={"Content-Range": "100-109"},
            content=b"z" * 10,
        )
        assert r.status_code == 201, r.text
        assert_published(edgecache, client, "hostile/put-range", digest_of(whole))


def test_a_patch_cut_off_mid_body_leaves_the_session_where_it_was(
    edgecache: EdgecacheServer,
) -> None:
    repo = "hostile/cutoff"
    with edgecache.client() as client:
        location = start(client, repo)
        assert client.patch(location, content=b"a" * 1000).status_code == 202
        with socket.create_connection((edgecache.host.split(":")[0], edgecache.port)) as sock:
            sock.sendall(
                f"PATCH {location} HTTP/1.1\r\nHost: {edgecache.host}\r\n"
                f"Content-Length: {4 * MiB}\r\n\r\n".encode()
            )
            sock.sendall(os.urandom(3 * MiB))
            file = upload_file(edgecache, location)
            wait_for(lambda: file.stat().st_size > 1000, timeout=30, what="bytes on disk")
        # The server sees the hang-up and lets go of the session: an empty PATCH is welcome.
        wait_for(
            lambda: client.patch(location, content=b"").status_code == 202,
            timeout=30,
            what="the cut-off PATCH to end",
        )
        assert offset(client, location) == 1000
        assert file.stat().st_size == 1000
        tail = os.urandom(MiB)
        assert client.patch(location, content=tail).status_code == 202
        r = client.put(location, params={"digest": digest_of(b"a" * 1000 + tail)})
        assert r.status_code == 201, r.text
        assert_published(edgecache, client, repo, digest_of(b"a" * 1000 + tail))


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[EdgecacheServer]:
    config = anonymous_push_config(
        "[limits]\nmax_uploads_per_client = 2\nmax_uploads = 3\nupload_idle_timeout = 2\n"
    )
    with EdgecacheServer(tmp_path / "ec", config_text=config) as server:
        yield server


def test_sessions_are_bounded_per_client_and_in_total(limited: EdgecacheServer) -> None:
    other = httpx.Client(
        base_url=limited.url, transport=httpx.HTTPTransport(local_address="127.0.0.2")
    )
    with limited.client() as client, other:
        mine = [start(client, "hostile/limits") for _ in range(2)]
        r = client.post("/v2/hostile/limits/blobs/uploads/")
        assert r.status_code == 429, r.text
        error = r.json()["errors"][0]
        assert error["code"] == "TOOMANYREQUESTS"
        assert "max_uploads_per_client" in error["message"] and "127.0.0.1" in error["message"]
        start(other, "hostile/limits")
        r = other.post("/v2/hostile/limits/blobs/uploads/")
        assert r.status_code == 429, r.text
        assert "([limits] max_uploads)" in r.json()["errors"][0]["message"]
        assert client.delete(mine[0]).status_code == 204
        start(client, "hostile/limits")


def test_idle_sessions_expire_and_hold_no_descriptor(limited: EdgecacheServer) -> None:
    with limited.client() as client:
        location = start(client, "hostile/idle")
        assert client.patch(location, content=b"some bytes").status_code == 202
        file = upload_file(limited, location)
        fds = Path(f"/proc/{limited.pid}/fd")
        held = []
        for fd in fds.iterdir():
            try:
                held.append(os.readlink(fd))
            except OSError:
                continue
        assert str(file) not in held
        wait_for(
            lambda: client.get(location).status_code == 404,
            timeout=20,
            what="the idle session to expire",
        )
        assert not file.exists()
        r = client.patch(location, content=b"more")
        assert r.status_code == 404
        assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_a_patch_that_fills_the_disk_leaves_the_session_where_it_was(
    small_disk: Path, tmp_path: Path
) -> None:
    server = EdgecacheServer(
        tmp_path / "ec", config_text=anonymous_push_config(), data=small_disk / "data"
    )
    with server, server.client() as client:
        location = start(client, "hostile/full")
        first = os.urandom(MiB)
        assert client.patch(location, content=first).status_code == 202
        too_big = os.urandom(40 * MiB)  # > the disk
        answer = send_while_reading(server, "PATCH", location, too_big)
        assert answer.startswith(b"HTTP/1.1 507"), answer[:300]
        assert offset(client, location) == MiB
        assert upload_file(server, location).stat().st_size == MiB
        last = os.urandom(MiB)
        assert client.patch(location, content=last).status_code == 202
        r = client.put(location, params={"digest": digest_of(first + last)})
        assert r.status_code == 201, r.text
        assert_published(server, client, "hostile/full", digest_of(first + last))
