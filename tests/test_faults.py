"""Fault injection: histories recorded under kills, pauses and partitions must be linearizable.

Each short run loads a fresh 3-node cluster for about 10 s while one kind of fault is injected repeatedly, then
heals everything and checks: the history (with final linearizable reads of every key on every node) is
linearizable, so no acknowledged write was lost, and every node's local copy converges. The stale-read run must
FAIL the check: it proves the checker catches what linearizable reads prevent. The compare-and-set runs
(``jepsen_cas``) go through the failover client: CAS registers must be linearizable, and no acknowledged
transaction may be lost or applied twice, and what each watcher saw must be a gap-free prefix of the committed
history. The long randomized run is marked
``long``: ``python -m pytest -n 0 -m long tests/test_faults.py``, length in HRAFTD_JEPSEN_SECONDS (default 120).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import jepsen
import jepsen_cas
import pytest
import requests
from jepsen import JepsenCluster, Network, Recorder, perform
from linearizability import OK, READ, WRITE, check
from nodes import wait_for

LOAD_SECONDS = 10.0
LONG_SECONDS = float(os.environ.get("HRAFTD_JEPSEN_SECONDS", "120"))
NO_PARTITIONS = jepsen.partitions_unavailable()
ROOT = Path(__file__).resolve().parent.parent


def in_a_network_of_its_own(request: pytest.FixtureRequest) -> bool:
    """Where partitions are possible (root), run this test again in a child process inside network and mount
    namespaces of its own, and return True once it passed there; False in that child, or without root.

    So the bridge, veths and per-node namespaces of a run are never created on the host: while the child runs,
    the host is watched for any interface or namespace named after it.
    """
    if NO_PARTITIONS is not None or jepsen.inside_own_namespace():
        return False
    command = jepsen.own_namespace_command([sys.executable, "-m", "pytest", request.node.nodeid, "-q", "-s",
                                            "-p", "no:cacheprovider", "-m", request.config.getoption("markexpr")])
    child = subprocess.Popen(command, cwd=ROOT, env={**os.environ, jepsen.INSIDE_OWN_NAMESPACE: "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(child.stdout or ()), daemon=True)
    reader.start()
    seen_on_host: set[str] = set()
    ours = (f"{jepsen._NS_PREFIX}{child.pid}-", f"hr{child.pid:x}-")  # how Network names what it creates
    try:
        while child.poll() is None:
            seen_on_host |= {name for name in jepsen.host_network_names() if name.startswith(ours)}
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(0.5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        reader.join(10)
    print("".join(output))
    assert child.returncode == 0, f"the test failed in its own network namespace:\n{''.join(output)[-5000:]}"
    assert not seen_on_host, f"created on the host: {sorted(seen_on_host)}"
    return True


@contextlib.contextmanager
def jepsen_cluster(tmp_path: Path) -> Iterator[JepsenCluster]:
    """A started 3-node cluster: one network namespace per node where partitions are possible, else loopback."""
    network = Network(3).create() if NO_PARTITIONS is None else None
    cluster = JepsenCluster(tmp_path, 3, network)
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()
        if network is not None:
            network.destroy()


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
def test_history_under_faults_is_linearizable(request, tmp_path, fault):
    if in_a_network_of_its_own(request):
        return
    with jepsen_cluster(tmp_path) as cluster:
        report = jepsen.run(cluster, seconds=LOAD_SECONDS, faults=[fault], quiet=(1.0, 1.0), hold=(3.0, 3.0))
    assert_sound(report)


def test_cas_and_txn_history_under_faults_is_linearizable_and_no_txn_is_lost_or_doubled(request, tmp_path):
    """One run, the leader killed or cut off (where partitions are possible) in turn."""
    if in_a_network_of_its_own(request):
        return
    faults = ["kill-leader"] if NO_PARTITIONS is not None else ["kill-leader", "partition-leader"]
    with jepsen_cluster(tmp_path) as cluster:
        report = jepsen_cas.run(cluster, seconds=LOAD_SECONDS, faults=faults, quiet=(1.0, 1.0), hold=(3.0, 3.0),
                                seed=1)  # the nemesis kills, then cuts off, then kills the leader
    summary = report.summary()
    print(summary)
    assert not report.nemesis_errors, f"the nemesis failed: {report.nemesis_errors}\n{summary}"
    assert {fault.name for fault in report.faults} == set(faults), f"not every fault was injected\n{summary}"
    assert report.result.ok, summary
    assert not report.ledger_problems, summary
    assert sum(op.kind == jepsen_cas.CAS and op.succeeded for op in report.history) > 10, summary
    assert sum(op.kind == jepsen_cas.CAS and op.succeeded is False for op in report.history) > 0, summary
    assert sum(txn.succeeded is True for txn in report.ledger) > 10, summary
    assert not report.watch_problems, summary
    assert all(len(stream) > 10 for stream in report.streams), summary


@needs_partitions
def test_stale_reads_from_a_partitioned_leader_are_caught_by_the_checker(request, tmp_path):
    """The old leader, cut off, keeps serving its local copy: a stale read misses a write acknowledged before it."""
    if in_a_network_of_its_own(request):
        return
    with jepsen_cluster(tmp_path) as cluster:
        recorder = stale_read_history(cluster)
    result = check(recorder.ops)
    print(result.explain())
    assert not result.ok, "the checker missed a stale read after an acknowledged write"
    probe = result.keys["probe"]
    assert probe.linearizable is False, result.explain()
    assert any(op.kind == READ and op.value == "before" for op in probe.culprits), probe.explanation


def stale_read_history(cluster: JepsenCluster) -> Recorder:
    """Stale reads from a leader cut off by a partition, then the final reads of every key."""
    recorder = Recorder()
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
    return recorder


@pytest.mark.long
@pytest.mark.timeout(LONG_SECONDS + 600)
def test_long_randomized_run_with_mixed_faults(request, tmp_path):
    if in_a_network_of_its_own(request):
        return
    faults = [f for f in jepsen.FAULTS if NO_PARTITIONS is None or "partition" not in f]
    faults = [*faults, *faults, *jepsen.EXTRA_FAULTS]  # now and then every node at once
    with jepsen_cluster(tmp_path) as cluster:
        report = jepsen.run(cluster, seconds=LONG_SECONDS, faults=faults, keys=["k0", "k1", "k2", "k3"],
                            clients=8, quiet=(1.0, 4.0), hold=(1.0, 5.0), check_seconds=300)
    assert_sound(report)
