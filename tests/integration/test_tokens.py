"""The distribution token flow against the real server (owner and worker) and skopeo.

[auth] token_auth: challenges are Bearer (realm = the server's /_edgecache/token), skopeo
(containers/image, the real Go client) exchanges a user's credentials there for a token and
pushes and pulls with it; a token for one repository reads no other and cannot push; bad
credentials and anonymous requests for what anonymous clients may not do get 401; no token
ever reaches the server's log.
"""

from __future__ import annotations

import base64
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import jwt
import pytest

from tests.integration.test_proxy import metric
from tests.support import Containerd, EdgecacheServer, make_image, require_tool, run

PASSWORD = "s3cret-pass"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    config = (
        f'[auth]\nanonymous_pull = false\ntoken_auth = true\n\n[auth.users]\nalice = "{hashed}"\n'
    )
    with EdgecacheServer(tmp_path_factory.mktemp("tokens"), config_text=config) as srv:
        yield srv


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def token(server: EdgecacheServer, scope: str, headers: dict[str, str]) -> httpx.Response:
    with server.client() as client:
        return client.get(
            "/_edgecache/token", params={"service": "edgecache", "scope": scope}, headers=headers
        )


def test_skopeo_pushes_and_pulls_through_the_token_flow(
    server: EdgecacheServer, tmp_path: Path
) -> None:
    require_tool("skopeo")
    with server.client() as client:
        challenge = client.get("/v2/").headers["www-authenticate"]
    assert challenge == (f'Bearer realm="{server.url}/_edgecache/token",service="edgecache"')
    ref = make_image(tmp_path / "img", [200_000, 3000], seed=9)
    creds = f"alice:{PASSWORD}"
    skopeo = [require_tool("skopeo"), "--insecure-policy"]
    run([*skopeo, "copy", "--dest-tls-verify=false", "--dest-creds", creds,
         ref, f"docker://{server.host}/team/app:v1"], timeout=120)  # fmt: skip
    pulled_to = f"oci:{tmp_path}/pulled:v1"
    run([*skopeo, "copy", "--src-tls-verify=false", "--src-creds", creds,
         f"docker://{server.host}/team/app:v1", pulled_to], timeout=120)  # fmt: skip
    layout = json.loads((Path(ref.split(":")[1]) / "index.json").read_text())
    pulled = json.loads((tmp_path / "pulled" / "index.json").read_text())
    assert pulled["manifests"][0]["digest"] == layout["manifests"][0]["digest"]
    with server.client() as client:  # skopeo sent bearer tokens, not its password
        assert metric(client, "edgecache_auth_events_total", '{event="token"}') > 0
    assert "Bearer " not in server.log_text() and "eyJ" not in server.log_text()


def test_a_token_reads_only_its_repository_and_cannot_push(server: EdgecacheServer) -> None:
    got = token(server, "repository:team/app:pull", basic("alice", PASSWORD))
    assert got.status_code == 200, got.text
    assert got.headers["cache-control"] == "no-store"
    bearer = {"Authorization": f"Bearer {got.json()['token']}"}
    with server.client() as client:
        assert client.get("/v2/", headers=bearer).status_code == 200
        mine = client.get("/v2/team/app/tags/list", headers=bearer)
        assert mine.status_code == 200 and mine.json()["tags"] == ["v1"]
        other = client.get("/v2/team/other/tags/list", headers=bearer)
        assert other.status_code == 401
        assert other.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert 'scope="repository:team/other:pull"' in other.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in other.headers["www-authenticate"]
        push = client.post("/v2/team/app/blobs/uploads/", headers=bearer)
        assert push.status_code == 401
        forged = {"Authorization": "Bearer " + got.json()["token"][:-4] + "AAAA"}
        assert client.get("/v2/team/app/tags/list", headers=forged).status_code == 401
    assert got.json()["token"] not in server.log_text()


def test_the_token_endpoint_refuses_what_it_must(server: EdgecacheServer) -> None:
    wrong = token(server, "repository:team/app:pull", basic("alice", "nope"))
    assert wrong.status_code == 401
    anonymous = token(server, "repository:team/app:pull", {})
    assert anonymous.status_code == 401  # anonymous pulls are off
    assert anonymous.headers["www-authenticate"].startswith("Basic ")
    bad = token(server, "repository:team/app", basic("alice", PASSWORD))
    assert bad.status_code == 400
    with server.client() as client:
        other_service = client.get(
            "/_edgecache/token", params={"service": "elsewhere"}, headers=basic("alice", PASSWORD)
        )
        assert other_service.status_code == 400
        posted = client.post("/_edgecache/token", headers=basic("alice", PASSWORD))
        assert posted.status_code == 405


def test_an_expired_token_is_refused(server: EdgecacheServer) -> None:
    """A token signed with the server's own key whose time is up (made here with the key from
    <data>/run/token-key, as the server would have made it an hour ago)."""
    key = bytes.fromhex((server.data / "run" / "token-key").read_text().strip())
    issued = int(time.time()) - 3600
    claims = {
        "iss": "edgecache", "sub": "alice", "aud": "edgecache", "iat": issued, "nbf": issued,
        "exp": issued + 300, "jti": "x",
        "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
    }  # fmt: skip
    expired = jwt.encode(claims, key, algorithm="HS256")
    fresh = jwt.encode(claims | {"iat": issued + 3600, "exp": issued + 3900}, key, "HS256")
    with server.client() as client:
        refused = client.get(
            "/v2/team/app/tags/list", headers={"Authorization": f"Bearer {expired}"}
        )
        assert refused.status_code == 401
        assert "expired" in refused.text
        assert refused.headers["www-authenticate"].startswith("Bearer realm=")
        ok = client.get("/v2/team/app/tags/list", headers={"Authorization": f"Bearer {fresh}"})
        assert ok.status_code == 200  # the same claims in time: the refusal was the expiry


def test_containerd_pulls_through_the_bearer_challenge(
    server: EdgecacheServer, tmp_path: Path
) -> None:
    require_tool("containerd")
    ref = make_image(tmp_path / "img", [100_000], seed=12)
    skopeo = [require_tool("skopeo"), "--insecure-policy"]
    run([*skopeo, "copy", "--dest-tls-verify=false", "--dest-creds", f"alice:{PASSWORD}",
         ref, f"docker://{server.host}/team/ctr:v1"], timeout=120)  # fmt: skip
    digest = json.loads((Path(ref.split(":")[1]) / "index.json").read_text())["manifests"][0][
        "digest"
    ]
    with tempfile.TemporaryDirectory(prefix="ec-ctrd-") as base, Containerd(base) as daemon:
        name = f"{server.host}/team/ctr:v1"
        refused = daemon.ctr("images", "pull", "--plain-http", "--snapshotter", "native", name,
                             check=False)  # fmt: skip
        assert refused.returncode != 0  # anonymous pulls are off: the challenge needs a user
        daemon.ctr("images", "pull", "--plain-http", "--snapshotter", "native",
                   "--user", f"alice:{PASSWORD}", name)  # fmt: skip
        listed = daemon.ctr("images", "ls").stdout
        assert name in listed and digest in listed
    with server.client() as client:  # containerd exchanged its password for tokens
        assert metric(client, "edgecache_auth_events_total", '{event="token"}') > 0
    assert PASSWORD not in server.log_text()
