import hashlib

import pytest

from edgecache.oci.digest import Digest
from edgecache.oci.errors import DigestInvalid

SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA512_EMPTY = hashlib.sha512(b"").hexdigest()


@pytest.mark.parametrize(
    ("text", "algorithm", "hexpart"),
    [
        (f"sha256:{SHA256_EMPTY}", "sha256", SHA256_EMPTY),
        (f"sha512:{SHA512_EMPTY}", "sha512", SHA512_EMPTY),
    ],
)
def test_parse_valid(text: str, algorithm: str, hexpart: str) -> None:
    d = Digest.parse(text)
    assert d.algorithm == algorithm
    assert d.hex == hexpart == d.encoded
    assert str(d) == text


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("", "missing ':'"),
        (SHA256_EMPTY, "missing ':'"),
        (f":{SHA256_EMPTY}", "empty algorithm"),
        (f"SHA256:{SHA256_EMPTY}", "malformed algorithm 'SHA256'"),
        (f"md5:{SHA256_EMPTY[:32]}", "unsupported algorithm 'md5'"),
        (f"sha384:{SHA256_EMPTY}", "unsupported algorithm 'sha384'"),
        (f"sha256+b64u:{SHA256_EMPTY}", "unsupported algorithm 'sha256+b64u'"),
        (f"sha256:{SHA256_EMPTY[:-1]}", "needs 64 hex characters, got 63"),
        (f"sha256:{SHA256_EMPTY}0", "needs 64 hex characters, got 65"),
        ("sha256:", "got 0"),
        (f"sha512:{SHA256_EMPTY}", "needs 128 hex characters, got 64"),
        (f"sha256:{SHA256_EMPTY.upper()}", "uppercase hex 'E'"),
        (f"sha256:{SHA256_EMPTY[:-1]}g", "non-hex character 'g'"),
        (f"sha256:{SHA256_EMPTY}:x", "non-hex character ':'"),
        (f"sha256: {SHA256_EMPTY[1:]}", "non-hex character ' '"),
    ],
)
def test_parse_invalid(text: str, mentions: str) -> None:
    with pytest.raises(DigestInvalid) as info:
        Digest.parse(text)
    assert mentions in info.value.message
    assert repr(text) in info.value.message


def test_parse_non_string() -> None:
    with pytest.raises(DigestInvalid, match="must be a string"):
        Digest.parse(42)  # type: ignore[arg-type]


def test_of_bytes_and_verify() -> None:
    d = Digest.of_bytes(b"")
    assert str(d) == f"sha256:{SHA256_EMPTY}"
    assert d.verify(b"")
    assert not d.verify(b"x")
    assert Digest.of_bytes(b"", "sha512").hex == SHA512_EMPTY


def test_of_bytes_unsupported() -> None:
    with pytest.raises(DigestInvalid, match="'md5'"):
        Digest.of_bytes(b"", "md5")


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_hasher_round_trip(algorithm: str) -> None:
    d = Digest.of_bytes(b"hello", algorithm)
    h = d.hasher()
    h.update(b"hel")
    h.update(b"lo")
    assert Digest.from_hasher(h) == d


def test_from_hasher_unsupported() -> None:
    with pytest.raises(DigestInvalid, match="'md5'"):
        Digest.from_hasher(hashlib.md5())


def test_frozen_and_hashable() -> None:
    d = Digest.of_bytes(b"")
    assert {d: 1}[Digest.parse(str(d))] == 1
    with pytest.raises(AttributeError):
        d.hex = "00"  # type: ignore[misc]
