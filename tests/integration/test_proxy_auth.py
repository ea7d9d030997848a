"""Pull-through from upstreams that need credentials: basic auth and token auth.

The upstream is a real `docker-registry` (htpasswd, or token auth with the fixtures' token
server issuing JWTs the registry verifies). edgecache is configured with the upstream's user
and password; clients pull anonymously from edgecache by project path (skopeo) and in mirror
mode (`?ns=<upstream host>`, httpx). Secrets must never show up in edgecache's log or in an
error it sends.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_proxy_faults import skopeo_pull
from tests.support import EdgecacheServer, sha256_bytes
from tests.upstreams import OCI_MANIFEST, PushedImage, RunningUpstream, start_registry

UPSTREAM = "lab"
WRONG_PASSWORD = "wr0ng-Upstream-pw-7d1f"
FAST = 10.0  # client timeout for requests that must fail fast


def config_for(upstream: RunningUpstream, password: str | None = None) -> str:
    password = upstream.password if password is None else password
    return (
        f'[upstreams.{UPSTREAM}]\nurl = "{upstream.url}"\naliases = ["{upstream.host}"]\n'
        f'username = "{upstream.username}"\npassword = "{password}"\n'
        "retries = 1\nconnect_timeout = 2.0\n"
    )


def secrets_of(password: str, upstream: RunningUpstream) -> list[str]:
    """The forms a leaked password would take: itself and inside a Basic header."""
    raw = f"{upstream.username}:{password}".encode()
    return [password, base64.b64encode(raw).decode()]


def assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:3]}...) appears in {where}"


def assert_layout_has(layout: Path, image: PushedImage) -> None:
    [desc] = json.loads((layout / "index.json").read_text())["manifests"]
    assert desc["digest"] == image.digest
    blobs = layout / "blobs" / "sha256"
    assert (blobs / image.digest[7:]).read_bytes() == image.manifest
    assert (blobs / image.config_digest[7:]).read_bytes() == image.config
    assert (blobs / image.layer_digest[7:]).read_bytes() == image.layer


@pytest.fixture(scope="module", params=["basic", "token"])
def upstream(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp(request.param), request.param) as registry:
        yield registry


def test_pulls_with_configured_credentials(upstream: RunningUpstream, tmp_path: Path) -> None:
    image = upstream.push_test_image("team/secure")
    mirrored = upstream.push_test_image("team/secure-ns")
    # Anonymous access to the upstream really is refused (else the test proves nothing).
    anonymous = httpx.get(f"{upstream.url}/v2/team/secure/manifests/v1", timeout=10)
    assert anonymous.status_code == 401

    with EdgecacheServer(tmp_path / "cache", config_text=config_for(upstream)) as cache:
        # Project path, by tag and by digest (skopeo checks every digest too).
        assert_layout_has(skopeo_pull(cache, "team/secure:v1", tmp_path / "tag"), image)
        by_digest = skopeo_pull(cache, f"team/secure@{image.digest}", tmp_path / "digest")
        assert_layout_has(by_digest, image)

        # Mirror mode: ?ns=<upstream host>, as containerd asks.
        ns = {"ns": upstream.host}
        with cache.client() as client:
            for reference in ("v1", mirrored.digest):
                response = client.get(
                    f"/v2/team/secure-ns/manifests/{reference}",
                    params=ns,
                    headers={"Accept": OCI_MANIFEST},
                )
                assert response.status_code == 200, response.text
                assert response.headers["oci-namespace"] == UPSTREAM
                assert response.headers["docker-content-digest"] == mirrored.digest
                assert response.content == mirrored.manifest
            for digest, data in (
                (mirrored.config_digest, mirrored.config),
                (mirrored.layer_digest, mirrored.layer),
            ):
                response = client.get(f"/v2/team/secure-ns/blobs/{digest}", params=ns)
                assert response.status_code == 200, response.text
                assert sha256_bytes(response.content) == digest and response.content == data

        log = cache.log_text(tail=1 << 22)
    assert_no_secret(log, secrets_of(str(upstream.password), upstream), "edgecache's log")

    if upstream.flavour == "token":
        tokens = upstream.token_server
        assert tokens is not None
        for repo in ("team/secure", "team/secure-ns"):
            fetched = [r for r in tokens.requests if any(f":{repo}:" in s for s in r.scopes)]
            upstream_requests = upstream.request_count(f"/v2/{repo}/")
            # Every token was asked for with the configured credentials, and reused: one
            # token per repository scope serves all of that repository's requests.
            assert fetched and all(r.user == upstream.username for r in fetched), fetched
            assert all(r.status == 200 for r in fetched), fetched
            assert len(fetched) < upstream_requests, (repo, len(fetched), upstream_requests)
            assert len(fetched) <= 2, (repo, fetched)


def test_wrong_password_serves_cache_and_fails_uncached_clearly(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    image = upstream.push_test_image("team/locked")
    never = upstream.push_test_image("team/never-cached")
    cache = EdgecacheServer(tmp_path / "cache", config_text=config_for(upstream))
    # Warm the cache with the right password, then restart with a wrong one.
    with cache:
        assert_layout_has(skopeo_pull(cache, "team/locked:v1", tmp_path / "warm"), image)
    assert cache.config_path is not None
    cache.config_path.write_text(config_for(upstream, WRONG_PASSWORD))
    secrets = secrets_of(WRONG_PASSWORD, upstream)
    bodies = []
    try:
        cache.restart()
        with cache.client(timeout=FAST) as client:
            # Uncached: a clear OCI error that says the upstream cannot be used.
            for path in (
                "/v2/team/never-cached/manifests/v1",
                f"/v2/team/never-cached/manifests/{never.digest}",
                f"/v2/team/never-cached/blobs/{never.layer_digest}",
            ):
                for params in ({"ns": upstream.host}, {}):
                    url = path if params else path.replace("/v2/", f"/v2/{UPSTREAM}/", 1)
                    response = client.get(url, params=params, headers={"Accept": OCI_MANIFEST})
                    bodies.append(response.text)
                    assert response.status_code == 503, (url, response.status_code, response.text)
                    error = response.json()["errors"][0]
                    assert error["code"] == "UNAVAILABLE", response.text
                    assert UPSTREAM in error["message"], response.text

            # Cached: still served (the tag marked stale), by tag and by digest.
            response = client.get(
                f"/v2/{UPSTREAM}/team/locked/manifests/v1", headers={"Accept": OCI_MANIFEST}
            )
            assert response.status_code == 200 and response.content == image.manifest
            assert "Stale" in response.headers.get("warning", ""), response.headers
            bodies.append(str(response.headers))
        assert_layout_has(
            skopeo_pull(cache, f"team/locked@{image.digest}", tmp_path / "offline"), image
        )
    finally:
        cache.stop()
    assert_no_secret("\n".join(bodies), secrets, "edgecache's responses")
    assert_no_secret(cache.log_text(tail=1 << 22), secrets, "edgecache's log")
