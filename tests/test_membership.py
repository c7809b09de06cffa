"""Joining and removing members on real clusters."""

import signal

import requests
from nodes import wait_for


def member_ids(node):
    return {m["id"] for m in node.status()["members"]}


def remove(node, node_id):
    return requests.delete(f"{node.url}/remove", json={"id": node_id}, timeout=30)


def test_removing_the_only_member_is_refused(cluster):
    node0 = cluster.node("node0").start().wait_ready()
    response = remove(node0, "node0")
    assert response.status_code == 409
    assert response.json()["code"] == "membership_conflict"
    assert "only member" in response.json()["error"]
    assert node0.set({"still": "writable"}).status_code == 200


def test_remove_a_follower_then_the_leader_from_any_node(cluster):
    nodes = cluster.start(3)
    leader = cluster.leader()
    followers = [n for n in nodes if n is not leader]

    response = remove(followers[0], followers[1].name)  # sent to a follower: forwarded to the leader
    assert response.status_code == 200, response.text
    wait_for(lambda: member_ids(leader) == {leader.name, followers[0].name}, 10, "the removal to apply")
    assert followers[0].set({"after-removal": 1}).status_code == 200

    response = remove(followers[0], leader.name)  # the leader hands over leadership, then is removed
    assert response.status_code == 200, response.text
    wait_for(lambda: member_ids(followers[0]) == {followers[0].name}, 10, "the leader's removal to apply")
    assert followers[0].status()["role"] == "leader"
    assert followers[0].set({"alone": 1}).status_code == 200
    assert followers[0].value("after-removal") == 1


def test_a_join_never_takes_the_id_or_address_of_a_connected_member(cluster):
    node0, node1, node2 = cluster.start(3)
    leader = cluster.leader()
    for body in ({"id": "node2-renamed", "addr": node2.raft_addr, "http_addr": node2.http_addr},
                 {"id": "node2", "addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"},
                 {"id": leader.name, "addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2", "force": True}):
        refused = requests.post(f"{node1.url}/join", timeout=30, json=body)
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "membership_conflict" and "connected" in refused.json()["error"]
    assert member_ids(node0) == {"node0", "node1", "node2"}

    # A copy-pasted -id of a healthy member: the new node is refused, the member keeps its place.
    twin = cluster.node("node2", data_dir="twin").start(join=node0)
    assert twin.process.wait(60) == 3
    assert "belongs to the member at" in twin.log() and node2.raft_addr in twin.log()
    assert node2.status()["role"] == "follower" and member_ids(node0) == {"node0", "node1", "node2"}


def test_a_member_gone_for_good_is_replaced_only_when_asked(cluster):
    node0, _, node2 = cluster.start(3)
    node2.kill()  # its machine dies; a new one takes its id, with new addresses and an empty data dir
    refused = cluster.node("node2", data_dir="new-node2").start(join=node0)
    assert refused.process.wait(60) == 3
    assert "-replace" in refused.log()
    replacement = cluster.node("node2", data_dir="newer-node2").start(node0, "-replace").wait_ready()
    members = {m["id"]: m for m in node0.status()["members"]}
    assert set(members) == {"node0", "node1", "node2"}
    assert members["node2"]["raft_addr"] == replacement.raft_addr
    assert node2.raft_addr not in {m["raft_addr"] for m in members.values()}
    assert node0.set({"replaced": 1}).status_code == 200
    assert replacement.value("replaced") == 1


def test_join_without_a_reachable_cluster_exits_non_zero(cluster):
    lonely = cluster.node("lonely")
    nowhere = cluster.node("nowhere")  # never started: nothing listens on its address
    lonely.start(nowhere, "-join-timeout", "2")
    assert lonely.process.wait(30) == 3
    assert "cannot reach the node at" in lonely.log()


def test_a_data_dir_with_its_own_cluster_refuses_to_join(cluster):
    node0 = cluster.node("node0").start().wait_ready()
    solo = cluster.node("solo").start().wait_ready()
    solo.set({"mine": 1})
    solo.signal_and_wait(15)
    solo.start(node0)
    assert solo.process.wait(30) == 3
    assert "holds a member of another cluster" in solo.log()


def test_a_node_joining_from_a_snapshot_that_predates_the_leader_follows_that_leader(cluster):
    """Every member here holds the first node's snapshot, which lists only the first node. Once another member
    leads, a new node loads that snapshot from it and, for a moment, does not know its leader is a member: it
    must still take the leader's entries (Raft's followers hear any leader) and so learn the rest."""
    node0, node1, node2 = cluster.start(3)
    assert cluster.leader() is node0
    node0.signal_and_wait(signal.SIGTERM)  # hands leadership over to node1 or node2
    leader = cluster.leader([node1, node2])
    node3 = cluster.node("node3").start(leader).wait_ready()
    assert leader.set({"after": 1}).status_code == 200
    wait_for(lambda: node3.get("after", level="stale").status_code == 200, 10, "node3 to follow the leader")
    assert member_ids(node3) == {"node0", "node1", "node2", "node3"}
