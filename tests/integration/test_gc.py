"""Garbage collection and eviction in the running server, under concurrent pushes and pulls."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    OCI_MANIFEST,
    EdgecacheServer,
    admin,
    anonymous_push_config,
    oci_manifest,
    push_blob,
    wait_for,
)
from tests.upstreams import start_registry


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image(layers: list[bytes], label: str) -> tuple[bytes, bytes]:
    config = json.dumps({"label": label, "layers": len(layers)}).encode()
    return config, oci_manifest(config, layers)


def push_image(client: httpx.Client, repo: str, tag: str, layers: list[bytes]) -> str:
    """Push blobs then the manifest; a blob collected in between (grace 0) is pushed again,
    as a registry client would on MANIFEST_BLOB_UNKNOWN."""
    config, manifest = image(layers, f"{repo}:{tag}")
    for _ in range(50):
        for blob in (config, *layers):
            push_blob(client, repo, blob)
        r = client.put(
            f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST}
        )
        if r.status_code == 201:
            return digest_of(manifest)
        assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", r.text
    raise AssertionError("manifest push kept losing its blobs")


def pull_image(client: httpx.Client, repo: str, ref: str) -> None:
    r = client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, f"{repo}:{ref}: {r.status_code} {r.text}"
    manifest = r.json()
    for desc in (manifest["config"], *manifest["layers"]):
        blob = client.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert blob.status_code == 200, f"{repo} {desc['digest']}: {blob.status_code}"
        assert digest_of(blob.content) == desc["digest"]


@pytest.fixture
def gc_server(tmp_path: Path) -> Iterator[EdgecacheServer]:
    config = anonymous_push_config("[gc]\ngrace = 0.0\ndelete_untagged = true\n")
    with EdgecacheServer(tmp_path / "ec", config_text=config) as server:
        yield server


def test_torture_push_delete_pull_while_gc_runs(gc_server: EdgecacheServer) -> None:
    rng = random.Random(4)
    shared = [os.urandom(64 * 1024) for _ in range(6)]
    rounds = 24
    pushed: dict[str, str] = {}  # "repo:tag" -> manifest digest the client was told is stored
    deleted: set[str] = set()
    lock = threading.Condition()
    done = threading.Event()
    errors: list[BaseException] = []
    gc_runs = 0
    freed = 0

    def guard(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)
                done.set()

        return run

    @guard
    def pusher() -> None:
        with gc_server.client() as client:
            for i in range(rounds):
                layers = [rng.choice(shared), rng.choice(shared), os.urandom(32 * 1024)]
                ref = f"torture/app{i % 4}:t{i}"
                repo, tag = ref.split(":")
                digest = push_image(client, repo, tag, layers)
                with lock:
                    pushed[ref] = digest
                    lock.notify_all()

    @guard
    def deleter() -> None:
        with gc_server.client() as client:
            while not done.is_set():
                with lock:
                    victims = [r for r in pushed if r not in deleted]
                    if len(victims) <= 3:
                        if len(pushed) >= rounds:
                            return
                        lock.wait(timeout=5)  # woken by the next push
                        continue
                ref = victims[0]
                repo = ref.split(":")[0]
                with lock:
                    deleted.add(ref)  # before the request: from now on a 404 is fine
                r = client.delete(f"/v2/{repo}/manifests/{pushed[ref]}")
                assert r.status_code == 202, r.text

    @guard
    def puller() -> None:
        with gc_server.client() as client:
            while not done.is_set():
                with lock:
                    alive = [r for r in pushed if r not in deleted]
                    if not alive:
                        lock.wait(timeout=5)  # woken by the first push
                        continue
                ref = alive[-1]
                repo = ref.split(":")[0]
                r = client.get(
                    f"/v2/{repo}/manifests/{pushed[ref]}", headers={"Accept": OCI_MANIFEST}
                )
                with lock:
                    if ref in deleted:
                        continue  # deleted meanwhile: a 404 is right
                assert r.status_code == 200, f"{ref}: {r.status_code} {r.text}"
                for desc in (r.json()["config"], *r.json()["layers"]):
                    blob = client.get(f"/v2/{repo}/blobs/{desc['digest']}")
                    with lock:
                        if ref in deleted:
                            break
                    assert blob.status_code == 200, f"{ref} lost {desc['digest']}"
                    assert digest_of(blob.content) == desc["digest"]

    workers = [threading.Thread(target=f) for f in (pusher, deleter, puller)]
    for w in workers:
        w.start()
    # GC back to back, in this thread, for as long as pushes and deletes go on.
    while (workers[0].is_alive() or workers[1].is_alive()) and not errors:
        record = admin(gc_server, "POST", "gc")
        assert isinstance(record, dict)
        gc_runs += 1
        freed += record["freed"]["bytes"]
    done.set()
    with lock:
        lock.notify_all()
    for w in workers:
        w.join()
    assert not errors, errors
    assert gc_runs >= 2
    for _ in range(2):
        record = admin(gc_server, "POST", "gc")
        assert isinstance(record, dict)
        gc_runs += 1
        freed += record["freed"]["bytes"]
    assert freed > 0
    with gc_server.client() as client:
        for ref, digest in pushed.items():
            repo, tag = ref.split(":")
            if ref in deleted:
                assert client.get(f"/v2/{repo}/manifests/{digest}").status_code == 404
            else:
                pull_image(client, repo, tag)
                pull_image(client, repo, digest)
    result = gc_server.cli("fsck", "--data", str(gc_server.data))
    assert result.returncode == 0, result.stdout + result.stderr


def _blob_files(data: Path) -> int:
    return sum(1 for p in (data / "blobs").rglob("*") if p.is_file())


@pytest.mark.parametrize("kill_after", [50, 400, 900])
def test_kill_9_in_the_middle_of_a_sweep_leaves_a_clean_store(
    tmp_path: Path, kill_after: int
) -> None:
    config = anonymous_push_config("[gc]\ngrace = 0.0\n")
    server = EdgecacheServer(tmp_path / "ec", config_text=config).start()
    try:
        with server.client() as client:
            layers = [os.urandom(2048), os.urandom(4096)]
            push_image(client, "keep/app", "v1", layers)
            for i in range(1200):  # uploaded blobs no manifest references: garbage
                push_blob(client, "junk/blobs", f"garbage {i} {kill_after}".encode() * 10)
        before = _blob_files(server.data)

        def run_gc() -> None:
            with contextlib.suppress(httpx.HTTPError, AssertionError):  # killed under it
                admin(server, "POST", "gc")

        runner = threading.Thread(target=run_gc)
        runner.start()
        # Kill once the sweep has removed some files (or it finished: then this offset is
        # simply "after the sweep").
        wait_for(
            lambda: _blob_files(server.data) <= before - kill_after or not runner.is_alive(),
            timeout=60,
            what=f"the sweep to remove {kill_after} files",
        )
        server.kill9()
        runner.join()
        server.restart()
        with server.client() as client:
            pull_image(client, "keep/app", "v1")
        server.stop()
        fsck = server.cli("fsck", "--data", str(server.data))
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        server.restart()
        admin(server, "POST", "gc")
        with server.client() as client:
            pull_image(client, "keep/app", "v1")
        assert _blob_files(server.data) == 4  # the manifest, its config and two layers
    finally:
        server.stop()


MiB = 1 << 20


def test_eviction_keeps_the_store_under_its_limit_and_spares_local_and_pinned(
    tmp_path: Path,
) -> None:
    with start_registry(tmp_path / "upstream", "anonymous") as upstream:
        images = [
            upstream.push_test_image(f"team/img{i}", layer=os.urandom(3 * MiB)) for i in range(6)
        ]
        config = (
            anonymous_push_config()
            + f'[upstreams.lab]\nurl = "{upstream.url}"\n'
            # 6 images of 3 MiB would need 18 MiB: limit 10, evict above 9 down to 6.
            + f"[eviction]\nmax_store_bytes = {10 * MiB}\nhigh_watermark = 0.9\n"
            + "low_watermark = 0.6\ncheck_interval = 3600.0\n"
        )
        with EdgecacheServer(tmp_path / "ec", config_text=config) as server:
            with server.client() as client:
                local = push_image(client, "local/app", "v1", [os.urandom(2 * MiB)])
            assert server.cli("status", "--data", str(server.data)).returncode == 0
            evicted: list[str] = []
            for i, pushed in enumerate(images):
                with server.client() as client:
                    pull_image(client, f"lab/team/img{i}", "v1")
                    # Pull the first image again: it is the most recently used, not the oldest.
                    if i >= 2:
                        pull_image(client, "lab/team/img0", "v1")
                result = admin(server, "POST", "evict")
                assert isinstance(result, dict)
                evicted += [e["repository"] for e in result["evicted"]]
                status = admin(server, "GET", "status")
                assert isinstance(status, dict)
                assert status["store_bytes"] <= 9 * MiB, (
                    i,
                    json.dumps(admin(server, "GET", "gc/history")),
                )
                assert pushed.digest
            assert evicted, "nothing was evicted although 20 MiB went through a 10 MiB store"
            assert "lab/team/img0" not in evicted  # pulled again and again: recently used
            assert all(repo.startswith("lab/") for repo in evicted)
            assert evicted[0] == "lab/team/img1"  # the least recently pulled went first
            with server.client() as client:
                pull_image(client, "local/app", local)  # pushed content is never evicted
                pull_image(client, "lab/team/img5", "v1")  # and evicted ones pull again
            fsck = server.cli("fsck", "--data", str(server.data))
            assert fsck.returncode == 0, fsck.stdout
