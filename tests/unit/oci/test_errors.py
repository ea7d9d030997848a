import json

import pytest

from edgecache.oci import errors
from edgecache.oci.errors import OCIError

EXPECTED = [
    (errors.BlobUnknown, "BLOB_UNKNOWN", 404),
    (errors.BlobUploadInvalid, "BLOB_UPLOAD_INVALID", 400),
    (errors.BlobUploadUnknown, "BLOB_UPLOAD_UNKNOWN", 404),
    (errors.DigestInvalid, "DIGEST_INVALID", 400),
    (errors.ManifestBlobUnknown, "MANIFEST_BLOB_UNKNOWN", 404),
    (errors.ManifestInvalid, "MANIFEST_INVALID", 400),
    (errors.ManifestUnknown, "MANIFEST_UNKNOWN", 404),
    (errors.NameInvalid, "NAME_INVALID", 400),
    (errors.NameUnknown, "NAME_UNKNOWN", 404),
    (errors.SizeInvalid, "SIZE_INVALID", 400),
    (errors.Unauthorized, "UNAUTHORIZED", 401),
    (errors.Denied, "DENIED", 403),
    (errors.Unsupported, "UNSUPPORTED", 415),
    (errors.TooManyRequests, "TOOMANYREQUESTS", 429),
    (errors.TagInvalid, "TAG_INVALID", 400),
    (errors.ManifestTooLarge, "SIZE_INVALID", 413),
    (errors.RangeNotSatisfiable, "RANGE_NOT_SATISFIABLE", 416),
    (errors.PaginationInvalid, "PAGINATION_NUMBER_INVALID", 400),
    (errors.NotFound, "NOT_FOUND", 404),
    (errors.MethodNotAllowed, "UNSUPPORTED", 405),
    (errors.Unavailable, "UNAVAILABLE", 503),
    (errors.InternalError, "INTERNAL_ERROR", 500),
    (errors.InsufficientStorage, "INSUFFICIENT_STORAGE", 507),
]


@pytest.mark.parametrize(("cls", "code", "status"), EXPECTED)
def test_code_and_status(cls: type[OCIError], code: str, status: int) -> None:
    assert issubclass(cls, OCIError)
    assert cls.code == code
    assert cls.status == status
    exc = cls()
    assert exc.message == cls.default_message
    assert exc.message
    assert exc.detail is None
    assert exc.headers == {}


def test_body_without_detail_omits_it() -> None:
    body = json.loads(errors.BlobUnknown("blob sha256:ab unknown").body())
    assert body == {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob sha256:ab unknown"}]}


def test_body_with_detail() -> None:
    exc = errors.ManifestBlobUnknown(detail={"digest": "sha256:ab"})
    body = json.loads(exc.body())
    assert body["errors"][0]["detail"] == {"digest": "sha256:ab"}
    assert body["errors"][0]["message"] == errors.ManifestBlobUnknown.default_message


def test_body_serialises_unusual_detail() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert json.loads(errors.InternalError(detail=Odd()).body())["errors"][0]["detail"] == "odd"


def test_str_is_message() -> None:
    assert str(errors.NameInvalid("bad name")) == "bad name"


def test_headers_are_per_instance() -> None:
    a = errors.Unauthorized()
    a.headers["WWW-Authenticate"] = 'Basic realm="edgecache"'
    assert errors.Unauthorized().headers == {}


def test_subclass_headers_are_copied() -> None:
    class Challenge(errors.Unauthorized):
        headers = {"WWW-Authenticate": "Basic"}

    exc = Challenge()
    exc.headers["X"] = "y"
    assert Challenge().headers == {"WWW-Authenticate": "Basic"}
