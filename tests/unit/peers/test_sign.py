import pytest

from edgecache.peers.sign import MAX_SKEW, BadSignature, sign, verify

SECRET = b"0123456789abcdef-secret"
A, B = "http://10.0.0.1:5000", "http://10.0.0.2:5000"
PATH = "/v2/lab/app/blobs/sha256:" + "a" * 64


def at(t: float):  # a clock
    return lambda: t


def test_a_signed_request_verifies_as_its_sender() -> None:
    value = sign(SECRET, A, "GET", PATH, now=at(1000))
    assert verify(SECRET, {A, B}, value, "GET", PATH, now=at(1000 + MAX_SKEW)) == A
    assert verify(SECRET, {A, B}, value, "get", PATH, now=at(1000)) == A


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"secret": b"another secret of 16+ bytes"}, "does not match"),
        ({"method": "HEAD"}, "does not match"),
        ({"target": PATH + "?ns=docker.io"}, "does not match"),
        ({"now": at(1000 + MAX_SKEW + 1)}, "stale"),
        ({"now": at(1000 - MAX_SKEW - 1)}, "stale"),
        ({"members": {B}}, "not a member"),
    ],
)
def test_anything_changed_is_refused(change: dict[str, object], why: str) -> None:
    value = sign(SECRET, A, "GET", PATH, now=at(1000))
    args: dict[str, object] = {
        "secret": SECRET, "members": {A, B}, "method": "GET", "target": PATH, "now": at(1000),
    }  # fmt: skip
    args.update(change)
    with pytest.raises(BadSignature, match=why) as caught:
        verify(value=value, **args)  # type: ignore[arg-type]
    assert SECRET.decode() not in str(caught.value)


@pytest.mark.parametrize(
    "value",
    ["", "v1", "v2 http://10.0.0.1:5000 1000 00", "v1 http://10.0.0.1:5000 x 00", "v1  1 2"],
)
def test_malformed_headers_are_refused(value: str) -> None:
    with pytest.raises(BadSignature):
        verify(SECRET, {A, B}, value, "GET", PATH, now=at(1000))


def test_the_sender_is_part_of_what_is_signed() -> None:
    """A member cannot pass another member's signature off as its own."""
    value = sign(SECRET, A, "GET", PATH, now=at(1000))
    forged = value.replace(A, B)
    with pytest.raises(BadSignature, match="does not match"):
        verify(SECRET, {A, B}, forged, "GET", PATH, now=at(1000))
