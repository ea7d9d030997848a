"""Several serving processes (`[server] workers`): one data directory, one port, one cache.

The kernel gives each connection to whichever process accepts it, so a client cannot pick a
process. Where a test needs one process in particular it also talks to that process's own Unix
socket in <data>/run/ (worker-N.sock; owner.sock is the owner's), which serves the same API:
the requests over TCP show that any process answers, the ones over a socket that the paths
between processes (a worker asking the owner) really ran.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faultproxy import FaultProxy
from tests.integration.test_proxy import metric
from tests.support import (
    EdgecacheServer,
    admin,
    anonymous_push_config,
    oci_manifest,
    push_blob,
    sha256_bytes,
    wait_for,
)
from tests.upstreams import RunningUpstream, start_registry

MiB = 1 << 20
UPSTREAM = "lab"
WORKERS = 3


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        yield registry


def config(upstream_url: str, workers: int = WORKERS) -> str:
    return anonymous_push_config(
        f"[server]\nworkers = {workers}\n"
        f'[upstreams.{UPSTREAM}]\nurl = "{upstream_url}"\nidle_timeout = 60.0\n'
    )


def serving(server: EdgecacheServer) -> list[dict[str, Any]]:
    """The status rows of every process, once all of them accept connections."""

    def ready() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = admin(server, "GET", "status")["workers"]
        return rows if all(r.get("owner") or r["serving"] for r in rows) else None

    return wait_for(ready, timeout=30, what="every worker to serve")


def process_client(server: EdgecacheServer, name: str, **kwargs: Any) -> httpx.Client:
    """A client of one process: `name` is "owner" or "worker-N"."""
    path = server.data / "run" / f"{name}.sock"
    kwargs.setdefault("timeout", 60.0)
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(path)), base_url="http://edgecache", **kwargs
    )


def own_metric(server: EdgecacheServer, name: str, metric_name: str, labels: str = "") -> float:
    """A metric as one process counted it (its own socket answers with its own figures)."""
    with process_client(server, name) as client:
        return metric(client, metric_name, labels)


def fault_proxy(upstream: RunningUpstream) -> FaultProxy:
    host, port = upstream.host.rsplit(":", 1)
    return FaultProxy(host, int(port))


def get_digest(client: httpx.Client, path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    with client.stream("GET", path) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes():
            h.update(chunk)
    return response.num_bytes_downloaded, f"sha256:{h.hexdigest()}"


def test_every_process_answers_and_metrics_add_up(tmp_path: Path) -> None:
    blob = random.Random(1).randbytes(2 * MiB)
    with EdgecacheServer(
        tmp_path, config_text=anonymous_push_config(f"[server]\nworkers = {WORKERS}\n")
    ) as server:
        rows = serving(server)
        assert len(rows) == WORKERS and len({r["pid"] for r in rows}) == WORKERS
        with server.client() as client:
            digest = push_blob(client, "team/app", blob)
            config_digest = push_blob(client, "team/app", b"{}")
            manifest = oci_manifest(b"{}", [blob])
            put = client.put(
                "/v2/team/app/manifests/v1",
                content=manifest,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            )
            assert put.status_code == 201, put.text
            assert config_digest
        pulls = 60
        for _ in range(pulls):  # a new connection each: the kernel spreads them
            with server.client() as client:
                assert get_digest(client, f"/v2/team/app/blobs/{digest}") == (len(blob), digest)
                assert client.get("/v2/team/app/manifests/v1").content == manifest
        label = '{method="GET",route="blob",status="200"}'
        names = ["owner"] + [f"worker-{n}" for n in range(1, WORKERS)]
        own = {n: own_metric(server, n, "edgecache_http_requests_total", label) for n in names}
        with server.client() as client:
            total = metric(client, "edgecache_http_requests_total", label)
        assert total == pulls == sum(own.values()), own
        # Each worker has answered from disk: the blob, by sendfile, without the owner.
        served = [n for n in names if own[n] > 0]
        assert len(served) >= 2, own


def test_a_cold_blob_is_fetched_once_whichever_processes_ask(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    size = 24 * MiB
    digest = upstream.push_blob("team/cold", random.Random(2).randbytes(size))
    path = f"/v2/{UPSTREAM}/team/cold/blobs/{digest}"
    results: list[tuple[int, str] | BaseException] = []

    def pull(server: EdgecacheServer, name: str | None) -> None:
        try:
            client = server.client() if name is None else process_client(server, name)
            with client:
                results.append(get_digest(client, path))
        except BaseException as exc:
            results.append(exc)

    def forwards(server: EdgecacheServer) -> float:
        return sum(
            own_metric(server, f"worker-{n}", "edgecache_owner_forwards_total")
            for n in range(1, WORKERS)
        )

    with (
        fault_proxy(upstream) as proxy,
        EdgecacheServer(tmp_path, config_text=config(proxy.url)) as server,
    ):
        serving(server)
        asked = forwards(server)  # the status requests above may have crossed processes
        first = threading.Thread(target=pull, args=(server, "worker-1"))
        first.start()
        wait_for(lambda: proxy.bytes_to_client > MiB, timeout=30, interval=0, what="1 MiB")
        proxy.stall(open_only=True)  # the one download holds while everyone else asks
        askers = [None] * 8 + ["worker-1", "worker-2", "owner"]
        threads = [threading.Thread(target=pull, args=(server, name)) for name in askers]
        for t in threads:
            t.start()
        # Both workers' sockets, and any TCP connection that landed on a worker, forward.
        wait_for(
            lambda: forwards(server) >= asked + 3, timeout=30, what="the workers to ask the owner"
        )
        assert proxy.holding == 1 and proxy.requests == 1
        proxy.release()
        for t in [first, *threads]:
            t.join(timeout=120)
        assert results == [(size, digest)] * (len(askers) + 1)
        assert upstream.settled_served_bytes(digest, size) == size
        with server.client() as client:
            label = f'{{upstream="{UPSTREAM}"}}'
            assert metric(client, "edgecache_upstream_blob_fetches_total", label) == 1
        # Now on disk: a worker answers it itself, forwarding nothing more.
        before = own_metric(server, "worker-1", "edgecache_owner_forwards_total")
        with process_client(server, "worker-1") as client:
            assert get_digest(client, path) == (size, digest)
        assert own_metric(server, "worker-1", "edgecache_owner_forwards_total") == before


def test_a_worker_streams_the_owners_download_as_bytes_arrive(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    size = 16 * MiB
    digest = upstream.push_blob("team/slow", random.Random(3).randbytes(size))
    path = f"/v2/{UPSTREAM}/team/slow/blobs/{digest}"
    joiner: list[tuple[int, str]] = []

    def join(server: EdgecacheServer) -> None:
        with process_client(server, "worker-2") as client:
            joiner.append(get_digest(client, path))

    with (
        fault_proxy(upstream) as proxy,
        EdgecacheServer(tmp_path, config_text=config(proxy.url)) as server,
    ):
        serving(server)
        start = proxy.bytes_to_client
        with (
            process_client(server, "worker-1") as first,
            first.stream("GET", path) as response,
        ):
            assert response.status_code == 200
            wait_for(
                lambda: proxy.bytes_to_client - start > 2 * MiB,
                timeout=30,
                interval=0,
                what="2 MiB of the download",
            )
            proxy.stall(open_only=True)  # the owner's download holds mid-body
            h = hashlib.sha256()
            received = 0
            chunks = response.iter_raw()
            while received < MiB:  # bytes reach the worker's client meanwhile
                chunk = next(chunks)
                h.update(chunk)
                received += len(chunk)
            assert proxy.holding == 1
            # Another worker joins the same download: no new upstream request.
            requests = proxy.requests
            asked = own_metric(server, "worker-2", "edgecache_owner_forwards_total")
            t = threading.Thread(target=join, args=(server,))
            t.start()
            wait_for(
                lambda: own_metric(server, "worker-2", "edgecache_owner_forwards_total") > asked,
                timeout=30,
                what="worker-2 to ask the owner",
            )
            proxy.release()
            for chunk in chunks:
                h.update(chunk)
                received += len(chunk)
            t.join(timeout=60)
        assert (received, f"sha256:{h.hexdigest()}") == (size, digest)
        assert joiner == [(size, digest)]
        assert proxy.requests == requests


def test_uploads_continue_on_any_process(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(5 * MiB)
    digest = sha256_bytes(data)
    with EdgecacheServer(
        tmp_path, config_text=anonymous_push_config(f"[server]\nworkers = {WORKERS}\n")
    ) as server:
        serving(server)
        clients = [process_client(server, n) for n in ("worker-1", "owner", "worker-2")]
        clients.append(server.client())
        try:
            r = clients[0].post("/v2/team/up/blobs/uploads/")
            assert r.status_code == 202, r.text
            location = r.headers["location"]
            piece = MiB
            for i, offset in enumerate(range(0, len(data), piece)):
                chunk = data[offset : offset + piece]
                r = clients[i % len(clients)].patch(
                    location,
                    content=chunk,
                    headers={
                        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                        "Content-Type": "application/octet-stream",
                    },
                )
                assert r.status_code == 202, r.text
                location = r.headers["location"]
            r = clients[1].put(location, params={"digest": digest})
            assert r.status_code == 201, r.text
            for client in clients:
                assert get_digest(client, f"/v2/team/up/blobs/{digest}") == (len(data), digest)
        finally:
            for client in clients:
                client.close()


def test_a_killed_worker_is_restarted_and_the_others_keep_their_connections(
    tmp_path: Path,
) -> None:
    blob = random.Random(5).randbytes(32 * MiB)
    with EdgecacheServer(
        tmp_path, config_text=anonymous_push_config(f"[server]\nworkers = {WORKERS}\n")
    ) as server:
        with server.client() as client:
            digest = push_blob(client, "team/kill", blob)
        rows = serving(server)
        victim = next(r for r in rows if r["worker"] == 1)
        path = f"/v2/team/kill/blobs/{digest}"
        with process_client(server, "worker-2") as other, other.stream("GET", path) as response:
            chunks = response.iter_raw()
            h = hashlib.sha256(next(chunks))  # mid-body on worker 2
            os.kill(victim["pid"], signal.SIGKILL)
            for chunk in chunks:
                h.update(chunk)
        assert f"sha256:{h.hexdigest()}" == digest

        def restarted() -> dict[str, Any] | None:
            rows = admin(server, "GET", "status")["workers"]
            row = next(r for r in rows if r["worker"] == 1)
            return row if row["serving"] and row["pid"] != victim["pid"] else None

        row = wait_for(restarted, timeout=60, what="worker 1 to be started again")
        assert row["restarts"] == 1
        assert "worker 1 exited (signal SIGKILL)" in server.log_text()
        with process_client(server, "worker-1") as client:
            assert get_digest(client, path) == (len(blob), digest)


def test_sigterm_drains_every_process(tmp_path: Path) -> None:
    blob = random.Random(6).randbytes(16 * MiB)
    with EdgecacheServer(
        tmp_path, config_text=anonymous_push_config(f"[server]\nworkers = {WORKERS}\n")
    ) as server:
        with server.client() as client:
            digest = push_blob(client, "team/drain", blob)
        pids = [r["pid"] for r in serving(server)]
        with (
            process_client(server, "worker-1") as client,
            client.stream("GET", f"/v2/team/drain/blobs/{digest}") as response,
        ):
            chunks = response.iter_raw()
            h = hashlib.sha256(next(chunks))
            os.kill(server.pid, signal.SIGTERM)  # the owner: it tells every worker
            for chunk in chunks:  # the download in flight on a worker still completes
                h.update(chunk)
        assert f"sha256:{h.hexdigest()}" == digest
        assert wait_for(lambda: not server.running(), timeout=30, what="the owner to exit")
        assert server.proc is not None and server.proc.returncode == 0
        wait_for(lambda: not any(_alive(p) for p in pids), timeout=30, what="workers to exit")
        left = sorted(p.name for p in (server.data / "run").iterdir())
        assert left == ["admin-token", "lock"], left  # no socket, no server.json


def test_workers_end_with_their_owner_even_on_kill_9(tmp_path: Path) -> None:
    server = EdgecacheServer(
        tmp_path, config_text=anonymous_push_config(f"[server]\nworkers = {WORKERS}\n")
    ).start()
    try:
        pids = [r["pid"] for r in serving(server) if not r.get("owner")]
        server.kill9()
        wait_for(lambda: not any(_alive(p) for p in pids), timeout=30, what="orphans to exit")
        server.restart()  # the data directory is free again
        assert len(serving(server)) == WORKERS
    finally:
        server.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_warm_tags_and_lists_are_answered_by_the_worker_itself(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    """A worker asks the owner once, then answers a tag (until tag_ttl), the tag list and the
    referrers (until list_ttl) itself, with the owner's bytes."""
    config_blob = b'{"architecture":"amd64","os":"linux"}'
    layer = random.Random(7).randbytes(4096)
    upstream.push_blob("team/lists", config_blob)
    upstream.push_blob("team/lists", layer)
    manifest = oci_manifest(config_blob, [layer])
    digest = upstream.push_manifest("team/lists", "v1", manifest)
    text = config(upstream.url) + "[proxy]\ntag_ttl = 300.0\n"
    with EdgecacheServer(tmp_path, config_text=text) as server:
        serving(server)
        base = f"/v2/{UPSTREAM}/team/lists"
        paths = [
            f"{base}/manifests/v1",
            f"{base}/tags/list",
            f"{base}/referrers/{digest}",
            f"{base}/referrers/{digest}?artifactType=application/example",
        ]
        headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        forwarded = own_metric(server, "worker-1", "edgecache_owner_forwards_total")
        with process_client(server, "worker-1", headers=headers) as client:
            first = [client.get(p) for p in paths]
            asked = own_metric(server, "worker-1", "edgecache_owner_forwards_total")
            again = [client.get(p) for p in paths]
            assert own_metric(server, "worker-1", "edgecache_owner_forwards_total") == asked
        assert asked - forwarded == len(paths)
        for one, two in zip(first, again, strict=True):
            assert one.status_code == two.status_code == 200, (one.text, two.text)
            assert one.content == two.content
            assert one.headers["content-type"] == two.headers["content-type"]
        assert first[0].content == manifest
        assert first[1].json() == {"name": f"{UPSTREAM}/team/lists", "tags": ["v1"]}
        assert again[3].headers["oci-filters-applied"] == "artifactType"
        assert upstream.request_count("/team/lists/tags/list") == 1


def test_by_default_one_process_per_cpu(tmp_path: Path) -> None:
    text = anonymous_push_config("[server]\nworkers = 0\n")  # the default, said explicitly
    with EdgecacheServer(tmp_path, config_text=text) as server:
        rows = serving(server)
        assert len(rows) == len(os.sched_getaffinity(0))
        assert f"processes:   {len(rows)}" in server.log_text()
        status = server.cli("status", "--data", str(server.data))
        assert status.returncode == 0, status.stderr
        assert ("worker 1" in status.stdout) == (len(rows) > 1), status.stdout


def test_connection_close_ends_relayed_and_streamed_answers(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    """A client's Connection: close is honoured when a worker relays the owner's answer, and
    when the owner streams a download in progress (both used to leave the connection open:
    ending the response inside the disconnect watch cancelled hypercorn's own close)."""
    size = 4 * MiB
    digest = upstream.push_blob("team/close", random.Random(8).randbytes(size))
    with EdgecacheServer(tmp_path, config_text=config(upstream.url)) as server:
        serving(server)
        push = b"POST /v2/team/close/blobs/uploads/ HTTP/1.1\r\nHost: e\r\nContent-Length: 0\r\n"
        cold = f"GET /v2/{UPSTREAM}/team/close/blobs/{digest} HTTP/1.1\r\nHost: e\r\n".encode()
        for name, request, status in (
            ("worker-1", push, b"202"),  # relayed from the owner
            ("owner", cold, b"200"),  # streamed while it downloads
            ("worker-2", cold, b"200"),  # on disk by now: sendfile
        ):
            answer = _until_closed(server.data / "run" / f"{name}.sock", request)
            assert answer.split(b" ", 2)[1] == status, (name, answer[:200])
        assert hashlib.sha256(answer.split(b"\r\n\r\n", 1)[1]).hexdigest() == digest[7:]


def _until_closed(path: Path, request: bytes) -> bytes:
    """Send `request` (+ Connection: close) on a Unix socket; everything until the server
    closes the connection (a socket timeout fails the test)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(request + b"Connection: close\r\n\r\n")
        answer = bytearray()
        while chunk := sock.recv(1 << 20):
            answer += chunk
    return bytes(answer)


def test_a_directory_named_edgecache_in_the_working_directory_is_not_imported(
    tmp_path: Path,
) -> None:
    """The server's children (workers, the GC mark) run `python -m edgecache` from the
    server's working directory, where the data directory may well be called "edgecache"."""
    text = anonymous_push_config(f"[server]\nworkers = {WORKERS}\n")
    with EdgecacheServer(tmp_path, config_text=text, data=tmp_path / "edgecache") as server:
        assert len(serving(server)) == WORKERS
        with server.client() as client:
            push_blob(client, "team/cwd", b"x" * 1000)
        assert admin(server, "POST", "gc")["freed"]["objects"] == 0
