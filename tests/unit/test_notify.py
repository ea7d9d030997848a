"""edgecache.notify: the registry:2 event format, and delivery to real HTTP receivers (a small
trio + h11 server in this process) that fail, hang or are not there at all."""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import h11
import pytest
import trio

from edgecache.configvalues import ConfigError
from edgecache.notify import (
    MEDIA_TYPE,
    Endpoint,
    Notifier,
    encode_envelope,
    go_timestamp,
    make_event,
    parse_endpoints,
    retry_delay,
)

DIGEST = "sha256:" + "ab" * 32
SOURCE = {"addr": "edge-1:5000", "instanceID": "3f1b2c4d-0000-4000-8000-000000000001"}
HANG = -1  # receiver answers: never answer
DROP = 0  # receiver answers: close the connection without an answer


class Signal:
    """Wake waiters whenever something changed; they re-check their condition."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(5):
            while not condition():
                await self._event.wait()


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        return json.loads(self.body)["events"]

    @property
    def ids(self) -> list[str]:
        return [event["id"] for event in self.events]


class Receiver:
    """An HTTP/1.1 webhook receiver; `answer(index, request)` picks each request's status
    (or HANG, DROP). It runs on the test's trio thread, so it may call Notifier.emit."""

    def __init__(self, answer: Callable[[int, Received], int] = lambda i, r: 200) -> None:
        self.answer = answer
        self.requests: list[Received] = []  # every request, in arrival order
        self.accepted: list[Received] = []  # those answered 2xx or 3xx
        self.changed = Signal()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def accepted_ids(self) -> list[str]:
        return [i for request in self.accepted for i in request.ids]

    async def start(self, nursery: trio.Nursery) -> Receiver:
        serve = functools.partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read(conn, stream)
                if request is None:
                    return
                status = self.answer(len(self.requests), request)
                self.requests.append(request)
                if 200 <= status < 400:
                    self.accepted.append(request)
                self.changed.notify()
                if status == HANG:
                    await trio.sleep_forever()
                if status == DROP:
                    return
                headers = [("Content-Length", "0")]
                if 300 <= status < 400:
                    headers.append(("Location", "/elsewhere"))
                data = conn.send(h11.Response(status_code=status, headers=headers))
                await stream.send_all(data + conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    @staticmethod
    async def _read(conn: h11.Connection, stream: trio.SocketStream) -> Received | None:
        head: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                headers = {k.decode().lower(): v.decode() for k, v in head.headers}
                return Received(head.method.decode(), head.target.decode(), headers, body)
            else:  # ConnectionClosed
                return None


class Results:
    """An on_result callback that records and signals."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.changed = Signal()

    def __call__(self, endpoint: str, result: str) -> None:
        self.seen.append((endpoint, result))
        self.changed.notify()

    def count(self, endpoint: str, result: str) -> int:
        return self.seen.count((endpoint, result))


def event(n: int, action: str = "push", media_type: str = "application/octet-stream") -> dict:
    return make_event(
        action,
        "library/app",
        {"mediaType": media_type, "size": 100 + n, "digest": f"sha256:{n:064x}"},
        tag=None,
        base_url="http://edge:5000",
        request={"id": f"req-{n}", "method": "GET", "useragent": "test/1"},
        actor=None,
        source=SOURCE,
    )


def fast(name: str, url: str, **kwargs: Any) -> Endpoint:
    """An endpoint whose retries take milliseconds, not seconds."""
    return Endpoint(name, url, **{"backoff": 0.001, "max_backoff": 0.004, **kwargs})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the event format ------------------------------------------------------------------------


def test_manifest_push_event_has_the_registry2_fields_in_go_order() -> None:
    made = make_event(
        "push",
        "library/nginx",
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1234, "digest": DIGEST},
        tag="1.27",
        base_url="https://edge.example:5000/",
        request={
            "id": "req-1",
            "addr": "10.0.0.7:40312",
            "host": "edge.example:5000",
            "method": "PUT",
            "useragent": "containerd/2.0",
        },
        actor="alice",
        source=SOURCE,
    )
    assert uuid.UUID(made.pop("id")).version == 4
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z", made.pop("timestamp"))
    assert made == {
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 1234,
            "digest": DIGEST,
            "length": 1234,
            "repository": "library/nginx",
            "url": f"https://edge.example:5000/v2/library/nginx/manifests/{DIGEST}",
            "tag": "1.27",
        },
        "request": {
            "id": "req-1",
            "addr": "10.0.0.7:40312",
            "host": "edge.example:5000",
            "method": "PUT",
            "useragent": "containerd/2.0",
        },
        "actor": {"name": "alice"},
        "source": SOURCE,
    }
    assert list(made["target"]) == [
        "mediaType",
        "size",
        "digest",
        "length",
        "repository",
        "url",
        "tag",
    ]


def test_empty_fields_are_left_out_as_go_omitempty_does() -> None:
    made = make_event(
        "pull",
        "library/nginx",
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 0, "digest": DIGEST},
        tag=None,
        base_url="http://edge:5000",
        request=None,
        actor=None,
        source={},
    )
    assert made["target"] == {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": DIGEST,
        "repository": "library/nginx",
        "url": f"http://edge:5000/v2/library/nginx/blobs/{DIGEST}",
    }
    # Go's omitempty never drops a struct, and id, method, useragent have no omitempty.
    assert made["request"] == {"id": "", "method": "", "useragent": ""}
    assert made["actor"] == {}
    assert made["source"] == {}


def test_delete_events_name_only_repository_and_digest_or_tag() -> None:
    descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DIGEST}
    common: dict[str, Any] = {"base_url": "http://edge:5000", "request": None, "actor": None}
    by_digest = make_event("delete", "a/b", descriptor, tag=None, source=SOURCE, **common)
    by_tag = make_event("delete", "a/b", {}, tag="old", source=SOURCE, **common)
    assert by_digest["target"] == {"digest": DIGEST, "repository": "a/b"}
    assert by_tag["target"] == {"repository": "a/b", "tag": "old"}


def test_timestamps_are_written_as_go_writes_time() -> None:
    assert go_timestamp(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert go_timestamp(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert go_timestamp(1_700_000_000_000_000_001) == "2023-11-14T22:13:20.000000001Z"


def test_envelope_is_go_marshal_indent_with_go_escapes() -> None:
    body = encode_envelope([{"id": "a", "request": {"useragent": "x <y> & z"}, "actor": {}}])
    assert body.decode() == (
        '{\n   "events": [\n      {\n         "id": "a",\n         "request": {\n'
        '            "useragent": "x \\u003cy\\u003e \\u0026 z"\n         },\n'
        '         "actor": {}\n      }\n   ]\n}'
    )


def test_retry_delay_doubles_up_to_the_cap_with_jitter() -> None:
    endpoint = Endpoint("a", "http://x", backoff=1.0, max_backoff=60.0)
    assert [retry_delay(endpoint, n, 0.5) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(endpoint, 1, 0.0) == 0.8
    assert retry_delay(endpoint, 1, 1.0) == pytest.approx(1.2)
    assert retry_delay(endpoint, 7, 1.0) == 60.0
    assert retry_delay(endpoint, 10_000, 0.0) == 48.0


# --- delivery --------------------------------------------------------------------------------


async def test_envelope_is_posted_with_media_type_headers_and_events() -> None:
    async with trio.open_nursery() as nursery:
        receiver = await Receiver().start(nursery)
        endpoint = fast("audit", receiver.url, headers={"X-Hook-Token": "t0ken"})
        notifier = Notifier([endpoint])
        sent = [event(1), event(2, "pull")]
        for item in sent:
            notifier.emit(item)
        await nursery.start(notifier.run)
        await receiver.changed.wait_until(lambda: len(receiver.requests) == 1)
        nursery.cancel_scope.cancel()
    (request,) = receiver.requests
    assert (request.method, request.target) == ("POST", "/hook")
    assert request.headers["content-type"] == MEDIA_TYPE
    assert request.headers["x-hook-token"] == "t0ken"
    assert request.body.startswith(b'{\n   "events": [\n      {\n         "id": ')
    assert json.loads(request.body) == {"events": sent}


async def test_events_go_in_order_in_batches_of_100() -> None:
    results = Results()
    async with trio.open_nursery() as nursery:
        receiver = await Receiver().start(nursery)
        notifier = Notifier([fast("a", receiver.url)], on_result=results)
        sent = [event(n) for n in range(250)]
        for item in sent:
            notifier.emit(item)
        await nursery.start(notifier.run)
        await results.changed.wait_until(lambda: results.count("a", "sent") == 250)
        nursery.cancel_scope.cancel()
    assert [len(request.events) for request in receiver.requests] == [100, 100, 50]
    assert receiver.accepted_ids() == [item["id"] for item in sent]
    assert notifier.status()[0]["queued"] == 0
    assert notifier.status()[0]["sent"] == 250


async def test_failing_receiver_gets_every_event_once_in_order() -> None:
    first, later = [event(n) for n in range(3)], [event(n) for n in range(3, 5)]
    answers = {0: DROP, 1: 500, 2: 503}

    def answer(index: int, request: Received) -> int:
        if index == 0:  # events that arrive during the outage wait behind the failed batch
            for item in later:
                notifier.emit(item)
        return answers.get(index, 200)

    results = Results()
    async with trio.open_nursery() as nursery:
        receiver = await Receiver(answer).start(nursery)
        notifier = Notifier([fast("a", receiver.url)], on_result=results)
        for item in first:
            notifier.emit(item)
        await nursery.start(notifier.run)
        await results.changed.wait_until(lambda: results.count("a", "sent") == 5)
        nursery.cancel_scope.cancel()
    first_ids = [item["id"] for item in first]
    assert [request.ids for request in receiver.requests] == [
        first_ids,  # dropped connection
        first_ids,  # 500: the same batch again
        first_ids,  # 503
        first_ids,  # taken
        [item["id"] for item in later],
    ]
    assert receiver.accepted_ids() == [item["id"] for item in first + later]
    status = notifier.status()[0]
    assert (status["sent"], status["failed_attempts"], status["queued"]) == (5, 3, 0)
    assert status["last_error"] == "HTTP 503 Service Unavailable"
    assert status["last_success"] is not None and status["pending_since"] is None


async def test_3xx_is_delivered_and_4xx_retried() -> None:
    answers = {0: 404, 1: 302}
    async with trio.open_nursery() as nursery:
        receiver = await Receiver(lambda i, r: answers.get(i, 204)).start(nursery)
        results = Results()
        notifier = Notifier([fast("a", receiver.url)], on_result=results)
        notifier.emit(event(1))
        await nursery.start(notifier.run)
        await results.changed.wait_until(lambda: results.count("a", "sent") == 1)
        notifier.emit(event(2))
        await results.changed.wait_until(lambda: results.count("a", "sent") == 2)
        nursery.cancel_scope.cancel()
    # The redirect is not followed: the next request is the next batch, to /hook.
    assert [(request.target, len(request.events)) for request in receiver.requests] == [
        ("/hook", 1),
        ("/hook", 1),
        ("/hook", 1),
    ]
    assert results.count("a", "failed") == 1


async def test_dead_and_hanging_endpoints_do_not_hold_up_the_others() -> None:
    results = Results()
    async with trio.open_nursery() as nursery:
        hanging = await Receiver(lambda i, r: HANG).start(nursery)
        good = await Receiver().start(nursery)
        notifier = Notifier(
            [
                fast("dead", f"http://127.0.0.1:{closed_port()}/hook"),
                fast("hanging", hanging.url, timeout=60.0),
                fast("good", good.url),
            ],
            on_result=results,
        )
        await nursery.start(notifier.run)
        sent = [event(n) for n in range(5)]
        for item in sent:
            notifier.emit(item)  # returns at once: it only queues
        await good.changed.wait_until(lambda: len(good.accepted_ids()) == 5)
        await results.changed.wait_until(lambda: results.count("dead", "failed") >= 2)
        await hanging.changed.wait_until(lambda: len(hanging.requests) == 1)
        more = [event(n) for n in range(5, 8)]
        for item in more:
            notifier.emit(item)
        await results.changed.wait_until(lambda: results.count("good", "sent") == 8)
        status = {entry["name"]: entry for entry in notifier.status()}
        nursery.cancel_scope.cancel()
    assert good.accepted_ids() == [item["id"] for item in sent + more]
    assert (status["dead"]["queued"], status["dead"]["sent"]) == (8, 0)
    assert status["dead"]["last_error"].startswith("connection failed")
    assert status["dead"]["pending_since"] >= 0
    assert (status["hanging"]["queued"], status["hanging"]["failed_attempts"]) == (8, 0)
    assert status["good"]["queued"] == 0


async def test_full_queue_drops_the_oldest_and_counts_each() -> None:
    results = Results()
    notifier = Notifier([fast("a", "http://127.0.0.1:1/unused", queue=3)], on_result=results)
    sent = [event(n) for n in range(10)]
    for item in sent:
        notifier.emit(item)
    status = notifier.status()[0]
    assert (status["queued"], status["dropped"]) == (3, 7)
    assert results.count("a", "dropped") == 7
    # The three newest are what is left, in order: deliver them to a receiver to see.
    async with trio.open_nursery() as nursery:
        receiver = await Receiver().start(nursery)
        notifier = Notifier([fast("a", receiver.url, queue=3)], on_result=results)
        for item in sent:
            notifier.emit(item)
        await nursery.start(notifier.run)
        await receiver.changed.wait_until(lambda: len(receiver.accepted) == 1)
        nursery.cancel_scope.cancel()
    assert receiver.accepted_ids() == [item["id"] for item in sent[7:]]


async def test_full_queue_of_a_down_endpoint_counts_drops_exactly() -> None:
    results = Results()
    endpoint = fast("dead", f"http://127.0.0.1:{closed_port()}/hook", queue=5)
    notifier = Notifier([endpoint], on_result=results)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.run)
        notifier.emit(event(0))
        await results.changed.wait_until(lambda: results.count("dead", "failed") >= 1)
        for n in range(1, 20):
            notifier.emit(event(n))
        status = notifier.status()[0]
        nursery.cancel_scope.cancel()
    assert (status["queued"], status["dropped"], status["sent"]) == (5, 15, 0)
    assert results.count("dead", "dropped") == 15


async def test_ignored_actions_and_media_types_are_not_queued() -> None:
    layer = "application/vnd.oci.image.layer.v1.tar+gzip"
    manifest = "application/vnd.oci.image.manifest.v1+json"
    async with trio.open_nursery() as nursery:
        no_pulls = await Receiver().start(nursery)
        no_layers = await Receiver().start(nursery)
        notifier = Notifier(
            [
                fast("no-pulls", no_pulls.url, ignored_actions=("pull",)),
                fast("no-layers", no_layers.url, ignored_media_types=(layer,)),
            ]
        )
        push, pull = event(1, "push", manifest), event(2, "pull", manifest)
        layer_pull = event(3, "pull", layer)
        for item in (push, pull, layer_pull):
            notifier.emit(item)
        assert [entry["queued"] for entry in notifier.status()] == [1, 2]
        await nursery.start(notifier.run)
        await no_pulls.changed.wait_until(lambda: len(no_pulls.accepted) == 1)
        await no_layers.changed.wait_until(lambda: len(no_layers.accepted) == 1)
        nursery.cancel_scope.cancel()
    assert no_pulls.accepted_ids() == [push["id"]]
    assert no_layers.accepted_ids() == [push["id"], pull["id"]]


async def test_an_outage_is_logged_once_and_secrets_never(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edgecache.notify")
    results = Results()
    async with trio.open_nursery() as nursery:
        receiver = await Receiver(lambda i, r: 500 if i < 4 else 200).start(nursery)
        url = receiver.url.replace("//", "//hook-user:s3cret-pw@")
        endpoint = fast("a", url, headers={"X-Hook-Token": "t0ken-value"})
        notifier = Notifier([endpoint], on_result=results)
        notifier.emit(event(1))
        await nursery.start(notifier.run)
        await results.changed.wait_until(lambda: results.count("a", "sent") == 1)
        nursery.cancel_scope.cancel()
    # The userinfo becomes Basic auth, as Go's client does.
    credentials = base64.b64encode(b"hook-user:s3cret-pw").decode()
    assert receiver.accepted[0].headers["authorization"] == f"Basic {credentials}"
    records = [r for r in caplog.records if r.name == "edgecache.notify"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 500" in warnings[0]
    assert any("recovered after 4 failed attempts" in r.getMessage() for r in records)
    shown = " ".join(r.getMessage() for r in records) + repr(endpoint) + repr(notifier.status())
    host = receiver.url.rsplit("/", 1)[0]  # scheme, host and port only: a path may be a secret
    assert f"{host}/..." in shown and receiver.url not in shown
    assert "s3cret" not in shown and "t0ken" not in shown and "hook-user" not in shown


# --- configuration ---------------------------------------------------------------------------


def test_endpoints_parse_with_defaults_and_every_key() -> None:
    raw = [
        {"name": "audit", "url": "https://hooks.example/registry/"},
        {
            "name": "scanner",
            "url": "http://scanner:8080/events",
            "headers": {"Authorization": "Bearer x", "X-Multi": ["a", "b"]},
            "timeout": 2,
            "backoff": 0.5,
            "max_backoff": 30,
            "queue": 10,
            "ignored_actions": ["pull", "mount"],
            "ignored_media_types": ["application/octet-stream"],
            "ca_file": certifi.where(),
        },
    ]
    assert parse_endpoints(raw) == (
        Endpoint("audit", "https://hooks.example/registry/"),
        Endpoint(
            "scanner",
            "http://scanner:8080/events",
            headers={"Authorization": "Bearer x", "X-Multi": "a, b"},
            timeout=2.0,
            backoff=0.5,
            max_backoff=30.0,
            queue=10,
            ignored_actions=("pull", "mount"),
            ignored_media_types=("application/octet-stream",),
            ca_file=certifi.where(),
        ),
    )
    assert parse_endpoints(None) == parse_endpoints([]) == ()


def _one(**table: Any) -> list[dict[str, Any]]:
    return [{"name": "a", "url": "http://h/x", **table}]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"name": "a", "url": "http://h/x"},
            "notifications.endpoints: got one table, expected a list of tables: write "
            "[[notifications.endpoints]] (two brackets), once per endpoint",
            id="a-single-table",
        ),
        pytest.param(
            "http://h/x",
            "notifications.endpoints = 'http://h/x': expected a list of tables, one "
            "[[notifications.endpoints]] per endpoint",
            id="not-a-list",
        ),
        pytest.param(
            ["http://h/x"],
            "notifications.endpoints[0] = 'http://h/x': expected a table with at least name "
            "and url",
            id="item-not-a-table",
        ),
        pytest.param(
            _one(ignoredmediatypes=[]),
            "notifications.endpoints[0].ignoredmediatypes: unknown key (expected one of name, "
            "url, headers, timeout, backoff, max_backoff, queue, ignored_actions, "
            "ignored_media_types, ca_file); did you mean ignored_media_types?",
            id="unknown-key",
        ),
        pytest.param(
            [{"url": "http://h/x"}], "notifications.endpoints[0]: name is required", id="no-name"
        ),
        pytest.param([{"name": "a"}], "notifications.endpoints[0]: url is required", id="no-url"),
        pytest.param(
            [{"name": "my hook", "url": "http://h/x"}],
            "notifications.endpoints[0].name = 'my hook': expected 1 to 64 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit",
            id="bad-name",
        ),
        pytest.param(
            [*_one(), {"name": "b", "url": "http://h/y"}, {"name": "a", "url": "http://h/z"}],
            "notifications.endpoints[2].name = 'a': already the name of "
            "notifications.endpoints[0]; expected a unique name",
            id="duplicate-name",
        ),
        pytest.param(
            [{"name": "a", "url": "ftp://h/x"}],
            "notifications.endpoints[0].url = 'ftp://h/...': expected an http:// or https:// URL "
            "with a host, e.g. https://hooks.example/registry",
            id="url-not-http",
        ),
        pytest.param(
            [{"name": "a", "url": "https://"}],
            "notifications.endpoints[0].url = 'https://': expected an http:// or https:// URL "
            "with a host, e.g. https://hooks.example/registry",
            id="url-without-host",
        ),
        pytest.param(
            [{"name": "a", "url": "http://u:pw@h:99999/x"}],
            "notifications.endpoints[0].url = 'http://h:99999/...': expected an http:// or "
            "https:// URL with a host, e.g. https://hooks.example/registry",
            id="bad-port-userinfo-hidden",
        ),
        pytest.param(
            _one(headers="Authorization: Bearer secret"),
            "notifications.endpoints[0].headers = <hidden>: expected a table of header "
            "name = value",
            id="headers-not-a-table",
        ),
        pytest.param(
            _one(headers={"Authorization": 123456}),
            "notifications.endpoints[0].headers.Authorization = <hidden>: expected a string (or "
            "a list of strings) without line breaks",
            id="header-value-not-a-string",
        ),
        pytest.param(
            _one(headers={"X-Token": "secret\r\nX-Evil: 1"}),
            "notifications.endpoints[0].headers.X-Token = <hidden>: expected a string (or "
            "a list of strings) without line breaks",
            id="header-value-line-break",
        ),
        pytest.param(
            _one(headers={"Bad Name": "v"}),
            "notifications.endpoints[0].headers: 'Bad Name' is not a valid HTTP header name",
            id="header-name",
        ),
        pytest.param(
            _one(headers={"content-type": "application/json"}),
            "notifications.endpoints[0].headers.content-type: set by edgecache on every "
            "request, not here",
            id="header-set-by-edgecache",
        ),
        pytest.param(
            _one(timeout=0),
            "notifications.endpoints[0].timeout = 0: expected a positive number of seconds",
            id="timeout-zero",
        ),
        pytest.param(
            _one(timeout="5s"),
            "notifications.endpoints[0].timeout = '5s': expected a positive number of seconds",
            id="timeout-string",
        ),
        pytest.param(
            _one(backoff=-1),
            "notifications.endpoints[0].backoff = -1: expected a positive number of seconds",
            id="backoff-negative",
        ),
        pytest.param(
            _one(backoff=10, max_backoff=5),
            "notifications.endpoints[0].max_backoff = 5: expected at least backoff (10 seconds)",
            id="max-backoff-below-backoff",
        ),
        pytest.param(
            _one(queue=0),
            "notifications.endpoints[0].queue = 0: expected a number of events from 1 to 1000000",
            id="queue-zero",
        ),
        pytest.param(
            _one(queue=1_000_001),
            "notifications.endpoints[0].queue = 1000001: expected a number of events from 1 to "
            "1000000",
            id="queue-too-big",
        ),
        pytest.param(
            _one(ignored_actions=["push", "pul"]),
            "notifications.endpoints[0].ignored_actions = ['push', 'pul']: 'pul' is not an "
            "action (expected any of pull, push, mount, delete)",
            id="unknown-action",
        ),
        pytest.param(
            _one(ignored_media_types="application/octet-stream"),
            "notifications.endpoints[0].ignored_media_types = 'application/octet-stream': "
            "expected a list of strings",
            id="media-types-not-a-list",
        ),
        pytest.param(
            _one(ca_file="/nonexistent/ca.pem"),
            "notifications.endpoints[0].ca_file = '/nonexistent/ca.pem': expected a PEM file "
            "of CA certificates",
            id="ca-file-missing",
        ),
    ],
)
def test_bad_endpoints_are_refused_with_a_precise_message(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoints(raw)
    assert str(caught.value) == message
    assert "secret" not in str(caught.value) and "pw" not in str(caught.value)


def test_ca_file_must_hold_certificates(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"ca_file = '.*ca\.pem': expected a PEM file of CA"):
        parse_endpoints(_one(ca_file=str(junk)))
    with pytest.raises(ConfigError, match=r"ca_file = '.*': expected a PEM file of CA"):
        parse_endpoints(_one(ca_file=str(tmp_path)))  # a directory
