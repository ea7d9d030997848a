"""Decimal integers written by clients and upstreams: ASCII digits only, bounded before int().

Python's ``int()`` is the wrong gate for untrusted numbers in three ways: it accepts ``+5``,
`` 5`` and ``1_0``; it accepts non-ASCII digits (``٣``), while ``str.isdigit()`` is even true
for ``²``, which ``int()`` then refuses; and it raises ValueError for strings longer than 4300
digits (CPython's guard against quadratic conversion), which surfaces as a 500 wherever a
``Range``, ``Content-Range`` or ``?n=`` is converted. So every number from the wire goes
through here instead: only ``[0-9]+`` is a number, and a value above the largest size any file
or blob can have saturates to ``TOO_LARGE`` rather than being converted. Comparing against a
saturated value gives the same answer as against the real one for every size that can exist,
so callers keep their ordinary range checks ("start is beyond the last byte").
"""

from __future__ import annotations

import re

# Go's int64: the size type of every registry and client, and of POSIX file offsets.
INT64_MAX = 2**63 - 1
# What any larger number reads as: bigger than every real size, cheap to compare.
TOO_LARGE = INT64_MAX + 1

# re's [0-9] is ASCII-only, unlike \d and str.isdigit().
_DIGITS = re.compile(r"[0-9]+")
# len(str(INT64_MAX)): a value with more significant digits cannot be a real size.
_MAX_DIGITS = 19


def parse_decimal(text: str) -> int | None:
    """``text`` as a non-negative integer capped at TOO_LARGE, or None if it is not ``[0-9]+``."""
    if not _DIGITS.fullmatch(text):
        return None
    significant = text.lstrip("0")
    if len(significant) > _MAX_DIGITS:
        return TOO_LARGE
    return min(int(significant or "0"), TOO_LARGE)


def shorten(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters for an error message that quotes client input."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
