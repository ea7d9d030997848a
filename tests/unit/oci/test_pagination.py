import pytest

from edgecache.oci.errors import PaginationInvalid
from edgecache.oci.pagination import link_header, paginate, parse_n


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0),
        ("1", 1),
        ("100", 100),
        ("10000", 10000),
        ("10001", 10000),
        ("99999999999999999999", 10000),
    ],
)
def test_parse_n(value: str | None, expected: int | None) -> None:
    assert parse_n(value) == expected


def test_parse_n_custom_maximum() -> None:
    assert parse_n("50", maximum=20) == 20


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "+5", " 5", "1_0", "0x10", "\u0663"])
def test_parse_n_invalid(value: str) -> None:
    with pytest.raises(PaginationInvalid) as info:
        parse_n(value)
    assert repr(value) in info.value.message


ITEMS = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(
    ("n", "last", "page", "more"),
    [
        (None, None, ITEMS, False),
        (None, "b", ["c", "d", "e"], False),
        (2, None, ["a", "b"], True),
        (2, "b", ["c", "d"], True),
        (2, "c", ["d", "e"], False),
        (5, None, ITEMS, False),
        (10, None, ITEMS, False),
        (2, "e", [], False),
        (2, "z", [], False),
        (2, "bb", ["c", "d"], True),  # last need not be an existing item
        (2, "", ["a", "b"], True),
        (0, None, [], False),
    ],
)
def test_paginate(n: int | None, last: str | None, page: list[str], more: bool) -> None:
    assert paginate(ITEMS, n, last) == (page, more)


def test_paginate_empty() -> None:
    assert paginate([], 5, None) == ([], False)


@pytest.mark.parametrize(
    ("path", "n", "last", "expected"),
    [
        ("/v2/name/tags/list", 2, "b", '</v2/name/tags/list?n=2&last=b>; rel="next"'),
        (
            "/v2/_catalog",
            100,
            "library/nginx",
            '</v2/_catalog?n=100&last=library%2Fnginx>; rel="next"',
        ),
        ("/v2/x/tags/list", 1, "a&b=c", '</v2/x/tags/list?n=1&last=a%26b%3Dc>; rel="next"'),
    ],
)
def test_link_header(path: str, n: int, last: str, expected: str) -> None:
    assert link_header(path, n, last) == expected
