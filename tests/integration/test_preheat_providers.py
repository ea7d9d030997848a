"""Preheat providers against FAKES of Dragonfly's manager and Kraken's proxy (neither can be
installed here; tests/fakes/ says which published sources each follows, and each validates
what it receives against them: the manager's saved swagger and Dragonfly's PreheatArgs, the
notification envelope Kraken's handler decodes). The fakes really pull the image from the
real edgecache server (owner and worker), as a seed peer or a Kraken origin would: with the
pull token edgecache handed the manager, on a server where anonymous pulls are off, so the
token path is tested end to end.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import jwt
import pytest

from tests.fakes.dragonfly import FakeDragonflyManager
from tests.fakes.kraken import FakeKrakenProxy
from tests.support import (
    EdgecacheServer,
    free_port,
    make_image,
    oci_layout_manifest,
    oci_manifest,
    require_tool,
    run,
    sha256_bytes,
    wait_for,
)

PASSWORD = "pull-pass-123"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()}


@pytest.fixture(scope="module")
def dragonfly() -> Iterator[FakeDragonflyManager]:
    with FakeDragonflyManager(pending_polls=2) as manager:
        yield manager


@pytest.fixture(scope="module")
def kraken() -> Iterator[FakeKrakenProxy]:
    with FakeKrakenProxy(pull_headers=BASIC) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    dragonfly: FakeDragonflyManager,
    kraken: FakeKrakenProxy,
) -> Iterator[EdgecacheServer]:
    base = tmp_path_factory.mktemp("providers")
    tokens = {}
    for name, value in (("good", "pat-good"), ("old", "pat-old"), ("unknown", "pat-nobody")):
        tokens[name] = base / f"pat-{name}"
        tokens[name].write_text(value + "\n")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    dead = f"http://127.0.0.1:{free_port()}"

    def df(name: str, url: str, token: Path, retries: int = 2) -> str:
        return (
            f'[preheat.providers.{name}]\ntype = "dragonfly"\nurl = "{url}"\n'
            f'token_file = "{token}"\nscheduler_cluster_ids = [1]\npoll_interval = 0.05\n'
            f"retries = {retries}\ntimeout = 120\n\n"
        )

    config = (
        "[auth]\nanonymous_pull = false\nanonymous_push = true\n"
        f'[auth.users]\nalice = "{hashed}"\n\n'
        + df("df", dragonfly.url, tokens["good"])
        + df("df-unknown", dragonfly.url, tokens["unknown"])
        + df("df-inactive", dragonfly.url, tokens["old"])
        + df("df-dead", dead, tokens["good"], retries=1)
        + f'[preheat.providers.kr]\ntype = "kraken"\nurl = "{kraken.url}"\n'
        f'check_url = "{kraken.url}"\npoll_interval = 0.05\ntimeout = 60\n\n'
        f'[preheat.providers.kr-blind]\ntype = "kraken"\nurl = "{kraken.url}"\n\n'
        '[[preheat.policies]]\nname = "arm"\nrepositories = ["multi/**"]\n'
        'platforms = ["linux/arm64"]\nproviders = ["df"]\n'
    )
    with EdgecacheServer(base, config_text=config) as srv:
        kraken.registry_url = srv.url
        yield srv


def push(
    server: EdgecacheServer, tmp_path: Path, name: str, seed: int, v2s2: bool = False
) -> dict[str, Any]:
    """An image pushed as `name`; its manifest digest and blobs (digest -> size)."""
    ref = make_image(tmp_path / f"img{seed}", [60_000, 30_000], seed=seed)
    fmt = ["--format", "v2s2"] if v2s2 else []
    run([require_tool("skopeo"), "--insecure-policy", "copy", *fmt, "--dest-tls-verify=false",
         "--dest-creds", f"alice:{PASSWORD}", ref, f"docker://{server.host}/{name}"],
        timeout=120)  # fmt: skip
    with server.client(headers=BASIC) as client:
        repo, tag = name.rsplit(":", 1)
        got = client.get(
            f"/v2/{repo}/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                     "application/vnd.docker.distribution.manifest.v2+json"},
        )  # fmt: skip
        assert got.status_code == 200, got.text
    manifest = got.json()
    blobs = {b["digest"]: b["size"] for b in [manifest["config"], *manifest["layers"]]}
    if not v2s2:
        assert got.headers["docker-content-digest"] == oci_layout_manifest(ref)[0]
    return {"digest": got.headers["docker-content-digest"], "blobs": blobs}


def admin(server: EdgecacheServer, method: str, name: str, body: Any = None) -> httpx.Response:
    with server.client() as client:
        token = {"Authorization": f"Bearer {server.admin_token}"}
        return client.request(method, f"/_edgecache/admin/{name}", json=body, headers=token)


def run_job(server: EdgecacheServer, body: dict[str, Any]) -> dict[str, Any]:
    started = admin(server, "POST", "preheat/run", body)
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]

    def ended() -> dict[str, Any] | None:
        record = admin(server, "GET", f"preheat/jobs/{job_id}").json()
        return record if record["state"] not in ("queued", "running") else None

    return wait_for(ended, timeout=120, what=f"preheat job {job_id} to end")


def test_dragonfly_preheats_with_a_pull_token_for_that_repository_only(
    server: EdgecacheServer, dragonfly: FakeDragonflyManager, tmp_path: Path
) -> None:
    image = push(server, tmp_path, "team/df:v1", seed=21)
    before = len(dragonfly.jobs)
    job = run_job(server, {"images": ["team/df:v1"], "providers": ["df"]})
    assert job["state"] == "succeeded", job
    result = job["results"]["df"]["team/df:v1"]
    assert result["state"] == "done" and "Dragonfly job" in result["detail"]
    assert dragonfly.rejections == []
    (created,) = [j for i, j in dragonfly.jobs.items() if i > before] or list(
        dragonfly.jobs.values()
    )[-1:]
    assert created.final_state == "SUCCESS"
    args = created.request["args"]
    assert args["url"] == f"{server.url}/v2/team/df/manifests/{image['digest']}"
    assert args["type"] == "image" and args["scope"] == "single_seed_peer"
    assert isinstance(args["timeout"], int) and args["timeout"] == 120 * 10**9
    assert created.request["scheduler_cluster_ids"] == [1]
    # The seed peer's download: the manifest and every blob, from edgecache, verified.
    assert created.pull.ok, created.pull.errors
    assert created.pull.blob_sizes == image["blobs"]
    # The credential it was given: a bearer token for pull on team/df alone, short-lived.
    bearer = args["headers"]["Authorization"]
    assert bearer.startswith("Bearer ")
    token = bearer.removeprefix("Bearer ")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "team/df", "actions": ["pull"]}]
    assert claims["exp"] - claims["iat"] == 120
    with server.client() as client:
        assert (
            client.get("/v2/team/df/tags/list", headers={"Authorization": bearer}).status_code
            == 200
        )
        other = client.get("/v2/team/other/tags/list", headers={"Authorization": bearer})
        assert other.status_code == 401
        push_try = client.post("/v2/team/df/blobs/uploads/", headers={"Authorization": bearer})
        assert push_try.status_code == 401
    assert token not in server.log_text() and "pat-good" not in server.log_text()


def test_dragonfly_gets_only_the_policys_platforms_of_an_index(
    server: EdgecacheServer, dragonfly: FakeDragonflyManager
) -> None:
    manifests = []
    with server.client(headers=BASIC) as client:
        for arch in ("amd64", "arm64"):
            config = json.dumps(
                {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
            ).encode()
            layer = f"layer of {arch}".encode() * 1000
            for blob in (config, layer):
                answer = client.post(
                    "/v2/multi/app/blobs/uploads/",
                    params={"digest": sha256_bytes(blob)},
                    content=blob,
                )
                assert answer.status_code == 201
            body = oci_manifest(config, [layer])
            put = client.put(f"/v2/multi/app/manifests/{arch}", content=body,
                             headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
            assert put.status_code == 201
            manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "digest": sha256_bytes(body), "size": len(body),
                              "platform": {"os": "linux", "architecture": arch}})  # fmt: skip
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests,
            }
        ).encode()
        put = client.put("/v2/multi/app/manifests/v1", content=index,
                         headers={"Content-Type": OCI_INDEX})  # fmt: skip
        assert put.status_code == 201
    before = set(dragonfly.jobs)
    done = server.cli("preheat", "--data", str(server.data), "run", "arm", "--follow", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    assert [i["image"] for i in job["images"] if i["image"].startswith("multi/app:v1")] == [
        "multi/app:v1"
    ]
    new = [dragonfly.jobs[i] for i in dragonfly.jobs if i not in before]
    v1 = [j for j in new if j.request["args"]["url"].endswith(sha256_bytes(index))]
    assert len(v1) == 1, [j.request["args"] for j in new]
    assert v1[0].request["args"]["platform"] == "linux/arm64"
    assert v1[0].pull.ok and manifests[1]["digest"] in v1[0].pull.manifest_digests
    assert manifests[0]["digest"] not in v1[0].pull.manifest_digests


@pytest.mark.parametrize(
    ("provider", "why"),
    [("df-unknown", "(401)"), ("df-inactive", "(403")],
)
def test_a_refused_token_fails_at_once_and_spares_the_other_provider(
    server: EdgecacheServer, tmp_path: Path, provider: str, why: str
) -> None:
    name = f"team/refused-{provider}:v1"
    push(server, tmp_path, name, seed=30 + len(provider))
    job = run_job(server, {"images": [name], "providers": ["site", provider]})
    assert job["state"] == "partial", job
    result = job["results"][provider][name]
    assert result["state"] == "failed" and why in result["error"] and result["attempts"] == 1
    assert job["results"]["site"][name]["state"] in ("done", "skipped")


def test_failure_rate_limits_and_a_dead_manager(
    server: EdgecacheServer, dragonfly: FakeDragonflyManager, tmp_path: Path
) -> None:
    push(server, tmp_path, "team/modes:v1", seed=40)
    dragonfly.mode = "fail"
    try:
        job = run_job(server, {"images": ["team/modes:v1"], "providers": ["df"]})
    finally:
        dragonfly.mode = "normal"
    result = job["results"]["df"]["team/modes:v1"]
    assert job["state"] == "failed" and "failed" in result["error"] and result["attempts"] == 1
    # 429 twice, then accepted: retried with back-off, done.
    dragonfly.mode, dragonfly.n_429 = "rate_limit", 2
    try:
        job = run_job(server, {"images": ["team/modes:v1"], "providers": ["df"]})
    finally:
        dragonfly.mode = "normal"
    result = job["results"]["df"]["team/modes:v1"]
    assert job["state"] == "succeeded" and result["attempts"] == 3, job
    # Nothing listens: retried, then failed; the site provider in the same job is done.
    job = run_job(server, {"images": ["team/modes:v1"], "providers": ["df-dead", "site"]})
    assert job["state"] == "partial", job
    assert job["results"]["df-dead"]["team/modes:v1"]["attempts"] == 2
    status = admin(server, "GET", "status").json()
    health = {p["provider"]: p for p in status["preheat"]["providers"]}
    assert health["df-dead"]["up"] is False and health["df"]["up"] is True
    with server.client() as client:
        metrics = client.get("/metrics").text
    assert 'edgecache_preheat_provider_up{provider="df-dead"} 0.0' in metrics


def test_kraken_gets_a_push_event_per_docker_manifest_and_confirms_by_tag(
    server: EdgecacheServer, kraken: FakeKrakenProxy, tmp_path: Path
) -> None:
    image = push(server, tmp_path, "team/kr:v1", seed=50, v2s2=True)
    job = run_job(server, {"images": ["team/kr:v1"], "providers": ["kr"]})
    assert job["state"] == "succeeded", job
    assert job["results"]["kr"]["team/kr:v1"]["state"] == "done"
    assert kraken.rejections == []
    pull = next(p for p in kraken.pulls if p.repository == "team/kr")
    assert pull.ok and pull.digest == image["digest"] and pull.tag == "v1"
    assert pull.result.blob_sizes == image["blobs"]
    # Without a check URL Kraken's 200 says nothing: "sent".
    job = run_job(server, {"images": ["team/kr:v1"], "providers": ["kr-blind"]})
    assert job["results"]["kr-blind"]["team/kr:v1"]["state"] == "sent"
    # An OCI manifest Kraken would take and ignore: not sent, and said so.
    push(server, tmp_path, "team/kr-oci:v1", seed=51)
    events = len(kraken.events)
    job = run_job(server, {"images": ["team/kr-oci:v1"], "providers": ["kr"]})
    result = job["results"]["kr"]["team/kr-oci:v1"]
    assert result["state"] == "skipped" and "Docker schema 2" in result["detail"]
    assert len(kraken.events) == events
