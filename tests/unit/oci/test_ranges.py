import pytest

from edgecache.oci.errors import RangeNotSatisfiable
from edgecache.oci.ranges import ByteRange, parse_content_range, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, ByteRange(0, 0)),
        ("bytes=0-9", 10, ByteRange(0, 9)),
        ("bytes=2-5", 10, ByteRange(2, 5)),
        ("bytes=5-", 10, ByteRange(5, 9)),
        ("bytes=9-", 10, ByteRange(9, 9)),
        ("bytes=0-999", 10, ByteRange(0, 9)),  # end clamped
        ("bytes=-3", 10, ByteRange(7, 9)),  # suffix
        ("bytes=-10", 10, ByteRange(0, 9)),
        ("bytes=-999", 10, ByteRange(0, 9)),  # suffix longer than the blob
        ("  bytes = 1-2 ", 10, ByteRange(1, 2)),
        ("Bytes=1-2", 10, ByteRange(1, 2)),
    ],
)
def test_parse_range(header: str, size: int, expected: ByteRange) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", [None, "", "   ", "items=0-5", "none=1"])
def test_parse_range_whole(header: str | None) -> None:
    assert parse_range(header, 10) is None


@pytest.mark.parametrize(
    ("header", "size", "mentions"),
    [
        ("bytes=10-", 10, "start 10 is beyond"),
        ("bytes=10-20", 10, "start 10 is beyond"),
        ("bytes=0-", 0, "start 0 is beyond"),
        ("bytes=-0", 10, "suffix range of 0 bytes"),
        ("bytes=-5", 0, "blob is empty"),
        ("bytes=5-2", 10, "end 2 is before start 5"),
        ("bytes=0-1,3-4", 10, "multiple ranges"),
        ("bytes=-", 10, "malformed range '-'"),
        ("bytes=", 10, "malformed range ''"),
        ("bytes=a-b", 10, "malformed range 'a-b'"),
        ("bytes=1", 10, "malformed range '1'"),
        ("bytes=+1-2", 10, "malformed range '+1-2'"),
        ("bytes=1-2-3", 10, "malformed range '1-2-3'"),
        ("0-5", 10, "malformed, expected 'bytes=start-end'"),
    ],
)
def test_parse_range_unsatisfiable(header: str, size: int, mentions: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size)
    assert mentions in info.value.message
    assert repr(header) in info.value.message
    assert info.value.status == 416
    assert info.value.headers == {"Content-Range": f"bytes */{size}"}


def test_byte_range() -> None:
    r = ByteRange(5, 9)
    assert r.length == 5
    assert r.content_range(10) == "bytes 5-9/10"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0-99", (0, 99)),
        ("100-199", (100, 199)),
        ("5-5", (5, 5)),
        ("bytes 0-99/100", (0, 99)),
        ("bytes 0-99/*", (0, 99)),
        ("bytes=10-19", (10, 19)),
        (" 1-2 ", (1, 2)),
        ("0-99/100", (0, 99)),
    ],
)
def test_parse_content_range(header: str, expected: tuple[int, int]) -> None:
    assert parse_content_range(header) == expected


@pytest.mark.parametrize(
    ("header", "mentions"),
    [
        ("", "malformed"),
        ("0-", "malformed"),
        ("-5", "malformed"),
        ("a-b", "malformed"),
        ("bytes */100", "malformed"),
        ("bytes 0-99/abc", "malformed"),
        ("10-5", "end 5 is before start 10"),
        ("bytes 0-100/100", "end 100 is not below the total length 100"),
    ],
)
def test_parse_content_range_invalid(header: str, mentions: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_content_range(header)
    assert mentions in info.value.message
    assert repr(header) in info.value.message
