"""The Raft port against strangers and hostile peers, on real nodes: nothing runs, nothing changes, nothing leaks,
and the cluster keeps working while it is attacked."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest
import requests
from nodes import wait_for
from raftpeer import Peer, closed_by_peer, connect

from hraftd.datadir import read_secret
from hraftd.raft import codec
from hraftd.raft.journal import Journal, encode_record

SECRET = "explicit-raft-secret-0123456789"


class Payload:
    def __init__(self, target, *args) -> None:
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def hostile(marker) -> list[Payload]:
    return [Payload(open, str(marker), "w"), Payload(os.system, f"touch {marker}"),
            Payload(subprocess.call, ["touch", str(marker)]), Payload(eval, f"open({str(marker)!r}, 'w')")]


def pysyncobj_frame(obj) -> bytes:
    """What PySyncObj's own transport sends: a 4-byte length, then a compressed pickle."""
    data = zlib.compress(pickle.dumps(obj), 3)
    return struct.pack("i", len(data)) + data


def hello(frame_payload: bytes) -> bytes:
    return struct.pack(">I", len(frame_payload)) + frame_payload


@pytest.fixture(params=["defaults", "explicit secret"])
def started(request, cluster, tmp_path):
    """One node started with the defaults (a secret it made itself), or with -raft-secret-file."""
    extra: tuple[str, ...] = ()
    if request.param == "explicit secret":
        (tmp_path / "secret").write_text(SECRET + "\n")
        extra = ("-raft-secret-file", str(tmp_path / "secret"))
    return cluster.node("node0").start(None, *extra).wait_ready()


def test_a_strangers_frames_run_nothing_change_nothing_and_read_nothing(started, tmp_path):
    node = started
    node.set({"kept": 1})
    marker = tmp_path / "ran"
    frames = [pysyncobj_frame(payload) for payload in hostile(marker)]
    frames += [pysyncobj_frame(["remove", node.raft_addr]), pysyncobj_frame(["add", "127.0.0.1:1"]),
               pysyncobj_frame("readonly"), pysyncobj_frame(node.raft_addr),
               hello(codec.encode_message({"hraftd": 1, "from": node.raft_addr, "nonce": os.urandom(32),
                                           "secret": False})),
               hello(pickle.dumps(hostile(marker)[1]))]
    for frame in frames:
        sock = connect(node.raft_addr)
        sock.sendall(frame)
        assert closed_by_peer(sock), frame[:40]
        sock.close()
    # A stranger who knows the protocol but not the secret is closed at the handshake, whatever it claims.
    with pytest.raises(ConnectionError):
        peer = Peer(node.raft_addr, node.raft_addr, "a-guess-at-the-secret-0000")
        peer.send({"type": "request_vote", "term": 99, "last_log_index": 99, "last_log_term": 99})
        peer.receive(3)
    assert not marker.exists()
    assert [member["raft_addr"] for member in node.status()["members"]] == [node.raft_addr]
    assert node.status()["term"] == 1 and node.value("kept") == 1


def member_secret(node, explicit: str | None = None) -> str:
    return explicit or read_secret(node.data_dir)


def test_a_secret_holder_that_is_not_a_member_is_heard_only_as_a_leader_or_candidate_would_be(cluster):
    """A non-member may be a leader this node does not know yet; it must never count toward a quorum."""
    node0, _ = cluster.start(2)
    leader = cluster.leader()
    term = leader.status()["term"]
    guest = Peer(leader.raft_addr, "127.0.0.1:1", member_secret(node0))
    for answer in ({"type": "response_vote", "term": term, "vote_granted": True},
                   {"type": "next_node_idx", "term": term, "next_node_idx": 1, "reset": True, "success": False},
                   {"type": "hraftd_pong", "term": term, "seq": 1},
                   {"type": "apply_command", "command": b"\x00", "request_id": 1}):
        guest.send(answer)
    guest.send({"type": "hraftd_prevote", "serial": 7, "term": term + 5, "last_log_index": 1, "last_log_term": 1})
    assert guest.receive() == {"type": "hraftd_prevote_answer", "serial": 7, "granted": False,  # heard, refused
                               "term": term}
    assert leader.set({"still": "leading"}).status_code == 200
    assert leader.status()["role"] == "leader" and requests.get(f"{leader.url}/livez", timeout=5).status_code == 200

    guests = [Peer(leader.raft_addr, f"127.0.0.1:{port}", member_secret(node0)) for port in range(2, 9)]
    with pytest.raises(ConnectionError):  # the ninth non-member
        Peer(leader.raft_addr, "127.0.0.1:9", member_secret(node0)).receive(3)
    for peer in [guest, *guests]:
        peer.close()


def two_nodes_one_down(cluster):
    node0 = cluster.node("node0").start().wait_ready()
    node1 = cluster.node("node1").start(join=node0).wait_ready()
    node0.set({"before": 1})
    wait_for(lambda: node1.get("before", level="stale").status_code == 200, 10, "node1 to catch up")
    log_term = node0.status()["term"]  # node0 leads: its last entry is of this term
    node1.kill()
    wait_for(lambda: node0.status()["commit_index"] == node0.status()["applied_index"], 10, "node0 to settle")
    return node0, node1, log_term


# node0, alone, keeps standing for election and raising its term: a term far above it is still news
LATER_TERM = 1000


def raft_stopped(node) -> bool:
    return requests.get(f"{node.url}/livez", timeout=5).status_code == 503


def test_a_member_sending_a_hostile_command_runs_nothing_and_stops_the_node(cluster, tmp_path):
    node0, node1, log_term = two_nodes_one_down(cluster)
    marker = tmp_path / "ran"
    peer = Peer(node0.raft_addr, node1.raft_addr, member_secret(node0))  # it holds the secret: a member
    last = node0.status()["commit_index"]
    command = b"\x00" + pickle.dumps((0, (hostile(marker)[1],)), 2)
    peer.send({"type": "append_entries", "term": LATER_TERM, "commit_index": last + 1, "prevLogIdx": last,
               "prevLogTerm": log_term, "entries": [(command, last + 1, LATER_TERM)]})
    wait_for(lambda: raft_stopped(node0), 10, "node0 to refuse the entry and stop")
    assert not marker.exists()
    assert "refusing to load posix.system" in node0.log()
    assert requests.get(f"{node0.url}/readyz", timeout=5).status_code == 503


def test_a_hostile_snapshot_sent_by_a_member_runs_nothing_and_stops_the_node(cluster, tmp_path):
    node0, node1, _ = two_nodes_one_down(cluster)
    marker = tmp_path / "ran"
    payload = pickle.dumps(([{}, {"state": hostile(marker)[2]}], (b"\x01", 9, 9), (b"\x01", 8, 9), set()), 2)
    snapshot = codec.frame_snapshot(payload)
    peer = Peer(node0.raft_addr, node1.raft_addr, member_secret(node0))
    peer.send({"type": "append_entries", "term": LATER_TERM, "commit_index": 9,
               "serialized": (snapshot, True, False)})
    peer.send({"type": "append_entries", "term": LATER_TERM, "commit_index": 9, "serialized": (b"", False, True)})
    wait_for(lambda: raft_stopped(node0), 10, "node0 to refuse the snapshot and stop")
    assert not marker.exists()
    assert "raft.snapshot" in node0.log() and "refusing to load" in node0.log()


def test_a_hostile_command_written_into_the_log_file_runs_nothing(cluster, tmp_path):
    node = cluster.node("node0").start().wait_ready()
    node.set({"kept": 1})
    node.signal_and_wait(signal.SIGTERM)
    marker = tmp_path / "ran"
    journal = Journal(str(node.data_dir / "raft.log"), str(node.data_dir / "raft.state"),
                      str(node.data_dir / "raft.snapshot"))
    (_, index, term), end = journal[-1], journal.size_bytes
    journal._destroy()
    command = b"\x00" + pickle.dumps((0, (hostile(marker)[3],)), 2)
    with open(node.data_dir / "raft.log", "r+b") as file:  # a valid record: only the decoder stands in the way
        file.seek(end)
        file.write(encode_record(command, index + 1, term))
    node.start()
    wait_for(lambda: raft_stopped(node), 20, "the node to refuse the entry")
    assert not marker.exists()
    assert "raft.log" in node.log() and "refusing to load" in node.log()


def flood(address: str, stop: threading.Event) -> None:
    """Announce a 2 GiB frame and stream zeros; reconnect whenever the node closes the connection."""
    while not stop.is_set():
        try:
            with socket.create_connection(address.rsplit(":", 1), timeout=2) as sock:
                sock.sendall(struct.pack(">I", 2**31) + b"\0" * 65536)
                while not stop.is_set():
                    sock.sendall(b"\0" * 65536)
        except OSError:
            continue


def test_writes_keep_succeeding_while_garbage_streams_into_every_raft_port(cluster):
    nodes = cluster.start(3)
    stop = threading.Event()
    attackers = [threading.Thread(target=flood, args=(node.raft_addr, stop), daemon=True)
                 for node in nodes for _ in range(2)]
    for attacker in attackers:
        attacker.start()
    latencies = []
    try:
        deadline = time.monotonic() + 8
        i = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert nodes[i % 3].set({f"under-attack-{i}": i}).status_code == 200
            latencies.append(time.monotonic() - started)
            i += 1
    finally:
        stop.set()
        for attacker in attackers:
            attacker.join(5)
    latencies.sort()
    assert len(latencies) > 20
    assert latencies[int(len(latencies) * 0.99)] < 1.0, f"p99 {latencies[int(len(latencies) * 0.99)]:.3f} s"
    assert statistics.median(latencies) < 0.2


def test_the_raft_listener_survives_running_out_of_file_descriptors(cluster):
    node0 = cluster.node("node0")
    node0.nofile = 60  # fewer than the unauthenticated connections it keeps: idle ones exhaust its descriptors
    node0.start().wait_ready()
    node1 = cluster.node("node1").start(join=node0).wait_ready()
    node2 = cluster.node("node2").start(join=node0).wait_ready()
    idle = []
    for _ in range(2000):
        try:
            idle.append(connect(node0.raft_addr, timeout=1))
        except OSError:
            break
    wait_for(lambda: "cannot accept connections (Too many open files)" in node0.log(), 10,
             "the node to run out of file descriptors")
    for sock in idle:
        sock.close()
    for peer in (node1, node2):
        peer.kill()
        peer.start()
    started = time.monotonic()
    for peer in (node1, node2):
        peer.wait_ready()
        wait_for(lambda peer=peer: all(m["connected"] for m in peer.status()["members"]), 10,
                 "the restarted peer to reach every member")
    assert time.monotonic() - started < 10
    assert node0.set({"after-the-flood": 1}).status_code == 200
    assert node1.value("after-the-flood") == 1


def as_another_user(code: str) -> subprocess.CompletedProcess[str]:
    """Python code run as uid/gid 65534 (nobody), as another user of this machine would."""
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_of_the_machine_cannot_fetch_the_secret_change_members_or_read_the_data_dir(cluster):
    node = cluster.node("node0").start().wait_ready()
    node.set({"k": 1})
    code = f"""
import json, urllib.request, urllib.error
def call(method, path, body):
    request = urllib.request.Request("{node.url}" + path, data=json.dumps(body).encode(), method=method)
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code
print(call("POST", "/join/secret", {{}}), call("DELETE", "/remove", {{"id": "node0"}}),
      call("POST", "/join", {{"id": "x", "addr": "127.0.0.1:1"}}), call("POST", "/key", {{"mine": 1}}))
try:
    open("{node.data_dir / 'raft-secret'}").read()
    print("read")
except PermissionError:
    print("denied")
"""
    result = as_another_user(code)
    assert result.stdout.split() == ["403", "403", "403", "200", "denied"], result.stdout + result.stderr
    assert [member["id"] for member in node.status()["members"]] == ["node0"]
    # The node's own user is the operator: the same requests from this process are allowed.
    assert requests.post(f"{node.url}/join/secret", json={}, timeout=10).json()["secret"]
