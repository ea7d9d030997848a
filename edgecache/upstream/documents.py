"""Reading the JSON bodies an upstream answers with (pure functions).

Upstream bodies are untrusted input: anything malformed becomes an UpstreamProtocolError
naming the request, never a KeyError deep in the cache.
"""

from __future__ import annotations

import json

from edgecache.oci import mediatypes
from edgecache.oci.jsontext import loads
from edgecache.upstream.errors import UpstreamProtocolError


def manifest_media_type(content_type: str | None, data: bytes) -> str:
    """Content-Type when it names a manifest type, else the document's own mediaType (some
    registries and CDNs answer application/json or octet-stream)."""
    header = mediatypes.base_type(content_type or "")
    if mediatypes.is_manifest_type(header):
        return header
    try:
        doc = loads(data)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("mediaType"), str):
        return str(doc["mediaType"])
    return header or mediatypes.OCTET_STREAM


def tag_page(upstream: str, what: str, body: bytes) -> list[str]:
    try:
        doc = loads(body)
    except ValueError as exc:
        raise UpstreamProtocolError(upstream, f"{what}: tag list is not JSON ({exc})") from None
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if tags is None:
        return []  # distribution answers "tags": null for a repository with no tags
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise UpstreamProtocolError(upstream, f"{what}: 'tags' is not a list of strings")
    return tags


def filter_referrers(upstream: str, what: str, body: bytes, artifact_type: str) -> bytes:
    doc, manifests = referrers_document(upstream, what, body)
    doc["manifests"] = [
        m for m in manifests if isinstance(m, dict) and m.get("artifactType") == artifact_type
    ]
    try:
        return json.dumps(doc, separators=(",", ":")).encode()
    except RecursionError:
        # Parsed just under the nesting limit, serialised from a deeper stack: still hostile.
        raise UpstreamProtocolError(
            upstream, f"{what}: referrers index is nested too deeply"
        ) from None


def referrers_document(
    upstream: str, what: str, body: bytes
) -> tuple[dict[str, object], list[object]]:
    """A referrers index and its ``manifests`` array (entries unchecked: callers filter)."""
    try:
        doc = loads(body)
    except ValueError as exc:
        raise UpstreamProtocolError(
            upstream, f"{what}: referrers index is malformed ({exc})"
        ) from None
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(manifests, list):
        raise UpstreamProtocolError(
            upstream, f"{what}: referrers index is malformed: no 'manifests' array"
        )
    return doc, manifests
