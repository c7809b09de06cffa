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


class RecordingMapping:
    """Stands in for the journal's mmap: records which byte ranges are written and which are msynced."""

    def __init__(self, mapping):
        self._mapping = mapping
        self.written, self.flushed = [], []

    def __setitem__(self, index, value):
        self.written.append((index.start, index.stop))
        self._mapping[index] = value

    def __getitem__(self, index):
        return self._mapping[index]

    def __getattr__(self, name):
        return getattr(self._mapping, name)


def test_a_sync_covers_every_byte_written_since_the_last(tmp_path, monkeypatch):
    from pysyncobj.journal import FileJournal

    from hraftd import durability

    real_msync = durability._msync

    def recording_msync(mapping, offset, size):
        mapping.flushed.append((offset, offset + size))
        real_msync(mapping._mapping, offset, size)

    monkeypatch.setattr(durability, "_msync", recording_msync)
    inner = FileJournal(str(tmp_path / "journal"))
    journal = DurableJournal(inner, str(tmp_path / "snapshot"))
    file = inner._FileJournal__journalFile
    mapping = file._ResizableFile__mm = RecordingMapping(file._ResizableFile__mm)
    index = 0
    for round_ in range(60):
        for _ in range(round_ % 7 + 1):
            index += 1
            journal.add(b"x" * (50 + 37 * (index % 11)), index, 1)
        if round_ % 10 == 9:
            journal.deleteEntriesFrom(len(journal) - 3)  # a follower's log truncated by a new leader
        end = inner._FileJournal__currentOffset  # bytes past the log's end (deleted entries) need no sync
        written = [(start, min(stop, end)) for start, stop in mapping.written if start < end]
        mapping.flushed.clear()
        assert journal.sync()
        for start, stop in written:
            assert any(f_start <= start and stop <= f_stop for f_start, f_stop in mapping.flushed), \
                f"bytes {start}-{stop} were written but not synced (synced {mapping.flushed})"
        mapping.written.clear()
    assert not journal.sync()  # nothing new: no msync at all
