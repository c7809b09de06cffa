"""The state machine alone, without a cluster: each call is what applying one log entry does."""

import pickle

import pytest

from hraftd.state import KVStateMachine


def apply(machine, method, *args):
    """Apply an entry the way PySyncObj does on every node when the entry commits."""
    return getattr(machine, method)(*args, _doApply=True)


@pytest.fixture
def machine():
    return KVStateMachine()


def test_a_multi_key_write_is_one_revision(machine):
    assert apply(machine, "put_many", {"a": 1, "b": [2]}) == 1
    assert apply(machine, "put_many", {"a": 3}) == 2
    assert machine.data == {"a": 3, "b": [2]}


def test_delete_reports_whether_the_key_existed(machine):
    apply(machine, "put_many", {"a": None})
    assert apply(machine, "delete_key", "a") == (True, 2)
    assert apply(machine, "delete_key", "a") == (False, 2)  # a no-op does not change the revision
    assert machine.data == {}


def test_barrier_changes_nothing(machine):
    apply(machine, "put_many", {"a": 1})
    assert apply(machine, "barrier") == 1
    assert machine.data == {"a": 1} and machine.revision == 1


def test_member_table_replaces_an_address_under_a_new_id(machine):
    apply(machine, "set_member", "n1", "h:1", "h:11")
    apply(machine, "set_member", "n2", "h:2", "h:12")
    apply(machine, "set_member", "n1-new", "h:1", "h:21")  # same raft address, new id
    apply(machine, "set_member", "n2", "h:3", "h:13")  # same id, new address
    assert machine.members == {"n1-new": {"raft_addr": "h:1", "http_addr": "h:21"},
                               "n2": {"raft_addr": "h:3", "http_addr": "h:13"}}
    apply(machine, "forget_member", "n2")
    apply(machine, "forget_member", "unknown")
    assert set(machine.members) == {"n1-new"}


def test_the_same_entries_give_the_same_state_and_snapshot(machine):
    entries = [("put_many", {"x": 1, "y": 2}), ("delete_key", "x"), ("set_member", "n", "h:1", None),
               ("put_many", {"x": {"nested": [1, 2]}})]
    other = KVStateMachine()
    for method, *args in entries:
        apply(machine, method, *args)
        apply(other, method, *args)
    assert machine._serialize() == other._serialize()
    restored = KVStateMachine()
    restored._deserialize(pickle.loads(pickle.dumps(machine._serialize())))
    assert (restored.data, restored.members, restored.revision) == (machine.data, machine.members, machine.revision)
