"""hraftd.client.Client against a real cluster."""

import pytest
from nodes import wait_for

from hraftd.client import Client, ClientError


@pytest.fixture(scope="module")
def clients(three_nodes):
    return [Client(node.http_addr) for node in three_nodes]


def test_set_get_update_delete_from_any_node(clients):
    a, b, c = clients
    assert isinstance(a.set("user1", "batman"), int)
    assert b.get("user1") == "batman"
    revision = c.update({"user2": "robin", "user3": {"name": "alfred"}})
    assert a.get("user3") == {"name": "alfred"} and a.status()["revision"] >= revision
    assert b.delete("user2") is True and b.delete("user2") is False
    assert c.get("user2") is None and c.get("user2", "gone") == "gone"
    wait_for(lambda: a.get("user1", level="stale") == "batman", 15, "a stale read to catch up with the write")


def test_special_keys(clients):
    a, b, _ = clients
    for key in ("/slash", "a b", "ключ", "x?y#z"):
        a.set(key, key)
        assert b.get(key) == key
        assert b.delete(key) is True


def test_errors_carry_status_and_code(clients):
    with pytest.raises(ClientError) as error:
        clients[0].get("k", level="bogus")
    assert (error.value.status, error.value.code) == (400, "bad_level")
    with pytest.raises(ClientError) as error:
        clients[1].remove("no-such-node")
    assert (error.value.status, error.value.code) == (404, "unknown_member")


def test_join_of_a_member_is_idempotent(clients, three_nodes):
    node = three_nodes[1]
    answer = clients[2].join(node.name, node.raft_addr, node.http_addr)
    assert answer["changed"] is False


def test_an_unreachable_node_raises_oserror():
    with pytest.raises(OSError):
        Client("127.0.0.1:9", timeout=2).status()
