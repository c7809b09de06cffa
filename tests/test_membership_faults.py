"""Membership changes while clients write, and a removed node that comes back."""

import random
import threading
import time

import requests
from nodes import wait_for


class Writer(threading.Thread):
    """Writes k0, k1, ... to random nodes until stopped; remembers what was acknowledged."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes = nodes
        self.acknowledged = {}
        self.stopped = threading.Event()

    def run(self):
        i = 0
        while not self.stopped.is_set():
            node = random.choice(self.nodes)
            try:
                if node.set({f"k{i}": i}).status_code == 200:
                    self.acknowledged[f"k{i}"] = i
            except requests.RequestException:
                pass
            i += 1

    def stop(self):
        self.stopped.set()
        self.join(30)


def member_ids(node):
    return {m["id"] for m in node.status()["members"]}


def term_of(node) -> int:
    """The node's own term, or 0 while it does not answer yet."""
    try:
        return node.status()["term"]
    except requests.RequestException:
        return 0


def test_join_and_remove_while_writes_continue_lose_nothing(cluster):
    node0, node1, node2 = cluster.start(3)
    writer = Writer([node0, node1, node2])
    writer.start()
    try:
        node3 = cluster.node("node3").start(join=node2).wait_ready()
        writer.nodes = [node0, node2, node3]
        response = requests.delete(f"{node3.url}/remove", json={"id": "node1"}, timeout=30)
        assert response.status_code == 200, response.text
        leader = cluster.leader(among=[node0, node2, node3])
        survivors = [n for n in (node0, node2, node3) if n is not leader]
        writer.nodes = survivors
        # An election may still be settling after the first removal; a change that a new leader's log replaced
        # is answered 503 "retry" and applied nothing, so it is sent again, as the API asks.
        def removed() -> bool:
            response = requests.delete(f"{survivors[0].url}/remove", json={"id": leader.name}, timeout=30)
            assert response.status_code in (200, 503), response.text
            assert response.status_code == 200 or "retry" in response.json()["error"], response.text
            return response.status_code == 200

        wait_for(removed, 60, f"the removal of {leader.name} to be applied", interval=0.5)
        wait_for(lambda: all(member_ids(n) == {s.name for s in survivors} for n in survivors), 30,
                 "the survivors to agree on the membership")
        time.sleep(1)  # let the writer go on against the new membership
    finally:
        writer.stop()
    assert len(writer.acknowledged) > 20
    for node in survivors:
        node.wait_ready()
        for key, value in writer.acknowledged.items():
            assert node.value(key) == value, f"{node.name} lost acknowledged {key}"


def test_a_removed_node_that_restarts_does_not_disturb_the_cluster(cluster):
    node0, node1, node2 = cluster.start(3)
    leader = cluster.leader()
    removed = next(n for n in (node0, node1, node2) if n is not leader)
    members = [n for n in (node0, node1, node2) if n is not removed]
    response = requests.delete(f"{leader.url}/remove", json={"id": removed.name}, timeout=30)
    assert response.status_code == 200, response.text
    wait_for(lambda: all(len(n.status()["members"]) == 2 for n in members), 30, "the removal to apply")

    removed.kill()
    removed.start()  # its data dir still names the old peers
    term = leader.status()["term"]
    # The window starts once the removed node runs, however long the machine takes to start it. Writes go on
    # until it has called three elections of its own (each raises its term: a node that had not applied its
    # removal does), or for several of its election timeouts (PySyncObj's longest is 1.4 s).
    wait_for(lambda: removed.alive() and term_of(removed) > 0, 60, "the removed node to answer")
    running_since = time.monotonic()
    i = 0
    while term_of(removed) < term + 3 and time.monotonic() < running_since + 5:
        assert members[i % 2].set({f"calm{i}": i}).status_code == 200
        i += 1
    assert leader.status()["term"] == term, "the removed node forced an election"
    assert cluster.leader(among=members) is leader
    assert all(len(n.status()["members"]) == 2 for n in members)
    # It cannot serve linearizable reads: nobody answers it.
    assert removed.alive() and removed.get("calm0").status_code == 503
