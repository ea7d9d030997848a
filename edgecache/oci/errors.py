"""The OCI error model: one exception class per error code.

Everything below ``server/`` raises these; the server maps them to a response in one place using
``status``, ``headers`` and ``body()``, so no other layer builds HTTP error bodies.
Codes and statuses follow the distribution spec's error table; the extra classes at the end
cover conditions the spec leaves to implementations (413, 416, 5xx).
"""

from __future__ import annotations

import json
from typing import ClassVar


class OCIError(Exception):
    """Base class; subclasses pin ``code``, ``status`` and ``default_message``."""

    code: ClassVar[str] = "UNKNOWN"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "unknown error"
    # Response headers to add (e.g. WWW-Authenticate). A subclass may set a class-level dict;
    # each instance gets its own copy so that adding to one error never leaks into others.
    headers: dict[str, str]

    def __init__(self, message: str | None = None, detail: object = None) -> None:
        self.message: str = message if message is not None else self.default_message
        self.detail: object = detail
        self.headers = dict(getattr(type(self), "headers", {}))
        super().__init__(self.message)

    def to_json(self) -> dict[str, object]:
        """The single entry of the ``errors`` array for this error."""
        entry: dict[str, object] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return entry

    def body(self) -> bytes:
        """The complete JSON response body, ``{"errors": [...]}``."""
        # default=str: a detail carrying a Digest or Path must not turn a 4xx into a 500.
        return json.dumps({"errors": [self.to_json()]}, default=str).encode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BlobUnknown(OCIError):
    code = "BLOB_UNKNOWN"
    status = 404
    default_message = "blob unknown to registry"


class BlobUploadInvalid(OCIError):
    code = "BLOB_UPLOAD_INVALID"
    status = 400
    default_message = "blob upload invalid"


class BlobUploadUnknown(OCIError):
    code = "BLOB_UPLOAD_UNKNOWN"
    status = 404
    default_message = "blob upload unknown to registry"


class DigestInvalid(OCIError):
    code = "DIGEST_INVALID"
    status = 400
    default_message = "provided digest did not match uploaded content"


class ManifestBlobUnknown(OCIError):
    code = "MANIFEST_BLOB_UNKNOWN"
    status = 404
    default_message = "manifest references a manifest or blob unknown to registry"


class ManifestInvalid(OCIError):
    code = "MANIFEST_INVALID"
    status = 400
    default_message = "manifest invalid"


class ManifestUnknown(OCIError):
    code = "MANIFEST_UNKNOWN"
    status = 404
    default_message = "manifest unknown to registry"


class NameInvalid(OCIError):
    code = "NAME_INVALID"
    status = 400
    default_message = "invalid repository name"


class NameUnknown(OCIError):
    code = "NAME_UNKNOWN"
    status = 404
    default_message = "repository name not known to registry"


class SizeInvalid(OCIError):
    code = "SIZE_INVALID"
    status = 400
    default_message = "provided length did not match content length"


class Unauthorized(OCIError):
    code = "UNAUTHORIZED"
    status = 401
    default_message = "authentication required"


class Denied(OCIError):
    code = "DENIED"
    status = 403
    default_message = "requested access to the resource is denied"


class Unsupported(OCIError):
    code = "UNSUPPORTED"
    status = 415
    default_message = "the operation is unsupported"


class TooManyRequests(OCIError):
    code = "TOOMANYREQUESTS"
    status = 429
    default_message = "too many requests"


class TagInvalid(OCIError):
    code = "TAG_INVALID"
    status = 400
    default_message = "invalid tag"


# Beyond the spec's table: statuses the spec mentions without assigning a code.


class ManifestTooLarge(OCIError):
    # The spec says a registry may refuse large manifests with 413; SIZE_INVALID is the closest
    # code in its table, so clients that only look at codes still see a size problem.
    code = "SIZE_INVALID"
    status = 413
    default_message = "manifest too large"


class RangeNotSatisfiable(OCIError):
    code = "RANGE_NOT_SATISFIABLE"
    status = 416
    default_message = "requested range not satisfiable"


class PaginationInvalid(OCIError):
    code = "PAGINATION_NUMBER_INVALID"
    status = 400
    default_message = "invalid number of results requested"


class BadRequest(OCIError):
    """A request edgecache's own endpoints cannot take (the token endpoint's scope)."""

    code = "UNSUPPORTED"
    status = 400
    default_message = "bad request"


class PolicyViolation(OCIError):
    """A pull a [[pull_policies]] gate refuses (vulnerabilities, no scan, no signature): 412
    with the code Harbor answers its own policy refusals with."""

    code = "PROJECTPOLICYVIOLATION"
    status = 412
    default_message = "the image may not be pulled under this registry's pull policy"


class NotFound(OCIError):
    code = "NOT_FOUND"
    status = 404
    default_message = "no such endpoint"


class MethodNotAllowed(OCIError):
    code = "UNSUPPORTED"
    status = 405
    default_message = "method not allowed"


class Unavailable(OCIError):
    code = "UNAVAILABLE"
    status = 503
    default_message = "upstream registry unavailable"


class BadGateway(Unavailable):
    # The upstream answered, but with something no registry may send (a manifest that does
    # not parse): the client's request was fine, so not a 4xx. A subclass of Unavailable so
    # that a cached tag is served stale instead, like for any other upstream failure.
    status = 502
    default_message = "upstream registry sent an invalid response"


class InternalError(OCIError):
    code = "INTERNAL_ERROR"
    status = 500
    default_message = "internal server error"


class InsufficientStorage(OCIError):
    code = "INSUFFICIENT_STORAGE"
    status = 507
    default_message = "insufficient storage"


class RequestTimeout(OCIError):
    # A request body that stopped arriving (server.body_timeout): the client is too slow or
    # gone, not wrong, so none of the spec's 4xx codes fits.
    code = "REQUEST_TIMEOUT"
    status = 408
    default_message = "the request body stopped arriving"
