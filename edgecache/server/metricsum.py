"""/metrics for all serving processes: the owner's, plus each worker's, added up.

Each process counts what it answers (a forwarded request is counted where the client sent
it; the owner counts the bytes it serves and fetches). When /metrics is scraped the owner asks
every worker for its own exposition over the worker's Unix socket (an internal request, not
itself counted) and adds the samples of equal name and labels. Figures of the whole store
(GLOBAL: its size, the scrub) exist once and are the owner's; `_created` timestamps take the
earliest. A worker that does not answer within WORKER_TIMEOUT is left out (its counts come
back with it; a restarted worker starts from zero, which Prometheus reads as a counter reset).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import h11
import trio
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from .metrics import Metrics

log = logging.getLogger("edgecache.metrics")

WORKER_TIMEOUT = 2.0
GLOBAL_PREFIXES = ("edgecache_store_bytes", "edgecache_scrub_")


async def render_all(own: Metrics, sockets: Iterable[str]) -> bytes:
    texts = [own.render().decode()]
    sockets = list(sockets)
    if not sockets:
        return texts[0].encode()
    results: dict[str, str] = {}

    async def one(path: str) -> None:
        with trio.move_on_after(WORKER_TIMEOUT):
            try:
                results[path] = await fetch_text(path, "/metrics")
            except (OSError, h11.ProtocolError, trio.BrokenResourceError) as exc:
                log.warning("metrics of the worker at %s left out: %s", path, exc)

    async with trio.open_nursery() as nursery:
        for path in sockets:
            nursery.start_soon(one, path)
    texts += [results[path] for path in sockets if path in results]
    return add_up(texts)


async def totals(own: Metrics, sockets: Iterable[str]) -> dict[str, float]:
    """Every sample of all processes, added up, by name with labels ('name{a="b"}')."""
    text = (await render_all(own, sockets)).decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def add_up(texts: list[str]) -> bytes:
    """One exposition whose samples are the sums of those in `texts` (the first is the
    owner's: it alone gives the GLOBAL ones)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for position, text in enumerate(texts):
        for family in text_string_to_metric_families(text):
            if position and family.name.startswith(GLOBAL_PREFIXES):
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            sums = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in sums:
                    sums[key] = sample.value
                elif sample.name.endswith("_created"):
                    sums[key] = min(sums[key], sample.value)
                else:
                    sums[key] += sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)

    class Summed:
        def collect(self) -> Iterator[Metric]:
            yield from families.values()

    return generate_latest(Summed())  # type: ignore[arg-type]


async def fetch_text(socket_path: str, target: str) -> str:
    """GET `target` from a serving process's Unix socket; the body as text."""
    async with await trio.open_unix_socket(socket_path) as stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target=target, headers=[("host", "edgecache")])
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        body = bytearray()
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(1 << 16))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise OSError(f"{target}: the connection closed early")
        if status != 200:
            raise OSError(f"{target} answered {status}")
        return body.decode()
