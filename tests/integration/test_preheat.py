"""Preheat against the real server (owner and worker), the real docker-registry upstream and
the real CLI: manual runs, the push / preload / first-pull / watch triggers, jobs, cancel.

The upstream's JSON log says what crossed the uplink (tests/upstreams.py): a preheated image
is fetched once, and a client's pull after it costs the uplink nothing but the tag's check.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    EdgecacheServer,
    make_image,
    oci_layout_blobs,
    oci_layout_dir,
    oci_manifest,
    require_tool,
    run,
    wait_for,
)
from tests.upstreams import RunningUpstream, start_registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = """
[auth]
anonymous_push = true

[upstreams.up]
url = "{url}"
retries = 1
connect_timeout = 2.0

[[preheat.policies]]
name = "pushed"
repositories = ["team/**", "docker.io/team/**"]
tags = ["v*"]
on = ["push", "preload"]

[[preheat.policies]]
name = "pulled"
repositories = ["up/pulled/**"]
on = ["pull"]

[[preheat.policies]]
name = "nightly"
repositories = ["up/apps/**"]
tags = ["stable"]
schedule = "0 3 * * *"
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        yield registry


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[EdgecacheServer]:
    config = CONFIG.format(url=upstream.url)
    with EdgecacheServer(tmp_path_factory.mktemp("preheat"), config_text=config) as srv:
        yield srv


def skopeo(*args: str) -> None:
    run([require_tool("skopeo"), "--insecure-policy", *args], timeout=120)


def push_upstream(
    upstream: RunningUpstream, tmp: Path, name: str, sizes: list[int], seed: int
) -> str:
    """An image pushed to the upstream as `name` (repo:tag); its layout reference."""
    ref = make_image(tmp / f"img{seed}", sizes, seed=seed)
    skopeo("copy", "--dest-tls-verify=false", ref, f"docker://{upstream.host}/{name}")
    return ref


def blob_digests(ref: str) -> dict[str, int]:
    """digest -> size of every blob (config and layers) of a layout's image."""
    layout = oci_layout_dir(ref)
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest[7:]).read_bytes())
    blobs = [manifest["config"], *manifest["layers"]]
    return {b["digest"]: b["size"] for b in blobs}


def admin(server: EdgecacheServer, method: str, name: str, body: Any = None) -> httpx.Response:
    with server.client() as client:
        return client.request(
            method,
            f"/_edgecache/admin/{name}",
            json=body,
            headers={"Authorization": f"Bearer {server.admin_token}"},
        )


def jobs(server: EdgecacheServer) -> list[dict[str, Any]]:
    answer = admin(server, "GET", "preheat/jobs?limit=100")
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def finished_job(server: EdgecacheServer, predicate: Any, timeout: float = 60) -> dict[str, Any]:
    """The newest job matching `predicate` once it has ended."""

    def find() -> dict[str, Any] | None:
        for job in jobs(server):
            if predicate(job) and job["state"] not in ("queued", "running"):
                return job
        return None

    return wait_for(find, timeout=timeout, what="a preheat job to end")


def stored_blob(server: EdgecacheServer, repo: str, digest: str) -> bool:
    with server.client() as client:
        return client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200


def test_preheat_images_fetches_every_blob_once_before_any_pull(
    server: EdgecacheServer, upstream: RunningUpstream, tmp_path: Path
) -> None:
    ref = push_upstream(upstream, tmp_path, "apps/web:v1", [400_000, 150_000], seed=1)
    blobs = blob_digests(ref)
    done = server.cli("preheat", "--data", str(server.data), "up/apps/web:v1", "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up/apps/web:v1" in done.stdout and "site: done" in done.stdout
    job = jobs(server)[0]
    assert job["state"] == "succeeded" and job["trigger"] == "manual"
    assert job["bytes"] == sum(blobs.values())
    for digest, size in blobs.items():
        assert upstream.settled_served_bytes(digest, size) == size
    # A client's pull now: every blob a hit, nothing more over the uplink.
    skopeo("copy", "--src-tls-verify=false", f"docker://{server.host}/up/apps/web:v1",
           f"oci:{tmp_path}/pulled:v1")  # fmt: skip
    pulled = oci_layout_blobs(tmp_path / "pulled")
    for digest, size in blobs.items():
        assert digest in pulled
        assert upstream.served_bytes(digest) == size


def test_push_starts_the_matching_policy_and_no_other(
    server: EdgecacheServer, tmp_path: Path
) -> None:
    ref = make_image(tmp_path / "img", [50_000], seed=2)
    skopeo("copy", "--dest-tls-verify=false", ref, f"docker://{server.host}/team/app:v2")
    job = finished_job(server, lambda j: j["trigger"] == "push")
    assert job["policy"] == "pushed" and job["state"] == "succeeded", job
    assert [i["image"] for i in job["images"]] == ["team/app:v2"]
    # Pushed content is here already: the site provider has nothing to fetch.
    assert job["results"]["site"]["team/app:v2"]["state"] == "skipped"
    before = len([j for j in jobs(server) if j["trigger"] == "push"])
    skopeo("copy", "--dest-tls-verify=false", ref, f"docker://{server.host}/team/app:latest")
    skopeo("copy", "--dest-tls-verify=false", ref, f"docker://{server.host}/other/app:v3")
    # Neither matches (tag pattern v*, repository pattern team/**): no job. The pushes have
    # been answered; a job would have been queued before their answers were sent.
    assert len([j for j in jobs(server) if j["trigger"] == "push"]) == before


def test_first_proxy_pull_fetches_the_rest_of_the_image(
    server: EdgecacheServer, upstream: RunningUpstream, tmp_path: Path
) -> None:
    ref = push_upstream(upstream, tmp_path, "pulled/api:v1", [300_000, 100_000], seed=3)
    blobs = blob_digests(ref)
    with server.client() as client:
        got = client.get(
            "/v2/up/pulled/api/manifests/v1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert got.status_code == 200
    job = finished_job(server, lambda j: j["trigger"] == "pull")
    assert job["policy"] == "pulled" and job["state"] == "succeeded", job
    for digest, size in blobs.items():
        assert stored_blob(server, "up/pulled/api", digest)
        assert upstream.settled_served_bytes(digest, size) == size
    # The same manifest again: not new, no second job.
    with server.client() as client:
        assert client.get("/v2/up/pulled/api/manifests/v1").status_code == 200
    assert len([j for j in jobs(server) if j["trigger"] == "pull"]) == 1


def test_preload_starts_the_matching_policy(server: EdgecacheServer, tmp_path: Path) -> None:
    ref = make_image(tmp_path / "img", [40_000], seed=4)
    archive = tmp_path / "team.tar"
    skopeo("copy", ref, f"oci-archive:{archive}:team/preloaded:v7")
    done = server.cli("preload", "--data", str(server.data), str(archive))
    assert done.returncode == 0, done.stdout + done.stderr
    job = finished_job(server, lambda j: j["trigger"] == "preload")
    assert job["policy"] == "pushed" and job["state"] == "succeeded", job
    # preload names images as Docker does: team/x is docker.io/team/x.
    assert [i["image"] for i in job["images"]] == ["docker.io/team/preloaded:v7"]


def test_a_policy_bandwidth_caps_its_downloads(
    server: EdgecacheServer, upstream: RunningUpstream, tmp_path: Path
) -> None:
    ref = push_upstream(upstream, tmp_path, "slow/one:v1", [1_000_000], seed=5)
    policy = {"name": "capped", "repositories": ["up/slow/one"], "watch": ["up/slow/one:v1"],
              "bandwidth": "200KB"}  # fmt: skip
    assert admin(server, "PUT", "preheat/policies/capped", policy).status_code == 200
    done = server.cli("preheat", "--data", str(server.data), "run", "capped", "--follow", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    result = job["results"]["site"]["up/slow/one:v1"]
    assert result["bytes"] == sum(blob_digests(ref).values())
    # ~1 MB at 200 KB/s after a one-second burst: at least 4 s (a lower bound: a slow machine
    # only makes it longer; without the cap it takes a fraction of a second).
    assert result["seconds"] >= 3.0, result
    assert admin(server, "DELETE", "preheat/policies/capped").status_code == 200


def test_cancel_stops_a_running_job(
    server: EdgecacheServer, upstream: RunningUpstream, tmp_path: Path
) -> None:
    push_upstream(upstream, tmp_path, "slow/two:v1", [2_000_000], seed=8)
    policy = {"name": "slow", "repositories": ["up/slow/two"], "watch": ["up/slow/two:v1"],
              "bandwidth": "100KB"}  # fmt: skip
    assert admin(server, "PUT", "preheat/policies/slow", policy).status_code == 200
    started = admin(server, "POST", "preheat/run", {"policy": "slow"})
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    wait_for(
        lambda: admin(server, "GET", f"preheat/jobs/{job_id}").json()["state"] == "running",
        timeout=30,
        what="the job to start",
    )
    cancelled = server.cli("preheat", "--data", str(server.data), "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    job = finished_job(server, lambda j: j["id"] == job_id)
    assert job["state"] == "cancelled", job
    assert job["results"]["site"]["up/slow/two:v1"]["state"] == "cancelled"
    shown = server.cli("preheat", "--data", str(server.data), "jobs")
    assert job_id in shown.stdout and "cancelled" in shown.stdout
    again = server.cli("preheat", "--data", str(server.data), "cancel", job_id)
    assert again.returncode != 0 and "no queued or running preheat job" in again.stderr
    assert admin(server, "DELETE", "preheat/policies/slow").status_code == 200


def test_bad_requests_get_a_precise_4xx(server: EdgecacheServer) -> None:
    bad = admin(server, "POST", "preheat/run", {"policy": "nope"})
    assert bad.status_code == 400 and "no preheat policy 'nope'" in bad.text
    bad = admin(server, "POST", "preheat/run", {"images": ["UPPER/case:v1"]})
    assert bad.status_code == 400 and "UPPER/case" in bad.text
    bad = admin(server, "POST", "preheat/run", {"images": ["up/a:v1"], "providers": ["df"]})
    assert bad.status_code == 400 and "no preheat provider 'df'" in bad.text
    bad = admin(server, "PUT", "preheat/policies/x", {"tags": ["{a,b"]})
    assert bad.status_code == 400 and "tags" in bad.text
    bad = admin(server, "PUT", "preheat/policies/x", {"severity": "hgih"})
    assert bad.status_code == 400 and "unknown severity" in bad.text
    bad = admin(server, "PUT", "preheat/policies/x", {"watch": ["team/app:v1"]})
    assert bad.status_code == 400 and "upstream" in bad.text
    assert admin(server, "DELETE", "preheat/policies/pushed").status_code == 400
    assert admin(server, "GET", "preheat/jobs/0000-nope").status_code == 404
    cli = server.cli("preheat", "--data", str(server.data), "run", "nope")
    assert cli.returncode != 0 and "no preheat policy 'nope'" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_watched_tag_is_fetched_inside_its_window_only(
    server: EdgecacheServer, upstream: RunningUpstream, tmp_path: Path
) -> None:
    first = push_upstream(upstream, tmp_path, "watched/app:stable", [60_000], seed=6)
    skopeo("copy", "--src-tls-verify=false", f"docker://{server.host}/up/watched/app:stable",
           f"oci:{tmp_path}/first:v1")  # fmt: skip
    second = push_upstream(upstream, tmp_path, "watched/app:stable", [70_000], seed=7)
    new_blobs = blob_digests(second)
    now = time.localtime()
    closed = f"{(now.tm_hour + 2) % 24:02d}:00-{(now.tm_hour + 3) % 24:02d}:00"
    policy = {
        "name": "watcher",
        "repositories": ["up/watched/**"],
        "on": ["watch"],
        "watch": ["up/watched/app:stable"],
        "watch_interval": 1,
        "window": closed,
    }
    assert admin(server, "PUT", "preheat/policies/watcher", policy).status_code == 200

    def waiting() -> dict[str, Any] | None:
        status = admin(server, "GET", "status").json()
        for state in status["preheat"]["watch"]:
            if state["ref"] == "up/watched/app:stable" and state.get("waiting_for_window"):
                return dict(state)
        return None

    state = wait_for(waiting, timeout=30, what="the watch to see the moved tag")
    assert state["upstream_digest"] != state["cached_digest"]
    assert not any(j["trigger"] == "watch" for j in jobs(server))
    for digest in new_blobs:
        assert upstream.served_bytes(digest) == 0
    # The window opens (set to the whole day): the new digest is fetched with no client.
    policy["window"] = "00:00-00:00"
    assert admin(server, "PUT", "preheat/policies/watcher", policy).status_code == 200
    job = finished_job(server, lambda j: j["trigger"] == "watch")
    assert job["state"] == "succeeded", job
    for digest, size in new_blobs.items():
        assert stored_blob(server, "up/watched/app", digest)
        assert upstream.settled_served_bytes(digest, size) == size
    with server.client() as client:
        tag = client.head(
            "/v2/up/watched/app/manifests/stable",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
    second_digest = json.loads((oci_layout_dir(second) / "index.json").read_text())
    assert tag.headers["docker-content-digest"] == second_digest["manifests"][0]["digest"]
    assert first != second
    assert admin(server, "DELETE", "preheat/policies/watcher").status_code == 200


def test_signed_policies_take_only_images_with_a_cosign_signature(server: EdgecacheServer) -> None:
    digests = {}
    with server.client() as client:
        for name in ("signed", "unsigned"):
            config, layer = f'{{"n":"{name}"}}'.encode(), name.encode() * 500
            for blob in (config, layer):
                assert push_blob_ok(client, "sig/app", blob)
            body = oci_manifest(config, [layer])
            put = client.put(f"/v2/sig/app/manifests/{name}", content=body,
                             headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
            assert put.status_code == 201
            digests[name] = put.headers["docker-content-digest"]
        # cosign's layout: the signature is a manifest tagged sha256-<hex>.sig.
        sig_config, sig_layer = b"{}", b'{"critical":{}}'
        for blob in (sig_config, sig_layer):
            assert push_blob_ok(client, "sig/app", blob)
        tag = "sha256-" + digests["signed"].removeprefix("sha256:") + ".sig"
        signature = oci_manifest(sig_config, [sig_layer])
        put = client.put(f"/v2/sig/app/manifests/{tag}", content=signature,
                         headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
        assert put.status_code == 201
    policy = {"name": "signed-only", "repositories": ["sig/**"], "signed": True}
    assert admin(server, "PUT", "preheat/policies/signed-only", policy).status_code == 200
    done = server.cli("preheat", "--data", str(server.data), "run", "signed-only", "--follow",
                      "--json")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    images = {i["image"]: i for i in json.loads(done.stdout)["images"]}
    # The signature's own tag is no image to preheat.
    assert set(images) == {"sig/app:signed", "sig/app:unsigned"}
    assert "skipped" not in images["sig/app:signed"]
    assert images["sig/app:unsigned"]["skipped"].startswith("not signed")
    assert admin(server, "DELETE", "preheat/policies/signed-only").status_code == 200


def push_blob_ok(client: httpx.Client, repo: str, data: bytes) -> bool:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    answer = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    return answer.status_code == 201
