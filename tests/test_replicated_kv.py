"""ReplicatedKV in-process: three real Raft nodes in this test process, used like a dict."""

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from nodes import SECRET, free_port, wait_for

from hraftd import STALE, OutcomeUnknownError, ReplicatedKV, UnavailableError
from hraftd.errors import ClosedError
from hraftd.state import KVState


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    kvs = [ReplicatedKV(addr, [a for a in addrs if a != addr], data_dir=tmp_path_factory.mktemp(f"kv{i}"),
                        secret=SECRET) for i, addr in enumerate(addrs)]
    try:
        for kv in kvs:
            kv.wait_ready(20)
        yield kvs
    finally:
        for kv in kvs:
            kv.close()


def test_used_like_a_dict_on_any_node(trio):
    a, b, c = trio
    a["user1"] = "batman"
    assert b["user1"] == "batman" and c.get("user1") == "batman"
    b.update({"user2": "robin", "user3": "alfred"})
    assert "user2" in c and "nobody" not in c
    assert c.get("nobody") is None and c.get("nobody", 7) == 7
    del c["user3"]
    with pytest.raises(KeyError):
        a["user3"]
    with pytest.raises(KeyError):
        del a["user3"]
    assert a.delete("user3") is False


def test_iteration_is_over_a_consistent_copy(trio):
    a, b, _ = trio
    a.update({f"it{i}": i for i in range(10)})
    seen = []
    for key in b:  # writing while iterating is safe: the iteration is over a copy
        seen.append(key)
        b[f"during-{key}"] = 1
    assert {f"it{i}" for i in range(10)} <= set(seen)
    assert not any(key.startswith("during-") for key in seen)
    assert dict(b.items())["it3"] == 3 and len(b) == len(b.snapshot())
    assert sorted(b.keys()) == sorted(b.snapshot())


def test_an_update_is_one_revision_and_all_or_nothing(trio):
    a, b, _ = trio
    before = a.update({"r": 0})
    assert b.update({"r1": 1, "r2": 2, "r3": 3}) >= before + 1
    with pytest.raises(ValueError):
        a.update({"fine": 1, "": 2})
    with pytest.raises(ValueError):
        a.update({})
    assert "fine" not in b


def test_stale_reads_are_local_and_catch_up(trio):
    a, _, c = trio
    a["fresh"] = 1
    wait_for(lambda: c.get("fresh", level=STALE) == 1, 5, "the stale read to catch up")
    with pytest.raises(ValueError, match="unknown read level"):
        c.get("fresh", level="eventual")


def test_status_and_members(trio):
    statuses = [kv.status() for kv in trio]
    assert sorted(s["role"] for s in statuses) == ["follower", "follower", "leader"]
    assert all(len(s["members"]) == 3 for s in statuses)
    assert {s["leader"]["raft_addr"] for s in statuses} == {next(s["raft_addr"] for s in statuses
                                                                 if s["role"] == "leader")}


def test_without_a_quorum_calls_fail_fast_and_say_so(tmp_path):
    peers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]  # nobody runs there
    with ReplicatedKV(f"127.0.0.1:{free_port()}", peers, data_dir=tmp_path, timeout=0.5, secret=SECRET) as kv:
        with pytest.raises(UnavailableError, match="no leader"):
            kv["a"] = 1
        with pytest.raises(UnavailableError):
            kv.get("a")
        with pytest.raises(UnavailableError):
            kv.wait_ready(0.5)
        assert kv.get("a", level=STALE) is None
    assert kv.closed
    assert not issubclass(OutcomeUnknownError, UnavailableError)  # callers must tell them apart


def test_a_data_dir_belongs_to_one_raft_address(tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    with ReplicatedKV(addr, data_dir=tmp_path) as kv:
        kv.wait_ready(10)
        kv["kept"] = True
    with ReplicatedKV(addr, data_dir=tmp_path) as kv:
        kv.wait_ready(10)
        assert kv["kept"] is True
    from hraftd.errors import DataDirError

    with pytest.raises(DataDirError, match="belongs to the node with raft address"):
        ReplicatedKV(f"127.0.0.1:{free_port()}", data_dir=tmp_path)


def test_values_read_are_copies_that_cannot_change_the_state(trio):
    a, b, _ = trio
    a["shared"] = {"list": [1]}
    mine = b["shared"]
    mine["list"].append(2)
    b.snapshot()["shared"]["list"].append(3)
    assert b.get("shared", level=STALE) == {"list": [1]}


def test_a_node_restarting_from_a_slow_snapshot_leaves_the_leader_alone(tmp_path, monkeypatch):
    """A big snapshot takes longer to load than an election timeout: the node must then wait for the leader,
    not call an election and take over a healthy cluster (it did: PySyncObj's first deadline predates the load).
    """
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    dirs = [tmp_path / f"kv{i}" for i in range(3)]

    def open_kv(i: int) -> ReplicatedKV:
        return ReplicatedKV(addrs[i], [a for a in addrs if a != addrs[i]], data_dir=dirs[i], secret=SECRET)

    kvs = [open_kv(i) for i in range(3)]
    try:
        for kv in kvs:
            kv.wait_ready(20)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: kvs[i % 3].update({f"k{i % 100}": i}), range(300)))
        follower = next(i for i, kv in enumerate(kvs) if not kv.is_leader())
        wait_for(lambda: (dirs[follower] / "raft.snapshot").exists(), 30, "the follower's snapshot")
        leader = next(kv for kv in kvs if kv.is_leader())
        term = leader.status()["term"]
        kvs[follower].close()

        load = KVState.load

        def slow_load(data: Any) -> KVState:
            time.sleep(2.0)  # longer than the longest election timeout (1.4 s)
            return load(data)

        monkeypatch.setattr(KVState, "load", slow_load)
        kvs[follower] = open_kv(follower)
        kvs[follower].wait_ready(30)
        assert kvs[follower].snapshot(level=STALE) == leader.snapshot()
        deadline = time.monotonic() + 2.0  # a late election would come within one more election timeout
        while time.monotonic() < deadline:
            assert leader.is_leader() and leader.status()["term"] == term, "the restarted node took over"
            time.sleep(0.05)
    finally:
        for kv in kvs:
            kv.close()


def test_linearizable_reads_need_no_log_entry_on_the_leader_or_on_a_follower(trio):
    leader = next(kv for kv in trio if kv.is_leader())
    follower = next(kv for kv in trio if not kv.is_leader())
    leader.update({"read-index": 1})
    wait_for(lambda: all(kv.applied_index == leader.applied_index for kv in trio), 10, "the nodes to catch up")
    before = leader.applied_index
    for _ in range(20):
        assert leader.read("read-index") == 1
        assert follower.read("read-index") == 1
    assert leader.applied_index == before == follower.applied_index  # confirmed by a quorum's answers


def test_a_closed_store_says_so_at_once(tmp_path):
    kv = ReplicatedKV(f"127.0.0.1:{free_port()}", data_dir=tmp_path)
    kv.wait_ready(10)
    kv.close()
    started = time.monotonic()
    for call in (lambda: kv.get("a"), lambda: kv.update({"a": 1}), lambda: kv.delete("a"), lambda: len(kv)):
        with pytest.raises(ClosedError):
            call()
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(("address", "reason"), [(":14012", "has no host"), ("locahost:14012", "does not resolve"),
                                                 ("127.0.0.1", "not HOST:PORT")])
def test_a_bad_raft_address_is_refused_with_the_reason(tmp_path, address, reason):
    with pytest.raises(ValueError, match=reason):
        ReplicatedKV(address, data_dir=tmp_path)
