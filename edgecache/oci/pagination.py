"""``n``/``last`` pagination for tag lists and the catalog (distribution spec, RFC 5988 links)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from urllib.parse import quote

from edgecache.oci.errors import PaginationInvalid
from edgecache.oci.integers import parse_decimal, shorten

DEFAULT_MAXIMUM = 10000


def parse_n(value: str | None, maximum: int = DEFAULT_MAXIMUM) -> int | None:
    """The ``n`` query parameter, or None when absent.

    Values above ``maximum`` are clamped rather than refused: the spec lets a registry return
    fewer than ``n`` results, and the Link header tells the client how to continue.
    """
    if value is None or value == "":
        return None
    # Plain ASCII digits only (int() would take "+5", " 5", "1_0" and "٣"); a number of any
    # length is just large, and clamped like any other.
    number = parse_decimal(value)
    if number is None:
        raise PaginationInvalid(f"n={shorten(value)!r}: expected a non-negative integer")
    return min(number, maximum)


def paginate(
    sorted_items: Sequence[str], n: int | None, last: str | None
) -> tuple[list[str], bool]:
    """Items strictly after ``last`` (lexically), at most ``n``; and whether more remain.

    ``n=0`` yields an empty page that reports nothing more: a next link needs a ``last`` item
    to continue from, and an empty page has none.
    """
    begin = bisect.bisect_right(sorted_items, last) if last is not None else 0
    if n is None:
        return list(sorted_items[begin:]), False
    page = list(sorted_items[begin : begin + n])
    return page, bool(page) and begin + n < len(sorted_items)


def link_header(path: str, n: int, last: str) -> str:
    """The ``Link`` header pointing at the page after ``last``."""
    return f'<{path}?n={n}&last={quote(last, safe="")}>; rel="next"'
