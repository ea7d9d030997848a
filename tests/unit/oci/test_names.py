import pytest

from edgecache.oci.digest import Digest
from edgecache.oci.errors import DigestInvalid, NameInvalid, TagInvalid
from edgecache.oci.names import Reference, validate_repository, validate_tag

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "library/nginx",
        "dockerhub/library/nginx",
        "a.b_c__d-e--f",
        "0/1/2/3",
        "my---repo",
        "foo/blobs/bar",
        "ghcr.io/org/image",
        "a" * 255,
        "/".join(["abc"] * 63) + "/ab",  # 254 characters, many components
    ],
)
def test_valid_repository(name: str) -> None:
    assert validate_repository(name) == name


@pytest.mark.parametrize(
    ("name", "mentions"),
    [
        ("", "empty"),
        ("a" * 256, "256 characters"),
        ("Library/nginx", "uppercase letter 'L'"),
        ("library/Nginx", "component 2 'Nginx'"),
        ("library//nginx", "empty component"),
        ("/library", "empty component"),
        ("library/", "empty component"),
        ("-lib", "must start and end"),
        ("lib-", "must start and end"),
        ("lib.", "must start and end"),
        ("_lib", "must start and end"),
        ("a..b", "separators"),
        ("a___b", "separators"),
        ("a._b", "separators"),
        ("a b", "character ' '"),
        ("a:b", "character ':'"),
        ("caf\u00e9", "character '\u00e9'"),
        ("a/b@c", "component 2 'b@c'"),
    ],
)
def test_invalid_repository(name: str, mentions: str) -> None:
    with pytest.raises(NameInvalid) as info:
        validate_repository(name)
    assert mentions in info.value.message


@pytest.mark.parametrize(
    "tag", ["latest", "1.27", "v1.0.0-rc.1", "_private", "A", "sha256-" + "a" * 64, "a" * 128]
)
def test_valid_tag(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    ("tag", "mentions"),
    [
        ("", "empty"),
        ("a" * 129, "129 characters"),
        (".hidden", "must not start with '.'"),
        ("-dash", "must not start with '-'"),
        ("a:b", "character ':'"),
        ("a/b", "character '/'"),
        ("a b", "character ' '"),
        ("caf\u00e9", "character '\u00e9'"),
    ],
)
def test_invalid_tag(tag: str, mentions: str) -> None:
    with pytest.raises(TagInvalid) as info:
        validate_tag(tag)
    assert mentions in info.value.message


def test_reference_tag() -> None:
    ref = Reference.parse("latest")
    assert ref.tag == "latest"
    assert ref.digest is None
    assert not ref.is_digest
    assert str(ref) == "latest"


def test_reference_digest() -> None:
    ref = Reference.parse(DIGEST)
    assert ref.tag is None
    assert ref.digest == Digest.parse(DIGEST)
    assert ref.is_digest
    assert str(ref) == DIGEST


@pytest.mark.parametrize(
    ("text", "exc"),
    [("sha256:xyz", DigestInvalid), ("a:b", DigestInvalid), ("-x", TagInvalid), ("", TagInvalid)],
)
def test_reference_invalid(text: str, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        Reference.parse(text)


def test_reference_needs_exactly_one() -> None:
    with pytest.raises(ValueError):
        Reference()
    with pytest.raises(ValueError):
        Reference(tag="a", digest=Digest.parse(DIGEST))
