"""Prometheus metrics of a node: its HTTP requests, and its Raft and store state read at scrape time."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

ROLES = ("leader", "follower", "candidate")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})


class StatsSource(Protocol):
    def stats(self) -> dict[str, Any]: ...


class StoreCollector:
    """Reads ``store.stats()`` at every scrape, so the numbers are never stale and cost nothing between."""

    def __init__(self, store: StatsSource) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        stats = self._store.stats()
        yield _gauge("hraftd_raft_leader", "1 if this node is the Raft leader", int(stats["is_leader"]))
        role = GaugeMetricFamily("hraftd_raft_role", "1 for the node's current Raft role", labels=["role"])
        for name in ROLES:
            role.add_metric([name], int(stats["role"] == name))
        yield role
        yield _gauge("hraftd_raft_term", "Current Raft term", stats["term"])
        yield _gauge("hraftd_raft_commit_index", "Highest log index known to be committed", stats["commit_index"])
        yield _gauge("hraftd_raft_applied_index", "Highest log index applied to this node's state",
                     stats["applied_index"])
        yield CounterMetricFamily("hraftd_raft_leader_changes", "Times this node saw a new leader",
                                  value=stats["leader_changes"])
        yield _gauge("hraftd_raft_log_entries", "Entries in this node's Raft log (since the last snapshot)",
                     stats["log_entries"])
        yield SummaryMetricFamily("hraftd_snapshot_duration_seconds", "Snapshots (log compactions) taken",
                                  count_value=stats["snapshots"], sum_value=stats["snapshot_seconds"])
        latency = stats["fsync_latency"]
        if latency is not None:
            cumulative, buckets = 0, []
            for bound, count in zip(latency.BOUNDS, latency.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            yield HistogramMetricFamily("hraftd_fsync_duration_seconds", "Syncs of the Raft journal to disk",
                                        buckets=buckets, sum_value=latency.sum)
        yield _gauge("hraftd_keys", "Keys stored", stats["keys"])
        yield _gauge("hraftd_revision", "Revision of the data (changes applied)", stats["revision"])
        yield _gauge("hraftd_watch_oldest_revision", "Oldest revision a watch can start after on this node",
                     stats["watch_oldest_revision"])


class WatchCollector:
    """How many watches wait on this node, read at every scrape."""

    def __init__(self, hub: Any) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        yield _gauge("hraftd_watchers", "Watches waiting for changes (long polls and streams)", self._hub.count)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class NodeMetrics:
    """One registry per app, so several nodes in one process (tests) never share counters.

    The request counters are plain numbers that ``observe`` adds to on the event loop (the only caller), and
    that a scrape copies: no lock and no label lookup per request."""

    LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))

    def __init__(self, store: StatsSource) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(store))
        self.registry.register(self)
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[tuple[str, str], list[float]] = {}  # a count per bound, then the sum
        self._created: dict[tuple[Any, ...], float] = {}  # when each label set was first seen (the _created series)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request; any method not in HTTP_METHODS is counted as ``OTHER``."""
        if method not in HTTP_METHODS:  # a label set per made-up method would grow the metrics without bound
            method = "OTHER"
        key = (route, method, status)
        count = self._requests.get(key)
        if count is None:
            count = 0
            self._created[key] = time.time()
        self._requests[key] = count + 1
        latency = self._latency.get((route, method))
        if latency is None:
            self._created[(route, method)] = time.time()
            latency = self._latency[(route, method)] = [0] * len(self.LATENCY_BOUNDS) + [0.0]
        latency[bisect.bisect_left(self.LATENCY_BOUNDS, seconds)] += 1
        latency[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        created = self._created.copy()  # copy(): atomic, unlike iteration while the loop adds to it
        requests = CounterMetricFamily("hraftd_http_requests", "HTTP requests answered",
                                       labels=["route", "method", "status"])
        for (route, method, status), count in self._requests.copy().items():
            requests.add_metric([route, method, str(status)], count, created.get((route, method, status)))
        yield requests
        name = "hraftd_http_request_duration_seconds"
        latency = HistogramMetricFamily(name, "Time to answer an HTTP request", labels=["route", "method"])
        for (route, method), counts in self._latency.copy().items():
            counts = list(counts)
            cumulative, buckets = 0, []
            for bound, count in zip(self.LATENCY_BOUNDS, counts, strict=False):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([route, method], buckets, counts[-1])
            if (route, method) in created:
                latency.samples.append(Sample(f"{name}_created", {"route": route, "method": method},
                                              created[(route, method)]))
        yield latency
