"""The request metrics read exactly as prometheus_client's own Counter and Histogram would write them."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from hraftd.metrics import NodeMetrics


class NoStats:
    def stats(self):
        raise AssertionError("not scraped here")


def exposition(registry: CollectorRegistry) -> list[str]:
    """The lines of a scrape, sorted, with the _created timestamps (when a label set was first seen) blanked."""
    text = generate_latest(registry).decode()
    return sorted(re.sub(r"(_created\{[^}]*\}) \S+$", r"\1 T", line) for line in text.splitlines())


def test_request_metrics_match_prometheus_clients_counter_and_histogram():
    ours = NodeMetrics(NoStats())
    registry = CollectorRegistry()
    registry.register(ours)
    theirs = CollectorRegistry()
    requests = Counter("hraftd_http_requests", "HTTP requests answered", ["route", "method", "status"],
                       registry=theirs)
    latency = Histogram("hraftd_http_request_duration_seconds", "Time to answer an HTTP request",
                        ["route", "method"], registry=theirs, buckets=NodeMetrics.LATENCY_BOUNDS[:-1])
    for route, method, status, seconds in [("/key/<key:key>", "GET", 200, 0.0004), ("/key/<key:key>", "GET", 200, 1),
                                           ("/key", "POST", 400, 0.001), ("unmatched", "FROB", 405, 30.0)]:
        ours.observe(route, method, status, seconds)
        counted_as = method if method != "FROB" else "OTHER"
        requests.labels(route, counted_as, str(status)).inc()
        latency.labels(route, counted_as).observe(seconds)
    assert exposition(registry) == exposition(theirs)
