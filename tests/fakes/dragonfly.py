"""FakeDragonflyManager: a FAKE standing in for Dragonfly's manager (open API, preheat jobs).

It is not Dragonfly. It answers the part of the manager's open API that edgecache's preheat
provider uses, validates every request against the published definitions, and does the
download a real preheat does (the manager resolves the image; a seed peer fetches its blobs)
against the registry named in the job, i.e. edgecache, for real.

Sources (public code and the reference copy, read for this fake):
- /work/shared/reference/dragonfly/manager-openapi-swagger.yaml (Swagger 2.0, dragonfly
  66db456): `/oapi/v1/jobs`, `/oapi/v1/jobs/{id}`, `/healthy`; the request body is validated
  against `d7y_io_dragonfly_v2_manager_types.CreateJobRequest` and every job the fake sends
  against `d7y_io_dragonfly_v2_manager_models.Job` (see "nulls" below).
- dragonflyoss/dragonfly manager/types/job.go: `CreatePreheatJobRequest`, `PreheatArgs` and
  their `binding:` tags (written as PREHEAT_ARGS_SCHEMA below; newest stored version: `type`
  required,oneof=image file; `url` omitempty; `piece_length` 4194304..67108864; `ips` 1..100
  entries; `percentage` 1..100; `count` 1..200; `concurrent_task_count` 1..100;
  `concurrent_peer_count` 1..1000; `timeout` a time.Duration, i.e. integer nanoseconds).
- manager/handlers/job.go: `CreateJob` binds the body (failure: 422 `{"errors": "<err>"}`),
  then switches on `type` (unknown: 422 `{"errors": "Unknow type"}`, sic), then binds
  `CreatePreheatJobRequest` (422 again); `GetJob` binds the uint id (422).
- manager/middlewares/personal_access_token_test.go: 401 `{"message":"Unauthorized"}` (no,
  malformed or unknown token; the scheme is case-insensitive), 403 `{"message":"Token is
  inactive"}` / `{"message":"Token has expired"}` / `{"message":"Token doesn't have permission
  to access this resource. Required permission: job"}`; `?access_token=` wins over the header.
- manager/middlewares/ratelimiter.go: 429 `rate limit exceeded` (text/plain), after binding
  CreateJobRequest and before the handler.
- manager/middlewares/error_test.go: a service error answers 404 `{"message":"record not
  found"}` (gorm not found, also wrapped: "scheduler cluster id 7: record not found") or 500
  `{"message":"<error text>"}`.
- manager/service/job.go `CreatePreheatJob`: defaults (scope single_seed_peer,
  concurrent_task_count 8, concurrent_peer_count 500, timeout 60 min, filtered_query_params
  pkg/net/http RawDefaultFilteredQueryParams); the manifest is resolved *synchronously inside
  the POST* (manager/job/preheat.go `CreatePreheat` -> internal/job/image.go
  `CreatePreheatRequestsByManifestURL`), so a missing image, a refused connection or a bad url
  is a 500 answer to the POST, not a FAILURE job; `args` stored is the whole PreheatArgs struct
  as a map (zero values included: credentials in `headers`/`password` come back in every GET).
- manager/job/preheat.go: image preheat without url -> "invalid params: url is required";
  file preheat needs url or urls -> "invalid params: url or urls is required" (both 500).
- internal/job/image.go: `^(.*)://(.*)/v2/(.*)/manifests/(.*)` parses the url; an
  `Authorization` header is used as is (an "issued token": no ping), otherwise the registry is
  pinged (`GET /v2/`) and challenged for a pull token (username/password); `Accept` carries
  every manifest media type; an index keeps every entry whose os and architecture match
  (variant ignored; default platform is the manager's own, linux/amd64 here); the blob
  requests carry the user's headers, `Authorization` set to the intercepted bearer token (an
  EMPTY header when there was none, e.g. anonymous or Basic auth) and `Accept` set to the media
  type of the last reference (the loop in buildPreheatRequestFromManifests).
- internal/job/job.go `GroupJobState`/`jobState` and internal/job/types.go `PreheatResponse`:
  the shape of `Job.result` (`{"group_uuid","state","created_at","updated_at","job_states":
  [{"task_uuid","task_name","state","results","error","created_at","ttl"}]}`, results
  `[{"success_tasks":[{"url","hostname","ip"}],"failure_tasks":[...],"scheduler_cluster_id"}]`).
- manager/models/models.go and the Job model: BaseModel (`id`, `created_at`, `updated_at`,
  `is_del`), JSONMap (a nil map encodes as null), the Job's fields.
- manager/handlers/health.go: `GET /healthy` -> `ctx.JSON(200, "OK")`, i.e. the JSON string.
- scheduler/job/job.go: an unknown scope is NOT an error for Dragonfly (warning, then single
  seed peer).

Nulls: Go encodes nil maps and slices as null (the POST's `result`, `seed_peer_clusters`, a
cluster's `schedulers`, ...) and Swagger 2.0 cannot say "nullable", so the self-check of sent
jobs allows null, and only null, besides what the definition says for object and array types.

Where the fake is stricter than Dragonfly (on purpose, `strict=True`, the default) it says so
in the 422 message ("fake-only check"): an unknown `scope` (Dragonfly would silently preheat a
single seed peer) and unknown keys in `args` (Dragonfly's decoder ignores them: a typo such as
`scopes` would silently be lost). JSON keys are matched case-sensitively (Go is
case-insensitive).

Simplifications: the job's state moves from PENDING to its final state after `pending_polls`
GETs and once the download has finished (a real manager polls its workers with a 30 s to
300 s back-off, so a real job is PENDING for at least ~30 s); one seed peer ("fake-seed-peer",
127.0.0.1) downloads everything whatever the scope; a job FAILS as soon as one blob fails (the
task error then names the failures); only `preheat` jobs are implemented (the other known job
types answer 501).
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from tests.fakes import RFC3339, FakeServer, RecordedRequest, Reply, go_time
from tests.fakes.registryclient import (
    Exchange,
    PullResult,
    fetch_blob,
    fetch_references,
    make_client,
    parse_manifest_url,
    parse_platform,
    resolve_image,
)

# Beside the checkout (/work/main and /work/shared on this machine kind, and in CI), else at
# that layout's absolute place; EDGECACHE_REFERENCE_DIR overrides both.
_BESIDE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
REFERENCE_DIR = Path(
    os.environ.get(
        "EDGECACHE_REFERENCE_DIR",
        _BESIDE if _BESIDE.is_dir() else Path("/work/shared/reference"),
    )
)
SWAGGER_PATH = REFERENCE_DIR / "dragonfly" / "manager-openapi-swagger.yaml"
SWAGGER_URI = "urn:edgecache-test:dragonfly-manager-swagger"
CREATE_JOB_REQUEST = "d7y_io_dragonfly_v2_manager_types.CreateJobRequest"
JOB_MODEL = "d7y_io_dragonfly_v2_manager_models.Job"

TokenState = Literal["active", "inactive", "expired", "no_job_scope"]
Mode = Literal["normal", "fail", "rate_limit"]

SCOPES = ("single_seed_peer", "all_seed_peers", "all_peers")
JOB_TYPES_NOT_FAKED = ("sync_peers", "get_task", "get_image", "delete_task", "gc")
SEED_PEER_HOSTNAME = "fake-seed-peer"
SEED_PEER_IP = "127.0.0.1"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
INT64 = (-(2**63), 2**63 - 1)

# pkg/net/http: S3, GCS, OSS, OBS, COS and containerd query params joined by "&".
_S3 = "X-Amz-Algorithm X-Amz-Credential X-Amz-Date X-Amz-Expires X-Amz-SignedHeaders " + (
    "X-Amz-Signature X-Amz-Security-Token X-Amz-User-Agent"
)
_GCS = "X-Goog-Algorithm X-Goog-Credential X-Goog-Date X-Goog-Expires X-Goog-SignedHeaders " + (
    "X-Goog-Signature"
)
_OSS = "OSSAccessKeyId Expires Signature SecurityToken"
_OBS = "AccessKeyId Signature Expires X-Obs-Date X-Obs-Security-Token"
_COS = "q-sign-algorithm q-ak q-sign-time q-key-time q-header-list q-url-param-list " + (
    "q-signature x-cos-security-token"
)
DEFAULT_FILTERED_QUERY_PARAMS = "&".join(f"{_S3} {_GCS} {_OSS} {_OBS} {_COS} ns".split(" "))
DEFAULT_CONCURRENT_TASK_COUNT = 8
DEFAULT_CONCURRENT_PEER_COUNT = 500
DEFAULT_JOB_TIMEOUT_NS = 60 * 60 * 10**9


def _nullable(t: str) -> list[str]:
    return [t, "null"]


# dragonflyoss/dragonfly manager/types/job.go, PreheatArgs, as a JSON schema (draft 4). Go's
# decoder accepts null for any field (it leaves the zero value), so null is allowed everywhere
# but for `type`, whose `required` tag rejects the zero value anyway. Integer bounds are the
# `gte`/`lte` tags; a 0 passes them because of `omitempty` (0 means "the default").
PREHEAT_ARGS_PROPERTIES: dict[str, Any] = {
    "type": {"type": "string", "enum": ["image", "file"]},  # required,oneof=image file
    "url": {"type": _nullable("string")},  # omitempty: image preheat checks it in the service
    "urls": {"type": _nullable("array"), "items": {"type": "string"}},  # file preheat only
    "piece_length": {"type": _nullable("integer"), "minimum": 4194304, "maximum": 67108864},
    "tag": {"type": _nullable("string")},
    "application": {"type": _nullable("string")},
    "filtered_query_params": {"type": _nullable("string")},
    "headers": {"type": _nullable("object"), "additionalProperties": {"type": "string"}},
    "username": {"type": _nullable("string")},
    "password": {"type": _nullable("string")},
    "platform": {"type": _nullable("string")},
    "scope": {"type": _nullable("string")},  # omitempty only; see strict mode
    "ips": {"type": _nullable("array"), "items": {"type": "string"}, "maxItems": 100},
    "percentage": {"type": _nullable("integer"), "minimum": 1, "maximum": 100},
    "count": {"type": _nullable("integer"), "minimum": 1, "maximum": 200},
    "concurrent_task_count": {"type": _nullable("integer"), "minimum": 0, "maximum": 100},
    "concurrent_peer_count": {"type": _nullable("integer"), "minimum": 0, "maximum": 1000},
    "timeout": {"type": _nullable("integer"), "minimum": INT64[0], "maximum": INT64[1]},
    "object_storage": {"type": _nullable("object")},
    "hdfs": {"type": _nullable("object")},
}
# Fields of other stored versions of PreheatArgs, known so that strict mode does not call them
# typos; they are accepted and, like a version without them would, not echoed in `args`.
PREHEAT_ARGS_OTHER_VERSIONS: dict[str, Any] = {
    "concurrent_count": {"type": _nullable("integer"), "minimum": 0, "maximum": 500},
    "load_to_cache": {"type": _nullable("boolean")},
    "content_for_calculating_task_id": {"type": _nullable("string")},
    "enable_task_id_based_blob_digest": {"type": _nullable("boolean")},
}
PREHEAT_ARGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {**PREHEAT_ARGS_PROPERTIES, **PREHEAT_ARGS_OTHER_VERSIONS},
}
# Go binding extras on CreateJobRequest beyond the swagger: `type` is `required` (non-empty),
# ids are uint (a negative number fails to decode).
CREATE_JOB_GO_EXTRAS: dict[str, Any] = {
    "properties": {
        "type": {"minLength": 1},
        "user_id": {"minimum": 0},
        "scheduler_cluster_ids": {"items": {"minimum": 0}},
        "seed_peer_cluster_ids": {"items": {"minimum": 0}},
    }
}

ZERO_USER: dict[str, Any] = {
    "id": 0,
    "created_at": GO_ZERO_TIME,
    "updated_at": GO_ZERO_TIME,
    "is_del": 0,
    "email": "",
    "name": "",
    "avatar": "",
    "phone": "",
    "state": "",
    "location": "",
    "bio": "",
    "configs": None,
}


# ----------------------------------------------------------------------------- schemas


def _require_reference() -> None:
    if SWAGGER_PATH.is_file():
        return
    import pytest

    from tests.support import in_ci

    message = f"Dragonfly manager swagger not found at {SWAGGER_PATH} (EDGECACHE_REFERENCE_DIR)"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@functools.lru_cache(maxsize=1)
def swagger() -> dict[str, Any]:
    _require_reference()
    doc = yaml.safe_load(SWAGGER_PATH.read_text())
    assert doc.get("swagger") == "2.0", "not the Swagger 2.0 document this fake was written for"
    return dict(doc)


def _allow_null(node: Any) -> Any:
    """Every object/array type also admits null (Go's nil maps and slices)."""
    if isinstance(node, dict):
        out = {k: _allow_null(v) for k, v in node.items()}
        if out.get("type") in ("object", "array"):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_allow_null(v) for v in node]
    return node


@functools.lru_cache(maxsize=4)
def definition_validator(name: str, go_nulls: bool = False) -> jsonschema.Draft4Validator:
    """A draft-4 validator of `#/definitions/<name>`, with refs resolved in the whole doc."""
    doc = swagger()
    if go_nulls:
        doc = {**doc, "definitions": _allow_null(copy.deepcopy(doc["definitions"]))}
    resource = Resource.from_contents(doc, default_specification=DRAFT4)
    registry: Registry[Any] = Registry().with_resource(SWAGGER_URI, resource)
    return jsonschema.Draft4Validator(
        {"$ref": f"{SWAGGER_URI}#/definitions/{name}"}, registry=registry
    )


def _errors(validator: jsonschema.Draft4Validator, instance: Any, prefix: str = "") -> list[str]:
    out = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in (*([prefix] if prefix else []), *error.absolute_path))
        out.append(f"{where or '(body)'}: {error.message}")
    return out


CREATE_JOB_EXTRAS_VALIDATOR = jsonschema.Draft4Validator(CREATE_JOB_GO_EXTRAS)


def validate_preheat_args(args: Any, strict: bool) -> list[str]:
    schema = dict(PREHEAT_ARGS_SCHEMA)
    errors = _errors(jsonschema.Draft4Validator(schema), args, "args")
    if strict and isinstance(args, dict):
        for key in sorted(set(args) - set(schema["properties"])):
            errors.append(
                f"args.{key}: unknown field (fake-only check: Dragonfly would silently ignore it)"
            )
        scope = args.get("scope")
        if scope not in (None, "", *SCOPES):
            errors.append(
                f"args.scope: {scope!r} is not one of {list(SCOPES)} (fake-only check: Dragonfly"
                " would warn and preheat a single seed peer)"
            )
    return errors


# --------------------------------------------------------------------------- records


@dataclass
class Rejection:
    method: str
    path: str
    status: int
    message: str
    body: Any = None


@dataclass
class DragonflyJob:
    """One preheat job as the fake manager holds it."""

    id: int
    task_id: str  # the machinery group UUID
    task_uuid: str
    request: dict[str, Any]  # the POSTed body
    args: dict[str, Any]  # as stored: the whole PreheatArgs, defaults applied
    bio: str
    user_id: int
    scheduler_clusters: list[dict[str, Any]]
    created_at: float
    updated_at: float
    pull: PullResult  # the manager's resolution and the seed peer's download
    blob_headers: dict[str, str] = field(default_factory=dict)  # sent with every blob GET
    polls: int = 0
    started: bool = False
    done: bool = False  # the download is over (whatever its outcome)
    failure: str = ""  # why the job fails ("" once done: it succeeds)
    answered_states: list[str] = field(default_factory=list)

    @property
    def final_state(self) -> str | None:
        if not self.done:
            return None
        return "FAILURE" if self.failure else "SUCCESS"


# ------------------------------------------------------------------------------ fake


class FakeDragonflyManager(FakeServer):
    """The manager's open API on 127.0.0.1; see the module docstring.

    tokens: personal access token -> "active" | "inactive" | "expired" | "no_job_scope".
    pending_polls: GETs of a job that answer PENDING before its final state (which also waits
        for the download to finish).
    mode: "normal"; "fail" (every job ends FAILURE, even when the download worked);
        "rate_limit" (the first `n_429` POSTs answer 429).
    scheduler_clusters: id -> name of the scheduler clusters the manager knows.
    strict: the fake-only checks of the module docstring.
    verify: TLS verification for the downloads (a CA file path, or a bool).
    """

    name = "dragonfly"

    def __init__(
        self,
        tokens: Mapping[str, TokenState] | None = None,
        pending_polls: int = 2,
        mode: Mode = "normal",
        *,
        n_429: int = 1,
        scheduler_clusters: Mapping[int, str] | None = None,
        strict: bool = True,
        verify: str | bool = True,
    ) -> None:
        super().__init__()
        assert mode in ("normal", "fail", "rate_limit"), mode
        self.tokens: dict[str, TokenState] = dict(
            tokens if tokens is not None else {"pat-good": "active", "pat-old": "inactive"}
        )
        self.pending_polls = pending_polls
        self.mode = mode
        self.n_429 = n_429
        self.clusters = dict(scheduler_clusters or {1: "cluster-1"})
        self.strict = strict
        self.verify = verify
        self._jobs: dict[int, DragonflyJob] = {}
        self._answered_429 = 0
        self._next_id = 1
        self._started_at = time.time()
        swagger()  # fail (or skip) now, not in a request thread

    # -- what happened

    @property
    def jobs(self) -> dict[int, DragonflyJob]:
        with self.lock:
            return dict(self._jobs)

    def wait_for_jobs(self, n: int, timeout: float) -> list[DragonflyJob]:
        """At least n jobs created and their downloads over; returns the finished ones."""

        def finished() -> list[DragonflyJob] | None:
            done = [j for j in self._jobs.values() if j.done]
            return done if len(done) >= n else None

        if n <= 0:
            return [j for j in self.jobs.values() if j.done]
        return self.wait_until(finished, timeout, f"{n} Dragonfly preheat jobs to finish")

    def wait_jobs_done(self, timeout: float) -> list[DragonflyJob]:
        """Every job created so far has finished its download."""
        self.wait_until(
            lambda: all(j.done for j in self._jobs.values()), timeout, "every job to finish"
        )
        return list(self.jobs.values())

    # -- HTTP

    def handle(self, request: RecordedRequest) -> Reply:
        path = urlsplit(request.path).path
        if path == "/healthy" or path.startswith("/healthy/"):
            return Reply.json(200, "OK") if request.method == "GET" else _gin_404()
        route = self._route(request.method, path)
        if route is None:
            return _gin_404()
        denied = self._authenticate(request)
        if denied is not None:
            return self._reject(request, denied)
        reply = route(request)
        if reply.status != 200:
            return self._reject(request, reply)
        return reply

    def _route(self, method: str, path: str) -> Any:
        if path == "/oapi/v1/jobs":
            return {"POST": self._create_job, "GET": self._list_jobs}.get(method)
        match = re.fullmatch(r"/oapi/v1/jobs/([^/]+)", path)
        if match is not None and method == "GET":
            return functools.partial(self._get_job, match.group(1))
        return None

    def _reject(self, request: RecordedRequest, reply: Reply) -> Reply:
        try:
            message = json.loads(reply.body)
        except ValueError:
            message = reply.body.decode(errors="replace")
        if isinstance(message, dict):
            message = message.get("errors", message.get("message", message))
        with self.lock:
            self._rejections.append(
                Rejection(request.method, request.path, reply.status, str(message), request.json)
            )
        self.changed()
        return reply

    def _authenticate(self, request: RecordedRequest) -> Reply | None:
        query = parse_qs(urlsplit(request.path).query)
        if query.get("access_token"):
            token = query["access_token"][0]
        else:
            fields = (request.header("authorization") or "").split()
            if len(fields) != 2 or fields[0].lower() != "bearer":
                return Reply.json(401, {"message": "Unauthorized"})
            token = fields[1]
        state = self.tokens.get(token)
        if state is None:
            return Reply.json(401, {"message": "Unauthorized"})
        if state == "inactive":
            return Reply.json(403, {"message": "Token is inactive"})
        if state == "expired":
            return Reply.json(403, {"message": "Token has expired"})
        if state == "no_job_scope":
            message = "Token doesn't have permission to access this resource."
            return Reply.json(403, {"message": f"{message} Required permission: job"})
        assert state == "active", f"unknown token state {state!r}"
        return None

    # -- POST /oapi/v1/jobs

    def _create_job(self, request: RecordedRequest) -> Reply:
        body, error = _go_decode(request.body)
        if error is not None:
            return _unprocessable(error)
        errors = _errors(definition_validator(CREATE_JOB_REQUEST), body)
        if not errors:
            errors = _errors(CREATE_JOB_EXTRAS_VALIDATOR, body)
        if errors:
            return _unprocessable("; ".join(errors))
        if self.mode == "rate_limit":
            with self.lock:
                limited = self._answered_429 < self.n_429
                self._answered_429 += limited
            if limited:
                return Reply.text(429, "rate limit exceeded")
        job_type = body["type"]
        if job_type in JOB_TYPES_NOT_FAKED:
            return Reply.json(
                501, {"message": f"job type {job_type!r} is not implemented by the fake"}
            )
        if job_type != "preheat":
            return _unprocessable("Unknow type")
        args = body.get("args")
        if args is None:
            args = {}
        errors = validate_preheat_args(args, self.strict)
        if errors:
            return _unprocessable("; ".join(errors))
        return self._create_preheat(body, args)

    def _create_preheat(self, body: dict[str, Any], args: dict[str, Any]) -> Reply:
        stored = _struct_to_map(args)
        ids = body.get("scheduler_cluster_ids") or []
        for cid in ids:
            if cid not in self.clusters:
                return Reply.json(404, {"message": f"scheduler cluster id {cid}: record not found"})
        clusters = [self._cluster_json(cid) for cid in (ids or sorted(self.clusters))]
        pull = PullResult(stored["url"])
        if stored["type"] == "image":
            if not stored["url"]:
                return Reply.json(500, {"message": "invalid params: url is required"})
            refs, blob_headers = self._resolve(stored, pull)
            if refs is None:
                return Reply.json(500, {"message": pull.error_text()})
        else:
            urls = [*(stored["urls"] or []), *([stored["url"]] if stored["url"] else [])]
            if not urls:
                return Reply.json(500, {"message": "invalid params: url or urls is required"})
            refs = [{"url": u} for u in urls]
            blob_headers = dict(stored["headers"] or {})
        now = time.time()
        with self.lock:
            job = DragonflyJob(
                id=self._next_id,
                task_id=f"group_{uuid.uuid4()}",
                task_uuid=f"task_{uuid.uuid4()}",
                request=body,
                args=stored,
                bio=str(body.get("bio") or ""),
                user_id=int(body.get("user_id") or 0),
                scheduler_clusters=clusters,
                created_at=now,
                updated_at=now,
                pull=pull,
                blob_headers=blob_headers,
            )
            self._next_id += 1
            self._jobs[job.id] = job
            reply = self._job_reply(job, fresh=True)
        self.changed()
        self.spawn(lambda: self._seed_peer_download(job, refs), f"job-{job.id}")
        return reply

    def _resolve(
        self, args: dict[str, Any], pull: PullResult
    ) -> tuple[list[dict[str, Any]] | None, dict[str, str]]:
        """The manager's part: auth, manifest (and platform manifests); synchronous."""
        headers = {_canonical(k): v for k, v in (args["headers"] or {}).items()}
        try:
            parse_platform(args["platform"] or None)
        except ValueError as exc:
            pull.errors.append(str(exc))
            return None, {}
        with make_client(self.verify, 60.0) as client:
            issued = headers.get("Authorization", "")
            bearer = issued
            if not issued:
                try:
                    base, repo, _ = parse_manifest_url(args["url"])
                except ValueError as exc:
                    pull.errors.append(str(exc))
                    return None, {}
                challenged = _registry_auth(
                    client, base, repo, args["username"], args["password"], pull
                )
                if challenged is None:
                    return None, {}
                authorization, bearer = challenged
                if authorization:
                    headers["Authorization"] = authorization
            refs = resolve_image(
                client,
                args["url"],
                headers,
                args["platform"] or None,
                pull,
                match_variant=False,
                all_matches=True,
            )
        blob_headers = dict(headers)
        blob_headers["Authorization"] = bearer  # "" when no bearer token was intercepted
        if refs:  # buildPreheatRequestFromManifests: header.Set("Accept", ...) in its loop
            blob_headers["Accept"] = str(refs[-1].get("mediaType", ""))
        return refs, blob_headers

    def _seed_peer_download(self, job: DragonflyJob, refs: list[dict[str, Any]]) -> None:
        with self.lock:
            job.started = True
        self.changed()
        timeout_ns = int(job.args["timeout"])
        deadline = time.monotonic() + timeout_ns / 1e9
        failure = ""
        if timeout_ns < 0:
            failure = "context deadline exceeded"
        else:
            per_request = max(0.001, min(timeout_ns / 1e9, 60.0))
            with make_client(self.verify, per_request) as client:
                if job.args["type"] == "image":
                    fetch_references(client, job.pull, refs, job.blob_headers, stop=self.stopping)
                else:
                    for ref in refs:
                        url = ref["url"]
                        fetch_blob(client, url, job.blob_headers, "", None, "", job.pull)
            if time.monotonic() > deadline:
                failure = "context deadline exceeded"
            elif job.pull.errors:
                failure = "preheat failed: " + job.pull.error_text()
        if self.mode == "fail" and not failure:
            failure = "fake failure (mode='fail')"
        with self.lock:
            job.failure = failure
            job.done = True
            job.updated_at = time.time()
        self.changed()

    # -- GET /oapi/v1/jobs/{id}, GET /oapi/v1/jobs

    def _get_job(self, raw_id: str, request: RecordedRequest) -> Reply:
        if not (raw_id.isascii() and raw_id.isdigit()):
            return _unprocessable(f'strconv.ParseUint: parsing "{raw_id}": invalid syntax')
        job_id = int(raw_id, 10)
        if job_id == 0:
            return _unprocessable(
                "Key: 'JobParams.ID' Error:Field validation for 'ID' failed on the 'required' tag"
            )
        with self.lock:
            job = self._jobs.get(job_id)
            if job is None:
                return Reply.json(404, {"message": "record not found"})
            job.polls += 1
            reply = self._job_reply(job, fresh=False)
        self.changed()
        return reply

    def _list_jobs(self, request: RecordedRequest) -> Reply:
        with self.lock:
            jobs = sorted(self._jobs.values(), key=lambda j: -j.created_at)
            return Reply.json(200, [self._job_json(j, fresh=False) for j in jobs])

    # -- wire shapes

    def _state(self, job: DragonflyJob, fresh: bool) -> str:
        if fresh or job.polls <= self.pending_polls or not job.done:
            return "PENDING"
        return job.final_state or "PENDING"

    def _job_reply(self, job: DragonflyJob, fresh: bool) -> Reply:
        obj = self._job_json(job, fresh)
        job.answered_states.append(obj["state"])
        return Reply.json(200, obj)

    def _job_json(self, job: DragonflyJob, fresh: bool) -> dict[str, Any]:
        state = self._state(job, fresh)
        obj: dict[str, Any] = {
            "id": job.id,
            "created_at": go_time(job.created_at),
            "updated_at": go_time(job.updated_at),
            "is_del": 0,
            "task_id": job.task_id,
            "bio": job.bio,
            "type": "preheat",
            "state": state,
            "args": job.args,
            "result": None if fresh else self._result(job, state),
            "user_id": job.user_id,
            "user": ZERO_USER,
            # nil on the freshly created struct; GET preloads them (an empty slice).
            "seed_peer_clusters": None if fresh else [],
            "scheduler_clusters": job.scheduler_clusters,
        }
        errors = _errors(definition_validator(JOB_MODEL, go_nulls=True), obj)
        assert not errors, f"the fake's own job does not match models.Job: {errors}"
        for key in ("created_at", "updated_at"):
            assert re.match(RFC3339, obj[key]), obj[key]
        return obj

    def _result(self, job: DragonflyJob, state: str) -> dict[str, Any]:
        if state == "PENDING":
            task_state = "STARTED" if job.started else "PENDING"
            results: Any = None
            error = ""
        elif state == "SUCCESS":
            task_state = "SUCCESS"
            urls = [b.url for b in job.pull.blobs]
            results = [
                {
                    "success_tasks": [
                        {"url": u, "hostname": SEED_PEER_HOSTNAME, "ip": SEED_PEER_IP} for u in urls
                    ],
                    "failure_tasks": [],
                    "scheduler_cluster_id": job.scheduler_clusters[0]["id"],
                }
            ]
            error = ""
        else:
            task_state, results, error = "FAILURE", None, job.failure
        return {
            "group_uuid": job.task_id,
            "state": state,
            "created_at": go_time(job.created_at),
            "updated_at": go_time(),
            "job_states": [
                {
                    "task_uuid": job.task_uuid,
                    "task_name": "preheat",
                    "state": task_state,
                    "results": results,
                    "error": error,
                    "created_at": go_time(job.created_at),
                    "ttl": 0,
                }
            ],
        }

    def _cluster_json(self, cid: int) -> dict[str, Any]:
        created = go_time(self._started_at)
        return {
            "id": cid,
            "created_at": created,
            "updated_at": created,
            "is_del": 0,
            "name": self.clusters[cid],
            "bio": "",
            "config": {},
            "client_config": {},
            "scopes": {},
            "is_default": cid == min(self.clusters),
            "seed_peer_clusters": None,
            "schedulers": None,
            "peers": None,
            "jobs": None,
        }


# --------------------------------------------------------------------------- helpers


def _gin_404() -> Reply:
    return Reply.text(404, "404 page not found")


def _unprocessable(message: str) -> Reply:
    return Reply.json(422, {"errors": message})


def _go_decode(body: bytes) -> tuple[Any, str | None]:
    """json.Decoder.Decode as gin's JSON binding uses it: the first value, the rest ignored."""
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        return None, "EOF"
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    return value, None


def _canonical(name: str) -> str:
    """Go's http.CanonicalHeaderKey."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _struct_to_map(args: dict[str, Any]) -> dict[str, Any]:
    """structure.StructToMap(PreheatArgs) after CreatePreheatJob's defaults: every field of
    the struct, zero values included (strings "", slices/maps/pointers null, numbers 0)."""
    out: dict[str, Any] = {}
    for key, schema in PREHEAT_ARGS_PROPERTIES.items():
        value = args.get(key)
        if value is None:
            kind = schema["type"][0] if isinstance(schema["type"], list) else schema["type"]
            value = {"string": "", "integer": 0, "boolean": False}.get(kind)
            if key in ("piece_length", "percentage", "count"):
                value = None  # pointers
        out[key] = value
    if not out["scope"]:
        out["scope"] = "single_seed_peer"
    if not out["concurrent_task_count"]:
        out["concurrent_task_count"] = DEFAULT_CONCURRENT_TASK_COUNT
    if not out["concurrent_peer_count"]:
        out["concurrent_peer_count"] = DEFAULT_CONCURRENT_PEER_COUNT
    if not out["timeout"]:
        out["timeout"] = DEFAULT_JOB_TIMEOUT_NS
    if not out["filtered_query_params"]:
        out["filtered_query_params"] = DEFAULT_FILTERED_QUERY_PARAMS
    return dict(sorted(out.items()))  # Go marshals a map with its keys sorted


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def _registry_auth(
    client: httpx.Client,
    base: str,
    repo: str,
    username: str,
    password: str,
    pull: PullResult,
) -> tuple[str, str] | None:
    """docker's PingV2Registry and auth handlers: (Authorization for the manifest requests,
    the intercepted bearer token for the blob requests); None if the ping failed."""
    url = f"{base}/v2/"
    try:
        ping = client.get(url)
    except httpx.HTTPError as exc:
        pull.exchanges.append(Exchange("GET", url, None, repr(exc)))
        pull.errors.append(f"ping {url}: {exc!r}")
        return None
    pull.exchanges.append(Exchange("GET", url, ping.status_code))
    if ping.status_code != 401:
        return "", ""
    scheme, params = _challenge(ping.headers.get("WWW-Authenticate", ""))
    basic = ""
    if username or password:
        basic = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    if scheme == "basic":
        return basic, ""  # the interceptor only sees bearer tokens
    if scheme != "bearer" or "realm" not in params:
        return "", ""
    query = {"service": params.get("service", ""), "scope": f"repository:{repo}:pull"}
    token_url = f"{params['realm']}?{urlencode(query)}"
    try:
        answer = client.get(token_url, headers={"Authorization": basic} if basic else {})
    except httpx.HTTPError as exc:
        pull.exchanges.append(Exchange("GET", token_url, None, repr(exc)))
        pull.errors.append(f"token {token_url}: {exc!r}")
        return None
    pull.exchanges.append(Exchange("GET", token_url, answer.status_code))
    if answer.status_code != 200:
        pull.errors.append(f"token {token_url}: HTTP {answer.status_code}: {answer.text[:300]}")
        return None
    doc = answer.json()
    token = doc.get("token") or doc.get("access_token") or ""
    authorization = f"Bearer {token}"
    return authorization, authorization
