"""HTTP byte ranges: ``Range`` on blob GETs (RFC 9110 §14) and ``Content-Range`` on chunk PATCHes.

Only a single range is served. A malformed or multi-range header is refused with 416 and a
precise message rather than silently answered with the whole blob: a client asking for a range
of a multi-GiB layer almost certainly cannot use the whole thing, and a clear error beats a
silent 200 that resumes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgecache.oci.errors import RangeNotSatisfiable
from edgecache.oci.integers import TOO_LARGE, parse_decimal, shorten

_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?\s*([0-9]+)-([0-9]+)(?:/([0-9]+|\*))?")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range, already clamped to the representation's size."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, total: int) -> str:
        return f"bytes {self.start}-{self.end}/{total}"


def _number(digits: str) -> int:
    # Only called on a regex group of ASCII digits, so never None; saturated when absurd.
    value = parse_decimal(digits)
    assert value is not None
    return value


def _unsatisfiable(header: str, size: int, why: str) -> RangeNotSatisfiable:
    exc = RangeNotSatisfiable(f"Range {shorten(header)!r} for {size} bytes: {why}")
    # RFC 9110 §15.5.17: a 416 should tell the client the current length.
    exc.headers["Content-Range"] = f"bytes */{size}"
    return exc


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range requested of a ``size``-byte blob, or None to serve it whole."""
    if header is None or not header.strip():
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep:
        raise _unsatisfiable(header, size, "malformed, expected 'bytes=start-end'")
    if unit.strip().lower() != "bytes":
        # RFC 9110: a server ignores Range units it does not support.
        return None
    spec = spec.strip()
    if "," in spec:
        raise _unsatisfiable(header, size, "multiple ranges are not supported")
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None or spec == "-":
        raise _unsatisfiable(header, size, f"malformed range {spec!r}, expected 'start-end'")
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = _number(last)
        if suffix == 0:
            raise _unsatisfiable(header, size, "a suffix range of 0 bytes selects nothing")
        if size == 0:
            raise _unsatisfiable(header, size, "the blob is empty")
        return ByteRange(max(0, size - suffix), size - 1)
    start = _number(first)
    end = _number(last) if last else None
    if end is not None and end < start:
        raise _unsatisfiable(header, size, f"end {shorten(last)} is before start {shorten(first)}")
    if start >= size:
        raise _unsatisfiable(header, size, f"start {shorten(first)} is beyond the last byte")
    return ByteRange(start, size - 1 if end is None else min(end, size - 1))


def parse_content_range(header: str) -> tuple[int, int]:
    """Parse a chunk upload's Content-Range into ``(start, end_inclusive)``.

    Docker clients send the bare ``start-end`` form the distribution spec documents; others send
    the RFC form ``bytes start-end/total``, so both are accepted.
    """
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        raise RangeNotSatisfiable(
            f"Content-Range {shorten(header)!r} is malformed, expected 'start-end' or "
            "'bytes start-end/total'"
        )
    start, end = _number(match.group(1)), _number(match.group(2))
    if end < start:
        raise RangeNotSatisfiable(
            f"Content-Range {shorten(header)!r}: end {shorten(match.group(2))} is before "
            f"start {shorten(match.group(1))}"
        )
    if end >= TOO_LARGE:
        # No upload can reach that offset; saying so beats a confusing offset mismatch.
        raise RangeNotSatisfiable(
            f"Content-Range {shorten(header)!r}: end is beyond the largest possible blob"
        )
    total = match.group(3)
    if total is not None and total != "*" and end >= _number(total):
        raise RangeNotSatisfiable(
            f"Content-Range {shorten(header)!r}: end {end} is not below the total length "
            f"{shorten(total)}"
        )
    return start, end


def if_range_allows(if_range: str | None, etag: str) -> bool:
    """Whether a Range may be honoured given the request's If-Range (RFC 9110 §13.1.5).

    If-Range asks for the range only while the representation is unchanged, else for all of
    it. An entity-tag matches only by strong comparison (a weak tag never does); a date
    matches only a Last-Modified the server sent, and content-addressed responses send none;
    anything else validates nothing. In every case but a match the answer is the full 200,
    because a 206 of a different representation would corrupt the client's resumed copy.
    """
    if if_range is None:
        return True
    value = if_range.strip()
    return not value.startswith("W/") and value == etag
