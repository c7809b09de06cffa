"""The Go hraftd README, step by step, against real nodes: and better where the Go program is weak."""

import requests
from nodes import wait_for


def test_go_readme_walkthrough(cluster):
    node0 = cluster.node("node0").start().wait_ready()
    assert node0.set({"user1": "batman"}).status_code == 200
    assert node0.value("user1") == "batman"

    node1 = cluster.node("node1").start(join=node0)
    node2 = cluster.node("node2").start(join=node0)
    node1.wait_ready()
    node2.wait_ready()
    for node in (node0, node1, node2):
        assert node.value("user1") == "batman"

    # Read immediately from the followers after writing to node0: the Go program answers "" here.
    assert node0.set({"user2": "robin"}).status_code == 200
    assert node1.value("user2") == "robin"
    assert node2.value("user2") == "robin"

    leader = cluster.leader()
    survivors = [n for n in (node0, node1, node2) if n is not leader]
    leader.kill()
    new_leader = cluster.leader(among=survivors)
    assert new_leader is not leader
    for i, node in enumerate(survivors):  # writes succeed on any surviving node, leader or follower
        response = wait_for(lambda node=node, i=i: node.set({f"after{i}": i}).status_code == 200, 15,
                            f"a write on {node.name} after the failover")
        assert response
    for node in survivors:
        assert node.value("after0") == 0 and node.value("after1") == 1

    leader.start().wait_ready()
    for key, value in {"user1": "batman", "user2": "robin", "after0": 0, "after1": 1}.items():
        assert leader.value(key) == value
    assert leader.get("user2", level="stale").json() == {"user2": "robin"}
    members = {m["id"]: m for m in requests.get(f"{leader.url}/status", timeout=5).json()["members"]}
    assert set(members) == {"node0", "node1", "node2"}
