"""Adding up the /metrics of several serving processes (server/metricsum.py)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from edgecache.server.metrics import Metrics
from edgecache.server.metricsum import add_up


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_and_histograms_add_up_and_store_figures_are_the_owners() -> None:
    owner = Metrics(lambda: 1000.0, lambda: 5.0)
    worker = Metrics(lambda: 999_999.0, lambda: 7.0)  # a worker's view of the store: ignored
    for _ in range(3):
        owner.observe("blob", "GET", 200, 0.002)
    for _ in range(4):
        worker.observe("blob", "GET", 200, 0.5)
    worker.observe("manifest", "HEAD", 404, 0.001)
    owner.proxy_miss()
    worker.proxy_hit()
    total = _samples(add_up([owner.render().decode(), worker.render().decode()]))
    blob = (("method", "GET"), ("route", "blob"), ("status", "200"))
    assert total[("edgecache_http_requests_total", blob)] == 7
    head = (("method", "HEAD"), ("route", "manifest"), ("status", "404"))
    assert total[("edgecache_http_requests_total", head)] == 1
    assert total[("edgecache_http_request_duration_seconds_count", (("route", "blob"),))] == 7
    assert (
        total[
            ("edgecache_http_request_duration_seconds_bucket", (("le", "0.005"), ("route", "blob")))
        ]
        == 3
    )
    assert total[("edgecache_proxy_requests_total", (("result", "hit"),))] == 1
    assert total[("edgecache_proxy_requests_total", (("result", "miss"),))] == 1
    assert total[("edgecache_store_bytes", ())] == 1000.0  # once, the owner's
    assert total[("edgecache_sendfile_socket_bytes", ())] == 12.0  # per process: added


def test_created_timestamps_take_the_earliest() -> None:
    one = "# TYPE x counter\nx_total 1.0\nx_created 200.0\n"
    two = "# TYPE x counter\nx_total 2.0\nx_created 100.0\n"
    total = _samples(add_up([one, two]))
    assert total[("x_total", ())] == 3.0
    assert total[("x_created", ())] == 100.0
