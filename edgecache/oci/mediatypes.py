"""Media types the registry needs to recognise.

Only manifest-ish types matter to routing and validation: layer and config media types are
opaque to a registry (artifacts may use any), so they are not enumerated here.
"""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONTAINER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCTET_STREAM = "application/octet-stream"
JSON = "application/json"

# Manifests that point at blobs (config + layers).
MANIFEST_TYPES: frozenset[str] = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# Manifests that point at other manifests.
INDEX_TYPES: frozenset[str] = frozenset({OCI_INDEX, DOCKER_LIST})
# Refused on push, but recognised so the refusal can say why.
SCHEMA1_TYPES: frozenset[str] = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
ALL_MANIFEST_TYPES: frozenset[str] = MANIFEST_TYPES | INDEX_TYPES


def base_type(content_type: str) -> str:
    """The media type without parameters, lowercased (``a/b; charset=x`` -> ``a/b``)."""
    return content_type.split(";", 1)[0].strip().lower()


def is_manifest_type(mt: str) -> bool:
    """Whether ``mt`` (parameters allowed) is a schema2/OCI manifest or index type."""
    return base_type(mt) in ALL_MANIFEST_TYPES


def is_index_type(mt: str) -> bool:
    return base_type(mt) in INDEX_TYPES
