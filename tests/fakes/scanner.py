"""FakeScannerAdapter: a FAKE Harbor pluggable scanner adapter (what edgecache's scan/ talks to).

It is not a scanner. It serves Harbor's scanner adapter API (`/api/v1/metadata`, `/api/v1/scan`,
`/api/v1/scan/{id}/report`) as the published OpenAPI documents define it, validates every
request and every response it sends against the version it serves, and, like a real adapter,
really pulls the artifact it is asked to scan from the registry named in the request (edgecache)
with the `Authorization` it was given. It knows no vulnerability database: its findings come
ONLY from a marker file, `edgecache-test-vulns.json`, at the root of a layer of the image
(`marker_layer()` makes one), so a test decides exactly what the scan reports; an image without
the marker has no vulnerabilities.

Sources (public definitions and code, read for this fake):
- /work/shared/reference/scanner-adapter-api/scanner-adapter-openapi-v1.{0,1,2}.yaml
  (goharbor/pluggable-scanner-spec at d898c3d): paths, media types, schemas, status codes;
  `load_spec()` below loads them (with the patches described there).
- goharbor/pluggable-scanner-spec README.md: the sample interaction (302 with `Retry-After:
  15`; a missing `Accept` means `application/vnd.scanner.adapter.vuln.report.harbor+json;
  version=1.0`; 404 means the adapter lost the scan and Harbor resubmits; 422 `{"error":
  {"message": "invalid registry_url"}}`); data/spec/SBOM.md: the SBOM capability
  (`additional_attributes.sbom_media_types`) and the `HarborSbomReport` shape.
- goharbor/harbor src/pkg/scan/rest/v1/client.go and spec.go: Harbor's client: `Accept:
  ...metadata+json; version=1.0`, `Content-Type: ...scan.request+json; version=1.0`, the
  report polled with `Accept: <report type>`, redirects not followed, a 302 read as "not
  ready" with the delay taken from `Refresh-After` (parsed as an int8; 5 s when absent), any
  other non-200 turned into an error from the `{"error":{"message"}}` body.
- aquasecurity/harbor-scanner-trivy pkg/http/api/v1/handler.go: `AcceptScanRequest` (400
  "unmarshalling scan request: ..." for undecodable JSON; 422 "missing registry.url", "invalid
  registry.url", "missing artifact.repository", "missing artifact.digest"; 500 "enqueuing scan
  job: ..."; 202 `{"id"}` as `application/vnd.scanner.adapter.scan.response+json;
  version=1.0`), `GetScanReport` (415 for an Accept it cannot produce; 404 "cannot find scan
  job: <id>"; a queued or running job answers 302 with `Location: <request URI>`; a failed job
  500 with the job's error as message), `GetMetadata` (scanner-type property
  `os-package-vulnerability`, `vulnerability-database-updated-at` in RFC 3339);
  pkg/http/api/base_handler.go (`WriteJSONError`: `{"error":{"message"}}`); pkg/harbor/model.go
  (`ScanReport`, `VulnerabilityItem` with its extra `layer: {digest, diff_id}`, `fix_version`
  omitted when empty, `links` always a list); pkg/scan/transformer.go (the report's `severity`
  is the highest of the items, `Unknown` when there are none); pkg/scan/controller.go
  (`ToRegistryAuth`: an empty authorization pulls anonymously, otherwise it must be exactly
  "Basic <base64 user:password>" or "Bearer <token>", else the scan fails with "parsing
  authorization: expected <type> <credentials> got ..." / "unrecognized authorization type:
  ..."; `GetImageRef`: the registry URL's scheme, host and port are used, its path is not).

Choices where the references disagree or are silent (also in the report of the module's
author):
- The 302 carries `Refresh-After: <refresh_after>` (the OpenAPI documents and Harbor's client;
  trivy sends none) or, with `refresh_header="Retry-After"`, the README's header; plus trivy's
  `Location` unless `location=False`.
- Errors use the documents' `application/vnd.scanner.adapter.error+json; version=1.0` (trivy
  writes `application/vnd.scanner.adapter.error; version=1.0`, without `+json`).
- A report type the fake cannot produce answers 501 on v1.2 (the document's "no capability to
  handle the mime type") and trivy's 415 on v1.0/v1.1 (whose documents define neither).
- v1.0's document lists only `...vuln.report.harbor+json; version=1.0` for the report, so a
  v1.0 fake produces (and advertises) only that type; v1.1 and v1.2 also produce
  `application/vnd.security.vulnerability.report; version=1.1`. The fields added by v1.1
  (`preferred_cvss`, `cwe_ids`, `vendor_attributes`) are sent only in the 1.1 type.
- The documents require no request body and give no auth scheme for API keys: the fake
  answers 400 to a POST without body (as trivy's decoder does) and checks its own auth itself
  (`auth=`; 401 is not in the documents, whose `security` lists Basic and Bearer only).

Fake-only strictness (`strict=True`, the default; each says "fake-only check" in its message):
unknown keys in the scan request (a typo would be silently ignored by a real adapter), an
`artifact.digest` that is not `sha256:<64 hex>`, an `artifact.mime_type` the fake does not
consume, a registry URL that is not http(s)://host[:port].

Simplifications: the pull sends the given `Authorization` value as is with every registry
request (no `/v2/` ping, no token exchange; what Harbor documents: "the HTTP Authorization
header sent with each request to the Docker Registry v2 API"); an index is resolved to its
linux/amd64 image; layers are read in memory (gzip or plain tar; zstd is refused); marker files
are taken from every layer in order (no whiteouts); scans run one thread each, at once; the
report's state moves to final after `pending_polls` answered polls AND the end of the pull.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import gzip
import hashlib
import io
import json
import re
import tarfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import httpx
import jsonschema
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.deserializing.media_types.util import json_loads, plain_loads
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.validation.request.exceptions import ParameterValidationError
from openapi_core.validation.request.validators import V30RequestValidator
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.fakes import FakeServer, RecordedRequest, Reply, go_time
from tests.fakes.dragonfly import REFERENCE_DIR, Rejection
from tests.fakes.registryclient import (
    DOCKER_V2,
    OCI_MANIFEST,
    PullResult,
    fetch_blob,
    make_client,
    resolve_image,
)

SPEC_DIR = REFERENCE_DIR / "scanner-adapter-api"
VERSIONS = ("1.0", "1.1", "1.2")

# Media types (the OpenAPI documents; Harbor's spec.go).
METADATA_1_0 = "application/vnd.scanner.adapter.metadata+json; version=1.0"
METADATA_1_1 = "application/vnd.scanner.adapter.metadata+json; version=1.1"  # v1.2 only
SCAN_REQUEST_1_0 = "application/vnd.scanner.adapter.scan.request+json; version=1.0"
SCAN_REQUEST_1_1 = "application/vnd.scanner.adapter.scan.request+json; version=1.1"  # v1.2
SCAN_RESPONSE = "application/vnd.scanner.adapter.scan.response+json; version=1.0"
ERROR = "application/vnd.scanner.adapter.error+json; version=1.0"
HARBOR_VULN_REPORT = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"
VULN_REPORT_1_1 = "application/vnd.security.vulnerability.report; version=1.1"
RAW_REPORT = "application/vnd.scanner.adapter.vuln.report.raw"  # never produced by the fake
SBOM_REPORT = "application/vnd.security.sbom.report+json; version=1.0"
SPDX_JSON = "application/spdx+json"
CYCLONEDX_JSON = "application/vnd.cyclonedx+json"
SBOM_MEDIA_TYPES = (SPDX_JSON, CYCLONEDX_JSON)
API_KEY_HEADER = "X-ScannerAdapter-API-Key"

MARKER = "edgecache-test-vulns.json"
SEVERITIES = ("Unknown", "Negligible", "Low", "Medium", "High", "Critical")  # lowest first
SCANNER = {"name": "fake-scanner", "vendor": "edgecache tests", "version": "0.1.0-fake"}
SCANNER_TYPE = "harbor.scanner-adapter/scanner-type"
DB_UPDATED_AT = "harbor.scanner-adapter/vulnerability-database-updated-at"

DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
MAX_LAYER = 256 << 20  # the fake reads layers in memory
CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Statuses the fake answers although the operation's document does not list them: they are
# not validated as responses (see the module docstring).
OUT_OF_SPEC_STATUSES = frozenset({400, 401, 404, 405, 415})

Auth = tuple[str, ...] | None
RefreshHeader = Literal["Refresh-After", "Retry-After"]

# ----------------------------------------------------------------------------- the documents

# version -> what the loader changed in the document (filled by load_spec_document).
SPEC_PATCHES: dict[str, tuple[str, ...]] = {}


def spec_path(version: str) -> Path:
    if version not in VERSIONS:
        raise ValueError(f"scanner adapter API version {version!r}: not one of {VERSIONS}")
    return SPEC_DIR / f"scanner-adapter-openapi-v{version}.yaml"


def _require_reference(path: Path) -> None:
    if path.is_file():
        return
    import pytest

    from tests.support import in_ci

    message = f"scanner adapter OpenAPI document not found at {path} (EDGECACHE_REFERENCE_DIR)"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def read_spec_yaml(version: str) -> dict[str, Any]:
    """The document exactly as PyYAML reads it (status codes are ints: not valid OpenAPI)."""
    path = spec_path(version)
    _require_reference(path)
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and str(doc.get("openapi", "")).startswith("3.0"), path
    return doc


def _string_status_codes(node: Any) -> Any:
    """YAML reads `200:` as the int 200; OpenAPI wants the string "200" as a responses key."""
    if isinstance(node, dict):
        return {
            (str(k) if isinstance(k, int) else k): _string_status_codes(v) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_string_status_codes(v) for v in node]
    return node


def _patch_typos(doc: dict[str, Any]) -> list[str]:
    """Fix the two schema typos of v1.2 (applied wherever they are found; never in the file)."""
    applied = []
    report = doc.get("paths", {}).get("/scan/{scan_request_id}/report", {}).get("get", {})
    for param in report.get("parameters", []):
        if param.get("name") == "sbom_media_type" and "enum" in param:
            # `enum` written beside `schema` (not allowed in a Parameter Object): it belongs in
            # the schema.
            schema = param.setdefault("schema", {})
            schema["enum"] = param.pop("enum")
            applied.append(
                "paths./scan/{scan_request_id}/report.get.parameters[sbom_media_type]: "
                "`enum` moved from the parameter into its `schema`"
            )
    capability = doc.get("components", {}).get("schemas", {}).get("ScannerCapability", {})
    attributes = capability.get("properties", {}).get("additional_attributes", {})
    if "descriptions" in attributes:
        attributes.setdefault("description", attributes.pop("descriptions"))
        attributes.pop("descriptions", None)
        applied.append(
            "components.schemas.ScannerCapability.properties.additional_attributes: "
            "`descriptions` renamed `description`"
        )
    return applied


@functools.lru_cache(maxsize=len(VERSIONS))
def load_spec_document(version: str) -> dict[str, Any]:
    """The document as a dict that is valid OpenAPI 3.0 (status codes as strings, the v1.2
    typos patched: see SPEC_PATCHES). Cached: deep-copy it before changing it."""
    doc = _string_status_codes(read_spec_yaml(version))
    SPEC_PATCHES[version] = tuple(_patch_typos(doc))
    return dict(doc)


def media_type_deserializers(doc: Mapping[str, Any]) -> dict[str, Callable[..., Any]]:
    """openapi-core only decodes application/json and a few others; the vendor types of the
    documents (`...+json; version=...`, `application/vnd.security.vulnerability.report;
    version=1.1`) are JSON too, but for the raw report whose schema is a string."""
    found: dict[str, Callable[..., Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            content = node.get("content")
            if isinstance(content, dict):
                for key, media in content.items():
                    bare = str(key).split(";", 1)[0].strip().lower()
                    schema = (media or {}).get("schema") or {}
                    found[bare] = plain_loads if schema.get("type") == "string" else json_loads
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


@functools.lru_cache(maxsize=len(VERSIONS))
def load_spec(version: str) -> OpenAPI:
    """The scanner adapter API of that version ("1.0", "1.1", "1.2") as an openapi-core
    OpenAPI (the document is checked by openapi-spec-validator on the way)."""
    doc = load_spec_document(version)
    config = Config(extra_media_type_deserializers=media_type_deserializers(doc))
    return OpenAPI.from_dict(copy.deepcopy(doc), config=config)


class _RequestValidatorWithoutSecurity(V30RequestValidator):
    """The documents' `security` (Basic or Bearer) is not what an adapter may require (none,
    or an API key header): the fake checks its own auth, openapi-core the rest."""

    def _get_security(self, parameters: RequestParameters, operation: Any) -> dict[str, str]:
        return {}


@functools.lru_cache(maxsize=2 * len(VERSIONS))
def request_validator(version: str, strict: bool) -> _RequestValidatorWithoutSecurity:
    """Parameters and body of requests; `strict`: unknown object keys are errors."""
    api = load_spec(version)
    return _RequestValidatorWithoutSecurity(
        api.spec,
        extra_media_type_deserializers=api.config.extra_media_type_deserializers,
        forbid_unspecified_additional_properties=strict,
    )


def _inline_refs(node: Any, doc: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = doc
            for part in ref[2:].split("/"):
                target = target[part]
            return _inline_refs(target, doc)
        return {k: _inline_refs(v, doc) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, doc) for v in node]
    return node


@functools.lru_cache(maxsize=len(VERSIONS))
def marker_item_validator(version: str) -> jsonschema.Draft4Validator:
    """What one entry of the marker file may hold: the document's VulnerabilityItem (of v1.1,
    the richest) with id, package, version and severity required and no other keys."""
    doc = load_spec_document("1.1" if version == "1.0" else version)
    item = _inline_refs(doc["components"]["schemas"]["VulnerabilityItem"], doc)
    item["required"] = ["id", "package", "version", "severity"]
    item["additionalProperties"] = False
    return jsonschema.Draft4Validator(item, format_checker=jsonschema.FormatChecker())


# ------------------------------------------------------------------------ openapi-core glue


class _WireRequest:
    """A RecordedRequest as openapi-core's Request protocol wants it."""

    def __init__(self, host_url: str, request: RecordedRequest) -> None:
        split = urlsplit(request.path)
        self.host_url = host_url
        self.path = split.path
        self.method = request.method.lower()
        self.body: bytes | None = request.body
        self.content_type = request.headers.get("content-type", "").lower()
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qsl(split.query, keep_blank_values=True)),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
            path={},
        )


class _WireResponse:
    """A Reply as openapi-core's Response protocol wants it."""

    def __init__(self, reply: Reply) -> None:
        self.status_code = reply.status
        self.data: bytes | None = reply.body
        self.content_type = (reply.content_type or "").lower()
        self.headers = Headers(list(reply.headers))


def _schema_messages(exc: BaseException) -> list[str]:
    """Readable lines of an openapi-core error: each schema error with where it is."""
    prefix = "body"
    if isinstance(exc, ParameterValidationError):
        prefix = f"{exc.location} parameter {exc.name}"
    cause: BaseException | None = exc
    while cause is not None:
        errors = getattr(cause, "schema_errors", None)
        if errors:
            lines = []
            for error in errors:
                where = ".".join(str(p) for p in error.absolute_path)
                lines.append(f"{prefix}{'.' + where if where else ''}: {error.message}")
            return lines
        cause = cause.__cause__
    text = str(exc)
    if exc.__cause__ is not None:
        text += f": {exc.__cause__}"
    return [text]


# ------------------------------------------------------------------------------ test images


def marker_layer(
    vulns: list[dict[str, Any]],
    *,
    extra_files: Mapping[str, bytes] | None = None,
    compress: bool = True,
) -> bytes:
    """An image layer (gzip'ed tar; plain tar with compress=False) holding the marker file
    `edgecache-test-vulns.json` (the JSON list `vulns`) at its root, plus `extra_files`.

    Deterministic: fixed names, order, mode, mtime 0, uid/gid 0, no user names, a gzip header
    without time or file name, so the same input always has the same digest.
    """
    files = {MARKER: json.dumps(vulns, indent=2, sort_keys=True).encode() + b"\n"}
    files.update(extra_files or {})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=9, mtime=0) if compress else tar_bytes


# --------------------------------------------------------------------------------- records


@dataclass
class ScanRecord:
    """One accepted scan request and what the fake did with it."""

    id: str
    request: dict[str, Any]  # the POSTed body
    content_type: str
    authorization: str  # registry.authorization exactly as given (what the pull sent)
    manifest_url: str
    accepted_at: float
    lost: bool = False  # lose_scans: every report GET answers 404
    pull: PullResult | None = None
    layers: list[dict[str, str]] = field(default_factory=list)  # {digest, diff_id, marker}
    findings: list[dict[str, Any]] = field(default_factory=list)  # marker entries + layer
    error: str = ""  # why the scan failed ("" when it did not)
    started: bool = False
    done: bool = False
    finished_at: float | None = None
    report_gets: int = 0  # every report GET of this id
    polls: int = 0  # the report GETs that reached the pending/final logic
    answers: list[int] = field(default_factory=list)  # status of each report GET

    @property
    def ok(self) -> bool:
        return self.done and not self.error

    @property
    def artifact(self) -> dict[str, Any]:
        return dict(self.request.get("artifact") or {})

    @property
    def vulnerability_ids(self) -> list[str]:
        return [str(f["id"]) for f in self.findings]


class _ScanFailed(Exception):
    pass


# ------------------------------------------------------------------------------------ fake


class FakeScannerAdapter(FakeServer):
    """Harbor's scanner adapter API on 127.0.0.1; see the module docstring.

    version: the API document served and validated against ("1.0", "1.1", "1.2").
    auth: None (no auth), ("basic", user, password), ("bearer", token) or ("apikey", key)
        (header `X-ScannerAdapter-API-Key`): anything else gets 401.
    pending_polls: report GETs of a scan answered 302 before its final answer (which also
        waits for the pull to finish).
    refresh_after / refresh_header: the seconds sent with a 302 and the header carrying them
        ("Refresh-After", or "Retry-After" as the spec's README shows); location: also send
        trivy's `Location: <request URI>`.
    lose_first: the first N report GETs of every scan id answer 404 (the adapter lost it for a
        while: a load-balanced adapter whose replicas do not share state).
    lose_scans: the first N accepted scans are lost for good: every report GET answers 404
        (an adapter that restarted; Harbor resubmits).
    fail_scans: the first N valid POST /scan answer 500 (enqueuing failed).
    never_finish: every report GET answers 302.
    sbom: (v1.2 only) advertise the SBOM capability and produce SBOM reports.
    strict: the fake-only checks of the module docstring.
    verify: TLS verification for the pulls (a CA file path, or a bool).
    """

    name = "scanner"

    def __init__(
        self,
        version: str = "1.1",
        auth: Auth = None,
        pending_polls: int = 2,
        lose_first: int = 0,
        fail_scans: int = 0,
        never_finish: bool = False,
        sbom: bool = False,
        *,
        refresh_after: int = 1,
        refresh_header: RefreshHeader = "Refresh-After",
        location: bool = True,
        lose_scans: int = 0,
        strict: bool = True,
        verify: str | bool = True,
        db_updated_at: float | None = None,
    ) -> None:
        super().__init__()
        spec_path(version)  # ValueError for an unknown version
        if auth is not None:
            kinds = {"basic": 3, "bearer": 2, "apikey": 2}
            if not (
                isinstance(auth, tuple)
                and auth
                and auth[0] in kinds
                and len(auth) == kinds[auth[0]]
                and all(isinstance(a, str) for a in auth)
            ):
                raise ValueError(
                    f"auth {auth!r}: None, ('basic', user, password), ('bearer', token) "
                    "or ('apikey', key)"
                )
        if sbom and version != "1.2":
            raise ValueError("the SBOM capability exists in the scanner adapter API v1.2 only")
        if refresh_header not in ("Refresh-After", "Retry-After"):
            raise ValueError(f"refresh_header {refresh_header!r}")
        self.version = version
        self.auth = auth
        self.pending_polls = pending_polls
        self.lose_first = lose_first
        self.lose_scans = lose_scans
        self.fail_scans = fail_scans
        self.never_finish = never_finish
        self.sbom = sbom
        self.refresh_after = refresh_after
        self.refresh_header = refresh_header
        self.location = location
        self.strict = strict
        self.verify = verify
        self.db_updated_at = time.time() if db_updated_at is None else db_updated_at
        self.produces: tuple[str, ...] = (
            (HARBOR_VULN_REPORT,) if version == "1.0" else (VULN_REPORT_1_1, HARBOR_VULN_REPORT)
        )
        self._scans: dict[str, ScanRecord] = {}
        self._order: list[str] = []
        self._failed_posts = 0
        self._lost = 0
        # Fail (or skip) now, not in a request thread.
        self.api = load_spec(version)
        request_validator(version, strict)
        marker_item_validator(version)

    # -- what happened

    @property
    def scans(self) -> dict[str, ScanRecord]:
        with self.lock:
            return {i: self._scans[i] for i in self._order}

    def wait_for_scans(self, n: int, timeout: float) -> list[ScanRecord]:
        """At least n scan requests accepted (202); returns them in the order accepted."""

        def accepted() -> list[ScanRecord] | None:
            return [self._scans[i] for i in self._order] if len(self._order) >= n else None

        if n <= 0:
            return list(self.scans.values())
        return self.wait_until(accepted, timeout, f"{n} scan requests")

    def wait_scan_done(self, scan_id: str, timeout: float) -> ScanRecord:
        """The scan's pull and analysis are over (whatever the outcome)."""

        def done() -> ScanRecord | None:
            record = self._scans.get(scan_id)
            return record if record is not None and record.done else None

        return self.wait_until(done, timeout, f"scan {scan_id} to finish")

    def wait_scans_done(self, timeout: float) -> list[ScanRecord]:
        """Every scan accepted so far has finished."""
        self.wait_until(
            lambda: all(r.done for r in self._scans.values()), timeout, "every scan to finish"
        )
        return list(self.scans.values())

    # -- HTTP

    def handle(self, request: RecordedRequest) -> Reply:
        path = urlsplit(request.path).path
        route = self._route(path)
        if route is None:
            return Reply.text(404, "404 page not found\n")  # gorilla/mux
        methods, handler = route
        if request.method not in methods:
            return Reply(405)  # gorilla/mux: an empty 405
        wire = _WireRequest(self.url, request)
        reply = self._authenticate(request)
        if reply is not None:
            reply = self._reject(request, reply)
        else:
            problems = [
                line
                for error in request_validator(self.version, self.strict).iter_errors(wire)
                for line in _schema_messages(error)
            ]
            if problems:
                reply = self._reject(request, _error(400, "; ".join(problems)))
            else:
                reply = handler(request, wire)
        self._check_response(wire, reply)
        return reply

    def _route(
        self, path: str
    ) -> tuple[tuple[str, ...], Callable[[RecordedRequest, _WireRequest], Reply]] | None:
        if path == "/api/v1/metadata":
            return ("GET",), self._metadata
        if path == "/api/v1/scan":
            return ("POST",), self._accept_scan
        match = re.fullmatch(r"/api/v1/scan/([^/]+)/report", path)
        if match is not None:
            scan_id = match.group(1)
            return ("GET",), lambda req, wire: self._report(scan_id, req, wire)
        return None

    def _check_response(self, wire: _WireRequest, reply: Reply) -> None:
        """Every answer matches the document before it is sent (or the fake has a bug: the
        AssertionError becomes a 500 and an internal error that fails the `with` block)."""
        problems = []
        for error in self.api.iter_response_errors(wire, _WireResponse(reply)):
            if isinstance(error, ResponseNotFound) and reply.status in OUT_OF_SPEC_STATUSES:
                continue
            problems.extend(_schema_messages(error))
        if problems:
            raise AssertionError(
                f"the fake's own {reply.status} answer to {wire.method.upper()} {wire.path} "
                f"does not match scanner adapter API v{self.version}: " + "; ".join(problems)
            )

    def _reject(self, request: RecordedRequest, reply: Reply) -> Reply:
        try:
            message = json.loads(reply.body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = reply.body.decode(errors="replace")
        with self.lock:
            self._rejections.append(
                Rejection(request.method, request.path, reply.status, str(message), request.json)
            )
        self.changed()
        return reply

    def _authenticate(self, request: RecordedRequest) -> Reply | None:
        if self.auth is None:
            return None
        kind = self.auth[0]
        if kind == "apikey":
            if request.header(API_KEY_HEADER) == self.auth[1]:
                return None
            return _error(401, f"missing or invalid {API_KEY_HEADER}")
        scheme, _, credentials = (request.header("authorization") or "").strip().partition(" ")
        credentials = credentials.strip()
        if kind == "basic" and scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = None
            if decoded == f"{self.auth[1]}:{self.auth[2]}":
                return None
        if kind == "bearer" and scheme.lower() == "bearer" and credentials == self.auth[1]:
            return None
        reply = _error(401, "unauthorized")
        challenge = 'Basic realm="fake-scanner"' if kind == "basic" else "Bearer"
        reply.headers = (("WWW-Authenticate", challenge),)
        return reply

    # -- GET /api/v1/metadata

    def capabilities(self) -> list[dict[str, Any]]:
        consumes = [OCI_MANIFEST, DOCKER_V2]
        vulnerability: dict[str, Any] = {
            "consumes_mime_types": consumes,
            "produces_mime_types": list(self.produces),
        }
        if self.version != "1.2":
            return [vulnerability]
        capabilities = [{"type": "vulnerability", **vulnerability}]
        if self.sbom:
            capabilities.append(
                {
                    "type": "sbom",
                    "consumes_mime_types": consumes,
                    "produces_mime_types": [SBOM_REPORT],
                    "additional_attributes": {"sbom_media_types": list(SBOM_MEDIA_TYPES)},
                }
            )
        return capabilities

    def metadata(self) -> dict[str, Any]:
        return {
            "scanner": dict(SCANNER),
            "capabilities": self.capabilities(),
            "properties": {
                SCANNER_TYPE: "os-package-vulnerability",
                DB_UPDATED_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.db_updated_at)),
            },
        }

    def _metadata(self, request: RecordedRequest, wire: _WireRequest) -> Reply:
        media = METADATA_1_0
        if self.version == "1.2" and _accepts(request.header("accept"), METADATA_1_1):
            media = METADATA_1_1
        return _json(200, self.metadata(), media)

    # -- POST /api/v1/scan

    def _accept_scan(self, request: RecordedRequest, wire: _WireRequest) -> Reply:
        body = request.json
        if not request.body.strip():
            return self._reject(request, _error(400, "unmarshalling scan request: EOF"))
        if request.json_error is not None or not isinstance(body, dict):
            reason = request.json_error or "the body is not a JSON object"
            return self._reject(request, _error(400, f"unmarshalling scan request: {reason}"))
        problem = self._semantic_problem(body)
        if problem is not None:
            return self._reject(request, problem)
        with self.lock:
            failing = self._failed_posts < self.fail_scans
            self._failed_posts += failing
        if failing:
            return _error(500, "enqueuing scan job: fake failure (fail_scans)")
        registry, artifact = body["registry"], body["artifact"]
        split = urlsplit(str(registry["url"]))
        base = f"{split.scheme}://{split.netloc}"  # trivy's GetImageRef drops any path
        scan = ScanRecord(
            id=str(uuid.uuid4()),
            request=body,
            content_type=request.header("content-type") or "",
            authorization=str(registry.get("authorization") or ""),
            manifest_url=f"{base}/v2/{artifact['repository']}/manifests/{artifact['digest']}",
            accepted_at=time.time(),
        )
        with self.lock:
            scan.lost = self._lost < self.lose_scans
            self._lost += scan.lost
            self._scans[scan.id] = scan
            self._order.append(scan.id)
        self.changed()
        self.spawn(lambda: self._run_scan(scan), f"scan-{scan.id[:8]}")
        return _json(202, {"id": scan.id}, SCAN_RESPONSE)

    def _semantic_problem(self, body: dict[str, Any]) -> Reply | None:
        """trivy's ValidateScanRequest (422), the v1.2 capability check (501) and the fake-only
        checks."""
        registry = body.get("registry") or {}
        artifact = body.get("artifact") or {}
        url = str(registry.get("url") or "")
        if not url:
            return _error(422, "missing registry.url")
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.netloc:
            return _error(422, "invalid registry.url")
        if self.strict and split.path not in ("", "/"):
            return _error(
                422,
                "invalid registry.url: a path is ignored by real adapters (trivy uses scheme, "
                "host and port only) (fake-only check)",
            )
        if not artifact.get("repository"):
            return _error(422, "missing artifact.repository")
        if not artifact.get("digest"):
            return _error(422, "missing artifact.digest")
        if self.strict and not DIGEST.match(str(artifact["digest"])):
            return _error(422, "invalid artifact.digest: not sha256:<64 hex> (fake-only check)")
        mime_type = artifact.get("mime_type")
        if self.strict and mime_type and mime_type not in (OCI_MANIFEST, DOCKER_V2):
            status = 501 if self.version == "1.2" else 422
            return _error(
                status, f"artifact.mime_type {mime_type!r} is not consumed (fake-only check)"
            )
        for capability in body.get("enabled_capabilities") or []:
            kind = capability.get("type")
            offered = {c.get("type"): c for c in self.capabilities()}.get(kind)
            if offered is None:
                return _error(501, f"the scanner has no {kind!r} capability")
            unknown = set(capability.get("produces_mime_types") or []) - set(
                offered["produces_mime_types"]
            )
            if unknown:
                return _error(501, f"the {kind} capability does not produce {sorted(unknown)}")
        return None

    # -- the scan itself (a background thread per scan)

    def _run_scan(self, scan: ScanRecord) -> None:
        with self.lock:
            scan.started = True
        self.changed()
        pull = PullResult(scan.manifest_url)
        layers: list[dict[str, str]] = []
        findings: list[dict[str, Any]] = []
        error = ""
        try:
            headers = _registry_headers(scan.authorization)
            with make_client(self.verify, 30.0) as client:
                refs = resolve_image(client, scan.manifest_url, headers, None, pull)
                for desc in refs or []:
                    if self.stopping.is_set():
                        pull.errors.append("stopped before every blob was fetched")
                        break
                    data = _fetch_blob(client, pull, desc, headers)
                    if data is not None and _is_layer(desc):
                        layer, found = self._analyse_layer(str(desc.get("digest")), data)
                        layers.append(layer)
                        findings.extend(found)
            if pull.errors:
                error = "pulling image: " + pull.error_text()
        except _ScanFailed as exc:
            error = str(exc)
        with self.lock:
            scan.pull = pull
            scan.layers = layers
            scan.findings = [] if error else findings
            scan.error = error
            scan.done = True
            scan.finished_at = time.time()
        self.changed()

    def _analyse_layer(
        self, digest: str, data: bytes
    ) -> tuple[dict[str, str], list[dict[str, Any]]]:
        if data.startswith(ZSTD_MAGIC):
            raise _ScanFailed(f"layer {digest}: zstd layers are not supported by the fake")
        if data.startswith(GZIP_MAGIC):
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as exc:
                raise _ScanFailed(f"layer {digest}: bad gzip stream: {exc}") from None
        layer = {"digest": digest, "diff_id": "sha256:" + hashlib.sha256(data).hexdigest()}
        if not data:
            return layer, []
        marker: bytes | None = None
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for member in tar:
                    if member.isfile() and _root_name(member.name) == MARKER:
                        extracted = tar.extractfile(member)
                        marker = extracted.read() if extracted is not None else b""
        except tarfile.TarError as exc:
            raise _ScanFailed(f"layer {digest}: not a tar archive: {exc}") from None
        if marker is None:
            return layer, []
        layer["marker"] = MARKER
        return layer, [
            {**item, "layer": {"digest": layer["digest"], "diff_id": layer["diff_id"]}}
            for item in self._parse_marker(digest, marker)
        ]

    def _parse_marker(self, digest: str, raw: bytes) -> list[dict[str, Any]]:
        where = f"layer {digest}: {MARKER}"
        try:
            items = json.loads(raw)
        except ValueError as exc:
            raise _ScanFailed(f"{where}: not JSON: {exc}") from None
        if not isinstance(items, list):
            raise _ScanFailed(f"{where}: not a JSON list")
        validator = marker_item_validator(self.version)
        problems = [
            f"[{i}]{'.' if e.absolute_path else ''}"
            f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for i, item in enumerate(items)
            for e in validator.iter_errors(item)
        ]
        if problems:
            raise _ScanFailed(f"{where}: " + "; ".join(problems))
        return [dict(item) for item in items]

    # -- GET /api/v1/scan/{id}/report

    def _report(self, scan_id: str, request: RecordedRequest, wire: _WireRequest) -> Reply:
        media = self._negotiate(request.header("accept"))
        if media is None:
            status = 501 if self.version == "1.2" else 415
            return self._reject(
                request, _error(status, f"unsupported media type {request.header('accept')}")
            )
        query = dict(parse_qsl(urlsplit(request.path).query))
        sbom_media_type = query.get("sbom_media_type")
        if media == SBOM_REPORT and not sbom_media_type:
            return self._reject(
                request, _error(400, "an SBOM report needs the sbom_media_type query parameter")
            )
        with self.lock:
            scan = self._scans.get(scan_id)
            if scan is None:
                return _error(404, f"cannot find scan job: {scan_id}")
            scan.report_gets += 1
            if scan.lost or scan.report_gets <= self.lose_first:
                scan.answers.append(404)
                self.lock.notify_all()
                return _error(404, f"cannot find scan job: {scan_id}")
            scan.polls += 1
            pending = self.never_finish or not scan.done or scan.polls <= self.pending_polls
            if pending:
                headers: list[tuple[str, str]] = [(self.refresh_header, str(self.refresh_after))]
                if self.location:
                    headers.append(("Location", request.path))
                reply = Reply(302, headers=tuple(headers))
            elif scan.error:
                reply = _error(500, scan.error)
            elif media == SBOM_REPORT:
                reply = _json(200, self.sbom_report(scan, str(sbom_media_type)), media)
            else:
                reply = _json(200, self.vulnerability_report(scan, media), media)
            scan.answers.append(reply.status)
            self.lock.notify_all()
        return reply

    def _negotiate(self, accept: str | None) -> str | None:
        """The report type to answer: the first of Accept's types the fake produces; none or
        */* means the Harbor report (the spec's README)."""
        produces = (*self.produces, *((SBOM_REPORT,) if self.sbom else ()))
        if accept is None or not accept.strip():
            return HARBOR_VULN_REPORT
        for part in accept.split(","):
            wanted = _media_key(part)
            if wanted[0] == "*/*":
                return HARBOR_VULN_REPORT
            for media in produces:
                if _media_key(media) == wanted:
                    return media
        return None

    def vulnerability_report(self, scan: ScanRecord, media: str) -> dict[str, Any]:
        """Harbor's HarborVulnerabilityReport (trivy's ScanReport) of a finished scan."""
        rich = media == VULN_REPORT_1_1
        items = []
        for finding in scan.findings:
            item: dict[str, Any] = {
                "id": finding["id"],
                "package": finding["package"],
                "version": finding["version"],
            }
            if finding.get("fix_version"):
                item["fix_version"] = finding["fix_version"]
            item["severity"] = finding["severity"]
            item["description"] = finding.get(
                "description", f"{finding['id']} in {finding['package']} {finding['version']}"
            )
            item["links"] = list(finding.get("links") or [])
            item["layer"] = finding["layer"]  # trivy's extra field, not in the documents
            if rich:
                if finding.get("preferred_cvss"):
                    item["preferred_cvss"] = finding["preferred_cvss"]
                if finding.get("cwe_ids"):
                    item["cwe_ids"] = finding["cwe_ids"]
                item["vendor_attributes"] = dict(finding.get("vendor_attributes") or {})
            items.append(item)
        return {
            "generated_at": go_time(scan.finished_at),
            "artifact": _artifact(scan),
            "scanner": dict(SCANNER),
            "severity": highest_severity(str(f["severity"]) for f in scan.findings),
            "vulnerabilities": items,
        }

    def sbom_report(self, scan: ScanRecord, media_type: str) -> dict[str, Any]:
        """HarborSbomReport: the packages named by the marker file, in SPDX or CycloneDX."""
        packages = sorted({(str(f["package"]), str(f["version"])) for f in scan.findings})
        created = go_time(scan.finished_at)
        name = f"{scan.artifact.get('repository')}@{scan.artifact.get('digest')}"
        sbom: dict[str, Any]
        if media_type == SPDX_JSON:
            sbom = {
                "spdxVersion": "SPDX-2.3",
                "dataLicense": "CC0-1.0",
                "SPDXID": "SPDXRef-DOCUMENT",
                "name": name,
                "documentNamespace": f"http://fake-scanner.invalid/spdx/{scan.id}",
                "creationInfo": {"created": created, "creators": ["Tool: fake-scanner"]},
                "packages": [
                    {
                        "SPDXID": f"SPDXRef-Package-{i}",
                        "name": pkg,
                        "versionInfo": version,
                        "downloadLocation": "NOASSERTION",
                        "filesAnalyzed": False,
                    }
                    for i, (pkg, version) in enumerate(packages)
                ],
            }
        else:
            sbom = {
                "bomFormat": "CycloneDX",
                "specVersion": "1.5",
                "serialNumber": f"urn:uuid:{scan.id}",
                "version": 1,
                "metadata": {
                    "timestamp": created,
                    "component": {"type": "container", "name": name},
                },
                "components": [
                    {"type": "library", "name": pkg, "version": version}
                    for pkg, version in packages
                ],
            }
        return {
            "generated_at": created,
            "artifact": _artifact(scan),
            "scanner": dict(SCANNER),
            "vendor_attributes": {"created-by": "fake-scanner"},
            "media_type": media_type,
            "sbom": sbom,
        }


# --------------------------------------------------------------------------------- helpers


def highest_severity(severities: Iterable[str]) -> str:
    """trivy's toHighestSeverity: Unknown when there is nothing."""
    return max(severities, key=SEVERITIES.index, default="Unknown")


def _artifact(scan: ScanRecord) -> dict[str, Any]:
    keys = ("repository", "digest", "tag", "mime_type")
    return {k: v for k, v in scan.artifact.items() if k in keys}


def _json(status: int, obj: Any, content_type: str) -> Reply:
    return Reply(status, json.dumps(obj).encode() + b"\n", content_type)


def _error(status: int, message: str) -> Reply:
    return _json(status, {"error": {"message": message}}, ERROR)


def _media_key(text: str) -> tuple[str, frozenset[tuple[str, str]]]:
    kind, *params = text.split(";")
    pairs = []
    for param in params:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() != "q":
            pairs.append((name.strip().lower(), value.strip().strip('"')))
    return kind.strip().lower(), frozenset(pairs)


def _accepts(accept: str | None, media: str) -> bool:
    return accept is not None and any(
        _media_key(part) == _media_key(media) for part in accept.split(",")
    )


def _registry_headers(authorization: str) -> dict[str, str]:
    """trivy's ToRegistryAuth checks, then the header as given (see the module docstring)."""
    if not authorization:
        return {}
    tokens = authorization.split(" ")
    if len(tokens) != 2:
        raise _ScanFailed(
            f"parsing authorization: expected <type> <credentials> got {authorization}"
        )
    if tokens[0] == "Basic":
        try:
            decoded = base64.b64decode(tokens[1], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise _ScanFailed(f"parsing authorization: {exc}") from None
        if ":" not in decoded:
            raise _ScanFailed("parsing authorization: Basic credentials without ':'")
    elif tokens[0] != "Bearer":
        raise _ScanFailed(f"unrecognized authorization type: {tokens[0]}")
    return {"Authorization": authorization}


def _root_name(name: str) -> str:
    """A tar member's path without leading "./" or "/" (both spell the layer's root)."""
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return name


def _is_layer(desc: Mapping[str, Any]) -> bool:
    media_type = str(desc.get("mediaType", ""))
    return "layer" in media_type or "rootfs" in media_type


def _fetch_blob(
    client: httpx.Client, pull: PullResult, desc: Mapping[str, Any], headers: Mapping[str, str]
) -> bytes | None:
    """One layer of `<base>/v2/<repo>/blobs/<digest>`, checked against the descriptor's digest
    and size, kept (the fake reads layers); the outcome in pull. None when it failed."""
    digest = str(desc.get("digest", ""))
    size = desc.get("size")
    url = f"{pull.base}/v2/{pull.repository}/blobs/{digest}"
    blob = fetch_blob(
        client, url, headers, digest, size if type(size) is int else None,
        str(desc.get("mediaType", "")), pull, keep=MAX_LAYER,
    )  # fmt: skip
    return blob.data if blob.ok else None
