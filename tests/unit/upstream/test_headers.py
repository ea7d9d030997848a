from __future__ import annotations

import pytest

from edgecache.oci.digest import Digest
from edgecache.upstream.headers import (
    ContentRange,
    link_next,
    parse_content_range,
    parse_digest_header,
    parse_length,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('</v2/r/tags/list?n=2&last=b>; rel="next"', "/v2/r/tags/list?n=2&last=b"),
        ("<https://h/v2/r/tags/list?last=b>;rel=next", "https://h/v2/r/tags/list?last=b"),
        ('<https://h/a>; rel="prev", <https://h/b>; rel="next"', "https://h/b"),
        ('<https://h/b>; type="x"; rel="NEXT last"', "https://h/b"),
        ('<https://h/a>; rel="prev"', None),
        ("", None),
        (None, None),
        ("garbage", None),
    ],
)
def test_link_next(header: str | None, expected: str | None) -> None:
    assert link_next(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes 100-999/1000", ContentRange(100, 999, 1000)),
        ("bytes 0-0/*", ContentRange(0, 0, None)),
        ("BYTES 5-9/10", ContentRange(5, 9, 10)),
        ("bytes 9-5/10", None),
        ("bytes 5-10/10", None),
        ("bytes */1000", None),
        ("100-999", None),
        (None, None),
        # An upstream's number past int()'s 4300-digit limit, or past any real size, is as
        # malformed as any other (it was a ValueError).
        ("bytes 0-" + "9" * 5000 + "/*", None),
        ("bytes 0-5/" + "9" * 5000, None),
        (f"bytes 0-5/{2**63}", None),
        ("bytes \u0660-\u0665/\u0661\u0660", None),  # Arabic-Indic digits
    ],
)
def test_content_range(header: str | None, expected: ContentRange | None) -> None:
    assert parse_content_range(header) == expected


def test_digest_header() -> None:
    hexd = "a" * 64
    assert parse_digest_header(f" sha256:{hexd} ") == Digest("sha256", hexd)
    assert parse_digest_header("md5:abc") is None
    assert parse_digest_header(None) is None


def test_length() -> None:
    assert parse_length("42") == 42
    assert parse_length("-1") is None
    assert parse_length("4x") is None
    assert parse_length(None) is None
    assert parse_length(" 7 ") == 7
    assert parse_length("9" * 5000) is None
    assert parse_length(str(2**63)) is None
    assert parse_length("²") is None  # isdigit() is true for it, int() refuses it
