"""The fakes of tests/fakes/ can fail, and pull what they should.

A fake that accepts anything proves nothing: each wrong request below is refused (and kept in
`.rejections`) the way the real service refuses it, or the way the fake's documented extra
strictness does. The pulling paths run against a real edgecache (`edgecache` fixture of
tests/conftest.py) with images pushed to it here.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from tests.fakes import FakeServer, RecordedRequest, Reply, go_time
from tests.fakes.dragonfly import (
    CREATE_JOB_REQUEST,
    FakeDragonflyManager,
    definition_validator,
)
from tests.fakes.kraken import FakeKrakenProxy
from tests.fakes.registryclient import (
    DOCKER_V2,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest_url,
    parse_platform,
    pull_image,
)
from tests.fakes.webhook import EVENTS_V1, WebhookReceiver
from tests.support import EdgecacheServer, push_blob

PAT = {"Authorization": "Bearer pat-good"}
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
TIMEOUT = 30.0


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unique_repo(prefix: str) -> str:
    return f"fakes/{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Pushed:
    repo: str
    tag: str
    digest: str
    media_type: str
    config: str
    layers: list[str]
    sizes: dict[str, int]
    manifest_size: int

    @property
    def blobs(self) -> list[str]:
        return [self.config, *self.layers]


def push_image(
    server: EdgecacheServer,
    repo: str,
    tag: str = "v1",
    *,
    docker: bool = False,
    layer_sizes: Sequence[int] = (3000, 70_000),
    arch: str = "amd64",
) -> Pushed:
    """A random image pushed to edgecache: OCI (default) or Docker schema 2."""
    config = json.dumps({"architecture": arch, "os": "linux", "n": uuid.uuid4().hex}).encode()
    layers = [os.urandom(n) for n in layer_sizes]
    media_type = DOCKER_V2 if docker else OCI_MANIFEST
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": DOCKER_LAYER if docker else OCI_LAYER,
                    "digest": digest_of(layer),
                    "size": len(layer),
                }
                for layer in layers
            ],
        }
    ).encode()
    with server.client() as client:
        for blob in (config, *layers):
            push_blob(client, repo, blob)
        r = client.put(
            f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": media_type}
        )
        assert r.status_code == 201, r.text
    return Pushed(
        repo,
        tag,
        digest_of(manifest),
        media_type,
        digest_of(config),
        [digest_of(layer) for layer in layers],
        {digest_of(b): len(b) for b in (config, *layers)},
        len(manifest),
    )


def pull_token(server: EdgecacheServer, repo: str) -> str:
    """A pull token edgecache issued, as its preheat providers hand one to Dragonfly/Kraken."""
    with server.client() as client:
        r = client.get(
            "/_edgecache/token", params={"service": "edgecache", "scope": f"repository:{repo}:pull"}
        )
        assert r.status_code == 200, r.text
        return f"Bearer {r.json()['token']}"


def preheat_body(url: str, **args: Any) -> dict[str, Any]:
    return {
        "type": "preheat",
        "args": {"type": "image", "url": url, "platform": "linux/amd64", **args},
        "scheduler_cluster_ids": [1],
    }


@pytest.fixture
def dragonfly() -> Iterator[FakeDragonflyManager]:
    with FakeDragonflyManager() as fake:
        yield fake


# --------------------------------------------------------------------------- registryclient


def test_manifest_url_parsing_keeps_slashes_in_the_repository() -> None:
    assert parse_manifest_url("http://127.0.0.1:5000/v2/a/b/c/manifests/v1") == (
        "http://127.0.0.1:5000",
        "a/b/c",
        "v1",
    )
    with pytest.raises(ValueError, match="parse access url failed"):
        parse_manifest_url("http://127.0.0.1:5000/a/b:v1")


def test_platform_parsing_normalises_like_containerd() -> None:
    assert parse_platform(None) == ("linux", "amd64", "")
    assert parse_platform("linux/x86_64") == ("linux", "amd64", "")
    assert parse_platform("linux/arm") == ("linux", "arm", "v7")
    assert parse_platform("linux/arm64/v8") == ("linux", "arm64", "")
    with pytest.raises(ValueError):
        parse_platform("linux")


class LyingRegistry(FakeServer):
    """Serves one image whose layer bytes do not match the digest, with a wrong length."""

    name = "lying-registry"

    def __init__(self) -> None:
        super().__init__()
        self.layer = b"the real layer"
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": digest_of(b"{}"), "size": 2},
                "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(self.layer), "size": 14}],
            }
        ).encode()

    def handle(self, request: RecordedRequest) -> Reply:
        if request.path.endswith("/manifests/v1"):
            return Reply(200, self.manifest, OCI_MANIFEST)
        if request.path.endswith("/manifests/json-typed"):
            return Reply(200, self.manifest, "application/json; charset=utf-8")
        if request.path.endswith(digest_of(b"{}")):
            return Reply(200, b"{}", "application/octet-stream")
        if request.path.endswith(digest_of(self.layer)):
            return Reply(200, b"not the layer at all", "application/octet-stream")
        return Reply.json(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]})


def test_pull_client_reports_digest_size_type_and_status_errors() -> None:
    with LyingRegistry() as registry:
        result = pull_image(f"{registry.url}/v2/x/y/manifests/v1", {})
        assert not result.ok
        assert result.blob_digests == [digest_of(b"{}"), digest_of(LyingRegistry().layer)]
        config, layer = result.blobs
        assert config.ok and not layer.ok
        assert "content digest" in layer.error and "descriptor says 14" in layer.error

        typed = pull_image(f"{registry.url}/v2/x/y/manifests/json-typed", {})
        assert any("mediaType" in e for e in typed.errors), typed.errors

        missing = pull_image(f"{registry.url}/v2/x/y/manifests/nope", {})
        assert not missing.ok and missing.statuses == [404]
        assert "HTTP 404" in missing.error_text()

        wrong = digest_of(b"something else")
        by_digest = pull_image(f"{registry.url}/v2/x/y/manifests/{wrong}", {})
        assert by_digest.statuses == [404]
        # Every manifest request carries every manifest media type, one Accept line each.
        accept = registry.requests[0].header("accept") or ""
        assert OCI_INDEX in accept and DOCKER_V2 in accept and OCI_MANIFEST in accept


def test_pull_client_pulls_every_blob_from_edgecache(edgecache: EdgecacheServer) -> None:
    image = push_image(edgecache, unique_repo("client"))
    result = pull_image(f"{edgecache.url}/v2/{image.repo}/manifests/{image.tag}", {})
    assert result.ok, result.errors
    assert result.manifest_digests == [image.digest]
    assert result.blob_digests == image.blobs
    assert result.blob_sizes == image.sizes
    assert result.total_bytes == sum(image.sizes.values())
    by_digest = pull_image(f"{edgecache.url}/v2/{image.repo}/manifests/{image.digest}", {})
    assert by_digest.ok, by_digest.errors


# ------------------------------------------------------------------------------ Dragonfly


def test_dragonfly_swagger_schema_is_what_the_fake_validates_with() -> None:
    validator = definition_validator(CREATE_JOB_REQUEST)
    assert validator.is_valid({"type": "preheat", "args": {}})
    assert not validator.is_valid({"args": {}})
    assert not validator.is_valid({"type": "preheat", "scheduler_cluster_ids": ["1"]})


def test_dragonfly_healthy_needs_no_token(dragonfly: FakeDragonflyManager) -> None:
    r = httpx.get(f"{dragonfly.url}/healthy")
    assert r.status_code == 200 and r.json() == "OK"


@pytest.mark.parametrize(
    ("headers", "path", "status", "message"),
    [
        ({}, "/oapi/v1/jobs", 401, "Unauthorized"),
        ({"Authorization": "Basic pat-good"}, "/oapi/v1/jobs", 401, "Unauthorized"),
        ({"Authorization": "Bearer pat-good extra"}, "/oapi/v1/jobs", 401, "Unauthorized"),
        ({"Authorization": "Bearer nobody"}, "/oapi/v1/jobs", 401, "Unauthorized"),
        ({"Authorization": "Bearer pat-old"}, "/oapi/v1/jobs", 403, "Token is inactive"),
        ({"Authorization": "Bearer pat-exp"}, "/oapi/v1/jobs", 403, "Token has expired"),
        ({"Authorization": "Bearer pat-good"}, "/oapi/v1/jobs?access_token=pat-old", 403, None),
        ({"Authorization": "bearer pat-good"}, "/oapi/v1/jobs", 422, None),  # case-insensitive
        ({"Authorization": "Bearer pat-old"}, "/oapi/v1/jobs?access_token=pat-good", 422, None),
    ],
)
def test_dragonfly_personal_access_tokens(
    headers: dict[str, str], path: str, status: int, message: str | None
) -> None:
    tokens = {"pat-good": "active", "pat-old": "inactive", "pat-exp": "expired"}
    with FakeDragonflyManager(tokens=tokens) as fake:  # type: ignore[arg-type]
        r = httpx.post(f"{fake.url}{path}", json={}, headers=headers)
        assert r.status_code == status, r.text
        if message is not None:
            assert r.json() == {"message": message}
        assert [x.status for x in fake.rejections] == [status]
        assert not fake.jobs


def test_dragonfly_token_without_job_scope_is_forbidden() -> None:
    with FakeDragonflyManager(tokens={"pat-cluster": "no_job_scope"}) as fake:
        r = httpx.get(f"{fake.url}/oapi/v1/jobs/1", headers={"Authorization": "Bearer pat-cluster"})
        assert r.status_code == 403
        assert "Required permission: job" in r.json()["message"]


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("empty body", b"", "EOF"),
    ("not JSON", b"{type: preheat}", "invalid JSON"),
    ("missing type", {"args": {"type": "image", "url": "http://h/v2/r/manifests/t"}}, "type"),
    ("empty type", {"type": "", "args": {}}, "type"),
    ("unknown job type", {"type": "warmup", "args": {}}, "Unknow type"),
    ("wrong preheat type", preheat_body("http://h/v2/r/manifests/t", type="layer"), "layer"),
    ("no args", {"type": "preheat"}, "args: 'type' is a required"),
    ("bad scope", preheat_body("http://h/v2/r/manifests/t", scope="everywhere"), "scope"),
    ("timeout as a string", preheat_body("http://h/v2/r/manifests/t", timeout="30m"), "timeout"),
    ("timeout as a float", preheat_body("http://h/v2/r/manifests/t", timeout=1.5e9), "timeout"),
    ("header not a string", preheat_body("http://h/v2/r/manifests/t", headers={"X": 1}), "X"),
    ("misspelt field", preheat_body("http://h/v2/r/manifests/t", scopes="all_peers"), "scopes"),
    ("piece too small", preheat_body("http://h/v2/r/manifests/t", piece_length=1024), "piece"),
    ("negative user", {"type": "preheat", "args": {}, "user_id": -1}, "user_id"),
    ("cluster id string", {"type": "preheat", "scheduler_cluster_ids": ["1"]}, "cluster"),
]


@pytest.mark.parametrize(("what", "body", "needle"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_dragonfly_rejects_bad_bodies_with_422(
    dragonfly: FakeDragonflyManager, what: str, body: Any, needle: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        f"{dragonfly.url}/oapi/v1/jobs",
        content=content,
        headers={**PAT, "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert needle in r.json()["errors"]
    (rejection,) = dragonfly.rejections
    assert rejection.status == 422 and needle in rejection.message
    assert not dragonfly.jobs


def test_dragonfly_image_preheat_without_url_is_a_500_as_in_dragonfly(
    dragonfly: FakeDragonflyManager,
) -> None:
    # PreheatArgs.url is `omitempty`: the service, not the binding, refuses it.
    body = {"type": "preheat", "args": {"type": "image"}}
    r = httpx.post(f"{dragonfly.url}/oapi/v1/jobs", json=body, headers=PAT)
    assert r.status_code == 500
    assert r.json() == {"message": "invalid params: url is required"}
    assert [x.status for x in dragonfly.rejections] == [500]


def test_dragonfly_unknown_scheduler_cluster_is_404(dragonfly: FakeDragonflyManager) -> None:
    body = {**preheat_body("http://h/v2/r/manifests/t"), "scheduler_cluster_ids": [7]}
    r = httpx.post(f"{dragonfly.url}/oapi/v1/jobs", json=body, headers=PAT)
    assert r.status_code == 404
    assert r.json() == {"message": "scheduler cluster id 7: record not found"}


def test_dragonfly_unknown_job_is_404_and_bad_id_422(dragonfly: FakeDragonflyManager) -> None:
    assert httpx.get(f"{dragonfly.url}/oapi/v1/jobs/9", headers=PAT).status_code == 404
    assert httpx.get(f"{dragonfly.url}/oapi/v1/jobs/x", headers=PAT).status_code == 422
    assert httpx.get(f"{dragonfly.url}/oapi/v1/nothing", headers=PAT).status_code == 404


def poll_until_final(fake: FakeDragonflyManager, job_id: int) -> list[dict[str, Any]]:
    """GET the job until it is final (the download is over first: no busy waiting)."""
    fake.wait_for_jobs(1, TIMEOUT)
    answers = []
    with httpx.Client(base_url=fake.url, headers=PAT) as client:
        for _ in range(fake.pending_polls + 1):
            r = client.get(f"/oapi/v1/jobs/{job_id}")
            assert r.status_code == 200, r.text
            answers.append(r.json())
    return answers


def test_dragonfly_pulls_every_blob_of_a_pushed_image_and_succeeds(
    dragonfly: FakeDragonflyManager, edgecache: EdgecacheServer
) -> None:
    image = push_image(edgecache, unique_repo("df"))
    url = f"{edgecache.url}/v2/{image.repo}/manifests/{image.tag}"
    token = pull_token(edgecache, image.repo)
    body = preheat_body(url, headers={"Authorization": token}, timeout=60 * 10**9)
    r = httpx.post(f"{dragonfly.url}/oapi/v1/jobs", json=body, headers=PAT)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["state"] == "PENDING" and created["result"] is None
    assert created["args"]["scope"] == "single_seed_peer"  # Dragonfly's default
    assert created["args"]["headers"] == {"Authorization": token}  # echoed, as Dragonfly does

    answers = poll_until_final(dragonfly, created["id"])
    assert [a["state"] for a in answers] == ["PENDING", "PENDING", "SUCCESS"]
    job = dragonfly.jobs[created["id"]]
    assert job.pull.ok, job.pull.errors
    assert job.pull.manifest_digests == [image.digest]
    assert job.pull.blob_digests == image.blobs
    assert job.pull.blob_sizes == image.sizes
    assert job.pull.total_bytes == sum(image.sizes.values())
    (state,) = answers[-1]["result"]["job_states"]
    assert state["state"] == "SUCCESS" and state["error"] == ""
    urls = [t["url"] for t in state["results"][0]["success_tasks"]]
    assert urls == [f"{edgecache.url}/v2/{image.repo}/blobs/{d}" for d in image.blobs]
    assert job.blob_headers["Authorization"] == token
    assert job.blob_headers["Accept"] == OCI_LAYER  # the last reference's type, as Dragonfly


def test_dragonfly_anonymous_preheat_pings_and_sends_an_empty_authorization(
    dragonfly: FakeDragonflyManager, edgecache: EdgecacheServer
) -> None:
    image = push_image(edgecache, unique_repo("df-anon"), layer_sizes=(100,))
    url = f"{edgecache.url}/v2/{image.repo}/manifests/{image.tag}"
    r = httpx.post(f"{dragonfly.url}/oapi/v1/jobs", json=preheat_body(url), headers=PAT)
    assert r.status_code == 200, r.text
    (job,) = dragonfly.wait_for_jobs(1, TIMEOUT)
    assert job.pull.ok, job.pull.errors
    assert job.pull.exchanges[0].url == f"{edgecache.url}/v2/"
    assert job.blob_headers["Authorization"] == ""


def test_dragonfly_picks_the_platform_from_an_index(
    dragonfly: FakeDragonflyManager, edgecache: EdgecacheServer
) -> None:
    repo = unique_repo("df-index")
    amd = push_image(edgecache, repo, "amd", arch="amd64")
    arm = push_image(edgecache, repo, "arm", arch="arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": img.digest,
                    "size": img.manifest_size,
                    "platform": {"os": "linux", "architecture": arch},
                }
                for img, arch in ((amd, "amd64"), (arm, "arm64"))
            ],
        }
    ).encode()
    with edgecache.client() as client:
        r = client.put(
            f"/v2/{repo}/manifests/multi", content=index, headers={"Content-Type": OCI_INDEX}
        )
        assert r.status_code == 201, r.text
    body = preheat_body(f"{edgecache.url}/v2/{repo}/manifests/multi", platform="linux/arm64")
    r = httpx.post(f"{dragonfly.url}/oapi/v1/jobs", json=body, headers=PAT)
    assert r.status_code == 200, r.text
    (job,) = dragonfly.wait_for_jobs(1, TIMEOUT)
    assert job.pull.ok, job.pull.errors
    assert job.pull.manifest_digests == [digest_of(index), arm.digest]
    assert job.pull.blob_digests == arm.blobs


def test_dragonfly_missing_image_is_refused_at_creation(
    dragonfly: FakeDragonflyManager, edgecache: EdgecacheServer
) -> None:
    # The manager resolves the manifest inside the POST: a missing image is a 500, no job.
    url = f"{edgecache.url}/v2/{unique_repo('df-missing')}/manifests/v1"
    r = httpx.post(f"{dragonfly.url}/oapi/v1/jobs", json=preheat_body(url), headers=PAT)
    assert r.status_code == 500
    assert "HTTP 404" in r.json()["message"]
    assert not dragonfly.jobs
    assert [x.status for x in dragonfly.rejections] == [500]


def test_dragonfly_missing_blob_ends_in_failure(
    dragonfly: FakeDragonflyManager, edgecache: EdgecacheServer
) -> None:
    image = push_image(edgecache, unique_repo("df-blob"))
    with edgecache.client() as client:
        assert client.delete(f"/v2/{image.repo}/blobs/{image.layers[-1]}").status_code == 202
    url = f"{edgecache.url}/v2/{image.repo}/manifests/{image.tag}"
    r = httpx.post(f"{dragonfly.url}/oapi/v1/jobs", json=preheat_body(url), headers=PAT)
    assert r.status_code == 200, r.text
    answers = poll_until_final(dragonfly, r.json()["id"])
    assert answers[-1]["state"] == "FAILURE"
    (state,) = answers[-1]["result"]["job_states"]
    assert state["state"] == "FAILURE" and "HTTP 404" in state["error"]
    assert state["results"] is None


def test_dragonfly_fail_mode_fails_a_good_pull(edgecache: EdgecacheServer) -> None:
    image = push_image(edgecache, unique_repo("df-fail"), layer_sizes=(10,))
    with FakeDragonflyManager(mode="fail", pending_polls=0) as fake:
        url = f"{edgecache.url}/v2/{image.repo}/manifests/{image.tag}"
        r = httpx.post(f"{fake.url}/oapi/v1/jobs", json=preheat_body(url), headers=PAT)
        assert r.status_code == 200, r.text
        (answer,) = poll_until_final(fake, r.json()["id"])
        assert answer["state"] == "FAILURE"
        assert fake.jobs[answer["id"]].pull.ok


def test_dragonfly_rate_limit_mode_answers_429_first(edgecache: EdgecacheServer) -> None:
    image = push_image(edgecache, unique_repo("df-429"), layer_sizes=(10,))
    body = preheat_body(f"{edgecache.url}/v2/{image.repo}/manifests/{image.tag}")
    with FakeDragonflyManager(mode="rate_limit", n_429=2) as fake:
        statuses = []
        for _ in range(3):
            r = httpx.post(f"{fake.url}/oapi/v1/jobs", json=body, headers=PAT)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.text == "rate limit exceeded"
        assert statuses == [429, 429, 200]
        assert [x.status for x in fake.rejections] == [429, 429]
        fake.wait_for_jobs(1, TIMEOUT)


def test_dragonfly_closed_refuses_connections() -> None:
    fake = FakeDragonflyManager().start()
    url = fake.url
    assert httpx.get(f"{url}/healthy").status_code == 200
    fake.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthy")


async def test_dragonfly_from_trio(edgecache: EdgecacheServer) -> None:
    image = push_image(edgecache, unique_repo("df-trio"), layer_sizes=(10,))
    body = preheat_body(f"{edgecache.url}/v2/{image.repo}/manifests/{image.tag}")
    with FakeDragonflyManager(pending_polls=0) as fake:
        async with httpx.AsyncClient(base_url=fake.url, headers=PAT) as client:
            r = await client.post("/oapi/v1/jobs", json=body)
            assert r.status_code == 200, r.text
            await trio.to_thread.run_sync(fake.wait_for_jobs, 1, TIMEOUT)
            r = await client.get(f"/oapi/v1/jobs/{r.json()['id']}")
            assert r.json()["state"] == "SUCCESS"


# --------------------------------------------------------------------------------- Kraken


def kraken_event(image: Pushed, base: str, action: str = "push", **target: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "timestamp": go_time(),
        "action": action,
        "target": {
            "mediaType": image.media_type,
            "digest": image.digest,
            "repository": image.repo,
            "url": f"{base}/v2/{image.repo}/manifests/{image.digest}",
            "tag": image.tag,
            **target,
        },
    }


def notify(fake: FakeKrakenProxy, *events: Any, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps({"events": list(events)}).encode()
    return httpx.post(
        f"{fake.url}/registry/notifications",
        content=content,
        headers={"Content-Type": EVENTS_V1},
        timeout=TIMEOUT,
    )


def test_kraken_health() -> None:
    with FakeKrakenProxy() as fake:
        r = httpx.get(f"{fake.url}/health")
        assert r.status_code == 200 and r.text == "OK\n"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "EOF"),
        (b"{events:", "invalid JSON"),
        (b"[]", "cannot unmarshal array"),
        (b'{"events": {}}', "cannot unmarshal object"),
        (b'{"events": [{"timestamp": "yesterday", "target": {}}]}', "parsing time"),
        (b'{"events": [{"action": 1, "target": {}}]}', "cannot unmarshal number"),
    ],
)
def test_kraken_answers_500_to_what_it_cannot_decode(raw: bytes, needle: str) -> None:
    with FakeKrakenProxy() as fake:
        r = notify(fake, raw=raw)
        assert r.status_code == 500 and r.text.startswith("decode body: ")
        assert needle in r.text
        (rejection,) = fake.rejections
        assert rejection.kind == "decode" and rejection.status == 500
        assert not fake.pulls


def test_kraken_drops_the_connection_on_an_event_without_target() -> None:
    with FakeKrakenProxy() as fake:
        with pytest.raises(httpx.RemoteProtocolError):
            notify(fake, {"id": "1", "action": "push"})
        (rejection,) = fake.rejections
        assert rejection.kind == "panic" and rejection.status is None


def test_kraken_records_an_envelope_missing_fields_but_answers_200() -> None:
    with FakeKrakenProxy() as fake:
        r = notify(fake, {"action": "push", "target": {"mediaType": "x"}})
        assert r.status_code == 200 and r.content == b""
        problems = sorted(x.message for x in fake.rejections if x.kind == "shape")
        assert problems == [
            "events[0].id: missing",
            "events[0].target.digest: missing",
            "events[0].target.repository: missing",
            "events[0].timestamp: missing",
        ]


def test_kraken_pulls_a_pushed_docker_image_and_resolves_its_tag(
    edgecache: EdgecacheServer,
) -> None:
    image = push_image(edgecache, unique_repo("kraken"), docker=True)
    tag_url = f"/tags/{quote(f'{image.repo}:{image.tag}', safe='')}"
    token = pull_token(edgecache, image.repo)
    with FakeKrakenProxy({"Authorization": token}, edgecache.url) as fake:
        assert httpx.get(f"{fake.url}{tag_url}").status_code == 404
        r = notify(fake, kraken_event(image, edgecache.url))
        assert r.status_code == 200
        (pull,) = fake.wait_for_pulls(1, TIMEOUT)
        assert pull.ok, pull.result.errors
        assert pull.manifest_via == "blobs"  # Kraken's registry backend asks /blobs/ first
        assert pull.result.manifest_digests == [image.digest]
        assert pull.result.blob_digests == image.blobs
        assert pull.result.blob_sizes == image.sizes
        r = httpx.get(f"{fake.url}{tag_url}")
        assert r.status_code == 200 and r.text == image.digest
        unescaped = httpx.get(f"{fake.url}/tags/{image.repo}:{image.tag}")
        assert unescaped.status_code == 404  # chi: {tag} is one path segment
        assert not fake.rejections


def test_kraken_ignores_oci_manifests_indexes_and_pulls(edgecache: EdgecacheServer) -> None:
    oci = push_image(edgecache, unique_repo("kraken-oci"), layer_sizes=(10,))
    docker = push_image(edgecache, unique_repo("kraken-pull"), docker=True, layer_sizes=(10,))
    with FakeKrakenProxy(registry_url=edgecache.url) as fake:
        events = [
            kraken_event(oci, edgecache.url),
            kraken_event(oci, edgecache.url, mediaType=OCI_INDEX),
            kraken_event(docker, edgecache.url, action="pull"),
        ]
        assert notify(fake, *events).status_code == 200
        assert not fake.pulls
        reasons = [why for _, why in fake.ignored]
        assert len(reasons) == 3 and "not push" in reasons[2]
    with FakeKrakenProxy(registry_url=edgecache.url, accept_oci=True) as fake:
        assert notify(fake, kraken_event(oci, edgecache.url)).status_code == 200
        (pull,) = fake.wait_for_pulls(1, TIMEOUT)
        assert pull.ok and pull.result.blob_digests == oci.blobs


def test_kraken_missing_manifest_fails_the_pull_but_answers_200(
    edgecache: EdgecacheServer,
) -> None:
    image = push_image(edgecache, unique_repo("kraken-gone"), docker=True, layer_sizes=(10,))
    image.digest = digest_of(b"never pushed")
    with FakeKrakenProxy(manifest_tries=1) as fake:  # registry from target.url
        assert notify(fake, kraken_event(image, edgecache.url)).status_code == 200
        (pull,) = fake.wait_for_pulls(1, TIMEOUT)
        assert not pull.ok and "manifest not found" in pull.result.errors
        assert pull.result.statuses == [404, 404]
        assert not fake.tags


# -------------------------------------------------------------------------------- webhook


def registry_event(action: str = "push", **target: Any) -> dict[str, Any]:
    digest = digest_of(b"manifest")
    return {
        "id": str(uuid.uuid4()),
        "timestamp": go_time(),
        "action": action,
        "target": {
            "mediaType": OCI_MANIFEST,
            "size": 8,
            "digest": digest,
            "length": 8,
            "repository": "a/b",
            "url": f"http://127.0.0.1:5000/v2/a/b/manifests/{digest}",
            "tag": "v1",
            **target,
        },
        "request": {
            "id": "r1",
            "addr": "127.0.0.1:4000",
            "host": "127.0.0.1:5000",
            "method": "PUT",
            "useragent": "test",
        },
        "actor": {},
        "source": {"addr": "edge:5000", "instanceID": "i1"},
    }


def post_envelope(
    fake: WebhookReceiver, envelope: Any, content_type: str = EVENTS_V1
) -> httpx.Response:
    return httpx.post(
        f"{fake.url}/hook", content=json.dumps(envelope), headers={"Content-Type": content_type}
    )


def test_webhook_accepts_registry_envelopes_and_waits_for_events() -> None:
    with WebhookReceiver() as fake:
        first, second = registry_event(), registry_event("pull")
        assert post_envelope(fake, {"events": [first]}).status_code == 200
        assert post_envelope(fake, {"events": [second]}).status_code == 200
        assert fake.wait_for_events(2, TIMEOUT) == [first, second]
        assert fake.wait_for_events(lambda e: e["action"] == "pull", TIMEOUT) == [second]
        assert not fake.rejections


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", EVENTS_V1.replace("v1", "v2")]
)
def test_webhook_rejects_the_wrong_content_type(content_type: str) -> None:
    with WebhookReceiver() as fake:
        r = post_envelope(fake, {"events": [registry_event()]}, content_type)
        assert r.status_code == 415
        (rejection,) = fake.rejections
        assert rejection.content_type == content_type
        assert not fake.events


def _without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    event = json.loads(json.dumps(event))
    node = event
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return event


@pytest.mark.parametrize(
    ("envelope", "needle"),
    [
        ({"events": []}, "events"),
        ({"Events": [registry_event()]}, "events"),
        ({"events": [_without(registry_event(), "request")]}, "request"),
        ({"events": [_without(registry_event(), "request", "useragent")]}, "useragent"),
        ({"events": [_without(registry_event(), "target", "url")]}, "url"),
        ({"events": [registry_event(length=9)]}, "length"),
        ({"events": [registry_event(mediatype="x")]}, "mediatype"),
        ({"events": [registry_event("upload")]}, "action"),
        ({"events": [{**registry_event(), "timestamp": "2026-01-01 10:00"}]}, "timestamp"),
        ({"events": [registry_event("mount")]}, "fromRepository"),
    ],
)
def test_webhook_rejects_what_registry_would_not_send(envelope: Any, needle: str) -> None:
    with WebhookReceiver() as fake:
        r = post_envelope(fake, envelope)
        assert r.status_code == 400
        assert needle in r.text
        (rejection,) = fake.rejections
        assert needle in rejection.reason


def test_webhook_fails_the_first_deliveries_then_accepts() -> None:
    with WebhookReceiver(fail_first=2, status=503) as fake:
        envelope = {"events": [registry_event()]}
        assert [post_envelope(fake, envelope).status_code for _ in range(3)] == [503, 503, 200]
        assert len(fake.failed_deliveries) == 2
        assert fake.events == envelope["events"]


def test_webhook_closed_refuses_connections() -> None:
    fake = WebhookReceiver().start()
    url = fake.url
    with httpx.Client() as client:
        headers = {"Content-Type": EVENTS_V1}
        body = json.dumps({"events": [registry_event()]})
        assert client.post(url, content=body, headers=headers).status_code == 200
        fake.close()  # also cuts the keep-alive connection the client holds
        with pytest.raises(httpx.TransportError):
            client.post(url, content=body, headers=headers)
        with pytest.raises(httpx.ConnectError):
            httpx.post(url, content=body, headers=headers)
