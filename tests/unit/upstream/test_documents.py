"""Response bodies and the Docker Hub repository mapping."""

from __future__ import annotations

import json

import pytest

from edgecache.upstream import UpstreamProtocolError, upstream_repo
from edgecache.upstream.documents import filter_referrers, manifest_media_type, tag_page

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.mark.parametrize(
    ("repo", "hub", "expected"),
    [
        ("nginx", True, "library/nginx"),
        ("library/nginx", True, "library/nginx"),
        ("bitnami/redis", True, "bitnami/redis"),
        ("nginx", False, "nginx"),
        ("a/b/c", True, "a/b/c"),
    ],
)
def test_docker_hub_library_mapping(repo: str, hub: bool, expected: str) -> None:
    assert upstream_repo(repo, hub) == expected


def test_media_type_prefers_header_then_document() -> None:
    body = json.dumps({"mediaType": OCI_INDEX}).encode()
    assert manifest_media_type(f"{OCI_MANIFEST}; charset=utf-8", body) == OCI_MANIFEST
    assert manifest_media_type("application/json", body) == OCI_INDEX
    assert manifest_media_type(None, b"{}") == "application/octet-stream"
    assert manifest_media_type("text/plain", b"not json") == "text/plain"


def test_tag_page() -> None:
    assert tag_page("u", "GET x", b'{"name":"r","tags":["a","b"]}') == ["a", "b"]
    assert tag_page("u", "GET x", b'{"name":"r","tags":null}') == []
    with pytest.raises(UpstreamProtocolError, match="GET x: 'tags' is not a list"):
        tag_page("u", "GET x", b'{"tags":[1]}')
    with pytest.raises(UpstreamProtocolError, match="not JSON"):
        tag_page("u", "GET x", b"<html>")


def test_filter_referrers() -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"digest": "sha256:1", "artifactType": "application/sbom"},
            {"digest": "sha256:2", "artifactType": "application/sig"},
        ],
    }
    out = json.loads(filter_referrers("u", "w", json.dumps(index).encode(), "application/sig"))
    assert [m["digest"] for m in out["manifests"]] == ["sha256:2"]
    with pytest.raises(UpstreamProtocolError, match="malformed"):
        filter_referrers("u", "w", b'{"manifests": 3}', "x")
