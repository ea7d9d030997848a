"""Manifest and index parsing, and the referrers index built from them.

A registry needs only the graph a manifest describes (which blobs and manifests it references,
what it is a referrer of, and its artifact type), so that is all this parser extracts. It still
rejects anything malformed with the JSON path of the problem, because a manifest accepted on
push is served verbatim to every client afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from edgecache.oci import mediatypes as mt
from edgecache.oci.digest import Digest
from edgecache.oci.errors import DigestInvalid, ManifestInvalid, ManifestTooLarge
from edgecache.oci.integers import INT64_MAX
from edgecache.oci.jsontext import JSONInvalid, loads

from .jsontext import json_type as _json_type

# distribution and the big public registries refuse manifests above 4 MiB; matching them keeps
# whatever we accept pushable upstream and bounds the memory a single PUT can pin.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024

SCHEMA1_MESSAGE = "Docker schema1 manifests are not supported (deprecated; push schema2 or OCI)"

# Content types some clients send for a manifest PUT without meaning anything by it; the JSON's
# own mediaType (or inference) decides in that case.
_GENERIC_CONTENT_TYPES = frozenset({"", mt.JSON, mt.OCTET_STREAM})
_EXPECTED = f" (expected one of {', '.join(sorted(mt.ALL_MANIFEST_TYPES))})"


def _invalid(where: str, problem: str) -> ManifestInvalid:
    return ManifestInvalid(f"{where}: {problem}" if where else problem)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _optional_str(obj: Mapping[str, object], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(_join(where, key), f"expected a string, got {_json_type(value)}")
    return value


def _annotations(obj: Mapping[str, object], where: str) -> Mapping[str, str] | None:
    value = obj.get("annotations")
    if value is None:
        return None
    path = _join(where, "annotations")
    if not isinstance(value, dict):
        raise _invalid(path, f"expected an object, got {_json_type(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise _invalid(f"{path}[{key!r}]", f"expected a string, got {_json_type(item)}")
    return MappingProxyType(dict(value))


def _platform(obj: Mapping[str, object], where: str) -> Mapping[str, object] | None:
    value = obj.get("platform")
    if value is None:
        return None
    path = _join(where, "platform")
    if not isinstance(value, dict):
        raise _invalid(path, f"expected an object, got {_json_type(value)}")
    for key in ("architecture", "os"):
        if not isinstance(value.get(key), str):
            raise _invalid(f"{path}.{key}", f"required string, got {_json_type(value.get(key))}")
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] | None = None
    # Foreign (non-distributable) layers list where to fetch them; we keep them for round-trips.
    urls: tuple[str, ...] | None = None
    # Index entries only; kept so that preheat and filtering can choose platforms.
    platform: Mapping[str, object] | None = None

    @classmethod
    def parse(cls, obj: object, where: str) -> Descriptor:
        """Parse a descriptor object found at JSON path ``where`` (e.g. ``layers[2]``)."""
        if not isinstance(obj, dict):
            raise _invalid(where, f"descriptor must be an object, got {_json_type(obj)}")
        media_type = obj.get("mediaType")
        if not isinstance(media_type, str):
            raise _invalid(
                _join(where, "mediaType"), f"required string, got {_json_type(media_type)}"
            )
        if not media_type:
            raise _invalid(_join(where, "mediaType"), "must not be empty")
        raw_digest = obj.get("digest")
        if not isinstance(raw_digest, str):
            raise _invalid(_join(where, "digest"), f"required string, got {_json_type(raw_digest)}")
        try:
            digest = Digest.parse(raw_digest)
        except DigestInvalid as exc:
            raise _invalid(_join(where, "digest"), exc.message) from None
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            raise _invalid(_join(where, "size"), f"required integer, got {_json_type(size)}")
        if size < 0:
            raise _invalid(_join(where, "size"), f"must not be negative, got {size}")
        if size > INT64_MAX:
            # Every registry and client holds sizes in an int64 (distribution refuses this
            # manifest too); a larger one could only ever be a lie.
            raise _invalid(
                _join(where, "size"), f"larger than any blob can be (at most {INT64_MAX})"
            )
        urls = obj.get("urls")
        if urls is not None and (
            not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)
        ):
            raise _invalid(_join(where, "urls"), "expected an array of strings")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            artifact_type=_optional_str(obj, "artifactType", where),
            annotations=_annotations(obj, where),
            urls=tuple(urls) if urls is not None else None,
            platform=_platform(obj, where),
        )

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.urls is not None:
            out["urls"] = list(self.urls)
        if self.platform is not None:
            out["platform"] = dict(self.platform)
        return out


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: Mapping[str, str] | None

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEX_TYPES

    @property
    def blob_children(self) -> tuple[Descriptor, ...]:
        """Blobs this manifest needs: config first, then layers."""
        if self.config is None:
            return self.layers
        return (self.config, *self.layers)

    @property
    def manifest_children(self) -> tuple[Descriptor, ...]:
        return self.manifests

    @property
    def effective_artifact_type(self) -> str | None:
        """The artifactType a referrers response reports for this manifest.

        The spec falls back to config.mediaType for image manifests only; an index has no config.
        """
        if self.artifact_type is not None:
            return self.artifact_type
        if not self.is_index and self.config is not None:
            return self.config.media_type
        return None


def _decode(data: bytes) -> dict[str, object]:
    try:
        obj = loads(data)
    except JSONInvalid as exc:
        raise ManifestInvalid(f"manifest is {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestInvalid(f"manifest must be a JSON object, got {_json_type(obj)}")
    return obj


def _resolve_media_type(obj: Mapping[str, object], content_type: str | None) -> str:
    header = mt.base_type(content_type) if content_type is not None else ""
    if header in mt.SCHEMA1_TYPES:
        raise ManifestInvalid(SCHEMA1_MESSAGE)
    if header in _GENERIC_CONTENT_TYPES:
        header = ""
    if header and header not in mt.ALL_MANIFEST_TYPES:
        raise ManifestInvalid(f"Content-Type: {header!r} is not a manifest media type{_EXPECTED}")
    declared = _optional_str(obj, "mediaType", "")
    if declared in mt.SCHEMA1_TYPES:
        raise ManifestInvalid(SCHEMA1_MESSAGE)
    if header and declared and header != declared:
        raise ManifestInvalid(
            f"mediaType: {declared!r} does not match the Content-Type header {header!r}"
        )
    media_type = header or declared
    if not media_type:
        # The image spec allows omitting mediaType; the shape tells image from index.
        if "manifests" in obj:
            return mt.OCI_INDEX
        if "config" in obj:
            return mt.OCI_MANIFEST
        raise ManifestInvalid(
            "mediaType: missing, and the manifest has neither 'config' nor 'manifests' "
            "to infer it from"
        )
    if media_type not in mt.ALL_MANIFEST_TYPES:
        raise ManifestInvalid(f"mediaType: {media_type!r} is not a manifest media type{_EXPECTED}")
    return media_type


def _descriptor_list(obj: Mapping[str, object], key: str) -> tuple[Descriptor, ...]:
    value = obj.get(key)
    if value is None:
        raise _invalid(key, "required array is missing")
    if not isinstance(value, list):
        raise _invalid(key, f"expected an array, got {_json_type(value)}")
    return tuple(Descriptor.parse(item, f"{key}[{i}]") for i, item in enumerate(value))


def parse_manifest(data: bytes, content_type: str | None) -> Manifest:
    """Parse and validate a schema2 or OCI manifest or index as pushed or fetched."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise ManifestTooLarge(
            f"manifest is {len(data)} bytes, the limit is {MAX_MANIFEST_SIZE} bytes"
        )
    obj = _decode(data)
    version = obj.get("schemaVersion")
    # `is not True`: JSON true decodes to a bool, which compares equal to 1.
    if (version == 1 and version is not True) or "fsLayers" in obj:
        raise ManifestInvalid(SCHEMA1_MESSAGE)
    if version is None:
        raise ManifestInvalid("schemaVersion: required field is missing")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestInvalid(f"schemaVersion: expected integer 2, got {_json_type(version)}")
    if version != 2:
        raise ManifestInvalid(f"schemaVersion: must be 2, got {version}")
    media_type = _resolve_media_type(obj, content_type)

    subject = None
    if obj.get("subject") is not None:
        subject = Descriptor.parse(obj["subject"], "subject")
    artifact_type = _optional_str(obj, "artifactType", "")
    annotations = _annotations(obj, "")

    if media_type in mt.INDEX_TYPES:
        return Manifest(
            media_type=media_type,
            config=None,
            layers=(),
            manifests=_descriptor_list(obj, "manifests"),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )
    if obj.get("config") is None:
        raise _invalid("config", "required descriptor is missing")
    return Manifest(
        media_type=media_type,
        config=Descriptor.parse(obj["config"], "config"),
        # Artifacts may legitimately have no layers, but the field itself is required.
        layers=_descriptor_list(obj, "layers"),
        manifests=(),
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def referrer_descriptor(manifest: Manifest, digest: Digest, size: int) -> dict[str, object]:
    """The entry describing ``manifest`` in a referrers index response."""
    out: dict[str, object] = {
        "mediaType": manifest.media_type,
        "digest": str(digest),
        "size": size,
    }
    artifact_type = manifest.effective_artifact_type
    if artifact_type is not None:
        out["artifactType"] = artifact_type
    if manifest.annotations:
        out["annotations"] = dict(manifest.annotations)
    return out


def referrers_index(descriptors: list[dict[str, object]]) -> bytes:
    """The body of a referrers response: an OCI index listing ``descriptors``."""
    return json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors},
        separators=(",", ":"),
    ).encode()
