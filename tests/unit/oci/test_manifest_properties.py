"""Property-based tests of manifest parsing and of the JSON decoding under it.

parse_manifest reads what clients push and what upstreams answer: on any bytes and any JSON
document it must return a Manifest or raise an OCIError (400 MANIFEST_INVALID or 413), never
a RecursionError, a ValueError or a KeyError. A manifest built from valid parts parses back
into exactly those parts.
"""

from __future__ import annotations

import contextlib
import json
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecache.oci import mediatypes as mt
from edgecache.oci.digest import HEX_LENGTHS, Digest
from edgecache.oci.errors import OCIError
from edgecache.oci.integers import INT64_MAX
from edgecache.oci.jsontext import JSONInvalid, loads
from edgecache.oci.manifest import Descriptor, parse_manifest, referrer_descriptor

# A few seconds for the module; deadline=None: a slow CI machine is not a bug.
QUICK = settings(max_examples=60, deadline=None)

# JSON values, including the awkward ones: big integers, unicode, nesting.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
MEDIA_TYPES = st.sampled_from(
    [*sorted(mt.ALL_MANIFEST_TYPES), mt.DOCKER_SCHEMA1, mt.JSON, mt.OCTET_STREAM, "", "x/y"]
)


@st.composite
def digests(draw: st.DrawFn) -> str:
    algorithm = draw(st.sampled_from(sorted(HEX_LENGTHS)))
    return f"{algorithm}:" + draw(
        st.text(
            "0123456789abcdef", min_size=HEX_LENGTHS[algorithm], max_size=HEX_LENGTHS[algorithm]
        )
    )


SHORT_TEXT = st.text(string.ascii_letters + string.digits + "./+-_ é", min_size=1, max_size=20)


@st.composite
def descriptors(draw: st.DrawFn, platform: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mediaType": draw(SHORT_TEXT),
        "digest": draw(digests()),
        "size": draw(st.integers(min_value=0, max_value=INT64_MAX)),
    }
    if draw(st.booleans()):
        out["artifactType"] = draw(SHORT_TEXT)
    if draw(st.booleans()):
        out["annotations"] = draw(
            st.dictionaries(SHORT_TEXT, st.text(max_size=10), min_size=1, max_size=3)
        )
    if draw(st.booleans()):
        out["urls"] = draw(st.lists(SHORT_TEXT, max_size=2))
    if platform and draw(st.booleans()):
        out["platform"] = {"architecture": draw(SHORT_TEXT), "os": draw(SHORT_TEXT)}
    return out


@st.composite
def valid_manifests(draw: st.DrawFn) -> dict[str, Any]:
    media_type = draw(st.sampled_from(sorted(mt.ALL_MANIFEST_TYPES)))
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if media_type in mt.INDEX_TYPES:
        doc["manifests"] = draw(st.lists(descriptors(platform=True), max_size=4))
    else:
        doc["config"] = draw(descriptors())
        doc["layers"] = draw(st.lists(descriptors(), max_size=4))
    if draw(st.booleans()):
        doc["subject"] = draw(descriptors())
    if draw(st.booleans()):
        doc["artifactType"] = draw(SHORT_TEXT)
    if draw(st.booleans()):
        doc["annotations"] = draw(st.dictionaries(SHORT_TEXT, st.text(max_size=10), max_size=3))
    return doc


@st.composite
def mangled_manifests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid manifest with one field replaced by any JSON value (or removed)."""
    doc = draw(valid_manifests())
    paths: list[tuple[Any, Any]] = [(doc, key) for key in doc]
    for key in ("config", "subject"):
        if isinstance(doc.get(key), dict):
            paths += [(doc[key], k) for k in doc[key]]
    for key in ("layers", "manifests"):
        for item in doc.get(key, []):
            paths += [(item, k) for k in item]
    container, key = draw(st.sampled_from(paths))
    if draw(st.booleans()):
        del container[key]
    else:
        container[key] = draw(
            JSON_VALUES | st.sampled_from([2**70, -1, True, 1, "sha256:", "", float("1e308")])
        )
    return doc


def parses_or_refuses(data: bytes, content_type: str | None) -> None:
    try:
        parse_manifest(data, content_type)
    except OCIError as exc:
        assert exc.status in (400, 413), exc


@QUICK
@given(st.binary(max_size=512), st.one_of(st.none(), MEDIA_TYPES))
def test_any_bytes_parse_or_are_refused_with_an_oci_error(
    data: bytes, content_type: str | None
) -> None:
    parses_or_refuses(data, content_type)


@QUICK
@given(JSON_VALUES, st.one_of(st.none(), MEDIA_TYPES))
def test_any_json_document_parses_or_is_refused(value: object, content_type: str | None) -> None:
    parses_or_refuses(json.dumps(value).encode(), content_type)


@QUICK
@given(mangled_manifests(), st.one_of(st.none(), MEDIA_TYPES))
def test_almost_valid_manifests_parse_or_are_refused(
    doc: dict[str, Any], content_type: str | None
) -> None:
    parses_or_refuses(json.dumps(doc).encode(), content_type)


def check_descriptor(parsed: Descriptor, original: dict[str, Any]) -> None:
    assert parsed.to_json() == original
    assert str(parsed.digest) == original["digest"] and parsed.size == original["size"]


@QUICK
@given(valid_manifests(), st.booleans())
def test_valid_manifests_round_trip(doc: dict[str, Any], with_header: bool) -> None:
    data = json.dumps(doc).encode()
    manifest = parse_manifest(data, doc["mediaType"] if with_header else None)
    assert manifest.media_type == doc["mediaType"]
    if manifest.is_index:
        assert manifest.config is None and manifest.layers == ()
        assert len(manifest.manifests) == len(doc["manifests"])
        for parsed, original in zip(manifest.manifests, doc["manifests"], strict=True):
            check_descriptor(parsed, original)
    else:
        assert manifest.config is not None
        check_descriptor(manifest.config, doc["config"])
        for parsed, original in zip(manifest.blob_children[1:], doc["layers"], strict=True):
            check_descriptor(parsed, original)
    if "subject" in doc:
        assert manifest.subject is not None
        check_descriptor(manifest.subject, doc["subject"])
    else:
        assert manifest.subject is None
    assert manifest.artifact_type == doc.get("artifactType")
    assert dict(manifest.annotations or {}) == doc.get("annotations", {})
    listed = referrer_descriptor(manifest, Digest.of_bytes(data), len(data))
    assert listed["mediaType"] == doc["mediaType"] and listed["size"] == len(data)
    assert listed.get("artifactType") == manifest.effective_artifact_type


@QUICK
@given(valid_manifests(), st.integers(min_value=INT64_MAX + 1, max_value=2**80))
def test_sizes_beyond_int64_are_refused(doc: dict[str, Any], size: int) -> None:
    key = "manifests" if "manifests" in doc else "config"
    if key == "manifests":
        doc["manifests"] = [
            {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:" + "0" * 64, "size": size}
        ]
    else:
        doc["config"]["size"] = size
    with pytest.raises(OCIError, match="larger than any blob"):
        parse_manifest(json.dumps(doc).encode(), None)


# --------------------------------------------------------------------- json


@QUICK
@given(st.binary(max_size=256))
def test_loads_raises_only_json_invalid(data: bytes) -> None:
    with contextlib.suppress(JSONInvalid):
        loads(data)


@QUICK
@given(JSON_VALUES)
def test_loads_round_trips_json(value: object) -> None:
    assert loads(json.dumps(value).encode()) == value
    assert loads(json.dumps(value, ensure_ascii=False).encode()) == value


@pytest.mark.parametrize(
    ("data", "mentions"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
        (b"[" + b"9" * 5000 + b"]", "more than 4300 digits"),
        (b"[NaN]", "NaN"),
        (b"[-Infinity]", "-Infinity"),
        ('{"a": 1}'.encode("utf-16"), "UTF-8"),
        (b"\xef\xbb\xbf{}", "BOM"),
        (b'{"a": "\xff"}', "UTF-8"),
    ],
)
def test_loads_refuses_what_other_parsers_refuse(data: bytes, mentions: str) -> None:
    with pytest.raises(JSONInvalid, match=mentions):
        loads(data)
    with pytest.raises(OCIError, match=mentions):
        parse_manifest(data, None)
