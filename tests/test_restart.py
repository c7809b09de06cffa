"""Restarts: nothing acknowledged is lost, a restarted node catches up."""

import signal

from nodes import wait_for

from hraftd.raft.hardstate import HardState, load_hard_state, save_hard_state


def test_kill_9_of_every_node_loses_no_acknowledged_write(cluster):
    nodes = cluster.start(3)
    acknowledged = {}
    for i in range(60):
        key, value = f"k{i}", {"i": i}
        response = nodes[i % 3].set({key: value})
        assert response.status_code == 200
        acknowledged[key] = value
    for node in nodes:
        node.kill()
    for node in nodes:
        node.start()
    for node in nodes:
        node.wait_ready()
    for node in nodes:
        for key, value in acknowledged.items():
            assert node.value(key) == value, f"{node.name} lost {key}"
    assert nodes[1].set({"after": "restart"}).status_code == 200


def test_a_restarted_follower_catches_up_and_ignores_join(cluster):
    node0, node1, node2 = cluster.start(3)
    leader = cluster.leader()
    follower = next(n for n in (node1, node2) if n is not leader)
    follower.signal_and_wait(signal.SIGTERM)
    for i in range(20):
        assert leader.set({f"missed{i}": i}).status_code == 200
    follower.start(join=node0)  # the Go README's command again: -join is ignored, data dir knows the cluster
    follower.wait_ready()
    wait_for(lambda: follower.get("missed19", level="stale").status_code == 200, 10, "the follower to catch up")
    assert [follower.value(f"missed{i}") for i in range(20)] == list(range(20))
    assert "ignores -join" in follower.log()
    assert len(follower.status()["members"]) == 3


def test_a_restarted_single_node_keeps_its_data(cluster):
    node0 = cluster.node("node0").start().wait_ready()
    node0.set({"persisted": [1, 2, 3]})
    node0.kill()
    node0.start().wait_ready()
    assert node0.value("persisted") == [1, 2, 3]


def test_a_member_whose_term_ran_ahead_is_followed_again(cluster):
    """A member restarts at a term past the leader's (it campaigned where no one would follow it). It must
    not stay a leaderless candidate: it tells the leader its term, an election settles it, all agree again."""
    nodes = cluster.start(3)
    leader = cluster.leader()
    follower = next(n for n in nodes if n is not leader)
    assert leader.set({"before": 1}).status_code == 200
    leader_term = leader.status()["term"]
    follower.kill()
    wait_for(lambda: not follower.processes(), 15, "the follower's worker to exit")
    forge_term(follower, leader_term + 10)
    follower.start()
    agreed = cluster.leader()
    assert agreed.status()["term"] > leader_term + 10
    assert follower.set({"after": 2}).status_code == 200
    assert wait_for(lambda: follower.get("before").status_code == 200, 15, "the follower to serve reads")


def test_two_survivors_one_ahead_in_term_the_other_in_log_elect_a_leader(cluster):
    """No leader anywhere: one survivor has the later term but an older log (it was down for the last writes
    and restarts at a term it reached campaigning), the other the newer log at an older term. Each refuses the
    other's pre-vote; the one behind in term must move up to it, then win."""
    nodes = cluster.start(3)
    leader = cluster.leader()
    older_log, newer_log = (n for n in nodes if n is not leader)
    older_log.kill()
    wait_for(lambda: not older_log.processes(), 15, "the stopped member's worker to exit")
    assert leader.set({"while-it-was-down": 1}).status_code == 200
    wait_for(lambda: newer_log.get("while-it-was-down", level="stale").status_code == 200, 15,
             "the write to replicate")
    leader.kill()
    wait_for(lambda: not leader.processes(), 15, "the leader's worker to exit")
    forge_term(older_log, newer_log.status()["term"] + 10)
    older_log.start()
    agreed = cluster.leader([newer_log, older_log])
    assert agreed is newer_log, f"{agreed.name} leads; only {newer_log.name} has every write"
    assert older_log.value("while-it-was-down") == 1


def forge_term(node, term: int) -> None:
    """Give a stopped node the term ``term`` and no vote, as if it had campaigned that far (sealed as hraftd
    seals it, so the node reads it as its own)."""
    path = str(node.data_dir / "raft.state")
    save_hard_state(path, HardState(term, None, load_hard_state(path).commit_index))
