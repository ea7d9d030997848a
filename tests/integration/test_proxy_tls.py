"""Pull-through from an HTTPS upstream: a real docker-registry serving TLS with a certificate
from a test CA. Manifests come through httpx, blob bodies through the worker-thread reader
(upstream/rawget.py); both must trust exactly what the upstream's config says."""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import EdgecacheServer, make_tls_cert
from tests.upstreams import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, UpstreamRegistry

UPSTREAM = "lab"


@dataclass(frozen=True)
class TLSUpstream:
    registry: UpstreamRegistry
    ca: Path
    layer: bytes
    layer_digest: str
    manifest_digest: str


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push(client: httpx.Client, repo: str, data: bytes) -> str:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = client.base_url.join(r.headers["location"])
    r = client.put(location.copy_merge_params({"digest": _digest(data)}), content=data)
    assert r.status_code == 201, r.text
    return _digest(data)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSUpstream]:
    base = tmp_path_factory.mktemp("tls-upstream")
    ca, cert, key = make_tls_cert(base / "pki")
    with UpstreamRegistry(base / "registry", tls=(cert, key)) as registry:
        layer = os.urandom(3 << 20)
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        with httpx.Client(
            base_url=registry.url, verify=ssl.create_default_context(cafile=ca), timeout=60
        ) as client:
            layer_digest = _push(client, "team/app", layer)
            config_digest = _push(client, "team/app", config)
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {
                        "mediaType": OCI_CONFIG,
                        "digest": config_digest,
                        "size": len(config),
                    },
                    "layers": [
                        {"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}
                    ],
                }
            ).encode()
            r = client.put(
                "/v2/team/app/manifests/v1",
                content=manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert r.status_code == 201, r.text
        yield TLSUpstream(registry, ca, layer, layer_digest, _digest(manifest))


def _cache(tmp_path: Path, upstream: TLSUpstream, extra: str) -> EdgecacheServer:
    config = f'[upstreams.{UPSTREAM}]\nurl = "{upstream.registry.url}"\nretries = 1\n{extra}'
    return EdgecacheServer(tmp_path / "cache", config_text=config)


def _readers(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    name = "edgecache_upstream_blob_responses_total"
    labels = rf'\{{reader="(\w+)",upstream="{UPSTREAM}"\}}'
    found = re.findall(rf"^{name}{labels} (\S+)$", text, re.MULTILINE)
    return {reader: float(value) for reader, value in found}


def test_manifest_and_blob_over_tls_trusting_the_configured_ca(
    tmp_path: Path, upstream: TLSUpstream
) -> None:
    assert upstream.registry.url.startswith("https://")
    with _cache(tmp_path, upstream, f'ca_file = "{upstream.ca}"\n') as cache, cache.client() as c:
        manifest = c.get(f"/v2/{UPSTREAM}/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert manifest.status_code == 200, manifest.text
        assert manifest.headers["docker-content-digest"] == upstream.manifest_digest
        blob = c.get(f"/v2/{UPSTREAM}/team/app/blobs/{upstream.layer_digest}")
        assert blob.status_code == 200, blob.text
        assert blob.content == upstream.layer
        # The body came through the worker-thread reader, over TLS.
        assert _readers(c) == {"thread": 1.0}


def test_an_untrusted_certificate_is_refused(tmp_path: Path, upstream: TLSUpstream) -> None:
    with _cache(tmp_path, upstream, "") as cache, cache.client() as c:
        blob = c.get(f"/v2/{UPSTREAM}/team/app/blobs/{upstream.layer_digest}")
        assert blob.status_code == 503, blob.text
        error = blob.json()["errors"][0]
        assert error["code"] == "UNAVAILABLE"
        assert "TLS certificate not trusted" in error["message"], error["message"]
        assert _readers(c) == {}  # no body was read from anyone


def test_insecure_skips_verification_for_lab_use(tmp_path: Path, upstream: TLSUpstream) -> None:
    with _cache(tmp_path, upstream, "insecure = true\n") as cache, cache.client() as c:
        blob = c.get(f"/v2/{UPSTREAM}/team/app/blobs/{upstream.layer_digest}")
        assert blob.status_code == 200, blob.text
        assert blob.content == upstream.layer
        assert _readers(c) == {"thread": 1.0}
