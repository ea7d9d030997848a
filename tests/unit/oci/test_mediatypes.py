import pytest

from edgecache.oci import mediatypes as mt


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (mt.OCI_MANIFEST, True),
        (mt.OCI_INDEX, True),
        (mt.DOCKER_MANIFEST, True),
        (mt.DOCKER_LIST, True),
        (mt.OCI_MANIFEST + "; charset=utf-8", True),
        (" " + mt.DOCKER_LIST.upper() + " ", True),
        (mt.DOCKER_SCHEMA1, False),
        (mt.DOCKER_SCHEMA1_SIGNED, False),
        (mt.OCI_EMPTY, False),
        (mt.OCTET_STREAM, False),
        ("", False),
    ],
)
def test_is_manifest_type(value: str, expected: bool) -> None:
    assert mt.is_manifest_type(value) is expected


def test_sets() -> None:
    assert {mt.OCI_MANIFEST, mt.DOCKER_MANIFEST} == mt.MANIFEST_TYPES
    assert {mt.OCI_INDEX, mt.DOCKER_LIST} == mt.INDEX_TYPES
    assert mt.ALL_MANIFEST_TYPES == mt.MANIFEST_TYPES | mt.INDEX_TYPES
    assert not mt.ALL_MANIFEST_TYPES & mt.SCHEMA1_TYPES
    assert mt.is_index_type(mt.DOCKER_LIST) and not mt.is_index_type(mt.OCI_MANIFEST)


def test_base_type() -> None:
    assert mt.base_type("Application/JSON ; q=1") == "application/json"
