"""Prometheus metrics: requests by route and status, bytes served by path, store size."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(
        self, store_bytes: Callable[[], float], sendfile_bytes: Callable[[], float]
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edgecache_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgecache_http_request_duration_seconds",
            "Time to answer a request (until the last body byte was handed to the socket).",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60),
        )
        self.served_bytes = Counter(
            "edgecache_served_bytes",
            "Body bytes of blobs and manifests served, by serving path: sendfile (HTTP/1.1), "
            "mmap (h2c), pread (TLS), memory (manifests), inflight (a download in progress).",
            ["path"],
            registry=self.registry,
        )
        store = Gauge(
            "edgecache_store_bytes", "Bytes of content in the store.", registry=self.registry
        )
        store.set_function(store_bytes)
        zero = Gauge(
            "edgecache_sendfile_socket_bytes",
            "Bytes the kernel copied with sendfile (zero-copy path), counted at the socket.",
            registry=self.registry,
        )
        zero.set_function(sendfile_bytes)

        self.upstream_bytes = Counter(
            "edgecache_upstream_bytes",
            "Blob bytes received from upstream registries.",
            ["upstream"],
            registry=self.registry,
        )
        self.stale_served = Counter(
            "edgecache_stale_served",
            "Cached manifests served for a tag that could not be revalidated upstream.",
            ["upstream"],
            registry=self.registry,
        )
        self.upstream_fetches = Counter(
            "edgecache_upstream_blob_fetches",
            "Blob downloads started from upstream registries (one per digest in flight).",
            ["upstream"],
            registry=self.registry,
        )
        self.upstream_bodies = Counter(
            "edgecache_upstream_blob_responses",
            "Blob response bodies read from upstream, by reader: 'thread' (a worker thread "
            "reading the socket, the fast path) or 'httpx' (chunked bodies, proxies from the "
            "environment, and the responses before and after auth refreshes or retries).",
            ["upstream", "reader"],
            registry=self.registry,
        )

        self.disk_full = Counter(
            "edgecache_disk_full",
            "Writes that failed because the disk was full (each starts an eviction check).",
            registry=self.registry,
        )
        self.auth = Counter(
            "edgecache_auth_events",
            "Credential checks: 'checked' (a bcrypt run), 'cached' (answered from memory), "
            "'limited' (429: the address failed too often), 'busy' (429: too many checks "
            "waiting), 'token' (a bearer token accepted).",
            ["event"],
            registry=self.registry,
        )
        # A counter, not a plain number: /metrics and status add up every serving process's.
        self.proxy_requests = Counter(
            "edgecache_proxy_requests",
            "Proxied blob and manifest requests, by result: 'hit' (answered from the store) or "
            "'miss' (needed the upstream).",
            ["result"],
            registry=self.registry,
        )

        # Peers (edgecache/peers/). Bytes fetched from a member are in edgecache_upstream_bytes
        # under upstream="peer <URL>".
        self.peer_requests = Counter(
            "edgecache_peer_requests",
            "Requests answered for other members of the site, by member.",
            ["peer"],
            registry=self.registry,
        )
        self.peer_served_bytes = Counter(
            "edgecache_peer_served_bytes",
            "Body bytes sent to other members of the site, by member.",
            ["peer"],
            registry=self.registry,
        )
        self.peer_up = Gauge(
            "edgecache_peer_up",
            "1 while a member answers (probes and requests), 0 while it is skipped.",
            ["peer"],
            registry=self.registry,
        )
        # Preheat (edgecache/preheat/) and notifications (edgecache/notify.py).
        self.preheat_jobs = Counter(
            "edgecache_preheat_jobs",
            "Preheat jobs ended, by trigger and final state.",
            ["trigger", "state"],
            registry=self.registry,
        )
        self.preheat_bytes = Counter(
            "edgecache_preheat_bytes",
            "Blob bytes preheat fetched into this node (provider site).",
            ["policy"],
            registry=self.registry,
        )
        self.preheat_provider_up = Gauge(
            "edgecache_preheat_provider_up",
            "1 while a preheat provider answers its health check, 0 when it does not.",
            ["provider"],
            registry=self.registry,
        )
        self.pulls_blocked = Counter(
            "edgecache_pulls_blocked",
            "Manifest pulls a [[pull_policies]] gate refused (412), by reason: vulnerabilities, "
            "unscanned, scanner_down, signature.",
            ["reason"],
            registry=self.registry,
        )
        self.scans = Counter(
            "edgecache_scans",
            "Scans of single-platform manifests ended, by scanner and result (done, failed).",
            ["scanner", "result"],
            registry=self.registry,
        )
        self.scanner_up = Gauge(
            "edgecache_scanner_up",
            "1 while a scanner adapter answers (metadata and scans), 0 when it does not.",
            ["scanner"],
            registry=self.registry,
        )
        self.notifications = Counter(
            "edgecache_notifications",
            "Notification deliveries to webhook endpoints, by endpoint and result "
            "(sent, failed: a retried attempt, dropped: the queue overflowed).",
            ["endpoint", "result"],
            registry=self.registry,
        )

        self.forwarded = Counter(
            "edgecache_owner_forwards",
            "Requests a serving process handed to the process that owns fetches, pushes and "
            "the admin API (server/workers.py), because it could not answer them from disk.",
            registry=self.registry,
        )

    def proxy_hit(self) -> None:
        self.proxy_requests.labels("hit").inc()

    def proxy_miss(self) -> None:
        self.proxy_requests.labels("miss").inc()

    def upstream_fetch_started(self, upstream: str) -> None:
        self.upstream_fetches.labels(upstream).inc()

    def upstream_body_read(self, upstream: str, reader: str) -> None:
        self.upstream_bodies.labels(upstream, reader).inc()

    def upstream_bytes_add(self, upstream: str, count: int) -> None:
        self.upstream_bytes.labels(upstream).inc(count)

    def watch_caches(self, sizes: Callable[[], dict[str, int]]) -> None:
        """Entries held by each in-memory cache whose keys come from clients (all bounded)."""
        family = "edgecache_cache_entries"
        helptext = "Entries in each bounded in-memory cache, by cache."

        class Collector:
            def collect(self) -> Iterator[GaugeMetricFamily]:
                gauge = GaugeMetricFamily(family, helptext, labels=["cache"])
                for name, size in sizes().items():
                    gauge.add_metric([name], size)
                yield gauge

        self.registry.register(Collector())

    def watch_scrub(self, progress: Callable[[], dict[str, Any]]) -> None:
        """The background scrub's counters (gc/scrub.py), read when /metrics is scraped."""

        class Collector:
            def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
                now = progress()
                for key, what in (
                    ("objects_verified", "Stored objects whose file the scrub verified."),
                    ("bytes_verified", "Bytes the scrub read and hashed."),
                    ("corrupt_found", "Corrupt objects the scrub or a manifest read found."),
                ):
                    yield CounterMetricFamily(f"edgecache_scrub_{key}", what, value=now[key])
                yield GaugeMetricFamily(
                    "edgecache_scrub_last_full_pass_timestamp_seconds",
                    "When the last full scrub pass ended (0: none yet).",
                    value=now["last_full_pass"] or 0.0,
                )
                yield GaugeMetricFamily(
                    "edgecache_scrub_running", "1 while a scrub pass runs.", value=now["running"]
                )

        self.registry.register(Collector())

    def auth_event(self, kind: str) -> None:
        self.auth.labels(kind).inc()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        # The method is whatever token the client sent: a label per distinct one would let
        # clients grow the metrics without bound.
        if method not in _METHODS:
            method = "other"
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def served(self, path: str, count: int) -> None:
        if count:
            self.served_bytes.labels(path).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
