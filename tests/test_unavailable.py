"""Without a quorum a node says so: 504 for a write whose outcome is unknown, 503 for what was not done."""

import requests


def test_a_node_without_quorum_says_so_and_keeps_serving(cluster):
    nodes = [cluster.node(f"node{i}") for i in range(3)]
    nodes[0].start(None, "-timeout", "1").wait_ready()
    for node in nodes[1:]:
        node.start(nodes[0], "-timeout", "1").wait_ready()
    leader = cluster.leader()
    leader.set({"before": "quorum lost"})
    others = [n for n in nodes if n is not leader]
    for node in others:
        node.kill()

    assert leader.status()["role"] == "leader"
    write = leader.set({"during": "no quorum"})
    # The leader has not yet given up on its lost quorum: the entry sits in its log, uncommitted, and may
    # still be committed by a later leader, so the outcome is unknown.
    assert write.status_code == 504, write.text
    assert write.json()["code"] == "outcome_unknown" and "outcome unknown" in write.json()["error"]

    read = leader.get("before")
    assert read.status_code == 503
    assert read.json()["code"] == "unavailable"
    assert read.headers["Retry-After"] == "1"

    stale = leader.get("before", level="stale")  # the local copy still answers
    assert stale.status_code == 200 and stale.json() == {"before": "quorum lost"}
    assert requests.get(f"{leader.url}/status", timeout=5).status_code == 200

    for node in others:
        node.start()
    for node in nodes:
        node.wait_ready()
    assert leader.value("before") == "quorum lost"
    assert leader.set({"after": "quorum back"}).status_code == 200
