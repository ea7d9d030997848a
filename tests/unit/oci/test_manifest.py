import json
from typing import Any

import pytest

from edgecache.oci import mediatypes as mt
from edgecache.oci.digest import Digest
from edgecache.oci.errors import ManifestInvalid, ManifestTooLarge
from edgecache.oci.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Manifest,
    parse_manifest,
    referrer_descriptor,
    referrers_index,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


def docker_manifest() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONTAINER_CONFIG, "size": 1469, "digest": D1},
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": 3_370_628,
                "digest": D2,
            },
            {
                "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "size": 5,
                "digest": D3,
                "urls": ["https://mcr.microsoft.com/layer"],
            },
        ],
    }


def docker_list() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_LIST,
        "manifests": [
            {
                "mediaType": mt.DOCKER_MANIFEST,
                "size": 528,
                "digest": D1,
                "platform": {"architecture": "amd64", "os": "linux"},
            },
            {
                "mediaType": mt.DOCKER_MANIFEST,
                "size": 528,
                "digest": D2,
                "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
            },
        ],
    }


def oci_manifest() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_IMAGE_CONFIG, "size": 7023, "digest": D1},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "size": 32654,
                "digest": D2,
            }
        ],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }


def oci_index() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "size": 7143,
                "digest": D1,
                "platform": {"architecture": "ppc64le", "os": "linux"},
            },
            {
                "mediaType": mt.OCI_MANIFEST,
                "size": 566,
                "digest": D2,
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
                "platform": {"architecture": "unknown", "os": "unknown"},
            },
        ],
    }


def artifact() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": SIGNATURE_TYPE,
        "config": {"mediaType": mt.OCI_EMPTY, "size": 2, "digest": D1},
        "layers": [],
        "subject": {"mediaType": mt.OCI_MANIFEST, "size": 7023, "digest": D3},
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }


def test_docker_manifest() -> None:
    m = parse_manifest(dumps(docker_manifest()), mt.DOCKER_MANIFEST)
    assert m.media_type == mt.DOCKER_MANIFEST
    assert not m.is_index
    assert m.config is not None and m.config.digest == Digest.parse(D1)
    assert [d.digest for d in m.blob_children] == [Digest.parse(d) for d in (D1, D2, D3)]
    assert m.manifest_children == ()
    assert m.layers[1].urls == ("https://mcr.microsoft.com/layer",)
    assert m.effective_artifact_type == mt.DOCKER_CONTAINER_CONFIG
    assert m.subject is None


def test_docker_list() -> None:
    m = parse_manifest(dumps(docker_list()), None)
    assert m.media_type == mt.DOCKER_LIST
    assert m.is_index
    assert m.blob_children == ()
    assert [d.digest for d in m.manifest_children] == [Digest.parse(D1), Digest.parse(D2)]
    assert m.manifests[1].platform == {"architecture": "arm", "os": "linux", "variant": "v7"}
    assert m.effective_artifact_type is None


def test_oci_manifest_with_parameterised_content_type() -> None:
    m = parse_manifest(dumps(oci_manifest()), mt.OCI_MANIFEST + "; charset=utf-8")
    assert m.media_type == mt.OCI_MANIFEST
    assert m.annotations == {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    assert len(m.blob_children) == 2


def test_oci_index() -> None:
    m = parse_manifest(dumps(oci_index()), mt.OCI_INDEX)
    assert m.is_index
    assert m.config is None
    assert m.manifests[1].annotations == {"vnd.docker.reference.type": "attestation-manifest"}


def test_artifact_with_subject() -> None:
    m = parse_manifest(dumps(artifact()), mt.OCI_MANIFEST)
    assert m.artifact_type == SIGNATURE_TYPE
    assert m.effective_artifact_type == SIGNATURE_TYPE
    assert m.layers == ()
    assert m.subject is not None and m.subject.digest == Digest.parse(D3)


def test_artifact_type_falls_back_to_config_media_type() -> None:
    obj = artifact()
    del obj["artifactType"]
    obj["config"]["mediaType"] = "application/vnd.example.sbom.config+json"
    m = parse_manifest(dumps(obj), None)
    assert m.effective_artifact_type == "application/vnd.example.sbom.config+json"


def test_index_with_artifact_type_and_subject() -> None:
    obj = oci_index()
    obj["artifactType"] = "application/vnd.example.bundle"
    obj["subject"] = {"mediaType": mt.OCI_MANIFEST, "size": 1, "digest": D3}
    m = parse_manifest(dumps(obj), None)
    assert m.effective_artifact_type == "application/vnd.example.bundle"
    assert m.subject is not None


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"schemaVersion": 2, "manifests": []}, mt.OCI_INDEX),
        (
            {
                "schemaVersion": 2,
                "config": {"mediaType": "x/y", "size": 0, "digest": D1},
                "layers": [],
            },
            mt.OCI_MANIFEST,
        ),
    ],
)
def test_media_type_inferred(obj: dict[str, Any], expected: str) -> None:
    assert parse_manifest(dumps(obj), None).media_type == expected


@pytest.mark.parametrize("content_type", ["", "application/json", "application/octet-stream"])
def test_generic_content_type_defers_to_json(content_type: str) -> None:
    m = parse_manifest(dumps(docker_manifest()), content_type)
    assert m.media_type == mt.DOCKER_MANIFEST


def test_content_type_used_when_json_omits_media_type() -> None:
    obj = oci_manifest()
    del obj["mediaType"]
    assert parse_manifest(dumps(obj), mt.DOCKER_MANIFEST).media_type == mt.DOCKER_MANIFEST


def test_too_large() -> None:
    data = b" " * (MAX_MANIFEST_SIZE + 1)
    with pytest.raises(ManifestTooLarge) as info:
        parse_manifest(data, mt.OCI_MANIFEST)
    assert str(MAX_MANIFEST_SIZE + 1) in info.value.message
    assert info.value.status == 413


def test_exactly_max_size_is_parsed() -> None:
    body = dumps(oci_manifest())
    padded = body + b" " * (MAX_MANIFEST_SIZE - len(body))
    assert parse_manifest(padded, None).media_type == mt.OCI_MANIFEST


SCHEMA1 = {
    "schemaVersion": 1,
    "name": "library/hello",
    "tag": "latest",
    "fsLayers": [{"blobSum": D1}],
    "history": [],
}


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (dumps(SCHEMA1), None),
        (dumps(SCHEMA1), mt.DOCKER_SCHEMA1_SIGNED),
        (dumps({**SCHEMA1, "schemaVersion": 2}), None),
        (dumps(oci_manifest()), mt.DOCKER_SCHEMA1),
        (dumps({**oci_manifest(), "mediaType": mt.DOCKER_SCHEMA1_SIGNED}), None),
    ],
)
def test_schema1_refused(data: bytes, content_type: str | None) -> None:
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(data, content_type)
    assert "schema1" in info.value.message


def _without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


def _layer(**changes: Any) -> dict[str, Any]:
    obj = oci_manifest()
    layer = dict(obj["layers"][0])
    layer.update(changes)
    obj["layers"] = [obj["layers"][0], obj["layers"][0], layer]
    return obj


BAD: list[tuple[bytes, str | None, str]] = [
    (b"", None, "not valid JSON"),
    (b"{", None, "not valid JSON"),
    (b"\xff\xfe\xfd", None, "not valid"),
    (b"[]", None, "got array"),
    (b'"x"', None, "got string"),
    (dumps(_without(oci_manifest(), "schemaVersion")), None, "schemaVersion: required"),
    (dumps({**oci_manifest(), "schemaVersion": "2"}), None, "schemaVersion: expected integer"),
    (dumps({**oci_manifest(), "schemaVersion": True}), None, "schemaVersion: expected integer"),
    (dumps({**oci_manifest(), "schemaVersion": 3}), None, "schemaVersion: must be 2, got 3"),
    (dumps(oci_manifest()), mt.DOCKER_MANIFEST, "does not match the Content-Type"),
    (dumps(oci_manifest()), "text/plain", "Content-Type: 'text/plain' is not a manifest"),
    (dumps({**oci_manifest(), "mediaType": "x/y"}), None, "mediaType: 'x/y' is not a manifest"),
    (dumps({**oci_manifest(), "mediaType": 5}), None, "mediaType: expected a string"),
    (dumps({"schemaVersion": 2}), None, "neither 'config' nor 'manifests'"),
    (dumps(_without(oci_manifest(), "config")), mt.OCI_MANIFEST, "config: required"),
    (dumps(_without(oci_manifest(), "layers")), None, "layers: required array"),
    (dumps({**oci_manifest(), "layers": {}}), None, "layers: expected an array, got object"),
    (dumps(_without(oci_index(), "manifests")), None, "manifests: required array"),
    (dumps({**oci_index(), "manifests": None}), None, "manifests: required array"),
    (dumps({**oci_manifest(), "config": "x"}), None, "config: descriptor must be an object"),
    (dumps(_layer(digest="sha256:abc")), None, "layers[2].digest: invalid digest"),
    (dumps(_layer(digest=None)), None, "layers[2].digest: required string, got null"),
    (dumps(_layer(size=-1)), None, "layers[2].size: must not be negative"),
    (dumps(_layer(size="1")), None, "layers[2].size: required integer, got string"),
    (dumps(_layer(size=1.5)), None, "layers[2].size: required integer, got number"),
    (dumps(_layer(size=False)), None, "layers[2].size: required integer, got boolean"),
    (dumps(_layer(mediaType=None)), None, "layers[2].mediaType: required string"),
    (dumps(_layer(mediaType="")), None, "layers[2].mediaType: must not be empty"),
    (dumps(_layer(artifactType=1)), None, "layers[2].artifactType: expected a string"),
    (dumps(_layer(annotations=[])), None, "layers[2].annotations: expected an object"),
    (dumps(_layer(annotations={"k": 1})), None, "layers[2].annotations['k']: expected a string"),
    (dumps(_layer(urls="x")), None, "layers[2].urls: expected an array of strings"),
    (dumps({**oci_manifest(), "annotations": {"a": None}}), None, "annotations['a']"),
    (dumps({**oci_manifest(), "artifactType": []}), None, "artifactType: expected a string"),
    (dumps({**artifact(), "subject": {"digest": D1}}), None, "subject.mediaType: required"),
    (
        dumps({**oci_index(), "manifests": [{**oci_index()["manifests"][0], "platform": 1}]}),
        None,
        "manifests[0].platform: expected an object",
    ),
    (
        dumps({**oci_index(), "manifests": [{**oci_index()["manifests"][0], "platform": {}}]}),
        None,
        "manifests[0].platform.architecture: required string",
    ),
]


@pytest.mark.parametrize(("data", "content_type", "mentions"), BAD)
def test_invalid(data: bytes, content_type: str | None, mentions: str) -> None:
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(data, content_type)
    assert mentions in info.value.message


def test_descriptor_round_trip() -> None:
    obj = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": D1,
        "size": 10,
        "artifactType": SIGNATURE_TYPE,
        "annotations": {"a": "b"},
        "urls": ["https://example.invalid/x"],
        "platform": {"architecture": "amd64", "os": "linux"},
    }
    d = Descriptor.parse(obj, "x")
    assert d.to_json() == obj
    minimal = {"mediaType": "a/b", "digest": D1, "size": 0}
    assert Descriptor.parse(minimal, "x").to_json() == minimal


def test_descriptor_parse_where_prefix() -> None:
    with pytest.raises(ManifestInvalid, match=r"^blobs\[7\]: descriptor must be an object"):
        Descriptor.parse(None, "blobs[7]")


def test_parsed_annotations_are_read_only() -> None:
    m = parse_manifest(dumps(oci_manifest()), None)
    assert m.annotations is not None
    with pytest.raises(TypeError):
        m.annotations["x"] = "y"  # type: ignore[index]


def test_referrers() -> None:
    m = parse_manifest(dumps(artifact()), None)
    digest = Digest.parse(D2)
    entry = referrer_descriptor(m, digest, 1234)
    assert entry == {
        "mediaType": mt.OCI_MANIFEST,
        "digest": D2,
        "size": 1234,
        "artifactType": SIGNATURE_TYPE,
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    body = json.loads(referrers_index([entry]))
    assert body == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [entry]}
    # A referrers response must itself be a valid index.
    assert parse_manifest(referrers_index([entry]), mt.OCI_INDEX).manifests[0].size == 1234


def test_referrer_descriptor_without_artifact_type_or_annotations() -> None:
    m = Manifest(mt.OCI_INDEX, None, (), (), None, None, None)
    assert referrer_descriptor(m, Digest.parse(D1), 2) == {
        "mediaType": mt.OCI_INDEX,
        "digest": D1,
        "size": 2,
    }


def test_empty_referrers_index() -> None:
    assert json.loads(referrers_index([]))["manifests"] == []
