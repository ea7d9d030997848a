"""WebhookReceiver: a FAKE notification endpoint, standing in for whatever a registry's
`notifications.endpoints` point at (Harbor, Kraken, a CI hook, ...).

It is no particular product: it receives what registry:2 (docker/distribution) posts and
checks it against what registry:2 sends, so edgecache's notifications can be compared with the
real registry's. Sources (distribution/distribution, read for this fake):
- notifications/http.go: `httpSink.Write` POSTs `json.MarshalIndent(Envelope{Events: ...})`
  with Content-Type `EventsMediaType`, and treats any 2xx or 3xx answer as delivered (anything
  else is retried by the endpoint's retrying sink).
- notifications/event.go: `EventsMediaType` is `application/vnd.docker.distribution.events.
  v1+json` in registry 2.x (distribution v3 moved to `...events.v2+json`: pass
  `content_types=` to accept it); `Envelope{Events []Event json:"events,omitempty"}`;
  `Event{id, timestamp, action, target, request, actor, source}` where `target` is a
  `distribution.Descriptor` (mediaType, size, digest, urls, annotations) plus `length`,
  `repository`, `fromRepository`, `url`, `tag`, `references`; `request{id, addr, host, method,
  useragent}` (`id`, `method`, `useragent` have no omitempty: always present), `actor{name}`,
  `source{addr, instanceID}`. The struct-typed fields (`timestamp`, `target`, `request`,
  `actor`, `source`) are always written: omitempty does not omit structs. EVENT_SCHEMA below
  is that, as a JSON schema.
- notifications/bridge.go: what each action fills in: manifest and blob push/pull events
  carry `mediaType`, `digest`, `size`, `length` (== size) and `url` (`tag` on a push by tag);
  `mount` adds `fromRepository`; `delete` events carry a `digest` or a `tag` only.
  `push`/`pull`/`mount`/`delete` are the only actions.

Unknown keys are rejected (a receiver that decodes case-sensitively would silently miss a
misspelt `mediatype`). Answers: 415 for a wrong Content-Type, 400 for a body that is not such
an envelope (both kept in `.rejections`); otherwise `status` for the first `fail_first` valid
deliveries (kept in `.failed_deliveries`, to test the sender's retries), then 200 (events kept
in `.envelopes` / `.events`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

from tests.fakes import RFC3339, FakeServer, RecordedRequest, Reply

EVENTS_V1 = "application/vnd.docker.distribution.events.v1+json"
EVENTS_V2 = "application/vnd.docker.distribution.events.v2+json"  # distribution v3
ACTIONS = ("pull", "push", "mount", "delete")

_DIGEST = {"type": "string", "pattern": r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$"}
_STRING = {"type": "string"}
_DESCRIPTOR: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "mediaType": _STRING,
        "size": {"type": "integer", "minimum": 0},
        "digest": _DIGEST,
        "urls": {"type": "array", "items": _STRING},
        "annotations": {"type": "object", "additionalProperties": _STRING},
        "platform": {"type": "object"},
    },
}
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "timestamp", "action", "target", "request", "actor", "source"],
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "timestamp": {"type": "string", "pattern": RFC3339},
        "action": {"enum": list(ACTIONS)},
        "target": {
            "type": "object",
            "additionalProperties": False,
            "required": ["repository"],
            "properties": {
                **_DESCRIPTOR["properties"],
                "length": {"type": "integer", "minimum": 0},
                "repository": {"type": "string", "minLength": 1},
                "fromRepository": _STRING,
                "url": _STRING,
                "tag": _STRING,
                "references": {"type": "array", "items": _DESCRIPTOR},
            },
        },
        "request": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "method", "useragent"],
            "properties": {
                "id": _STRING,
                "addr": _STRING,
                "host": _STRING,
                "method": _STRING,
                "useragent": _STRING,
            },
        },
        "actor": {"type": "object", "additionalProperties": False, "properties": {"name": _STRING}},
        "source": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"addr": _STRING, "instanceID": _STRING},
        },
    },
}
ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["events"],
    "properties": {"events": {"type": "array", "minItems": 1, "items": EVENT_SCHEMA}},
}
_VALIDATOR = jsonschema.Draft4Validator(ENVELOPE_SCHEMA)


def envelope_problems(envelope: Any) -> list[str]:
    """Why `envelope` is not what registry:2 would send ([] when it is)."""
    problems = []
    for error in sorted(_VALIDATOR.iter_errors(envelope), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(body)"
        problems.append(f"{where}: {error.message}")
    if problems:
        return problems
    for i, event in enumerate(envelope["events"]):
        target, action = event["target"], event["action"]
        if action == "delete":
            if "digest" not in target and "tag" not in target:
                problems.append(f"events.{i}.target: a delete event names a digest or a tag")
            continue
        for key in ("mediaType", "digest", "size", "length", "url"):
            if key not in target:
                problems.append(f"events.{i}.target.{key}: missing from a {action} event")
        if "size" in target and "length" in target and target["size"] != target["length"]:
            problems.append(f"events.{i}.target.length: {target['length']} != size")
        if action == "mount" and not target.get("fromRepository"):
            problems.append(f"events.{i}.target.fromRepository: missing from a mount event")
    return problems


@dataclass
class WebhookRejection:
    status: int
    reason: str
    content_type: str | None
    body: bytes


class WebhookReceiver(FakeServer):
    """Accepts registry notification envelopes POSTed to any path; see the module docstring."""

    name = "webhook"

    def __init__(
        self,
        fail_first: int = 0,
        status: int = 500,
        *,
        content_types: Sequence[str] = (EVENTS_V1,),
    ) -> None:
        super().__init__()
        self.fail_first = fail_first
        self.status = status
        self.content_types = tuple(content_types)
        self._envelopes: list[dict[str, Any]] = []
        self._failed: list[dict[str, Any]] = []

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self._envelopes)

    @property
    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for env in self._envelopes for e in env["events"]]

    @property
    def failed_deliveries(self) -> list[dict[str, Any]]:
        """Valid envelopes answered with `status` (the first `fail_first`)."""
        with self.lock:
            return list(self._failed)

    def wait_for_events(
        self, predicate_or_n: int | Callable[[dict[str, Any]], bool], timeout: float
    ) -> list[dict[str, Any]]:
        """With an int: at least that many accepted events (all returned). With a predicate:
        at least one accepted event for which it is true (the matching ones returned)."""
        if isinstance(predicate_or_n, int):
            n = predicate_or_n

            def enough() -> list[dict[str, Any]] | None:
                events = self._all_events()
                return events if len(events) >= n else None

            if n <= 0:
                return self.events
            return self.wait_until(enough, timeout, f"{n} notification events")
        predicate = predicate_or_n
        return self.wait_until(
            lambda: [e for e in self._all_events() if predicate(e)] or None,
            timeout,
            "a notification event matching the predicate",
        )

    def _all_events(self) -> list[dict[str, Any]]:
        return [e for env in self._envelopes for e in env["events"]]

    def handle(self, request: RecordedRequest) -> Reply:
        if request.method != "POST":
            return Reply.text(405, "POST only")
        content_type = request.header("content-type")
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        if media_type not in self.content_types:
            reason = f"Content-Type {content_type!r} is not one of {list(self.content_types)}"
            return self._reject(request, 415, reason)
        if request.json_error is not None or not request.body:
            return self._reject(request, 400, f"body is not JSON: {request.json_error or 'empty'}")
        problems = envelope_problems(request.json)
        if problems:
            return self._reject(request, 400, "; ".join(problems))
        with self.lock:
            failing = len(self._failed) < self.fail_first
            (self._failed if failing else self._envelopes).append(request.json)
        self.changed()
        if failing:
            return Reply.text(self.status, "failing on purpose (fail_first)")
        return Reply(200)

    def _reject(self, request: RecordedRequest, status: int, reason: str) -> Reply:
        with self.lock:
            self._rejections.append(
                WebhookRejection(status, reason, request.header("content-type"), request.body)
            )
        self.changed()
        return Reply.text(status, reason)
