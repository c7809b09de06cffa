"""Without a quorum a node says so: 503 when nothing was applied, 504 when the outcome is unknown."""

import requests


def test_a_node_without_quorum_answers_503_or_504_and_keeps_serving(cluster):
    nodes = [cluster.node(f"node{i}") for i in range(3)]
    nodes[0].start(None, "-timeout", "1").wait_ready()
    for node in nodes[1:]:
        node.start(nodes[0], "-timeout", "1").wait_ready()
    leader = cluster.leader()
    leader.set({"before": "quorum lost"})
    others = [n for n in nodes if n is not leader]
    for node in others:
        node.kill()

    write = leader.set({"during": "no quorum"})
    # A leader that lost its quorum may still believe it leads: the entry sits in its log, uncommitted.
    assert write.status_code in (503, 504), write.text
    assert write.json()["code"] == {503: "unavailable", 504: "outcome_unknown"}[write.status_code]
    if write.status_code == 504:
        assert "outcome unknown" in write.json()["error"]

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
