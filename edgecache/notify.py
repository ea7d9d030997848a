"""Registry notifications: the webhook events registry:2 (distribution) sends, delivered to
endpoints that may be slow, down or gone without ever slowing a client.

Wire format, as distribution v2.8 (the `docker-registry` Debian package, what receivers written
for registry:2 parse) sends it; sources in distribution/distribution:
- `notifications/event.go`: Event, Envelope, RequestRecord, ActorRecord, SourceRecord and their
  JSON tags. The media type is application/vnd.docker.distribution.events.v1+json (v3 renamed
  it ...events.v2+json with the same fields). Go's `omitempty` does nothing to a struct, so
  target, request, actor and source are always present, and request id, method and useragent
  have no omitempty: a request-less event still carries them, empty.
- `blobs.go` Descriptor: the target begins with mediaType, size, digest (urls, annotations,
  platform), then length (= size), repository, url, tag.
- `notifications/bridge.go`: a push or pull names the content by digest in url
  (<base>/v2/<repo>/manifests|blobs/<digest>) and the tag it went by; a delete carries only
  repository and digest (or tag); timestamps are time.Now() marshalled as RFC 3339 with
  nanoseconds, trailing zeros dropped; ids are random UUIDs.
- `notifications/http.go`: one POST per envelope, json.MarshalIndent(envelope, "", "   "),
  Content-Type the events media type, the endpoint's static headers added; any 2xx or 3xx
  answer is delivered, anything else or a transport error is a failure retried by the caller.
- `notifications/endpoint.go`, `notifications/sinks.go`: per endpoint an in-memory queue in
  front of a retrying sink, filtered by ignored actions and target media types.
- `configuration/configuration.go` Notifications/Endpoint: name, url, headers, timeout,
  backoff, ignoredmediatypes, ignore.actions (spelt ignored_media_types, ignored_actions here).

Mechanism: emit() runs on the trio thread inside request handling, so it only appends to each
interested endpoint's bounded deque (the oldest event makes room when it is full) and wakes
that endpoint's sender. Each endpoint has one sender task with its own client, so a dead or
hanging receiver holds up nothing but its own queue. A sender posts the head of its queue, up
to MAX_BATCH events, and removes them only once the receiver took them; a failed batch is
retried as is (never with newer events added, so order holds; less any event a full queue
pushed out meanwhile) after a doubling, capped, jittered delay. Delivery is at least once: a
receiver that took a batch but answered too late gets it again, and event ids are there to
deduplicate (as distribution's docs say). Queues live in memory only, as in registry:2: events
still queued at shutdown are lost.

Endpoint headers (tokens) and URL userinfo never reach a log line or status(): URLs are shown
without userinfo, header values not at all.
"""

from __future__ import annotations

import collections
import difflib
import functools
import itertools
import json
import logging
import random
import re
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio

from . import __version__
from .configvalues import ConfigError
from .oci import mediatypes

MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
ACTIONS = ("pull", "push", "mount", "delete")
# Events per POST: one request per event would take a registry-sized burst (a 40-layer pull is
# 41 events) a round trip each, and one envelope per 100 keeps bodies well under 100 KiB.
MAX_BATCH = 100
MAX_QUEUE = 1_000_000

log = logging.getLogger("edgecache.notify")


@dataclass(frozen=True, repr=False)
class Endpoint:
    """One receiver of events ([[notifications.endpoints]] in the config)."""

    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    timeout: float = 5.0
    backoff: float = 1.0  # the first retry's delay; doubles up to max_backoff
    max_backoff: float = 60.0
    queue: int = 1000  # events held while the endpoint is down; the oldest go first
    ignored_actions: tuple[str, ...] = ()
    ignored_media_types: tuple[str, ...] = ()
    ca_file: str = ""

    @property
    def safe_url(self) -> str:
        """The URL without userinfo: what logs and status() show."""
        return redact_url(self.url)

    def __repr__(self) -> str:
        return (
            f"Endpoint(name={self.name!r}, url={self.safe_url!r}, "
            f"headers=<{len(self.headers)} hidden>, timeout={self.timeout!r}, "
            f"backoff={self.backoff!r}, max_backoff={self.max_backoff!r}, queue={self.queue!r}, "
            f"ignored_actions={self.ignored_actions!r}, "
            f"ignored_media_types={self.ignored_media_types!r}, ca_file={self.ca_file!r})"
        )


def redact_url(url: str) -> str:
    """The endpoint as logs and status show it: scheme, host and port only (webhook URLs
    often carry their secret in the path or the query, as Slack's do, or in userinfo)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an endpoint URL>"
    host = parts.netloc.rpartition("@")[2]
    shown = urlunsplit((parts.scheme, host, "", "", ""))
    return shown + "/..." if parts.path.strip("/") or parts.query else shown


# --- configuration ---------------------------------------------------------------------------

_WHERE = "notifications.endpoints"
_KEYS = tuple(item.name for item in fields(Endpoint))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 token)
_SET_BY_US = frozenset({"content-type", "content-length", "transfer-encoding", "host"})


def parse_endpoints(raw: object) -> tuple[Endpoint, ...]:
    """The endpoints of `[[notifications.endpoints]]` tables, checked; None means none."""
    if raw is None:
        return ()
    if isinstance(raw, dict):
        raise ConfigError(
            f"{_WHERE}: got one table, expected a list of tables: write "
            "[[notifications.endpoints]] (two brackets), once per endpoint"
        )
    if not isinstance(raw, list):
        raise ConfigError(
            f"{_WHERE} = {raw!r}: expected a list of tables, one [[notifications.endpoints]] "
            "per endpoint"
        )
    endpoints: list[Endpoint] = []
    names: dict[str, str] = {}
    for index, table in enumerate(raw):
        where = f"{_WHERE}[{index}]"
        endpoint = _endpoint(where, table)
        if endpoint.name in names:
            raise ConfigError(
                f"{where}.name = {endpoint.name!r}: already the name of {names[endpoint.name]}; "
                "expected a unique name"
            )
        names[endpoint.name] = where
        endpoints.append(endpoint)
    return tuple(endpoints)


def _endpoint(where: str, table: object) -> Endpoint:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} = {table!r}: expected a table with at least name and url")
    for key in table:
        if key not in _KEYS:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"{where}.{key}: unknown key (expected one of {', '.join(_KEYS)}){hint}"
            )
    for key in ("name", "url"):
        if key not in table:
            raise ConfigError(f"{where}: {key} is required")
    name = table["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}.name = {name!r}: expected 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    values: dict[str, Any] = {"name": name, "url": _url(f"{where}.url", table["url"])}
    if "headers" in table:
        values["headers"] = _headers(f"{where}.headers", table["headers"])
    for key in ("timeout", "backoff", "max_backoff"):
        if key in table:
            values[key] = _seconds(f"{where}.{key}", table[key])
    if "queue" in table:
        queue = table["queue"]
        if isinstance(queue, bool) or not isinstance(queue, int) or not 1 <= queue <= MAX_QUEUE:
            raise ConfigError(
                f"{where}.queue = {queue!r}: expected a number of events from 1 to {MAX_QUEUE}"
            )
        values["queue"] = queue
    if "ignored_actions" in table:
        actions = _strings(f"{where}.ignored_actions", table["ignored_actions"])
        for action in actions:
            if action not in ACTIONS:
                raise ConfigError(
                    f"{where}.ignored_actions = {list(actions)!r}: {action!r} is not an action "
                    f"(expected any of {', '.join(ACTIONS)})"
                )
        values["ignored_actions"] = actions
    if "ignored_media_types" in table:
        values["ignored_media_types"] = _strings(
            f"{where}.ignored_media_types", table["ignored_media_types"]
        )
    if "ca_file" in table:
        values["ca_file"] = _ca_file(f"{where}.ca_file", table["ca_file"])
    endpoint = Endpoint(**values)
    if endpoint.max_backoff < endpoint.backoff:
        raise ConfigError(
            f"{where}.max_backoff = {endpoint.max_backoff:g}: expected at least backoff "
            f"({endpoint.backoff:g} seconds)"
        )
    return endpoint


def _url(where: str, value: object) -> str:
    expected = (
        "expected an http:// or https:// URL with a host, e.g. https://hooks.example/registry"
    )
    if not isinstance(value, str):
        raise ConfigError(f"{where} = {value!r}: {expected}")
    shown = redact_url(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number < 65536
        httpx.URL(value)
    except (ValueError, httpx.InvalidURL):
        raise ConfigError(f"{where} = {shown!r}: {expected}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or value != value.strip():
        raise ConfigError(f"{where} = {shown!r}: {expected}")
    return value


def _headers(where: str, value: object) -> dict[str, str]:
    # Values are secrets (tokens): messages name the header, never show its value.
    if not isinstance(value, dict):
        raise ConfigError(f"{where} = <hidden>: expected a table of header name = value")
    headers: dict[str, str] = {}
    for name, item in value.items():
        if not _TOKEN.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is not a valid HTTP header name")
        if name.lower() in _SET_BY_US:
            raise ConfigError(f"{where}.{name}: set by edgecache on every request, not here")
        if isinstance(item, list) and item and all(isinstance(v, str) for v in item):
            item = ", ".join(item)  # distribution's form: a list of values
        if not isinstance(item, str) or any(c in item for c in "\r\n\0"):
            raise ConfigError(
                f"{where}.{name} = <hidden>: expected a string (or a list of strings) "
                "without line breaks"
            )
        headers[name] = item
    return headers


def _seconds(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{where} = {value!r}: expected a positive number of seconds")
    return float(value)


def _strings(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} = {value!r}: expected a list of strings")
    return tuple(value)


def _ca_file(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} = {value!r}: expected the path of a PEM file")
    if value:
        if not Path(value).is_file():
            raise ConfigError(f"{where} = {value!r}: expected a PEM file of CA certificates")
        try:
            ssl.create_default_context(cafile=value)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{where} = {value!r}: expected a PEM file of CA certificates ({exc})"
            ) from None
    return value


# --- events ----------------------------------------------------------------------------------


def make_event(
    action: str,
    repository: str,
    descriptor: Mapping[str, Any],
    *,
    tag: str | None,
    base_url: str,
    request: Mapping[str, str] | None,
    actor: str | None,
    source: Mapping[str, str],
) -> dict[str, Any]:
    """One registry:2 Event, keys in Go's order, empty fields left out where Go's omitempty
    leaves them out. `descriptor` is an OCI descriptor (mediaType, size, digest, ...); a
    "delete" names only repository and digest, or repository and tag (bridge.go)."""
    digest = str(descriptor.get("digest") or "")
    target: dict[str, Any] = {}
    if action == "delete":
        _put(target, "digest", digest)
        _put(target, "repository", repository)
    else:
        media_type = str(descriptor.get("mediaType") or "")
        size = int(descriptor.get("size") or 0)
        _put(target, "mediaType", media_type)
        _put(target, "size", size)
        _put(target, "digest", digest)
        _put(target, "urls", list(descriptor.get("urls") or ()))
        _put(target, "annotations", dict(descriptor.get("annotations") or {}))
        _put(target, "platform", descriptor.get("platform"))
        _put(target, "length", size)
        _put(target, "repository", repository)
        if digest and base_url:
            kind = "manifests" if _is_manifest(media_type) else "blobs"
            target["url"] = f"{base_url.rstrip('/')}/v2/{repository}/{kind}/{digest}"
    _put(target, "tag", tag)
    req = request or {}
    record: dict[str, str] = {"id": req.get("id", "")}
    _put(record, "addr", req.get("addr"))
    _put(record, "host", req.get("host"))
    record["method"] = req.get("method", "")
    record["useragent"] = req.get("useragent", "")
    origin: dict[str, str] = {}
    _put(origin, "addr", source.get("addr"))
    _put(origin, "instanceID", source.get("instanceID"))
    event: dict[str, Any] = {"id": str(uuid.uuid4()), "timestamp": go_timestamp(time.time_ns())}
    _put(event, "action", action)
    event.update(target=target, request=record, actor={}, source=origin)
    _put(event["actor"], "name", actor)
    return event


def _put(record: dict[str, Any], key: str, value: Any) -> None:
    if value:  # omitempty: "", 0, None, empty list or map
        record[key] = value


def _is_manifest(media_type: str) -> bool:
    return mediatypes.is_manifest_type(media_type) or (
        mediatypes.base_type(media_type) in mediatypes.SCHEMA1_TYPES
    )


def go_timestamp(ns: int) -> str:
    """UTC time as Go's time.Time marshals it (RFC 3339, nanoseconds, no trailing zeros)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def encode_envelope(events: Sequence[Mapping[str, Any]]) -> bytes:
    """The body http.go posts: json.MarshalIndent(envelope, "", "   "), with Go's escapes
    (those characters only ever occur inside strings, so replacing them is safe)."""
    try:
        text = json.dumps({"events": list(events)}, indent=3, ensure_ascii=False)
        for raw, escaped in _GO_ESCAPES:
            text = text.replace(raw, escaped)
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: \u-escape everything instead
        return json.dumps({"events": list(events)}, indent=3).encode()


# --- delivery --------------------------------------------------------------------------------


def retry_delay(endpoint: Endpoint, failures: int, jitter: float) -> float:
    """Seconds to wait after `failures` (>= 1) failed attempts in a row: backoff doubled per
    failure up to max_backoff, +-20% by `jitter` (0..1) so that endpoints failing together do
    not retry in lockstep, never above max_backoff."""
    base = min(endpoint.max_backoff, endpoint.backoff * 2 ** min(failures - 1, 64))
    return min(endpoint.max_backoff, base * (0.8 + 0.4 * jitter))


@dataclass(eq=False)
class _Queued:
    seq: int
    event: dict[str, Any]
    at: float  # time.monotonic() when emitted


class _Channel:
    """One endpoint's queue, counters and sender state."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.queue: collections.deque[_Queued] = collections.deque()
        self.wake = trio.Event()
        self.next_seq = 0
        # The last seq of the batch on the wire (or to retry); None: take a new one.
        self.batch_end: int | None = None
        self.sent = 0
        self.failed_attempts = 0
        self.dropped = 0
        self.last_error = ""
        self.last_success: float | None = None
        self.failures_in_row = 0
        self.failing_since: float | None = None
        self.overflowing = False

    def batch(self) -> list[_Queued]:
        if self.batch_end is None or self.queue[0].seq > self.batch_end:
            self.batch_end = self.queue[min(MAX_BATCH, len(self.queue)) - 1].seq
        end = self.batch_end
        return list(itertools.takewhile(lambda item: item.seq <= end, self.queue))

    def scrub(self, text: str) -> str:
        """`text` without the endpoint's secrets, should a library message ever quote them."""
        text = text.replace(self.endpoint.url, self.endpoint.safe_url)
        secrets = [urlsplit(self.endpoint.url).password, *self.endpoint.headers.values()]
        for value in secrets:
            if value:
                text = text.replace(value, "<hidden>")
        return text


def _ignore_result(endpoint: str, result: str) -> None:
    pass


class Notifier:
    """Queues events per endpoint (emit) and delivers them (run, in the server's nursery).

    on_result(endpoint_name, result) feeds metrics: "sent" once per event delivered,
    "dropped" once per event pushed out of a full queue, "failed" once per failed attempt.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        on_result: Callable[[str, str], None] = _ignore_result,
    ) -> None:
        self._channels = [_Channel(endpoint) for endpoint in endpoints]
        self._on_result = on_result
        self._running = False
        self._callback_failed = False

    def emit(self, event: dict[str, Any]) -> None:
        """Queue `event` for every endpoint that wants it. Never blocks, never raises; call it
        from the trio thread (it wakes trio tasks)."""
        try:
            action = event.get("action", "")
            media_type = (event.get("target") or {}).get("mediaType", "")
            now = time.monotonic()
            for channel in self._channels:
                endpoint = channel.endpoint
                if action in endpoint.ignored_actions or media_type in endpoint.ignored_media_types:
                    continue
                if len(channel.queue) >= endpoint.queue:
                    channel.queue.popleft()
                    channel.dropped += 1
                    self._report(endpoint.name, "dropped")
                    if not channel.overflowing:
                        channel.overflowing = True
                        log.warning(
                            "notifications: endpoint %s (%s) has %d events queued, its limit; "
                            "dropping the oldest until it catches up",
                            endpoint.name,
                            endpoint.safe_url,
                            endpoint.queue,
                        )
                channel.queue.append(_Queued(channel.next_seq, event, now))
                channel.next_seq += 1
                channel.wake.set()
        except Exception:
            log.exception("notifications: cannot queue an event")

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver queued events until cancelled: one sender task per endpoint."""
        if self._running:
            raise RuntimeError("Notifier.run() is already running")
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                for channel in self._channels:
                    endpoint = channel.endpoint
                    log.info(
                        "notifications: sending events to %s (%s)",
                        endpoint.name,
                        endpoint.safe_url,
                    )
                    nursery.start_soon(self._sender, channel, name=f"notify {endpoint.name}")
                task_status.started()
        finally:
            self._running = False

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "name": channel.endpoint.name,
                "url": channel.endpoint.safe_url,
                "queued": len(channel.queue),
                "sent": channel.sent,
                "failed_attempts": channel.failed_attempts,
                "dropped": channel.dropped,
                "last_error": channel.last_error,
                "last_success": channel.last_success,
                # Seconds the oldest queued event has waited; None when nothing is queued.
                "pending_since": round(now - channel.queue[0].at, 3) if channel.queue else None,
            }
            for channel in self._channels
        ]

    async def _sender(self, channel: _Channel) -> None:
        endpoint = channel.endpoint
        while True:
            try:
                # Loading CA roots reads files: not on the event loop.
                verify = await trio.to_thread.run_sync(_ssl_context, endpoint.ca_file)
                break
            except (OSError, ssl.SSLError) as exc:
                self._failed(channel, f"cannot load ca_file {endpoint.ca_file!r}: {exc}")
                await self._pause(channel)
        headers = {"User-Agent": f"edgecache/{__version__}", **endpoint.headers}
        # follow_redirects=False: a 3xx already counts as delivered (http.go accepts 2xx and
        # 3xx), and following it would carry the endpoint's headers to another origin.
        async with httpx.AsyncClient(
            verify=verify, timeout=endpoint.timeout, headers=headers, follow_redirects=False
        ) as client:
            while True:
                while not channel.queue:
                    channel.wake = trio.Event()
                    await channel.wake.wait()
                batch = channel.batch()
                error = await self._attempt(client, channel, batch)
                if error is None:
                    self._delivered(channel, len(batch))
                else:
                    self._failed(channel, error)
                    await self._pause(channel)

    async def _attempt(
        self, client: httpx.AsyncClient, channel: _Channel, batch: list[_Queued]
    ) -> str | None:
        """None if the receiver took the batch, else why not."""
        endpoint = channel.endpoint
        body = encode_envelope([item.event for item in batch])
        with trio.move_on_after(endpoint.timeout):
            try:
                # stream(): the answer's body is never read (http.go ignores it too).
                async with client.stream(
                    "POST", endpoint.url, content=body, headers={"Content-Type": MEDIA_TYPE}
                ) as response:
                    status = response.status_code
                    reason = response.reason_phrase or httpx.codes.get_reason_phrase(status)
            except httpx.TransportError as exc:
                return channel.scrub(_describe(exc))
            except Exception as exc:  # a sender that died would end the server's nursery
                return channel.scrub(f"{type(exc).__name__}: {exc}")
            if 200 <= status < 400:
                return None
            return f"HTTP {status} {reason}".rstrip()
        return f"no answer within {endpoint.timeout:g} s"

    def _delivered(self, channel: _Channel, count: int) -> None:
        endpoint = channel.endpoint
        end = channel.batch_end
        assert end is not None
        while channel.queue and channel.queue[0].seq <= end:
            channel.queue.popleft()
        channel.batch_end = None
        channel.sent += count
        channel.last_success = time.time()
        if not channel.queue:
            channel.overflowing = False
        if channel.failing_since is not None:
            log.info(
                "notifications: endpoint %s (%s) recovered after %d failed attempts in %.1f s",
                endpoint.name,
                endpoint.safe_url,
                channel.failures_in_row,
                time.monotonic() - channel.failing_since,
            )
            channel.failing_since = None
        channel.failures_in_row = 0
        for _ in range(count):
            self._report(endpoint.name, "sent")

    def _failed(self, channel: _Channel, error: str) -> None:
        endpoint = channel.endpoint
        channel.failed_attempts += 1
        channel.failures_in_row += 1
        channel.last_error = error
        if channel.failing_since is None:
            channel.failing_since = time.monotonic()
            # Once per outage: a dead receiver retried every minute for a day is one line.
            log.warning(
                "notifications: endpoint %s (%s) is failing: %s; %d events queued, retrying "
                "every %g s at most until it answers",
                endpoint.name,
                endpoint.safe_url,
                error,
                len(channel.queue),
                endpoint.max_backoff,
            )
        self._report(endpoint.name, "failed")

    async def _pause(self, channel: _Channel) -> None:
        await trio.sleep(retry_delay(channel.endpoint, channel.failures_in_row, random.random()))

    def _report(self, endpoint: str, result: str) -> None:
        try:
            self._on_result(endpoint, result)
        except Exception:
            if not self._callback_failed:  # once: it would fail for every event
                self._callback_failed = True
                log.exception("notifications: the on_result callback failed")


def _describe(exc: httpx.TransportError) -> str:
    # Not upstream.session's describe_transport_error: that module imports the configuration,
    # which will import this one.
    detail = str(exc) or type(exc).__name__
    seen: BaseException | None = exc
    for _ in range(8):  # what TLS said, when it is why (httpx's own message is often empty)
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({seen.verify_message or seen})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS failed ({seen.reason or seen})"
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({detail})"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed ({detail})"
    return f"connection lost ({type(exc).__name__}: {detail})"


@functools.lru_cache(maxsize=16)
def _ssl_context(ca_file: str) -> ssl.SSLContext:
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return httpx.create_ssl_context()
