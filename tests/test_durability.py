"""Nothing is acknowledged, counted or voted before it is on disk: checked on the system calls of real nodes.

Nodes run under strace (``syscalls.py``) with -raft-insecure, so that their Raft frames can be read from the
bytes they send. From the trace: which log records were written (pwrite64), which of them a successful
fdatasync made durable (a failed one makes nothing durable: those records must be written again), and what
left on the Raft sockets after that. The guarantees checked:

- a follower acknowledges a log entry only after a sync that covered it returned;
- a leader tells followers an index is committed only once its own copy is durable (with one of three nodes
  down, every majority includes the leader);
- a vote, or a request for votes, leaves only after the term and vote it reflects are durable: the state file
  written, synced, renamed into place, and its directory synced;
- a snapshot is synced, renamed into place and its directory synced before the log it replaces is cut;
- after a failed sync, no entry it should have covered is acknowledged.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
from pathlib import Path

import pytest
import syscalls
from nodes import wait_for

from hraftd.raft.codec import DecodeError, decode_message

pytestmark = pytest.mark.skipif(not syscalls.available(), reason="strace is needed to see the system calls")
_RECORD = struct.Struct("<IIQQI4x")
_QUOTED = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


def log_records(data: bytes, offset: int) -> list[tuple[int, int]]:
    """(raft index, file offset) of the records in a write to the log."""
    position, found = 0, []
    if data.startswith(b"HRAFTLOG"):
        position = 32
    while position + _RECORD.size <= len(data):
        length, _, index, _, _ = _RECORD.unpack_from(data, position)
        if index == 0:
            break
        found.append((index, offset + position))
        position += -(-(_RECORD.size + length) // 32) * 32
    return found


def renamed(call: syscalls.Call) -> tuple[str, str]:
    paths = [bytes.fromhex(text.replace("\\x", "")).decode() for text in _QUOTED.findall(call.arguments)]
    return paths[0], paths[-1]


class Trace:
    """One node's calls, and what its Raft sockets carried."""

    def __init__(self, path: Path, raft_addrs: set[str]) -> None:
        self.calls = syscalls.read_trace(path)
        self.raft_addrs = raft_addrs

    def is_raft_socket(self, target: str) -> bool:
        return target.startswith("TCP:") and any(address in target for address in self.raft_addrs)

    def sent_frames(self) -> list[tuple[syscalls.Call, dict]]:
        """Every frame sent on a Raft socket, with the call that sent it."""
        streams: dict[str, bytes] = {}
        frames = []
        for call in self.calls:
            if call.name != "sendto" or not call.ok or not self.is_raft_socket(call.target):
                continue
            stream = streams.get(call.target, b"") + call.data[:call.result]
            while len(stream) >= 4 and len(stream) >= 4 + struct.unpack(">I", stream[:4])[0]:
                length = struct.unpack(">I", stream[:4])[0]
                try:
                    message = decode_message(stream[4:4 + length])
                except DecodeError:
                    message = None
                stream = stream[4 + length:]
                if isinstance(message, dict):
                    frames.append((call, message))
            streams[call.target] = stream
        return frames

    def durable_at(self) -> list[tuple[int, set[int]]]:
        """After each call (by its end), the raft indexes durable in the log: written, then synced."""
        pending: dict[int, int] = {}  # index -> offset, written since the last sync
        durable: dict[int, int] = {}
        history = []
        for call in self.calls:
            target = call.target
            if not target.endswith(("/raft.log", "/raft.log.next")):
                continue
            if call.name == "pwrite64" and call.ok:
                offset = int(call.arguments.rsplit(",", 1)[1].split(")")[0])
                pending.update(log_records(call.data, offset))
            elif call.name == "fdatasync":
                if call.ok:
                    durable.update(pending)
                pending = {}  # a failed sync leaves what it should have covered unknown: never durable
            elif call.name == "ftruncate" and call.ok:
                length = int(call.arguments.split(",")[1].split(")")[0])
                durable = {i: o for i, o in durable.items() if o < length}
                pending = {i: o for i, o in pending.items() if o < length}
            else:
                continue
            history.append((call.end, set(durable)))
        return history

    def durable_before(self, history: list[tuple[int, set[int]]], moment: int) -> set[int]:
        durable: set[int] = set()
        for end, indexes in history:
            if end >= moment:
                break
            durable = indexes
        return durable


def three_traced_nodes(cluster, tmp_path, *extra: str):
    nodes = []
    for i in range(3):
        node = cluster.node(f"node{i}")
        node.trace = tmp_path / f"node{i}.trace"
        nodes.append(node)
    nodes[0].start(None, "-raft-insecure", *extra).wait_ready(60)
    for node in nodes[1:]:
        node.start(nodes[0], "-raft-insecure", *extra).wait_ready(60)
    return nodes


def stop(node) -> None:
    """SIGTERM to the node (strace's child), then wait for strace, which ends with the last process it traces."""
    master = int(Path(f"/proc/{node.process.pid}/task/{node.process.pid}/children").read_text().split()[0])
    os.kill(master, signal.SIGTERM)
    node.process.wait(30)


def check_acknowledgements(trace: Trace) -> int:
    history = trace.durable_at()
    checked = 0
    for call, frame in trace.sent_frames():
        if frame.get("type") == "next_node_idx" and frame.get("success"):
            acknowledged = frame["next_node_idx"] - 1
            durable = trace.durable_before(history, call.start)
            assert acknowledged in durable or acknowledged <= min(durable, default=0), (
                f"acknowledged index {acknowledged} before it was synced (durable up to {max(durable, default=0)})")
            checked += 1
    return checked


def check_commits(trace: Trace, after: int) -> int:
    """Commit indexes the node announced as leader after call number ``after`` (when each majority includes it)."""
    history = trace.durable_at()
    checked = 0
    for call, frame in trace.sent_frames():
        if call.start > after and frame.get("type") == "append_entries" and frame.get("commit_index", 0) > 1:
            durable = trace.durable_before(history, call.start)
            assert frame["commit_index"] <= max(durable, default=0), (
                f"announced commit index {frame['commit_index']} with its own log durable only up to "
                f"{max(durable, default=0)}")
            checked += 1
    return checked


def check_votes(trace: Trace, data_dir: Path) -> int:
    """Each vote and vote request leaves after its term and vote were synced and renamed into place."""
    checked = 0
    for call, frame in trace.sent_frames():
        if frame.get("type") not in ("response_vote", "request_vote"):
            continue
        term = frame["term"]
        steps = []  # write, sync, rename, directory sync of a state file holding this term
        for other in trace.calls:
            if other.end >= call.start:
                break
            if other.name == "write" and other.target.endswith("/raft.state.tmp") and other.ok:
                written = json.loads(other.data.split(b"\n", 2)[2])
                steps = ["written"] if written["term"] == term else []
            elif steps == ["written"] and other.name == "fsync" and other.target.endswith("/raft.state.tmp"):
                steps = [*steps, "synced"] if other.ok else []
            elif steps == ["written", "synced"] and other.name.startswith("rename") and other.ok and \
                    renamed(other)[1].endswith("/raft.state"):
                steps.append("renamed")
            elif steps == ["written", "synced", "renamed"] and other.name == "fsync" and other.ok and \
                    other.target.rstrip("/") == str(data_dir):
                steps.append("directory synced")
        assert steps == ["written", "synced", "renamed", "directory synced"], (
            f"{frame['type']} for term {term} sent after only {steps or 'nothing'} of its state")
        checked += 1
    return checked


def test_acknowledgements_commits_and_votes_wait_for_the_disk(cluster, tmp_path):
    node0, node1, node2 = three_traced_nodes(cluster, tmp_path)
    for i in range(40):
        assert (node0, node1, node2)[i % 3].set({f"k{i}": i}).status_code == 200
    leader = cluster.leader()
    follower, other = [node for node in (node0, node1, node2) if node is not leader]
    other.cleanup()  # kill -9 of a follower: from now on every majority includes the leader
    mark = len(syscalls.read_trace(leader.trace))
    for i in range(40):
        assert (leader, follower)[i % 2].set({f"two-{i}": i}).status_code == 200
    leader.cleanup()  # and of the leader: the follower's votes are needed
    other.trace = tmp_path / "other-again.trace"
    other.start(None, "-raft-insecure").wait_ready(60)
    wait_for(lambda: follower.status()["role"] == "leader" or other.status()["role"] == "leader", 30,
             "a new leader")
    assert follower.set({"after": 1}).status_code == 200
    stop(follower)
    stop(other)

    assert check_acknowledgements(Trace(follower.trace, {n.raft_addr for n in (node0, node1, node2)})) > 10
    assert check_commits(Trace(leader.trace, {n.raft_addr for n in (node0, node1, node2)}), mark) > 10
    votes = sum(check_votes(Trace(node.trace, {n.raft_addr for n in (node0, node1, node2)}), node.data_dir)
                for node in (follower, other))
    assert votes >= 1


def test_a_snapshot_is_on_disk_before_the_log_it_replaces_is_cut(cluster, tmp_path):
    node = cluster.node("node0")
    node.trace = tmp_path / "node0.trace"
    node.start(None, "-raft-insecure", "-compact-log-bytes", "8192").wait_ready(60)
    for i in range(60):
        assert node.set({f"k{i}": "v" * 500}).status_code == 200
    wait_for(lambda: node.status()["applied_index"] > 60, 10, "the writes to apply")
    stop(node)
    calls = syscalls.read_trace(node.trace)
    cuts = [call for call in calls if call.name.startswith("rename") and call.ok
            and renamed(call) == (str(node.data_dir / "raft.log.next"), str(node.data_dir / "raft.log"))]
    assert len(cuts) >= 3
    for cut in cuts[1:]:  # the first one drops nothing: the node's first log
        snapshot_renames = [call for call in calls if call.end < cut.start and call.name.startswith("rename")
                            and call.ok and renamed(call)[1] == str(node.data_dir / "raft.snapshot")]
        assert snapshot_renames, "the log was cut without a snapshot in place"
        placed = snapshot_renames[-1]
        synced = [call for call in calls if call.end < placed.start and call.name == "fsync" and call.ok
                  and call.target == str(node.data_dir / "raft.snapshot.tmp")]
        assert synced, "the snapshot was renamed into place before its data was synced"
        directory = [call for call in calls if placed.end < call.start and call.end < cut.start
                     and call.name == "fsync" and call.ok and call.target.rstrip("/") == str(node.data_dir)]
        assert directory, "the log was cut before the snapshot's rename was synced"


def test_no_acknowledgement_after_a_failed_sync(cluster, tmp_path):
    node0 = cluster.node("node0").start(None, "-raft-insecure").wait_ready()
    failing = cluster.node("node1")
    failing.trace = tmp_path / "node1.trace"
    failing.inject = "fdatasync:error=EIO:when=25"  # its 25th sync fails, as a disk would say EIO
    failing.start(node0, "-raft-insecure").wait_ready(60)
    node2 = cluster.node("node2").start(node0, "-raft-insecure").wait_ready()
    for i in range(60):
        assert (node0, node2)[i % 2].set({f"k{i}": i}).status_code == 200
    wait_for(lambda: "cannot sync" in failing.log(), 20, "the failed sync")
    wait_for(lambda: failing.get("k59", level="stale").status_code == 200, 30, "node1 to recover and catch up")
    stop(failing)
    trace = Trace(failing.trace, {node0.raft_addr, failing.raft_addr, node2.raft_addr})
    assert any(call.name == "fdatasync" and call.error == "EIO" for call in trace.calls)
    assert check_acknowledgements(trace) > 10
    assert "reopened the Raft node from disk" in failing.log()
