"""ReplicatedKV's coordination operations on a real one-node store: compare-and-set, transactions, prefix
ranges and counts, prefix deletes, and writes that carry an idempotency key."""

from __future__ import annotations

import pytest

from hraftd import PreconditionFailedError, ReplicatedKV
from hraftd.store import Entry, Page


def test_cas_creates_only_if_absent_and_replaces_only_at_the_revision_read(kv: ReplicatedKV):
    created = kv.cas("cas/a", 1, 0)
    item = kv.item("cas/a")
    assert item is not None
    assert (item["value"], item["create_revision"], item["mod_revision"], item["version"]) == (1, created, created, 1)
    with pytest.raises(PreconditionFailedError) as refused:
        kv.cas("cas/a", 2, 0)
    assert refused.value.current_revision == created and refused.value.code == "precondition_failed"
    replaced = kv.cas("cas/a", 2, created)
    assert replaced > created
    with pytest.raises(PreconditionFailedError) as stale:
        kv.cas("cas/a", 3, created)
    assert stale.value.current_revision == replaced
    item = kv.item("cas/a")
    assert item is not None
    assert (item["value"], item["create_revision"], item["mod_revision"], item["version"]) == (2, created, replaced, 2)
    assert kv.item("cas/none") is None


def test_a_conditional_delete_applies_only_at_the_revision(kv: ReplicatedKV):
    revision = kv.put({"cd/a": 1})
    with pytest.raises(PreconditionFailedError) as refused:
        kv.delete("cd/a", if_revision=revision - 1)
    assert refused.value.current_revision == revision and kv["cd/a"] == 1
    assert kv.delete("cd/a", if_revision=revision) is True
    with pytest.raises(PreconditionFailedError) as absent:
        kv.delete("cd/a", if_revision=revision)
    assert absent.value.current_revision == 0


@pytest.mark.parametrize("call", [
    lambda kv: kv.cas("k", 1, -1), lambda kv: kv.cas("k", 1, "3"), lambda kv: kv.cas("k", 1, True),
    lambda kv: kv.cas("", 1, 0), lambda kv: kv.cas("k", float("nan"), 0), lambda kv: kv.delete("k", if_revision=1.5),
    lambda kv: kv.put({}), lambda kv: kv.put({"k": object()}), lambda kv: kv.put({"k": 1}, idempotency_key=""),
    lambda kv: kv.txn([{"key": "k", "target": "value", "op": "==", "value": 1}]),
    lambda kv: kv.txn([{"key": "k", "target": "lease", "op": "=", "value": 1}]),
    lambda kv: kv.txn([], [{"set": {"k": 1}}], [{"bogus": 1}]), lambda kv: kv.txn([], [{"range": {"limit": 0}}]),
    lambda kv: kv.delete_prefix(""), lambda kv: kv.delete_prefix(3), lambda kv: kv.page(limit=0),
    lambda kv: kv.page(start_after=5), lambda kv: kv.count(None),
])
def test_bad_arguments_raise_valueerror_before_anything_is_sent(kv: ReplicatedKV, call):
    before = kv.applied_index
    with pytest.raises(ValueError):
        call(kv)
    assert kv.applied_index == before


def test_a_txn_takes_one_branch_atomically_and_answers_each_operation(kv: ReplicatedKV):
    kv.put({"t/config/a": 1, "t/config/b": 2, "t/lock": "free"})
    holds = [{"key": "t/lock", "target": "value", "op": "=", "value": "free"},
             {"key": "t/none", "target": "version", "op": "=", "value": 0}]
    answer = kv.txn(holds, [{"set": {"t/config/a": 10, "t/config/c": 30}}, {"delete": "t/config/b"},
                            {"get": "t/config/a"}, {"range": {"prefix": "t/config/"}}], [{"get": "t/lock"}])
    assert answer["succeeded"] is True
    revision = answer["revision"]
    assert answer["results"][0] == {"revision": revision}
    assert answer["results"][1] == {"deleted": True}
    assert answer["results"][2]["found"] is True and answer["results"][2]["value"] == 10
    assert answer["results"][3] == {"items": [{"key": "t/config/a", "value": 10, "mod_revision": revision},
                                              {"key": "t/config/c", "value": 30, "mod_revision": revision}],
                                    "more": False}
    assert [entry.mod_revision for entry in kv.range("t/config/")] == [revision, revision]
    fails = [{"key": "t/lock", "target": "mod_revision", "op": "<", "value": 1}]
    other = kv.txn(fails, [{"delete_prefix": "t/"}], [{"get": "t/lock"}, {"get": "t/nothing"}])
    assert other["succeeded"] is False and other["revision"] == revision  # reads only: no new revision
    assert other["results"][0]["value"] == "free" and other["results"][1] == {"key": "t/nothing", "found": False}
    assert kv.count("t/") == 3


def test_pages_are_in_key_order_and_resume_after_the_last_key(kv: ReplicatedKV):
    kv.put({f"pg/{i:03d}": i for i in range(25)} | {"pg": "outside", "pg0": "outside", "ph/x": "outside"})
    first = kv.page("pg/", limit=10)
    assert isinstance(first, Page) and first.more is True and len(first.items) == 10
    assert first.items[0] == Entry("pg/000", 0, first.items[0].mod_revision)
    keys = [entry.key for entry in first.items]
    after = first.items[-1].key
    while True:
        page = kv.page("pg/", start_after=after, limit=10, keys_only=True)
        keys += [entry.key for entry in page.items]
        assert all(entry.value is None for entry in page.items)
        if not page.more:
            break
        after = page.items[-1].key
    assert keys == [f"pg/{i:03d}" for i in range(25)]
    assert kv.count("pg/") == 25 and kv.count("pg") == 27
    assert [entry.key for entry in kv.range("pg/", start_after="pg/020")] == [f"pg/{i:03d}" for i in range(21, 25)]
    assert kv.range("pg/", start_after="a")[0].key == "pg/000"  # a start before the prefix starts at it
    assert kv.range("pg/", start_after="pg/999") == []


def test_values_of_ranges_and_txns_are_copies(kv: ReplicatedKV):
    kv.put({"copy/a": {"list": [1]}})
    kv.range("copy/")[0].value["list"].append(2)
    kv.txn([], [{"get": "copy/a"}])["results"][0]["value"]["list"].append(3)
    kv.item("copy/a")["value"]["list"].append(4)
    assert kv["copy/a"] == {"list": [1]}


def test_delete_prefix_deletes_the_range_in_one_revision(kv: ReplicatedKV):
    kv.put({"dp/a": 1, "dp/b/c": 2, "dp": 3, "dq": 4})
    before = kv.revision
    assert kv.delete_prefix("dp/") == 2
    assert kv.revision == before + 1
    assert kv.range("dp") == [Entry("dp", 3, kv.item("dp")["mod_revision"])]
    assert kv.delete_prefix("dp/") == 0 and kv.revision == before + 1


def test_a_keyed_write_repeated_is_applied_once_and_answered_the_same(kv: ReplicatedKV):
    first = kv.put({"idem/a": "one"}, idempotency_key="put-1")
    again = kv.put({"idem/a": "one"}, idempotency_key="put-1")
    assert again == first and kv.item("idem/a")["version"] == 1 and kv.revision >= first
    # The key names one write: reused for another, it still answers the first write's outcome.
    assert kv.put({"idem/b": "two"}, idempotency_key="put-1") == first and "idem/b" not in kv
    created = kv.cas("idem/c", 1, 0, idempotency_key="cas-1")
    assert kv.cas("idem/c", 1, 0, idempotency_key="cas-1") == created  # not a precondition failure
    with pytest.raises(PreconditionFailedError):
        kv.cas("idem/c", 2, 0, idempotency_key="cas-2")
    kv.put({"idem/c": 5})
    with pytest.raises(PreconditionFailedError) as refused:  # the first outcome, though it would succeed now
        kv.cas("idem/c", 2, kv.item("idem/c")["mod_revision"], idempotency_key="cas-2")
    assert refused.value.current_revision == created
    assert kv.delete("idem/c", idempotency_key="del-1") is True
    assert kv.delete("idem/c", idempotency_key="del-1") is True  # first outcome: it existed then
    txn = [{"key": "idem/n", "target": "version", "op": "=", "value": 0}], [{"set": {"idem/n": 1}}]
    assert kv.txn(*txn, idempotency_key="txn-1")["succeeded"] is True
    assert kv.txn(*txn, idempotency_key="txn-1")["succeeded"] is True and kv.item("idem/n")["version"] == 1
    assert kv.txn(*txn)["succeeded"] is False
