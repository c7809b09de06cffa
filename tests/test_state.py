"""The state machines alone, without a cluster: each call is what applying one log entry does."""

import copy
import json
import math
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hraftd import state as state_module
from hraftd.state import KVState

ROOT = Path(__file__).resolve().parent.parent
PROPERTIES = settings(derandomize=True, database=None, deadline=None, print_blob=False)


def run(kv, op, now=1.0, **fields):
    """Apply one command; return its result (the events are checked where they matter)."""
    return kv.apply({"op": op, **fields}, now).result


def put(kv, items, now=1.0, **fields):
    return run(kv, "put", now, items=items, **fields)


def meta(kv, key):
    item = kv.get(key)
    return item and (item["create_revision"], item["mod_revision"], item["version"])


def canonical(data):
    """JSON text: tells true from 1 and 1 from 1.0, and sees dict order, unlike ==."""
    return json.dumps(data)


@pytest.fixture
def kv():
    return KVState()


# Revisions and per-key metadata

def test_each_command_that_changes_keys_adds_one_revision_and_stamps_every_key_it_changed(kv):
    assert kv.revision == 0 and len(kv) == 0
    assert put(kv, {"a": 1, "b": 2, "c": 3}) == {"revision": 1}
    assert [meta(kv, k) for k in "abc"] == [(1, 1, 1)] * 3
    assert put(kv, {"a": 10, "b": 20}) == {"revision": 2}
    assert [meta(kv, k) for k in "abc"] == [(1, 2, 2), (1, 2, 2), (1, 1, 1)]
    assert put(kv, {"a": 10}) == {"revision": 3}  # the same value again is still a write
    assert meta(kv, "a") == (1, 3, 3)
    assert run(kv, "delete", key="a") == {"deleted": True, "revision": 4}
    assert kv.get("a") is None
    assert put(kv, {"a": "again"}) == {"revision": 5}
    assert meta(kv, "a") == (5, 5, 1)  # created again: create_revision and version start over
    assert run(kv, "delete_prefix", prefix="") == {"deleted": 3, "revision": 6}
    assert kv.revision == 6 and len(kv) == 0


def test_commands_that_change_no_key_leave_the_revision(kv):
    put(kv, {"a": 1})
    unchanged = [
        ("delete", {"key": "missing"}), ("delete_prefix", {"prefix": "zz"}), ("barrier", {}),
        ("put", {"items": {"a": 2}, "if_revision": 7}), ("delete", {"key": "a", "if_revision": 7}),
        ("delete", {"key": "missing", "if_revision": 0}),
        ("txn", {"success": [{"get": "a"}, {"range": {"prefix": ""}}, {"delete": "missing"}]}),
        ("txn", {"compare": [{"key": "a", "target": "version", "op": "=", "value": 9}],
                 "success": [{"set": {"x": 1}}]}),
        ("lease_grant", {"ttl": 5}), ("lease_revoke", {"id": 1}), ("lease_expire", {"id": 99}),
        ("set_member", {"id": "n1", "raft_addr": "h:1"}), ("forget_member", {"id": "n1"}), ("nonsense", {}),
    ]
    for op, fields in unchanged:
        applied = kv.apply({"op": op, **fields}, 2.0)
        assert kv.revision == 1 and applied.events == [], (op, fields)
    assert meta(kv, "a") == (1, 1, 1) and kv.value("a") == 1


def test_barrier_answers_the_current_revision(kv):
    put(kv, {"a": 1})
    put(kv, {"a": 2})
    assert kv.apply({"op": "barrier"}, 1.0) == ({"revision": 2}, [])


# Put and delete, with preconditions

def test_put_with_if_revision_applies_only_on_the_current_mod_revision(kv):
    assert put(kv, {"a": 1}, if_revision=3) == {"error": "precondition_failed", "current_revision": 0}
    assert "a" not in kv
    assert put(kv, {"a": 1}, if_revision=0) == {"revision": 1}  # 0: only if absent
    assert put(kv, {"a": 2}, if_revision=0) == {"error": "precondition_failed", "current_revision": 1}
    put(kv, {"b": 0})
    assert put(kv, {"a": 3}, if_revision=2) == {"error": "precondition_failed", "current_revision": 1}
    assert put(kv, {"a": 3}, if_revision=1) == {"revision": 3}
    assert kv.value("a") == 3 and meta(kv, "a") == (1, 3, 2)
    assert put(kv, {"a": 1, "b": 1}, if_revision=3)["error"] == "bad_command"  # one key per conditional put
    assert kv.value("a") == 3 and kv.revision == 3


def test_delete_with_if_revision(kv):
    put(kv, {"a": 1})
    assert run(kv, "delete", key="a", if_revision=5) == {"error": "precondition_failed", "current_revision": 1}
    assert run(kv, "delete", key="a", if_revision=0) == {"error": "precondition_failed", "current_revision": 1}
    assert "a" in kv
    assert run(kv, "delete", key="a", if_revision=1) == {"deleted": True, "revision": 2}
    assert run(kv, "delete", key="a", if_revision=0) == {"deleted": False, "revision": 2}  # absent, as required
    assert run(kv, "delete", key="a", if_revision=2) == {"error": "precondition_failed", "current_revision": 0}
    assert run(kv, "delete", key="a") == {"deleted": False, "revision": 2}


def test_delete_prefix_removes_exactly_the_keys_under_it_in_one_revision(kv):
    put(kv, {"a": 0, "a/": 1, "a/x": 2, "a/y/z": 3, "a0": 4, "b": 5, "a/\U0010ffff": 6, "a/é": 7})
    applied = kv.apply({"op": "delete_prefix", "prefix": "a/"}, 1.0)
    assert applied.result == {"deleted": 5, "revision": 2}
    assert applied.events == [{"type": "delete", "key": k, "mod_revision": 2}
                              for k in ["a/", "a/x", "a/y/z", "a/é", "a/\U0010ffff"]]
    assert [k for k, _ in kv.items()] == ["a", "a0", "b"]
    assert run(kv, "delete_prefix", prefix="a/") == {"deleted": 0, "revision": 2}


def test_events_of_puts_and_deletes(kv):
    assert kv.apply({"op": "put", "items": {"b": [1], "a": {"x": None}}}, 1.0).events == [
        {"type": "set", "key": "b", "value": [1], "mod_revision": 1},
        {"type": "set", "key": "a", "value": {"x": None}, "mod_revision": 1}]  # in the command's order
    assert kv.apply({"op": "delete", "key": "a"}, 1.0).events == [{"type": "delete", "key": "a", "mod_revision": 2}]


# Transactions

COMPARES = [  # (target, op, value, holds) against a = 5 written at revision 2, version 2, created at revision 1
    ("value", "=", 5, True), ("value", "=", 5.0, True), ("value", "=", 6, False), ("value", "!=", 6, True),
    ("value", "!=", 5, False), ("value", "<", 6, True), ("value", "<", 5, False), ("value", ">", 4.5, True),
    ("value", ">", 5, False), ("value", "<", "6", False), ("value", ">", "4", False), ("value", "<", True, False),
    ("version", "=", 2, True), ("version", "!=", 2, False), ("version", "<", 3, True), ("version", ">", 1, True),
    ("version", ">", 2, False), ("mod_revision", "=", 2, True), ("mod_revision", "<", 2, False),
    ("mod_revision", ">", 1, True), ("mod_revision", "!=", 1, True), ("create_revision", "=", 1, True),
    ("create_revision", "!=", 1, False), ("create_revision", "<", 2, True), ("create_revision", ">", 0, True),
]
ABSENT = [  # (target, op, value, holds) against a key that does not exist
    ("value", "=", None, False), ("value", "=", 0, False), ("value", "!=", None, True), ("value", "!=", 0, True),
    ("value", "<", 1, False), ("value", ">", -1, False), ("value", "<", "a", False), ("version", "=", 0, True),
    ("mod_revision", "=", 0, True), ("create_revision", "=", 0, True), ("version", ">", 0, False),
    ("version", "<", 1, True), ("mod_revision", "!=", 0, False),
]
VALUES = [  # (stored, compared, equal) under JSON equality
    (True, 1, False), (1, True, False), (False, 0, False), (0, False, False), (True, True, True), (1, 1.0, True),
    (1.5, 1.5, True), ("1", 1, False), (None, False, False), (None, None, True), ([1, True], [1.0, True], True),
    ([True], [1], False), ({"a": 1}, {"a": 1.0}, True), ({"a": 1}, {"a": True}, False), ({"a": 1}, {"b": 1}, False),
    ([1, 2], [2, 1], False), ([], {}, False), ([[1]], [[1, 2]], False), ("x", "x", True), ("", None, False),
    ({"a": [{"b": None}]}, {"a": [{"b": None}]}, True),
]
ORDERED = [  # (stored, op, compared, holds): only number with number (not bool) or string with string
    (2, "<", 3.5, True), (2.5, ">", 2, True), ("abc", "<", "abd", True), ("b", ">", "a", True), ("é", ">", "z", True),
    (True, "<", 2, False), (1, ">", False, False), (True, ">", False, False), ("2", "<", 3, False),
    ([1], "<", [2], False), ({"a": 1}, ">", {"a": 0}, False), (None, "<", 1, False), (1, "<", None, False),
]


def txn(kv, compare=(), success=(), failure=(), now=1.0, **fields):
    return kv.apply({"op": "txn", "compare": list(compare), "success": list(success), "failure": list(failure),
                     **fields}, now)


@pytest.mark.parametrize(("target", "op", "value", "holds"), COMPARES)
def test_txn_compares_against_a_present_key(kv, target, op, value, holds):
    put(kv, {"a": 4})
    put(kv, {"a": 5})
    result = txn(kv, [{"key": "a", "target": target, "op": op, "value": value}]).result
    assert result == {"succeeded": holds, "revision": 2, "results": []}


@pytest.mark.parametrize(("target", "op", "value", "holds"), ABSENT)
def test_txn_compares_against_an_absent_key(kv, target, op, value, holds):
    put(kv, {"other": None})
    assert txn(kv, [{"key": "a", "target": target, "op": op, "value": value}]).result["succeeded"] is holds


@pytest.mark.parametrize(("stored", "compared", "equal"), VALUES)
def test_txn_value_equality_is_json_equality(kv, stored, compared, equal):
    put(kv, {"a": stored})
    assert txn(kv, [{"key": "a", "target": "value", "op": "=", "value": compared}]).result["succeeded"] is equal
    assert txn(kv, [{"key": "a", "target": "value", "op": "!=", "value": compared}]).result["succeeded"] is not equal


@pytest.mark.parametrize(("stored", "op", "compared", "holds"), ORDERED)
def test_txn_orders_only_numbers_or_strings(kv, stored, op, compared, holds):
    put(kv, {"a": stored})
    assert txn(kv, [{"key": "a", "target": "value", "op": op, "value": compared}]).result["succeeded"] is holds


def test_txn_needs_every_compare_and_takes_a_branch(kv):
    put(kv, {"a": 1, "b": 2})
    both = [{"key": "a", "target": "value", "op": "=", "value": 1},
            {"key": "b", "target": "value", "op": "=", "value": 2}]
    one = [both[0], {"key": "b", "target": "value", "op": "=", "value": 3}]
    assert txn(kv, both, [{"get": "a"}], [{"get": "b"}]).result["results"][0]["key"] == "a"
    assert txn(kv, one, [{"get": "a"}], [{"get": "b"}]).result["results"][0]["key"] == "b"
    assert txn(kv, [], [{"get": "a"}], [{"get": "b"}]).result["succeeded"] is True  # no compare: success
    assert kv.apply({"op": "txn"}, 1.0).result == {"succeeded": True, "revision": 1, "results": []}


def test_txn_operations_run_in_order_and_share_one_new_revision(kv):
    put(kv, {"p/old": 0, "q": 0})
    applied = txn(kv, [], [
        {"set": {"p/a": 1, "p/b": 2}}, {"get": "p/a"}, {"range": {"prefix": "p/", "limit": 2}}, {"delete": "p/old"},
        {"delete": "missing"}, {"set": {"p/a": 3}}, {"get": "p/a"}, {"delete_prefix": "p/b"}, {"get": "p/b"},
        {"range": {"prefix": "p/"}}, {"delete_prefix": "none/"}])
    assert applied.result == {"succeeded": True, "revision": 2, "results": [
        {"revision": 2},
        {"found": True, "key": "p/a", "value": 1, "create_revision": 2, "mod_revision": 2, "version": 1,
         "lease": None},
        {"items": [{"key": "p/a", "value": 1, "mod_revision": 2}, {"key": "p/b", "value": 2, "mod_revision": 2}],
         "more": True},
        {"deleted": True}, {"deleted": False}, {"revision": 2},
        {"found": True, "key": "p/a", "value": 3, "create_revision": 2, "mod_revision": 2, "version": 2,
         "lease": None},
        {"deleted": 1}, {"key": "p/b", "found": False},
        {"items": [{"key": "p/a", "value": 3, "mod_revision": 2}], "more": False}, {"deleted": 0}]}
    assert applied.events == [
        {"type": "set", "key": "p/a", "value": 1, "mod_revision": 2},
        {"type": "set", "key": "p/b", "value": 2, "mod_revision": 2},
        {"type": "delete", "key": "p/old", "mod_revision": 2},
        {"type": "set", "key": "p/a", "value": 3, "mod_revision": 2},
        {"type": "delete", "key": "p/b", "mod_revision": 2}]
    assert kv.revision == 2 and meta(kv, "q") == (1, 1, 1)


def test_a_txn_that_only_reads_changes_nothing(kv):
    put(kv, {"a": 1})
    applied = txn(kv, [{"key": "a", "target": "value", "op": "=", "value": 2}], [{"set": {"a": 2}}], [{"get": "a"}])
    assert applied.result["succeeded"] is False and applied.result["revision"] == 1 and applied.events == []
    assert kv.revision == 1


def test_a_txn_with_an_unknown_lease_applies_nothing(kv):
    put(kv, {"a": 1})
    lease = run(kv, "lease_grant", ttl=5)["id"]
    run(kv, "lease_revoke", id=lease)
    before = canonical(kv.dump())
    applied = txn(kv, [], [{"set": {"a": 2}}, {"delete": "a"}, {"set": {"b": 1}, "lease": lease}])
    assert applied == ({"error": "lease_not_found", "lease": lease}, [])
    assert canonical(kv.dump()) == before


def test_a_txn_with_any_malformed_operation_applies_nothing_even_in_the_branch_not_taken(kv):
    put(kv, {"a": 1})
    before = canonical(kv.dump())
    applied = txn(kv, [], [{"set": {"a": 2}}, {"delete": "a"}], [{"set": {"a": 3}}, {"bogus": 1}])
    assert applied.result["error"] == "bad_command" and applied.events == []
    assert canonical(kv.dump()) == before


def test_a_txn_checks_leases_on_the_branch_it_takes_only(kv):
    put(kv, {"a": 1})
    never = [{"key": "a", "target": "value", "op": "=", "value": 0}]
    assert txn(kv, never, [{"set": {"b": 1}, "lease": 42}], [{"set": {"c": 1}}]).result["succeeded"] is False
    assert kv.value("c") == 1


# Leases

def test_lease_ids_count_from_one_and_are_never_reused(kv):
    assert [run(kv, "lease_grant", ttl=t)["id"] for t in (5, 0.5, 60)] == [1, 2, 3]
    assert run(kv, "lease_grant", ttl=2.5) == {"id": 4, "ttl": 2.5}
    run(kv, "lease_revoke", id=4)
    run(kv, "lease_expire", id=3)
    assert kv.leases() == [1, 2]
    assert run(kv, "lease_grant", ttl=1)["id"] == 5
    assert kv.lease(2) == {"id": 2, "ttl": 0.5, "keys": []} and kv.lease(3) is None


def test_a_grant_beyond_its_max_leases_is_refused_and_changes_nothing(kv):
    assert [run(kv, "lease_grant", ttl=5, max_leases=2)["id"] for _ in range(2)] == [1, 2]
    before = kv.revision
    assert run(kv, "lease_grant", ttl=5, max_leases=2) == {"error": "too_many_leases", "max_leases": 2}
    assert kv.leases() == [1, 2] and kv.revision == before
    assert run(kv, "lease_grant", ttl=5, max_leases=3)["id"] == 3  # the cap is the proposer's, in the entry
    run(kv, "lease_revoke", id=1)
    assert run(kv, "lease_grant", ttl=5, max_leases=3)["id"] == 4
    for bad in (0, -1, 1.5, "2", True):
        assert run(kv, "lease_grant", ttl=5, max_leases=bad)["error"] == "bad_command", bad
    assert kv.leases() == [2, 3, 4]


def test_a_put_attaches_moves_and_detaches_keys(kv):
    first, second = run(kv, "lease_grant", ttl=5)["id"], run(kv, "lease_grant", ttl=5)["id"]
    assert put(kv, {"b": 1, "a": 1, "c": 1}, lease=first) == {"revision": 1}
    assert kv.lease(first)["keys"] == ["a", "b", "c"] and kv.get("a")["lease"] == first
    put(kv, {"b": 2}, lease=second)
    put(kv, {"c": 2})  # a put without a lease detaches the key
    assert kv.lease(first)["keys"] == ["a"] and kv.lease(second)["keys"] == ["b"]
    assert kv.get("c")["lease"] is None and kv.get("b")["lease"] == second
    run(kv, "delete", key="a")
    txn(kv, [], [{"set": {"d": 1}, "lease": second}, {"set": {"b": 3}}])
    assert kv.lease(first)["keys"] == [] and kv.lease(second)["keys"] == ["d"]


def test_a_put_with_an_unknown_lease_writes_nothing(kv):
    assert put(kv, {"a": 1}, lease=1) == {"error": "lease_not_found", "lease": 1}
    assert put(kv, {"a": 1}, lease=0, if_revision=0) == {"error": "lease_not_found", "lease": 0}
    assert "a" not in kv and kv.revision == 0


@pytest.mark.parametrize(("op", "event"), [("lease_revoke", "delete"), ("lease_expire", "expire")])
def test_ending_a_lease_deletes_its_keys_in_one_revision(kv, op, event):
    lease = run(kv, "lease_grant", ttl=5)["id"]
    other = run(kv, "lease_grant", ttl=5)["id"]
    put(kv, {"s/2": 1, "s/1": 1, "moved": 1}, lease=lease)
    put(kv, {"moved": 2}, lease=other)
    put(kv, {"plain": 1})
    applied = kv.apply({"op": op, "id": lease}, 1.0)
    assert applied.result == {"revoked": True, "deleted": 2, "revision": 4}
    assert applied.events == [{"type": event, "key": k, "mod_revision": 4} for k in ["s/1", "s/2"]]
    assert [k for k, _ in kv.items()] == ["moved", "plain"] and kv.leases() == [other]
    assert kv.apply({"op": op, "id": lease}, 1.0) == ({"revoked": False, "deleted": 0, "revision": 4}, [])
    empty = run(kv, "lease_grant", ttl=1)["id"]
    assert run(kv, op, id=empty) == {"revoked": True, "deleted": 0, "revision": 4}


def test_the_keys_of_an_ended_lease_are_deleted_in_key_order_whatever_the_hash_order(kv):
    lease = run(kv, "lease_grant", ttl=5)["id"]
    keys = [f"k{n * 37 % 100:02d}" for n in range(100)]
    put(kv, dict.fromkeys(keys, 0), lease=lease)
    assert list(kv.lease(lease)["keys"]) == sorted(keys)
    assert [event["key"] for event in kv.apply({"op": "lease_revoke", "id": lease}, 1.0).events] == sorted(keys)


def test_an_expiry_decided_in_a_term_before_the_last_lease_epoch_ends_nothing(kv):
    lease = run(kv, "lease_grant", ttl=5)["id"]
    put(kv, {"a": 1}, lease=lease)
    assert run(kv, "lease_epoch", term=3) == {"lease_term": 3}
    assert run(kv, "lease_epoch", term=2) == {"lease_term": 3}  # a late epoch never goes back
    assert kv.apply({"op": "lease_expire", "id": lease, "term": 2}, 1.0) == (
        {"revoked": False, "deleted": 0, "revision": 1, "stale": True}, [])
    assert kv.lease(lease)["keys"] == ["a"]
    assert run(kv, "lease_expire", id=lease, term=3) == {"revoked": True, "deleted": 1, "revision": 2}
    assert KVState.load(json.loads(json.dumps(kv.dump()))).lease_term == 3
    assert run(kv, "lease_epoch", term=-1)["error"] == "bad_command"


# Members

def test_member_table_replaces_an_address_under_a_new_id(kv):
    assert run(kv, "set_member", id="n1", raft_addr="h:1", http_addr="h:11") == {}
    run(kv, "set_member", id="n2", raft_addr="h:2", http_addr="h:12")
    run(kv, "set_member", id="n1-new", raft_addr="h:1", http_addr="h:21")  # same raft address, new id
    run(kv, "set_member", id="n2", raft_addr="h:3")  # same id, new address, no http address
    assert kv.members == {"n1-new": {"raft_addr": "h:1", "http_addr": "h:21"},
                          "n2": {"raft_addr": "h:3", "http_addr": None}}
    assert run(kv, "forget_member", id="n2") == {}
    run(kv, "forget_member", id="unknown")
    assert set(kv.members) == {"n1-new"}


# Refusals

BAD_COMMANDS = [
    None, [], "put", {}, {"op": None}, {"op": ["put"]}, {"op": "nope"}, {"op": "put", "items": {"a": 1}, "extra": 1},
    {"op": "put"}, {"op": "put", "items": []}, {"op": "put", "items": {}}, {"op": "put", "items": {"": 1}},
    {"op": "put", "items": {1: 1}}, {"op": "put", "items": {"a": {1, 2}}}, {"op": "put", "items": {"a": (1,)}},
    {"op": "put", "items": {"a": math.nan}}, {"op": "put", "items": {"a": [1, math.inf]}},
    {"op": "put", "items": {"a": {"b": {2: 1}}}}, {"op": "put", "items": {"a": object()}},
    {"op": "put", "items": {"a": b"x"}}, {"op": "put", "items": {"a": 1}, "lease": True},
    {"op": "put", "items": {"a": 1}, "lease": "1"}, {"op": "put", "items": {"a": 1}, "if_revision": -1},
    {"op": "put", "items": {"a": 1}, "if_revision": 1.0}, {"op": "put", "items": {"a": 1}, "if_revision": False},
    {"op": "delete"}, {"op": "delete", "key": ""}, {"op": "delete", "key": ["a"]}, {"op": "delete_prefix"},
    {"op": "delete_prefix", "prefix": None}, {"op": "txn", "compare": {}}, {"op": "txn", "success": None},
    {"op": "txn", "compare": [{"key": "a", "target": "value", "op": "="}]},
    {"op": "txn", "compare": [{"key": "a", "target": "value", "op": "=", "value": 1, "x": 1}]},
    {"op": "txn", "compare": [{"key": "a", "target": "lease", "op": "=", "value": 1}]},
    {"op": "txn", "compare": [{"key": "a", "target": ["value"], "op": "=", "value": 1}]},
    {"op": "txn", "compare": [{"key": "a", "target": "value", "op": "==", "value": 1}]},
    {"op": "txn", "compare": [{"key": "a", "target": "value", "op": {}, "value": 1}]},
    {"op": "txn", "compare": [{"key": "a", "target": "version", "op": "=", "value": "1"}]},
    {"op": "txn", "compare": [{"key": "a", "target": "version", "op": "=", "value": True}]},
    {"op": "txn", "compare": [{"key": 1, "target": "version", "op": "=", "value": 1}]},
    {"op": "txn", "compare": [{"key": "a", "target": "value", "op": "=", "value": math.nan}]},
    {"op": "txn", "compare": ["a"]}, {"op": "txn", "success": [{}]}, {"op": "txn", "success": ["get"]},
    {"op": "txn", "success": [{"get": "a", "delete": "a"}]},
    {"op": "txn", "success": [{"delete": "a", "lease": 1}]}, {"op": "txn", "success": [{"set": {}}]},
    {"op": "txn", "success": [{"set": {"a": 1}, "lease": "x"}]}, {"op": "txn", "success": [{"get": ""}]},
    {"op": "txn", "success": [{"range": {"prefix": "a", "limit": 0}}]}, {"op": "txn", "success": [{"range": "a"}]},
    {"op": "txn", "success": [{"range": {"prefix": "a", "start": "b"}}]},
    {"op": "txn", "success": [{"delete_prefix": 1}]},
    {"op": "barrier", "idempotency_key": "k"}, {"op": "put", "items": {"a": 1}, "idempotency_key": ""},
    {"op": "put", "items": {"a": 1}, "idempotency_key": 7}, {"op": "set_member", "id": "n"},
    {"op": "set_member", "id": "n", "raft_addr": "h:1", "http_addr": 1}, {"op": "forget_member"},
    {"op": "lease_grant"}, {"op": "lease_grant", "ttl": 0}, {"op": "lease_grant", "ttl": -1},
    {"op": "lease_grant", "ttl": True}, {"op": "lease_grant", "ttl": "5"}, {"op": "lease_grant", "ttl": math.nan},
    {"op": "lease_grant", "ttl": math.inf}, {"op": "lease_revoke"}, {"op": "lease_revoke", "id": "1"},
    {"op": "lease_expire", "id": None}, {"op": "put", "items": {"a": 10**5000}, "if_revision": -10**5000},
]


@pytest.mark.parametrize("command", BAD_COMMANDS, ids=range(len(BAD_COMMANDS)))
def test_a_bad_command_is_answered_and_changes_nothing(kv, command):
    lease = run(kv, "lease_grant", ttl=5)["id"]
    put(kv, {"a": 1}, lease=lease, idempotency_key="k1")
    before = canonical(kv.dump())
    applied = kv.apply(command, 1.0)
    assert applied.result["error"] == "bad_command" and isinstance(applied.result["message"], str)
    assert set(applied.result) == {"error", "message"} and applied.events == []
    assert canonical(kv.dump()) == before


def test_a_cyclic_value_is_refused_but_a_shared_scalar_is_not(kv):
    cycle = []
    cycle.append(cycle)
    assert put(kv, {"a": cycle})["error"] == "bad_command"
    text = "shared"
    assert put(kv, {"a": [text, text], "b": text}) == {"revision": 1}


def test_a_bug_in_apply_is_answered_not_raised(kv, monkeypatch):
    def broken(self, command):
        raise KeyError("oops")
    monkeypatch.setitem(state_module._HANDLERS, "barrier", broken)
    assert kv.apply({"op": "barrier"}, 1.0) == ({"error": "internal_error", "message": "KeyError in apply"}, [])


def test_error_messages_never_show_memory_addresses(kv):
    message = kv.apply({"op": "put", "items": {"a": object()}, "zz": object()}, 1.0).result["message"]
    assert "0x" not in message and "unknown fields" in message


# Idempotency

def test_a_repeated_idempotency_key_returns_the_first_result_and_applies_nothing(kv):
    first = kv.apply({"op": "put", "items": {"a": 1}, "idempotency_key": "k"}, 1.0)
    assert first.result == {"revision": 1} and first.events
    put(kv, {"b": 1})
    again = kv.apply({"op": "put", "items": {"a": 1}, "idempotency_key": "k"}, 2.0)
    assert again == ({"revision": 1}, [])
    assert kv.revision == 2 and meta(kv, "a") == (1, 1, 1)
    grant = run(kv, "lease_grant", ttl=3, idempotency_key="g")
    assert run(kv, "lease_grant", ttl=3, idempotency_key="g") == grant and kv.leases() == [grant["id"]]
    assert txn(kv, [], [{"set": {"c": 1}}], idempotency_key="t").result["revision"] == 3
    assert txn(kv, [], [{"set": {"c": 1}}], idempotency_key="t").result["revision"] == 3
    assert kv.revision == 3 and meta(kv, "c") == (3, 3, 1)


def test_refusals_other_than_bad_commands_are_remembered_too(kv):
    put(kv, {"a": 1})
    refused = {"error": "precondition_failed", "current_revision": 1}
    assert put(kv, {"a": 2}, if_revision=0, idempotency_key="cas") == refused
    run(kv, "delete", key="a")  # now the precondition would hold
    assert put(kv, {"a": 2}, if_revision=0, idempotency_key="cas") == refused
    assert "a" not in kv
    assert put(kv, {"a": 2}, lease=9, idempotency_key="l") == {"error": "lease_not_found", "lease": 9}
    assert put(kv, {"a": 2}, lease=9, idempotency_key="l") == {"error": "lease_not_found", "lease": 9}
    # A command that was never applied is not remembered: fixed and retried, it applies.
    assert put(kv, {"a": math.nan}, idempotency_key="bad")["error"] == "bad_command"
    assert put(kv, {"a": 3}, idempotency_key="bad") == {"revision": 3}


def test_the_oldest_keys_are_forgotten_past_the_count_limit(kv):
    kv = KVState(idempotency_limit=3)
    for n in range(4):
        put(kv, {"a": n}, idempotency_key=f"k{n}")
    assert kv.revision == 4
    for n in (1, 2, 3):
        assert put(kv, {"a": "retry"}, idempotency_key=f"k{n}") == {"revision": n + 1}
    assert kv.revision == 4
    assert put(kv, {"a": "retry"}, idempotency_key="k0") == {"revision": 5}  # forgotten: applied again


def test_keys_are_forgotten_past_the_age_limit_in_log_time(kv):
    kv = KVState(idempotency_max_age=10)
    put(kv, {"a": 1}, now=100.0, idempotency_key="old")
    put(kv, {"a": 2}, now=105.0, idempotency_key="young")
    assert put(kv, {"a": 0}, now=110.0, idempotency_key="old") == {"revision": 1}  # 10 s old: still remembered
    assert put(kv, {"a": 0}, now=110.5, idempotency_key="young") == {"revision": 2}
    assert put(kv, {"a": 3}, now=110.5, idempotency_key="old") == {"revision": 3}  # 10.5 s old: forgotten
    kv.apply({"op": "barrier"}, 115.5)  # any entry moves log time on and forgets
    assert put(kv, {"a": 4}, now=115.5, idempotency_key="young") == {"revision": 4}


def test_a_clock_that_goes_backwards_neither_forgets_early_nor_stamps_early(kv):
    kv = KVState(idempotency_max_age=10)
    kv.apply({"op": "barrier"}, 100.0)
    put(kv, {"a": 1}, now=50.0, idempotency_key="k")  # a proposer's clock behind: stamped at log time 100
    assert kv.log_time == 100.0
    assert put(kv, {"a": 2}, now=109.0, idempotency_key="k") == {"revision": 1}
    assert put(kv, {"a": 2}, now=-800.0, idempotency_key="k") == {"revision": 1}
    for now in (math.nan, math.inf, -math.inf, "later", None, True):
        kv.apply({"op": "barrier"}, now)
    assert kv.log_time == 109.0 and put(kv, {"a": 2}, now=110.0, idempotency_key="k") == {"revision": 1}
    assert put(kv, {"a": 2}, now=110.5, idempotency_key="k") == {"revision": 2}


# Reads

KEYS = ["a", "a/", "a/1", "a/10", "a/2", "a/b/c", "a/é", "a/\uffff", "a/\U0001f600", "a/\U0010ffff",  # str order
        "a0", "ab", "b", "é"]


@pytest.fixture
def filled():
    kv = KVState()
    for n, key in enumerate(reversed(KEYS)):
        put(kv, {key: n})
    return kv


def test_range_pages_in_key_order(filled):
    under = [k for k in KEYS if k.startswith("a/")]
    assert under == sorted(under) and filled.count("a/") == len(under) == 9
    items, more = filled.range("a/", limit=4)
    assert [i["key"] for i in items] == under[:4] and more is True
    assert items[0] == {"key": "a/", "value": KEYS[::-1].index("a/"), "mod_revision": filled.get("a/")["mod_revision"]}
    pages, after, more = [], None, True
    while more and len(pages) < 10:  # bounded: a paging bug must fail, not loop
        items, more = filled.range("a/", start_after=after, limit=2, keys_only=True)
        pages.append([i["key"] for i in items])
        assert all(set(i) == {"key", "mod_revision"} for i in items)
        after = items[-1]["key"] if items else None
    assert [key for page in pages for key in page] == under and len(pages) == 5
    assert filled.range("a/", start_after="a/\U0010ffff") == ([], False)
    assert filled.range("a/", limit=9)[1] is False and filled.range("a/", limit=8)[1] is True
    assert [i["key"] for i in filled.range("a/", start_after="0")[0]] == under  # before the prefix: from its start
    assert [i["key"] for i in filled.range("a/", start_after="a/10")[0]] == under[3:]
    assert filled.range("a/", start_after="b") == ([], False)


def test_range_and_count_over_other_prefixes(filled):
    assert [i["key"] for i in filled.range()[0]] == KEYS and filled.count() == len(KEYS)
    assert [i["key"] for i in filled.range("a")[0]] == KEYS[:12] and filled.count("a") == 12
    assert [i["key"] for i in filled.range("a/\U0010ffff")[0]] == ["a/\U0010ffff"] and filled.count("a/\U0010ffff") == 1
    assert filled.count("a/1") == 2 and filled.count("zz") == 0 and filled.count("\U0010ffff") == 0
    assert filled.range("zz") == ([], False) and filled.range("é", limit=1) == ([{"key": "é", "value": 0,
                                                                                   "mod_revision": 1}], False)
    with pytest.raises(ValueError):
        filled.range(limit=0)


def test_point_reads(filled):
    assert filled.get("a/b/c") == {"key": "a/b/c", "value": KEYS[::-1].index("a/b/c"), "create_revision": 9,
                                   "mod_revision": 9, "version": 1, "lease": None}
    assert filled.get("zz") is None and "a/" in filled and "zz" not in filled and len(filled) == len(KEYS)
    assert filled.value("b") == 1
    with pytest.raises(KeyError):
        filled.value("zz")
    assert [k for k, _ in filled.items()] == KEYS and dict(filled.items())["é"] == 0


@PROPERTIES
@given(st.lists(st.text("ab/é\U0010ffff", min_size=1, max_size=4), max_size=40), st.text("ab/é\U0010ffff", max_size=3),
       st.integers(1, 5))
def test_paging_with_any_prefix_and_limit_yields_each_key_once_in_order(keys, prefix, limit):
    kv = KVState()
    for key in keys:
        put(kv, {key: None})
    for key in keys[::3]:
        run(kv, "delete", key=key)
    expected = sorted(k for k in set(keys) - set(keys[::3]) if k.startswith(prefix))
    seen, after, more = [], None, True
    while more and len(seen) <= len(keys):
        items, more = kv.range(prefix, start_after=after, limit=limit)
        seen += [i["key"] for i in items]
        after = seen[-1] if seen else None
    assert seen == expected and kv.count(prefix) == len(expected)


def test_reads_change_nothing_not_even_a_cache():
    kv = KVState()
    for n in range(5000):  # enough keys for SortedList to split them into several lists
        put(kv, {f"k{n * 7919 % 5000:05d}": n})
        if n % 7 == 0:
            run(kv, "delete", key=f"k{n * 31 % 5000:05d}")
    before = copy.deepcopy(vars(kv._keys))
    kv.count("k01"), kv.range("k02", limit=3), kv.get("k00001"), list(kv.items()), kv.dump(), kv.lease(1)
    assert vars(kv._keys) == before


# Snapshots and determinism

def random_commands(seed, count):
    """A deterministic mix of every command, some malformed, with idempotency keys and a jittery log clock."""
    rnd = random.Random(seed)
    keys = ["a", "a/1", "a/2", "b", "é", "\U0010ffff"]

    def value():
        return rnd.choice([None, True, 1, 1.0, "x", [1, {"y": False}], {"z": [None]}])

    def operation():
        kind = rnd.choice(["set", "set", "delete", "delete_prefix", "get", "range"])
        if kind == "set":
            op = {"set": {rnd.choice(keys): value() for _ in range(rnd.randint(1, 2))}}
            if rnd.random() < 0.3:
                op["lease"] = lease()
            return op
        if kind == "range":
            return {"range": {"prefix": rnd.choice(["", "a"]), "limit": rnd.randint(1, 3)}}
        return {kind: rnd.choice(keys) if kind in ("delete", "get") else rnd.choice(["", "a/", "b"])}

    granted, now = 0, 1000.0

    def lease():  # mostly the last one granted, else a recent one, maybe revoked, or one not granted yet
        return granted if rnd.random() < 0.7 else rnd.randint(max(1, granted - 2), granted + 1)

    for _ in range(count):
        now += rnd.uniform(-2, 3)
        kind = rnd.choice(["put", "put", "put", "put", "delete", "delete_prefix", "txn", "txn", "lease_grant",
                           "lease_grant", "lease_revoke", "lease_expire", "barrier", "set_member", "forget_member",
                           "garbage"])
        if kind == "put":
            command = {"op": "put", "items": {rnd.choice(keys): value() for _ in range(rnd.randint(1, 3))}}
            if rnd.random() < 0.5:
                command["lease"] = lease()
            if rnd.random() < 0.3:
                command["items"] = dict(list(command["items"].items())[:1])
                command["if_revision"] = rnd.randint(0, 5)
        elif kind == "delete":
            command = {"op": "delete", "key": rnd.choice(keys)}
            if rnd.random() < 0.3:
                command["if_revision"] = rnd.randint(0, 5)
        elif kind == "delete_prefix":
            command = {"op": "delete_prefix", "prefix": rnd.choice(["a", "a/", "b", "c"])}
        elif kind == "txn":
            target = rnd.choice(["value", "version", "mod_revision", "create_revision"])
            compare = {"key": rnd.choice(keys), "target": target, "op": rnd.choice(["=", "!=", "<", ">"]),
                       "value": value() if target == "value" else rnd.randint(0, 5)}
            command = {"op": "txn", "compare": [compare], "success": [operation() for _ in range(rnd.randint(0, 3))],
                       "failure": [operation() for _ in range(rnd.randint(0, 2))]}
        elif kind == "lease_grant":
            command = {"op": "lease_grant", "ttl": rnd.choice([1, 2.5])}
            granted += 1
        elif kind in ("lease_revoke", "lease_expire"):
            command = {"op": kind, "id": lease()}
        elif kind == "set_member":
            command = {"op": kind, "id": rnd.choice(["n1", "n2"]), "raft_addr": rnd.choice(["h:1", "h:2"])}
        elif kind == "forget_member":
            command = {"op": kind, "id": rnd.choice(["n1", "n2"])}
        elif kind == "garbage":
            command = rnd.choice([{"op": "put", "items": {}}, {"op": "txn", "success": [{}]}, {"op": "x"}, None])
        else:
            command = {"op": kind}
        # Not on grants: a remembered grant makes no lease, and lease() would pick ids that never exist.
        if kind not in ("barrier", "lease_grant") and isinstance(command, dict) and rnd.random() < 0.4:
            command["idempotency_key"] = f"i{rnd.randint(1, 12)}"
        yield command, now


def replay(commands, restore_at=None, new=lambda: KVState(idempotency_limit=4, idempotency_max_age=8)):
    kv, answers = new(), []
    for n, (command, now) in enumerate(commands):
        if n == restore_at:
            kv = KVState.load(json.loads(json.dumps(kv.dump())))
        answers.append(kv.apply(copy.deepcopy(command), now))
    return kv, canonical(answers)


@pytest.mark.parametrize("seed", range(6))
def test_the_same_commands_give_the_same_answers_and_state_even_across_a_snapshot(seed):
    commands = list(random_commands(seed, 400))
    kv, answers = replay(commands)
    for restore_at in (1, 137, 399):
        restored, restored_answers = replay(commands, restore_at)
        assert restored_answers == answers
        assert canonical(restored.dump()) == canonical(kv.dump())
    assert kv.revision > 20  # the mix really changes things


def test_answers_do_not_depend_on_the_hash_seed():
    script = ("import json, sys; sys.path.insert(0, 'tests'); from test_state import random_commands, replay; "
              "kv, answers = replay(list(random_commands(7, 400))); print(answers, json.dumps(kv.dump()))")
    outputs = {subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": seed, "PATH": ""}, timeout=60).stdout for seed in ("1", "2")}
    assert len(outputs) == 1 and len(next(iter(outputs))) > 1000


def test_dump_is_plain_data_with_keys_in_order_and_loads_exactly():
    kv, _ = replay(list(random_commands(3, 300)))
    data = kv.dump()
    stack = [data]
    while stack:
        item = stack.pop()
        assert type(item) in (dict, list, tuple, str, int, float, bool, type(None)), type(item)
        stack.extend(item.values() if type(item) is dict else item if type(item) in (list, tuple) else [])
    assert data["keys"] == sorted(data["keys"])
    for copied in (data, pickle.loads(pickle.dumps(data)), json.loads(json.dumps(data))):
        restored = KVState.load(copied)
        assert canonical(restored.dump()) == canonical(data)
        assert (restored.revision, restored.log_time, restored.members) == (kv.revision, kv.log_time, kv.members)
        assert restored.range() == kv.range() and restored.count("a") == kv.count("a")
        assert [restored.lease(i) for i in range(6)] == [kv.lease(i) for i in range(6)]
        assert [restored.get(k) for k in data["keys"]] == [kv.get(k) for k in data["keys"]]
    with pytest.raises(ValueError):
        KVState.load({"format": 99})


def test_a_restored_state_continues_exactly(kv):
    kv = KVState(idempotency_limit=2, idempotency_max_age=10)
    lease = run(kv, "lease_grant", ttl=5)["id"]
    put(kv, {"a": 1}, lease=lease, now=10.0, idempotency_key="k1")
    put(kv, {"a": 2, "b": 1}, now=15.0, idempotency_key="k2")
    run(kv, "lease_grant", ttl=7, idempotency_key="k3")
    restored = KVState.load(json.loads(json.dumps(kv.dump())))
    later = [{"op": "lease_grant", "ttl": 1}, {"op": "put", "items": {"a": 0}, "idempotency_key": "k2"},
             {"op": "put", "items": {"a": 3}, "idempotency_key": "k1"},
             {"op": "put", "items": {"c": 0}, "lease": lease}, {"op": "lease_expire", "id": lease}, {"op": "barrier"}]
    for command in later:
        assert canonical(restored.apply(command, 16.0)) == canonical(kv.apply(command, 16.0))
    assert canonical(restored.dump()) == canonical(kv.dump())
    assert kv.leases() == [2, 3] and meta(kv, "a") == (1, 3, 3) and kv.revision == 5
