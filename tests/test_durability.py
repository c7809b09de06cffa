"""Nothing is acknowledged before it is on disk: checked on real Raft nodes with an instrumented transport."""

import threading

import pytest
from nodes import free_port
from pysyncobj.transport import TCPTransport

from hraftd import ReplicatedKV
from hraftd.durability import DurableJournal


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """Three in-process nodes; every log acknowledgement and leader commit is recorded with the synced index."""
    acks, commits = [], []
    real_send = TCPTransport.send

    def recording_send(transport, node, message):
        if isinstance(message, dict) and message.get("type") == "next_node_idx" and message["success"]:
            journal = transport._syncObj._SyncObj__raftLog
            acks.append((message["next_node_idx"] - 1, journal.synced_index))
        return real_send(transport, node, message)

    monkeypatch.setattr(TCPTransport, "send", recording_send)
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    kvs = [ReplicatedKV(a, [b for b in addrs if b != a], data_dir=tmp_path / str(i)) for i, a in enumerate(addrs)]
    for kv in kvs:
        journal = kv._sync._SyncObj__raftLog
        assert isinstance(journal, DurableJournal)
        real_set_commit = journal.setRaftCommitIndex

        def recording_set_commit(index, kv=kv, journal=journal, real=real_set_commit):
            if kv.is_leader():
                commits.append((index, journal.synced_index))
            real(index)

        journal.setRaftCommitIndex = recording_set_commit
    try:
        for kv in kvs:
            kv.wait_ready(20)
        yield kvs, acks, commits
    finally:
        for kv in kvs:
            kv.close()


def test_entries_are_synced_before_they_are_acknowledged_or_committed(recorded):
    kvs, acks, commits = recorded

    def writer(kv, n):
        for i in range(40):
            kv[f"w{n}-{i}"] = i

    threads = [threading.Thread(target=writer, args=(kvs[n % 3], n)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(kv.get("w5-39") == 39 for kv in kvs)

    assert len(acks) > 100 and len(commits) > 50
    unsynced_acks = [(acked, synced) for acked, synced in acks if acked > synced]
    assert not unsynced_acks, f"followers acknowledged entries not yet on disk: {unsynced_acks[:5]}"
    unsynced_commits = [(commit, synced) for commit, synced in commits if commit > synced]
    assert not unsynced_commits, f"the leader counted entries not yet on its disk: {unsynced_commits[:5]}"
    # Group commit: concurrent writes share syncs.
    syncs = sum(kv._sync._SyncObj__raftLog.sync_count for kv in kvs)
    assert syncs < 3 * 240


def test_opting_out_keeps_pysyncobj_as_it_is(tmp_path):
    with ReplicatedKV(f"127.0.0.1:{free_port()}", data_dir=tmp_path, fsync=False) as kv:
        assert not isinstance(kv._sync._SyncObj__raftLog, DurableJournal)
        kv.wait_ready(10)
        kv["fast"] = 1
        assert kv["fast"] == 1
