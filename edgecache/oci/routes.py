"""URL routing for the /v2 distribution API, without any HTTP machinery.

Repository names may contain slashes and even the words ``blobs`` or ``manifests``, so a route
is recognised by its fixed suffix, read from the right; everything before it is the name.
Names are not validated here: the server does that so it can answer NAME_INVALID instead of 404.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every value Route.kind takes, for callers that dispatch on it exhaustively.
ROUTE_KINDS = frozenset(
    {"base", "catalog", "tags", "manifest", "blob", "uploads", "upload", "referrers"}
)
_PREFIX = "/v2/"


@dataclass(frozen=True, slots=True)
class Route:
    """A matched /v2 route. ``ref`` is the tag or digest, blob digest, or upload id."""

    kind: str
    name: str | None = None
    ref: str | None = None


def _named(kind: str, name_parts: list[str], ref: str | None = None) -> Route | None:
    name = "/".join(name_parts)
    if not name:
        return None
    return Route(kind, name, ref)


def parse_v2_path(path: str) -> Route | None:
    """Match a request path (no query string) to a /v2 route, or None if nothing matches."""
    if path == "/v2":
        return Route("base")
    if not path.startswith(_PREFIX):
        return None
    rest = path[len(_PREFIX) :]
    if rest == "":
        return Route("base")
    if rest == "_catalog":
        return Route("catalog")
    parts = rest.split("/")
    if len(parts) < 2:
        return None
    last, before = parts[-1], parts[-2]
    if before == "tags" and last == "list":
        return _named("tags", parts[:-2])
    if before == "blobs" and last == "uploads":
        return _named("uploads", parts[:-2])
    if len(parts) >= 3 and parts[-3] == "blobs" and before == "uploads":
        if last == "":
            return _named("uploads", parts[:-3])
        return _named("upload", parts[:-3], last)
    if not last:
        return None
    if before == "manifests":
        return _named("manifest", parts[:-2], last)
    if before == "blobs":
        return _named("blob", parts[:-2], last)
    if before == "referrers":
        return _named("referrers", parts[:-2], last)
    return None
