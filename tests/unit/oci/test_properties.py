"""Property-based tests of the pure parsers in edgecache/oci/: names, references, digests,
integers, ranges and pagination.

Each parser meets the wire: for any text at all it must either return a value inside its
documented bounds or raise its own OCI error, never anything else (a ValueError, an
IndexError or a RecursionError from the server's point of view is a 500). Where a value can be
written back (a digest, a reference, a Content-Range, a Link), it round-trips.
"""

from __future__ import annotations

import re
import string
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edgecache.oci.digest import HEX_LENGTHS, Digest
from edgecache.oci.errors import (
    DigestInvalid,
    ManifestUnknown,
    NameInvalid,
    PaginationInvalid,
    RangeNotSatisfiable,
    TagInvalid,
)
from edgecache.oci.integers import INT64_MAX, TOO_LARGE, parse_decimal
from edgecache.oci.names import (
    MAX_NAME_LENGTH,
    MAX_NAMESPACE_LENGTH,
    MAX_TAG_LENGTH,
    Reference,
    lookup_reference,
    validate_namespace,
    validate_repository,
    validate_tag,
)
from edgecache.oci.pagination import link_header, paginate, parse_n
from edgecache.oci.ranges import ByteRange, if_range_allows, parse_content_range, parse_range

# Quick: the whole module runs in a few seconds. deadline=None: a slow CI machine is no bug.
QUICK = settings(max_examples=100, deadline=None)

ALNUM = string.ascii_lowercase + string.digits
# Built from the grammar's pieces (from_regex with a length filter is far slower).
COMPONENT = st.builds(
    lambda first, rest: first + "".join(sep + run for sep, run in rest),
    st.text(ALNUM, min_size=1, max_size=6),
    st.lists(
        st.tuples(
            st.sampled_from([".", "_", "__", "-", "--"]), st.text(ALNUM, min_size=1, max_size=6)
        ),
        max_size=3,
    ),
)
NAMES = st.lists(COMPONENT, min_size=1, max_size=5).map("/".join)
TAGS = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_letters + string.digits + "_"),
    st.text(string.ascii_letters + string.digits + "._-", max_size=MAX_TAG_LENGTH - 1),
)
ALGORITHMS = st.sampled_from(sorted(HEX_LENGTHS))


@st.composite
def digests(draw: st.DrawFn) -> str:
    algorithm = draw(ALGORITHMS)
    hex_part = draw(st.text("0123456789abcdef", min_size=64, max_size=128))
    return f"{algorithm}:{(hex_part * 2)[: HEX_LENGTHS[algorithm]]}"


# Digit strings of every length, past CPython's 4300-digit int() limit included.
DIGITS = st.one_of(
    st.integers(min_value=0, max_value=2**70).map(str),
    st.text("0123456789", min_size=1, max_size=30),
    st.integers(min_value=4290, max_value=6000).map(lambda n: "9" * n),
    st.integers(min_value=1, max_value=6000).map(lambda n: "0" * n + "7"),
)
# Text that looks like what arrives: mostly the parser's own alphabet, sometimes anything.
NOISY = st.one_of(
    st.text(),
    st.text(string.digits + "-=/*, bytesBYTES\t\r\n\x00²٣", max_size=40),
)


def reference_value(digits: str) -> int:
    """What parse_decimal promises, computed the slow way (int() below its digit limit)."""
    significant = digits.lstrip("0") or "0"
    if len(significant) > 19:
        return TOO_LARGE
    return min(int(significant), TOO_LARGE)


# --------------------------------------------------------------------- integers


@QUICK
@given(DIGITS)
def test_parse_decimal_of_digits_is_their_value_saturated(digits: str) -> None:
    assert parse_decimal(digits) == reference_value(digits)


@QUICK
@given(NOISY)
def test_parse_decimal_accepts_only_ascii_digits(text: str) -> None:
    value = parse_decimal(text)
    if value is None:
        assert not (text and all(c in string.digits for c in text))
    else:
        assert text and all(c in string.digits for c in text)
        assert 0 <= value <= TOO_LARGE


# --------------------------------------------------------------------- names


@QUICK
@given(NAMES)
def test_valid_repository_names_are_accepted_unchanged(name: str) -> None:
    assert validate_repository(name) == name


@QUICK
@given(st.one_of(st.text(), NAMES))
def test_any_repository_name_is_accepted_or_name_invalid(name: str) -> None:
    try:
        assert validate_repository(name) == name
    except NameInvalid:
        return
    assert 0 < len(name) <= MAX_NAME_LENGTH
    assert set(name) <= set(string.ascii_lowercase + string.digits + "._-/")


@QUICK
# Suffixes that sometimes break a valid name: explore the grammar's edge.
@given(st.one_of(NAMES, st.text()), st.sampled_from(["", "/", "//", "-", "_", "A", "é", "/x"]))
def test_names_near_the_grammar_edge(name: str, suffix: str) -> None:
    candidate = name + suffix
    try:
        validate_repository(candidate)
    except NameInvalid as exc:
        assert exc.status == 400 and exc.code == "NAME_INVALID"
        return
    # The distribution spec's grammar, written out independently of the code under test.
    component = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
    assert all(re.fullmatch(component, part) for part in candidate.split("/")), candidate


@QUICK
@given(TAGS)
def test_valid_tags_are_accepted_and_round_trip_as_references(tag: str) -> None:
    assert validate_tag(tag) == tag
    ref = Reference.parse(tag)
    assert ref.tag == tag and not ref.is_digest and str(ref) == tag
    assert lookup_reference(tag) == ref


@QUICK
@given(st.one_of(st.text(), TAGS.map(lambda t: "." + t), TAGS.map(lambda t: t + "x" * 128)))
def test_any_tag_is_accepted_or_tag_invalid(tag: str) -> None:
    try:
        validate_tag(tag)
    except TagInvalid:
        return
    assert 0 < len(tag) <= MAX_TAG_LENGTH and tag[0] not in ".-"


@QUICK
@given(st.one_of(st.text(), digests(), TAGS))
def test_references_parse_round_trip_or_fail_with_their_own_error(text: str) -> None:
    try:
        ref = Reference.parse(text)
    except (TagInvalid, DigestInvalid):
        # A lookup of the same reference is a clean 404, never a 400 or a 500.
        with pytest.raises(ManifestUnknown) as caught:
            lookup_reference(text)
        assert caught.value.status == 404
        return
    assert str(ref) == text
    assert lookup_reference(text) == ref


HOSTS = st.from_regex(r"[a-z0-9](?:[a-z0-9.-]{0,30}[a-z0-9])?(?::[1-9][0-9]{0,3})?", fullmatch=True)


@QUICK
@given(HOSTS)
def test_registry_hosts_are_valid_namespaces(host: str) -> None:
    assert validate_namespace(host) == host


@QUICK
@given(st.one_of(st.text(), HOSTS.map(lambda h: h + "\r\nX: y"), HOSTS.map(lambda h: h + "\x00")))
def test_any_namespace_is_header_safe_or_name_invalid(ns: str) -> None:
    try:
        validate_namespace(ns)
    except NameInvalid:
        return
    # What is accepted goes into a response header verbatim: printable ASCII, no spaces.
    assert 0 < len(ns) <= MAX_NAMESPACE_LENGTH
    assert all(33 <= ord(c) <= 126 for c in ns), repr(ns)


# --------------------------------------------------------------------- digests


@QUICK
@given(digests())
def test_valid_digests_round_trip(text: str) -> None:
    digest = Digest.parse(text)
    assert str(digest) == text
    assert len(digest.hex) == HEX_LENGTHS[digest.algorithm]


@QUICK
@given(st.binary(max_size=256), ALGORITHMS)
def test_digest_of_bytes_parses_and_verifies(data: bytes, algorithm: str) -> None:
    digest = Digest.of_bytes(data, algorithm)
    assert Digest.parse(str(digest)) == digest
    assert digest.verify(data)
    assert not digest.verify(data + b"\x00")


@QUICK
@given(
    st.one_of(
        st.text(),
        digests().map(lambda d: d[:-1]),
        digests().map(lambda d: d + "0"),
        digests().map(str.upper),
        digests().map(lambda d: d.replace("sha256", "sha512", 1)),
    )
)
def test_any_digest_text_parses_exactly_or_is_digest_invalid(text: str) -> None:
    try:
        digest = Digest.parse(text)
    except DigestInvalid as exc:
        assert exc.status == 400
        return
    assert str(digest) == text


# --------------------------------------------------------------------- ranges

SIZES = st.integers(min_value=0, max_value=2**40)


@QUICK
@given(NOISY, SIZES)
def test_parse_range_never_raises_anything_but_416(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RangeNotSatisfiable as exc:
        assert exc.status == 416
        assert exc.headers["Content-Range"] == f"bytes */{size}"
        return
    if result is not None:
        assert 0 <= result.start <= result.end < size


@QUICK
@given(st.one_of(DIGITS, st.just("")), st.one_of(DIGITS, st.just("")), SIZES)
def test_parse_range_follows_rfc_9110(first: str, last: str, size: int) -> None:
    assume(first or last)
    header = f"bytes={first}-{last}"
    try:
        result = parse_range(header, size)
    except RangeNotSatisfiable:
        result = None
        refused = True
    else:
        refused = False
    if not first:  # suffix range: the last N bytes
        suffix = reference_value(last)
        assert refused == (suffix == 0 or size == 0)
        if not refused:
            assert result == ByteRange(max(0, size - suffix), size - 1)
        return
    start = reference_value(first)
    end = reference_value(last) if last else None
    unsatisfiable = (end is not None and end < start) or start >= size
    assert refused == unsatisfiable
    if not refused:
        assert result == ByteRange(start, size - 1 if end is None else min(end, size - 1))


@QUICK
@given(st.data(), st.integers(min_value=1, max_value=INT64_MAX))
def test_ranges_round_trip_through_content_range(data: st.DataObject, size: int) -> None:
    start = data.draw(st.integers(min_value=0, max_value=size - 1))
    end = data.draw(st.integers(min_value=start, max_value=size - 1))
    byte_range = parse_range(f"bytes={start}-{end}", size)
    assert byte_range == ByteRange(start, end)
    assert parse_content_range(byte_range.content_range(size)) == (start, end)
    assert parse_content_range(f"{start}-{end}") == (start, end)  # the spec's bare form


@QUICK
@given(st.one_of(NOISY, st.tuples(DIGITS, DIGITS).map("-".join)))
def test_parse_content_range_is_bounded_or_416(header: str) -> None:
    try:
        start, end = parse_content_range(header)
    except RangeNotSatisfiable as exc:
        assert exc.status == 416
        return
    assert 0 <= start <= end <= INT64_MAX


@QUICK
@given(digests(), st.text())
def test_if_range_matches_only_the_exact_strong_etag(digest: str, other: str) -> None:
    etag = f'"{digest}"'
    assert if_range_allows(None, etag)
    assert if_range_allows(etag, etag)
    assert if_range_allows(f" {etag} ", etag)
    assert not if_range_allows(f"W/{etag}", etag)
    assert if_range_allows(other, etag) == (other.strip() == etag)


# --------------------------------------------------------------------- pagination


@QUICK
@given(st.one_of(st.none(), NOISY, DIGITS), st.integers(min_value=1, max_value=10_000))
def test_parse_n_is_bounded_or_pagination_invalid(value: str | None, maximum: int) -> None:
    try:
        n = parse_n(value, maximum)
    except PaginationInvalid as exc:
        assert exc.status == 400
        return
    if n is None:
        assert value in (None, "")
    else:
        assert value is not None and 0 <= n <= maximum
        assert n == min(reference_value(value), maximum)


@QUICK
@given(
    st.lists(st.text(min_size=1, max_size=8), max_size=30, unique=True).map(sorted),
    st.integers(min_value=1, max_value=10),
)
def test_following_next_links_lists_everything_once(items: list[str], n: int) -> None:
    seen: list[str] = []
    last: str | None = None
    for _ in range(len(items) + 2):
        page, more = paginate(items, n, last)
        assert len(page) <= n
        assert all(last is None or item > last for item in page)
        seen += page
        if not more:
            break
        # The Link header carries `last` through a URL intact, whatever its characters.
        link = link_header("/v2/x/tags/list", n, page[-1])
        target = link[1 : link.index(">")]
        last = parse_qs(urlsplit(target).query)["last"][0]
        assert last == page[-1]
    assert seen == items


@QUICK
@given(st.lists(st.text(max_size=8), max_size=20, unique=True).map(sorted), st.text())
def test_paginate_after_any_last(items: list[str], last: str) -> None:
    page, more = paginate(items, None, last)
    assert page == [item for item in items if item > last]
    assert not more
