"""FakeKrakenProxy: a FAKE standing in for Kraken's proxy (registry notifications -> preheat)
and, on the same port, the Kraken agent's tag lookup.

It is not Kraken. It decodes registry notifications the way Kraken's proxy does, keeps what
it received, and does the downloads Kraken's origins would do for a preheat, from the registry
(edgecache) for real, so a test can tell what Kraken would have got.

Sources (uber/kraken, read for this fake):
- proxy/proxyserver/server.go: routes `GET /health` (`fmt.Fprintln(w, "OK")`) and
  `POST /registry/notifications` (-> PreheatHandler.Handle, wrapped by utils/handler).
- proxy/proxyserver/registry_events.go: what is decoded, with Go's case-insensitive key
  matching: `Notification{Events []Event}`, `Event{ID string json:"Id"; TimeStamp time.Time;
  Action string; Target *Target}`, `Target{MediaType, Digest, Repository, URL json:"Url",
  Tag string}`. No Content-Type check.
- proxy/proxyserver/preheat.go (newest stored version, with tracing): `Handle` decodes with
  `json.NewDecoder(r.Body).Decode` (only the first JSON value is read; a decode error is a
  500 with the text "decode body: <err>"), `filterEvents` keeps events whose
  `Target.MediaType` matches `^application/vnd.docker.distribution.manifest.v\\d\\+(json|
  prettyjws)` and whose `Action` is "push" -- so Docker schema 2 (and schema 1) manifests
  only: an OCI image manifest, an OCI index and a Docker manifest list are all IGNORED by
  upstream Kraken (a fork, shilazi/kraken, widened this; `accept_oci=True` models that). An
  event without a target makes `filterEvents` dereference a nil pointer: Go's net/http recovers
  the panic and drops the connection without an answer, which the fake does too. Then, per
  event and inside the request: `fetchManifest` (up to 4 tries 100/200/400 ms apart while the
  manifest is not found; a digest that is not sha256 fails), and for every reference
  `GetMetaInfo` in a goroutine (the origin fetches the blob). Processing errors are only
  logged: the answer is 200 (empty body) whatever happened.
- lib/backend/registrybackend/blobclient.go: how an origin downloads from a registry:
  `GET /v2/<repo>/blobs/<digest>`, and on 404 `GET /v2/<repo>/manifests/<digest>` (without an
  Accept header); the manifest itself is fetched that way too. `target.url` is never used:
  the registry address is the backend's configuration (`registry_url` here; if None, the
  scheme and host of `target.url`).
- utils/dockerutil/dockerutil.go `ParseManifest` (schemaVersion must be 2) and distribution's
  `Manifest.References()` (config first, then layers).
- agent/agentserver/server.go: `GET /tags/{tag}` (chi: one path segment, so the "repo:tag"
  must be URL-escaped) answers the digest as text, or 404 with an empty body.
- utils/handler/handler.go: how errors are written (status, then the bare message).

Simplifications: the pull headers (`pull_headers`) stand for the backend's security config;
a tag resolves once a tagged push event of it was fully pulled (real Kraken resolves tags
through build-index, filled by pushes through Kraken's own registry or, with a
`registry_tag` backend, by asking the registry); the origin cluster is one host that fetches
blobs one after the other in a background thread; content is checked against its digest (as
Kraken's content-addressed store does).

Beyond Kraken, each event is also checked against the shape registry:2 sends (id, timestamp,
action, target.mediaType/digest/repository, with the registry's key spelling); a miss is kept
in `.rejections` (kind "shape") without changing the answer, as Kraken would not notice.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from tests.fakes import RFC3339, FakeServer, RecordedRequest, Reply
from tests.fakes.registryclient import (
    DIGEST,
    Exchange,
    PullResult,
    fetch_blob,
    make_client,
    references,
)

UPSTREAM_FILTER = re.compile(r"^application/vnd.docker.distribution.manifest.v\d\+(json|prettyjws)")
OCI_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class KrakenRejection:
    kind: str  # "decode" (500), "panic" (connection dropped), "shape" (answered 200 anyway)
    status: int | None  # what the fake answered; None: no answer
    message: str
    body: bytes


@dataclass
class KrakenPull:
    """One processed push event: Kraken's origin downloading the image."""

    repository: str
    digest: str
    tag: str
    event: dict[str, Any]
    result: PullResult
    manifest_via: str = ""  # "blobs" or "manifests": the path that served the manifest
    done: bool = False

    @property
    def ok(self) -> bool:
        return self.done and self.result.ok


class FakeKrakenProxy(FakeServer):
    """Kraken proxy + agent tag API on 127.0.0.1; see the module docstring.

    pull_headers: sent with every download (Kraken's backend would hold registry credentials).
    registry_url: the registry the origin downloads from (None: target.url's scheme and host).
    accept_oci: also process OCI image manifests (NOT what uber/kraken does; see docstring).
    manifest_tries: Kraken's fetchManifest tries (100 ms, then doubling, between tries).
    """

    name = "kraken"

    def __init__(
        self,
        pull_headers: Mapping[str, str] | None = None,
        registry_url: str | None = None,
        *,
        accept_oci: bool = False,
        manifest_tries: int = 4,
        verify: str | bool = True,
    ) -> None:
        super().__init__()
        self.pull_headers = dict(pull_headers or {})
        self.registry_url = registry_url.rstrip("/") if registry_url else None
        self.accept_oci = accept_oci
        self.manifest_tries = manifest_tries
        self.verify = verify
        self._events: list[dict[str, Any]] = []
        self._ignored: list[tuple[dict[str, Any], str]] = []
        self._pulls: list[KrakenPull] = []
        self._tags: dict[str, str] = {}

    # -- what happened

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event of every decoded notification, as received."""
        with self.lock:
            return list(self._events)

    @property
    def ignored(self) -> list[tuple[dict[str, Any], str]]:
        """(event, why) for the events Kraken's filter drops."""
        with self.lock:
            return list(self._ignored)

    @property
    def pulls(self) -> list[KrakenPull]:
        with self.lock:
            return list(self._pulls)

    @property
    def tags(self) -> dict[str, str]:
        with self.lock:
            return dict(self._tags)

    def wait_for_pulls(self, n: int, timeout: float) -> list[KrakenPull]:
        """At least n pulls finished (successfully or not); returns the finished ones."""

        def finished() -> list[KrakenPull] | None:
            done = [p for p in self._pulls if p.done]
            return done if len(done) >= n else None

        if n <= 0:
            return [p for p in self.pulls if p.done]
        return self.wait_until(finished, timeout, f"{n} Kraken preheat pulls to finish")

    def wait_for_events(self, n: int, timeout: float) -> list[dict[str, Any]]:
        if n <= 0:
            return self.events
        return self.wait_until(
            lambda: list(self._events) if len(self._events) >= n else None,
            timeout,
            f"{n} notification events",
        )

    # -- HTTP

    def handle(self, request: RecordedRequest) -> Reply:
        path = urlsplit(request.path).path
        if path == "/health":
            return Reply.text(200, "OK\n") if request.method == "GET" else Reply(405)
        if path == "/registry/notifications":
            return self._notification(request) if request.method == "POST" else Reply(405)
        if path.startswith("/tags/"):
            raw = urlsplit(request.path).path[len("/tags/") :]
            if request.method != "GET":
                return Reply(405)
            if not raw or "/" in raw:
                return Reply.text(404, "404 page not found\n")
            with self.lock:
                digest = self._tags.get(unquote(raw))
            return Reply.text(200, digest) if digest else Reply(404)
        return Reply.text(404, "404 page not found\n")

    def _reject(self, kind: str, status: int | None, message: str, body: bytes) -> None:
        with self.lock:
            self._rejections.append(KrakenRejection(kind, status, message, body))
        self.changed()

    def _notification(self, request: RecordedRequest) -> Reply:
        events, error = go_decode_notification(request.body)
        if error is not None:
            self._reject("decode", 500, f"decode body: {error}", request.body)
            return Reply.text(500, f"decode body: {error}")
        with self.lock:
            self._events.extend(e if isinstance(e, dict) else {} for e in events)
        self.changed()
        for event in events:
            if _go_field(event, "target") is None:
                message = "filterEvents: nil pointer dereference (event without a target)"
                self._reject("panic", None, message, request.body)
                return Reply(0, drop=True)
        for problem in registry_shape_problems(events):
            self._reject("shape", 200, problem, request.body)
        for event in events:
            target = _go_field(event, "target")
            media_type = str(_go_field(target, "mediatype") or "")
            action = str(_go_field(event, "action") or "")
            wanted = UPSTREAM_FILTER.match(media_type) is not None or (
                self.accept_oci and media_type == OCI_IMAGE_MANIFEST
            )
            if not wanted:
                self._ignore(event, f"media type {media_type!r} is not a Docker v2 manifest")
            elif action != "push":
                self._ignore(event, f"action {action!r} is not push")
            else:
                self._process(event, target)
        return Reply(200)

    def _ignore(self, event: dict[str, Any], why: str) -> None:
        with self.lock:
            self._ignored.append((event, why))
        self.changed()

    def _process(self, event: dict[str, Any], target: dict[str, Any]) -> None:
        repo = str(_go_field(target, "repository") or "")
        digest = str(_go_field(target, "digest") or "")
        tag = str(_go_field(target, "tag") or "")
        base = self.registry_url or _origin(str(_go_field(target, "url") or ""))
        pull = KrakenPull(repo, digest, tag, event, PullResult(f"{base}/v2/{repo}@{digest}"))
        pull.result.base, pull.result.repository, pull.result.reference = base, repo, digest
        with self.lock:
            self._pulls.append(pull)
        self.changed()
        refs = self._fetch_manifest(pull) if base else None
        if not base:
            pull.result.errors.append("no registry address (registry_url, target.url)")
        if refs is None:
            self._finish(pull)
            return
        self.spawn(lambda: self._fetch_blobs(pull, refs), f"pull-{repo}@{digest[:19]}")

    def _fetch_manifest(self, pull: KrakenPull) -> list[dict[str, Any]] | None:
        """preheat.go fetchManifest, through the registry_blob backend (synchronous)."""
        result = pull.result
        if not DIGEST.match(pull.digest):
            result.errors.append(f"Error parse digest: {pull.digest!r}")
            return None
        raw: bytes | None = None
        interval = 0.1
        with make_client(self.verify, 60.0) as client:
            for attempt in range(self.manifest_tries):
                if attempt:
                    # Kraken's own back-off between tries, not a test synchronisation.
                    if self.stopping.wait(interval):
                        break
                    interval *= 2
                for via in ("blobs", "manifests"):
                    url = f"{result.base}/v2/{pull.repository}/{via}/{pull.digest}"
                    status, body = _download(client, url, self.pull_headers, result)
                    if status == 200:
                        raw, pull.manifest_via = body, via
                        break
                    if status != 404:
                        result.errors.append(f"download manifest: GET {url}: HTTP {status}")
                        return None
                if raw is not None:
                    break
        if raw is None:
            result.errors.append("manifest not found")
            return None
        got = "sha256:" + hashlib.sha256(raw).hexdigest()
        if got != pull.digest:
            result.errors.append(f"manifest content is {got}, not {pull.digest}")
            return None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            result.errors.append(f"parse manifest: {exc}")
            return None
        if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
            result.errors.append("parse manifest: unsupported schema version")
            return None
        result.manifest_digests.append(got)
        result.manifest_media_types.append(str(doc.get("mediaType", "")))
        return references(doc)

    def _fetch_blobs(self, pull: KrakenPull, refs: list[dict[str, Any]]) -> None:
        with make_client(self.verify, 60.0) as client:
            for desc in refs:
                if self.stopping.is_set():
                    pull.result.errors.append("stopped before every blob was fetched")
                    break
                digest = str(desc.get("digest", ""))
                size = desc.get("size")
                fetch_blob(
                    client,
                    f"{pull.result.base}/v2/{pull.repository}/blobs/{digest}",
                    self.pull_headers,
                    digest,
                    size if isinstance(size, int) else None,
                    str(desc.get("mediaType", "")),
                    pull.result,
                )
        self._finish(pull)

    def _finish(self, pull: KrakenPull) -> None:
        with self.lock:
            pull.done = True
            if pull.result.ok and pull.tag:
                self._tags[f"{pull.repository}:{pull.tag}"] = pull.digest
        self.changed()


# ------------------------------------------------------------------------------ decoding


def _go_field(obj: Any, name: str) -> Any:
    """encoding/json's key matching: exact name, else a case-insensitive match."""
    if not isinstance(obj, dict):
        return None
    if name in obj:
        return obj[name]
    found = None
    for key, value in obj.items():
        if key.lower() == name.lower():
            found = value
    return found


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "bool"}.get(type(value), "number")


def go_decode_notification(body: bytes) -> tuple[list[Any], str | None]:
    """What `json.NewDecoder(r.Body).Decode(&notification)` makes of the body: the events
    (dicts, or None for a null element) or the error text Kraken would answer with."""
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        return [], "EOF"
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError as exc:
        return [], f"invalid JSON: {exc}"
    if value is None:
        return [], None
    if not isinstance(value, dict):
        return [], f"json: cannot unmarshal {_kind(value)} into Go value of type Notification"
    events = _go_field(value, "events")
    if events is None:
        return [], None
    if not isinstance(events, list):
        return [], f"json: cannot unmarshal {_kind(events)} into Go struct field Events"
    for event in events:
        if event is None:
            continue
        if not isinstance(event, dict):
            return [], f"json: cannot unmarshal {_kind(event)} into Go value of type Event"
        for name in ("id", "action"):
            v = _go_field(event, name)
            if v is not None and not isinstance(v, str):
                return [], f"json: cannot unmarshal {_kind(v)} into Go struct field Event.{name}"
        stamp = _go_field(event, "timestamp")
        if stamp is not None:
            if not isinstance(stamp, str):
                return [], f"json: cannot unmarshal {_kind(stamp)} into Go struct field TimeStamp"
            if not re.match(RFC3339, stamp):
                return [], f'parsing time "{stamp}" as "2006-01-02T15:04:05Z07:00"'
        target = _go_field(event, "target")
        if target is not None and not isinstance(target, dict):
            return [], f"json: cannot unmarshal {_kind(target)} into Go struct field Target"
        for name in ("mediatype", "digest", "repository", "url", "tag"):
            v = _go_field(target, name)
            if v is not None and not isinstance(v, str):
                return [], f"json: cannot unmarshal {_kind(v)} into Go struct field Target.{name}"
    return events, None


def registry_shape_problems(events: list[Any]) -> list[str]:
    """How the events differ from what registry:2 sends (its own key spelling)."""
    problems = []
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            problems.append(f"events[{i}]: not an object")
            continue
        for key in ("id", "timestamp", "action", "target"):
            if not event.get(key):
                problems.append(f"events[{i}].{key}: missing")
        target = event.get("target")
        if isinstance(target, dict):
            for key in ("mediaType", "digest", "repository"):
                if not isinstance(target.get(key), str) or not target.get(key):
                    problems.append(f"events[{i}].target.{key}: missing")
    return problems


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def _download(
    client: httpx.Client, url: str, headers: Mapping[str, str], result: PullResult
) -> tuple[int | None, bytes]:
    try:
        response = client.get(url, headers=dict(headers))
    except httpx.HTTPError as exc:
        result.exchanges.append(Exchange("GET", url, None, repr(exc)))
        return None, b""
    result.exchanges.append(Exchange("GET", url, response.status_code))
    return response.status_code, response.content
