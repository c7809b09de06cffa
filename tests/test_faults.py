"""Fault injection: histories recorded under kills, pauses and partitions must be linearizable.

Each short run loads a fresh 3-node cluster for about 10 s while one kind of fault is injected repeatedly, then
heals everything and checks: the history (with final linearizable reads of every key on every node) is
linearizable, so no acknowledged write was lost, and every node's local copy converges. The stale-read run must
FAIL the check: it proves the checker catches what linearizable reads prevent. The long randomized run is marked
``long``: ``python -m pytest -m long tests/test_faults.py``, length in HRAFTD_JEPSEN_SECONDS (default 120).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import jepsen
import pytest
import requests
from jepsen import JepsenCluster, Network, Recorder, perform
from linearizability import OK, READ, WRITE, check
from nodes import wait_for

LOAD_SECONDS = 10.0
LONG_SECONDS = float(os.environ.get("HRAFTD_JEPSEN_SECONDS", "120"))
NO_PARTITIONS = jepsen.partitions_unavailable()


@pytest.fixture
def network() -> Iterator[Network | None]:
    """One namespace per node when this machine allows it (root and ip), else None: nodes run on loopback."""
    if NO_PARTITIONS is not None:
        yield None
        return
    jepsen.remove_stale_networks()
    net = Network(3).create()
    try:
        yield net
    finally:
        net.destroy()


@pytest.fixture
def jepsen_cluster(tmp_path, network) -> Iterator[JepsenCluster]:
    cluster = JepsenCluster(tmp_path, 3, network)
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()


needs_partitions = pytest.mark.skipif(NO_PARTITIONS is not None, reason=str(NO_PARTITIONS))


def assert_sound(report: jepsen.Report) -> None:
    summary = report.summary()
    print(summary)
    assert not report.nemesis_errors, f"the nemesis failed: {report.nemesis_errors}\n{summary}"
    assert report.faults, f"no fault was injected\n{summary}"
    counts = report.counts()
    assert counts[WRITE, OK] > 0 and counts[READ, OK] > 0, f"nothing succeeded\n{summary}"
    assert report.result.ok, summary


@pytest.mark.parametrize("fault", ["kill-leader", "kill-follower", "pause-leader",
                                   pytest.param("partition-leader", marks=needs_partitions)])
def test_history_under_faults_is_linearizable(jepsen_cluster, fault):
    report = jepsen.run(jepsen_cluster, seconds=LOAD_SECONDS, faults=[fault], quiet=(1.0, 1.0), hold=(3.0, 3.0))
    assert_sound(report)


@needs_partitions
def test_stale_reads_from_a_partitioned_leader_are_caught_by_the_checker(jepsen_cluster):
    """The old leader, cut off, keeps serving its local copy: a stale read misses a write acknowledged before it."""
    cluster, recorder = jepsen_cluster, Recorder()
    assert cluster.network is not None
    leader = cluster.leader()
    others = [n for n in cluster.nodes if n is not leader]
    with requests.Session() as session:
        assert perform(recorder, session, "probe", leader, "probe", WRITE, value="before").outcome == OK
        wait_for(lambda: perform(recorder, session, "probe", leader, "probe", READ, "stale").value == "before",
                 10, "the leader to apply its own write")
        load = jepsen.Clients(cluster, recorder, ["k0", "k1", "k2"], level="stale", seed=1).start()
        try:
            cluster.network.isolate(cluster.nodes.index(leader))
            new_leader = cluster.leader(among=others, exclude=leader, timeout=15)
            attempt = iter(range(1, 1000))
            wait_for(lambda: perform(recorder, session, "probe", new_leader, "probe", WRITE,
                                     value=f"after-{next(attempt)}").outcome == OK, 15, "a write on the majority side")
            stale = perform(recorder, session, "probe", leader, "probe", READ, "stale")
            assert (stale.outcome, stale.value) == (OK, "before"), "the cut-off node should serve its old copy"
            load.stop.wait(2.0)  # stale reads of the random keys go on during the partition
        finally:
            cluster.network.heal()
            load.finish()
    cluster.wait_healthy()
    keys = ["probe", "k0", "k1", "k2"]
    jepsen.final_reads(cluster, recorder, keys)
    jepsen.converge(cluster, keys)
    result = check(recorder.ops)
    print(result.explain())
    assert not result.ok, "the checker missed a stale read after an acknowledged write"
    probe = result.keys["probe"]
    assert probe.linearizable is False, result.explain()
    assert any(op.kind == READ and op.value == "before" for op in probe.culprits), probe.explanation


@pytest.mark.long
@pytest.mark.timeout(LONG_SECONDS + 600)
def test_long_randomized_run_with_mixed_faults(jepsen_cluster):
    faults = [f for f in jepsen.FAULTS if NO_PARTITIONS is None or "partition" not in f]
    faults = [*faults, *faults, *jepsen.EXTRA_FAULTS]  # now and then every node at once
    report = jepsen.run(jepsen_cluster, seconds=LONG_SECONDS, faults=faults, keys=["k0", "k1", "k2", "k3"],
                        clients=8, quiet=(1.0, 4.0), hold=(1.0, 5.0), check_seconds=300)
    assert_sound(report)
