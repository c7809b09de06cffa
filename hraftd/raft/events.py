"""What a node says about itself: one INFO line per cluster event on the ``hraftd.cluster`` logger, and
latency histograms for the metrics."""

from __future__ import annotations

import bisect
import logging
from typing import Any

log = logging.getLogger("hraftd.cluster")


class LatencyHistogram:
    """Counts of durations by upper bound (seconds), as Prometheus histograms want them; the last is +inf."""

    BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, float("inf"))

    def __init__(self) -> None:
        self.counts = [0] * len(self.BOUNDS)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.BOUNDS, seconds)] += 1
        self.sum += seconds


class ClusterEvents:
    """Logs what changed since the last look: the leader, the members, the quorum, catching up."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.leader_changes = 0
        self._leader: Any = None
        self._voters: frozenset[str] | None = None
        self._quorum: bool | None = None
        self._caught_up = False

    def observe(self, leader: Any, term: int, voters: frozenset[str], quorum: bool, ready: bool,
                applied_index: int) -> None:
        if leader != self._leader:
            self._leader = leader
            self.leader_changes += 1
            if leader is None:
                log.info("no leader: an election is under way (term %d)", term)
            else:
                log.info("%s is the leader (term %d)%s", leader.address, term,
                         ", this node" if leader.address == self.address else "")
        if voters != self._voters:
            if self._voters is not None:
                for added in sorted(voters - self._voters):
                    log.info("member added: %s", added)
                for removed in sorted(self._voters - voters):
                    log.info("member removed: %s", removed)
            self._voters = voters
        if quorum != self._quorum:
            if self._quorum is not None:
                log.info("quorum regained" if quorum else "quorum lost: this node reaches too few members")
            self._quorum = quorum
        if not self._caught_up and ready:
            self._caught_up = True
            log.info("caught up with the leader at index %d", applied_index)
