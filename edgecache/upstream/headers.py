"""Reading the response headers a registry answers with (pure functions).

Upstreams are not trusted to be well-formed: a bad header yields None (unknown) where the
value is only informative, and an exception only where acting on it would store wrong bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgecache.oci.digest import Digest
from edgecache.oci.errors import DigestInvalid
from edgecache.oci.integers import INT64_MAX, parse_decimal

# One link-value of an RFC 8288 Link header: <uri> followed by ;-separated parameters.
_LINK = re.compile(r"\s*<([^>]*)>((?:\s*;\s*[^;,]+)*)\s*(?:,|$)")
_REL = re.compile(r"""rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)
# [0-9], not \d: \d also matches digits of other scripts, which int() may then refuse.
_CONTENT_RANGE = re.compile(r"bytes\s+([0-9]+)-([0-9]+)/([0-9]+|\*)", re.IGNORECASE)


def link_next(header: str | None) -> str | None:
    """The target of the rel="next" link (as written: may be relative), or None."""
    if not header:
        return None
    pos = 0
    while pos < len(header):
        m = _LINK.match(header, pos)
        if m is None or m.end() == pos:
            return None
        pos = m.end()
        for rel in _REL.finditer(m.group(2)):
            rels = (rel.group(1) or rel.group(2) or "").lower().split()
            if "next" in rels:
                return m.group(1)
    return None


@dataclass(frozen=True)
class ContentRange:
    start: int
    end: int  # inclusive
    total: int | None  # None when the server wrote "*"


def parse_content_range(header: str | None) -> ContentRange | None:
    """A 206 response's ``Content-Range: bytes start-end/total``; None if absent or malformed."""
    if not header:
        return None
    m = _CONTENT_RANGE.fullmatch(header.strip())
    if m is None:
        return None
    start, end = _size(m.group(1)), _size(m.group(2))
    total = None if m.group(3) == "*" else _size(m.group(3))
    if start is None or end is None or (m.group(3) != "*" and total is None):
        return None
    if end < start or (total is not None and end >= total):
        return None
    return ContentRange(start, end, total)


def _size(digits: str) -> int | None:
    # An upstream number beyond any real size (or of 5000 digits) is as malformed as "abc".
    value = parse_decimal(digits)
    return value if value is not None and value <= INT64_MAX else None


def parse_digest_header(value: str | None) -> Digest | None:
    """Docker-Content-Digest, or None if absent or not a digest we support."""
    if not value:
        return None
    try:
        return Digest.parse(value.strip())
    except DigestInvalid:
        return None


def parse_length(value: str | None) -> int | None:
    return None if value is None else _size(value.strip())
