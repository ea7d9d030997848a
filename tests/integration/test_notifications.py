"""Webhook notifications from the real server (owner and worker) to a receiver that checks
registry:2's envelope (tests/fakes/webhook.py, a fake endpoint that validates what it gets
against distribution's event format): pushes, pulls and deletes by skopeo and plain HTTP; a
receiver that fails at first still gets every event once; an endpoint that is down delays no
client and loses only what overflows its queue."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.webhook import WebhookReceiver
from tests.integration.test_proxy import metric
from tests.support import (
    EdgecacheServer,
    admin,
    free_port,
    make_image,
    oci_layout_blobs,
    oci_layout_manifest,
    require_tool,
    run,
)

DEAD_QUEUE = 5


@pytest.fixture(scope="module")
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(fail_first=2, status=503) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, hook: WebhookReceiver
) -> Iterator[EdgecacheServer]:
    dead = f"http://127.0.0.1:{free_port()}/events"  # nothing listens there
    config = f"""
[auth]
anonymous_push = true

[[notifications.endpoints]]
name = "hook"
url = "{hook.url}/registry/events"
headers = {{ Authorization = "Bearer hook-secret-123" }}
backoff = 0.05
max_backoff = 0.2

[[notifications.endpoints]]
name = "dead"
url = "{dead}"
backoff = 0.05
max_backoff = 0.2
queue = {DEAD_QUEUE}
ignored_actions = ["pull"]
"""
    with EdgecacheServer(tmp_path_factory.mktemp("notify"), config_text=config) as srv:
        yield srv


def test_push_pull_and_delete_events_in_registry_format(
    server: EdgecacheServer, hook: WebhookReceiver, tmp_path: Path
) -> None:
    skopeo = [require_tool("skopeo"), "--insecure-policy"]
    ref = make_image(tmp_path / "img", [30_000, 20_000], seed=11)
    digest, _ = oci_layout_manifest(ref)
    blobs = set(oci_layout_blobs(Path(ref.split(":")[1])).values()) - {digest}
    run([*skopeo, "copy", "--dest-tls-verify=false", ref, f"docker://{server.host}/team/app:v1"])
    pushed = hook.wait_for_events(
        lambda e: e["action"] == "push" and e["target"].get("tag") == "v1", timeout=30
    )
    manifest_event = pushed[0]
    target = manifest_event["target"]
    assert target["repository"] == "team/app" and target["digest"] == digest
    assert target["url"] == f"{server.url}/v2/team/app/manifests/{digest}"
    assert manifest_event["request"]["method"] == "PUT"
    blob_pushes = hook.wait_for_events(
        lambda e: e["action"] == "push" and e["target"]["digest"] in blobs, timeout=30
    )
    assert {e["target"]["digest"] for e in blob_pushes} == blobs

    run([*skopeo, "copy", "--src-tls-verify=false", f"docker://{server.host}/team/app:v1",
         f"oci:{tmp_path}/pulled:v1"])  # fmt: skip
    pulls = hook.wait_for_events(lambda e: e["action"] == "pull", timeout=30)
    assert digest in {e["target"]["digest"] for e in pulls}
    with server.client() as client:
        assert client.delete(f"/v2/team/app/manifests/{digest}").status_code == 202
    deleted = hook.wait_for_events(lambda e: e["action"] == "delete", timeout=30)
    # As registry:2's bridge.go sends a delete: the repository and the digest only.
    assert deleted[0]["target"] == {"digest": digest, "repository": "team/app"}
    # Everything the receiver got was registry:2's format; the two failed deliveries were
    # sent again: every event arrived, exactly once, pushes before the pull.
    assert hook.rejections == []
    assert len(hook.failed_deliveries) == 2
    ids = [e["id"] for e in hook.events]
    assert len(ids) == len(set(ids))
    failed_ids = {e["id"] for env in hook.failed_deliveries for e in env["events"]}
    assert failed_ids <= set(ids)
    actions = [e["action"] for e in hook.events]
    assert actions.index("pull") > max(i for i, a in enumerate(actions) if a == "push")
    assert "hook-secret-123" not in server.log_text()


def test_an_endpoint_that_is_down_delays_nothing_and_drops_only_past_its_queue(
    server: EdgecacheServer, hook: WebhookReceiver
) -> None:
    before = len(hook.events)
    pushed = 0
    with server.client() as client:
        for i in range(DEAD_QUEUE + 4):
            data = hashlib.sha256(b"dead-%d" % i).digest() * 100
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            answer = client.post(
                "/v2/team/blobs/blobs/uploads/", params={"digest": digest}, content=data
            )
            assert answer.status_code == 201
            pushed += 1
    # The live endpoint got them all; the dead one holds DEAD_QUEUE and dropped the rest.
    hook.wait_for_events(before + pushed, timeout=30)
    status = admin(server, "GET", "status")
    dead = next(e for e in status["notifications"] if e["name"] == "dead")
    assert dead["queued"] == DEAD_QUEUE
    assert dead["dropped"] >= pushed - DEAD_QUEUE
    assert dead["last_error"]
    with server.client() as client:
        assert (
            metric(client, "edgecache_notifications_total", '{endpoint="dead",result="dropped"}')
            >= pushed - DEAD_QUEUE
        )
        assert metric(
            client, "edgecache_notifications_total", '{endpoint="hook",result="sent"}'
        ) >= len(hook.events)
