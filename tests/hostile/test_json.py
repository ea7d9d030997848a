"""JSON that json.loads chokes on in ways other than JSONDecodeError: nested 100,000 deep
(RecursionError), a 5000-digit number (ValueError), NaN, UTF-16; and descriptor sizes no blob
can have (2**70). From a client pushing a manifest each was a 500 or, worse, accepted; from an
upstream (tag lists, referrers, manifests, token responses) each was a 500. Now a push gets
400 MANIFEST_INVALID and stores nothing, and an upstream's lie is its protocol error."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hostile.liar import KINDS, Liar
from tests.hostile.raw import assert_no_internal_errors
from tests.support import EdgecacheServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DEEP = b"[" * 100_000 + b"]" * 100_000
BLOB = os.urandom(500)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
REPO = "json/app"


def descriptor(size: int = len(BLOB), media_type: str = "application/octet-stream") -> Any:
    return {"mediaType": media_type, "digest": DIGEST, "size": size}


def manifest(**fields: Any) -> dict[str, Any]:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(),
        "layers": [descriptor()],
    }
    doc.update(fields)
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def client(edgecache: EdgecacheServer) -> Iterator[httpx.Client]:
    with edgecache.client(limits=httpx.Limits(max_keepalive_connections=0)) as c:
        r = c.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": DIGEST}, content=BLOB)
        assert r.status_code == 201, r.text
        # The well-formed manifest the hostile ones are variations of is accepted.
        r = c.put(
            f"/v2/{REPO}/manifests/good",
            content=encode(manifest()),
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text
        yield c


HOSTILE_PUSHES: dict[str, tuple[bytes, str]] = {
    "deep": (DEEP, "nested too deeply"),
    "deep-inside": (
        encode(manifest())[:-1] + b',"x":' + DEEP + b"}",
        "nested too deeply",
    ),
    "5000-digits": (
        encode(manifest())[:-1] + b',"x":' + b"9" * 5000 + b"}",
        "more than 4300 digits",
    ),
    "nan": (encode(manifest())[:-1] + b',"x":NaN}', "NaN"),
    "utf-16": (json.dumps(manifest()).encode("utf-16"), "UTF-8"),
    "layer-2pow70": (encode(manifest(layers=[descriptor(2**70)])), "layers[0].size"),
    "config-2pow70": (encode(manifest(config=descriptor(2**70))), "config.size"),
    "subject-2pow70": (
        encode(manifest(subject=descriptor(2**70, OCI_MANIFEST))),
        "subject.size",
    ),
    "index-child-2pow70": (
        encode(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [descriptor(2**70, OCI_MANIFEST)],
            }
        ),
        "manifests[0].size",
    ),
}


@pytest.mark.parametrize("case", HOSTILE_PUSHES)
def test_hostile_manifest_push_is_invalid_and_stores_nothing(
    client: httpx.Client, case: str
) -> None:
    body, mentions = HOSTILE_PUSHES[case]
    content_type = OCI_INDEX if case.startswith("index") else OCI_MANIFEST
    r = client.put(
        f"/v2/{REPO}/manifests/{case}", content=body, headers={"Content-Type": content_type}
    )
    assert r.status_code == 400, r.text
    error = r.json()["errors"][0]
    assert error["code"] == "MANIFEST_INVALID", error
    assert mentions in error["message"], error
    # Nothing was stored: not under the tag, not under the body's digest.
    r = client.get(f"/v2/{REPO}/manifests/{case}")
    assert r.status_code == 404, r.text
    r = client.get(f"/v2/{REPO}/manifests/sha256:{hashlib.sha256(body).hexdigest()}")
    assert r.status_code == 404, r.text
    assert client.get(f"/v2/{REPO}/tags/list").json()["tags"] == ["good"]


# ------------------------------------------------------------------------ from upstream


@pytest.fixture(scope="module")
def liars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    """An edgecache whose upstream `liar` answers hostile JSON (and `tliar` the same behind a
    token server whose token response is itself nested 100,000 deep)."""
    with Liar() as liar, Liar(token=True) as tliar:
        config = "".join(
            f'[upstreams.{name}]\nurl = "{up.url}"\nretries = 1\nconnect_timeout = 2.0\n'
            for name, up in (("liar", liar), ("tliar", tliar))
        )
        with EdgecacheServer(tmp_path_factory.mktemp("liars"), config_text=config) as server:
            yield server


SUBJECT = "sha256:" + "ab" * 32


@pytest.mark.parametrize("upstream", ["liar", "tliar"])
@pytest.mark.parametrize("kind", KINDS)
def test_hostile_upstream_json_is_never_a_500(
    liars: EdgecacheServer, upstream: str, kind: str
) -> None:
    repo = f"{upstream}/{kind}/app"
    with liars.client() as c:
        # Referrers fall back to what is stored here (nothing): an empty index, not an error.
        for params in ({}, {"artifactType": "application/x-test"}):
            r = c.get(f"/v2/{repo}/referrers/{SUBJECT}", params=params)
            assert r.status_code == 200, r.text
            assert r.json()["manifests"] == []
        for method, path in (
            ("GET", f"/v2/{repo}/tags/list"),
            ("GET", f"/v2/{repo}/manifests/latest"),
            ("HEAD", f"/v2/{repo}/manifests/latest"),
        ):
            r = c.request(method, path)
            assert r.status_code != 500, f"{method} {path}: {r.text}"
            if r.status_code >= 400 and method == "GET":
                assert r.json()["errors"][0]["code"] != "INTERNAL_ERROR", r.text
        if upstream == "tliar":
            # No usable token: the upstream is as good as unreachable.
            r = c.get(f"/v2/{repo}/manifests/latest")
            assert r.status_code == 503, r.text
            assert "token" in r.json()["errors"][0]["message"]
        else:
            # The client asked for nothing wrong: the upstream's garbage is a bad gateway.
            r = c.get(f"/v2/{repo}/manifests/latest")
            assert r.status_code == 502, r.text
            assert "sent an invalid manifest" in r.json()["errors"][0]["message"], r.text


def test_no_internal_errors_were_logged(edgecache: EdgecacheServer, liars: EdgecacheServer) -> None:
    assert_no_internal_errors(edgecache)
    assert_no_internal_errors(liars)


# ------------------------------------------------------------------------ from an archive


def test_preload_of_an_archive_with_deep_json_is_one_line(tmp_path: Path) -> None:
    archive = tmp_path / "deep.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(DEEP)
        tar.addfile(info, io.BytesIO(DEEP))
    server = EdgecacheServer(tmp_path / "srv")  # not started: only its CLI is used
    result = server.cli("preload", "--data", str(tmp_path / "data"), str(archive))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    # The progress line may come first; the error is one line that says what is wrong.
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("edgecache preload:"), result.stderr
    assert "manifest.json is not valid JSON: nested too deeply" in last, result.stderr
