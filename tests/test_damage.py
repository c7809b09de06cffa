"""Damage and crashes on real clusters: a node never serves damaged state, the cluster keeps every acknowledged
write, and the operator's way back (wipe the node, let it rejoin) works."""

from __future__ import annotations

import random
import shutil
import threading
import time

import requests
from nodes import wait_for
from raftpeer import Peer

from hraftd.datadir import read_secret
from hraftd.raft.journal import Journal


def flip_a_bit(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << random.randrange(8)
    path.write_bytes(bytes(data))


def used_length(path) -> int:
    return len(path.read_bytes().rstrip(b"\0"))


FILES = ["raft.log", "raft.log past its end", "raft.state", "raft.snapshot", "node.json", "raft-secret"]


def test_a_flipped_bit_in_any_file_makes_the_node_refuse_and_the_cluster_keeps_every_write(cluster):
    """For each file of node2 in turn: flip one bit, see it refused and named, then take the way back."""
    node0, node1, node2 = cluster.start(3)
    written = 0
    for file in FILES:
        for i in range(written, written + 10):
            assert (node0, node1)[i % 2].set({f"k{i}": i}).status_code == 200
        written += 10
        last = f"k{written - 1}"
        wait_for(lambda last=last: node2.get(last, level="stale").status_code == 200, 10, "node2 to catch up")
        node2.cleanup()
        name = file.split()[0]
        path = node2.data_dir / name
        end = used_length(path)
        flip_a_bit(path, end + 4096 if "past" in file else random.randrange(32 if name == "raft.log" else 0, end))
        node2.start()
        assert node2.process.wait(60) == 3, file
        assert name in node2.log() and "damaged" in node2.log().rsplit("Starting", 1)[-1], (file, node2.log()[-1500:])
        assert node0.set({f"during-{file}": 1}).status_code == 200  # the others go on

        shutil.rmtree(node2.data_dir)  # the way back: an empty data dir, and -join again
        node2.start(join=node0).wait_ready()
        wait_for(lambda last=last: node2.get(last, level="stale").status_code == 200, 30,
                 "the wiped node to catch up")
    assert [node2.value(f"k{i}") for i in range(written)] == list(range(written))
    assert all(node2.value(f"during-{file}") == 1 for file in FILES)


def test_kill_9_of_every_node_during_a_write_stream_loses_nothing_five_times_over(cluster):
    nodes = cluster.start(3)
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(number: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"w{number}-{i}"
            try:
                if requests.post(f"{nodes[i % 3].url}/key", json={key: i}, timeout=5).status_code == 200:
                    with lock:
                        acknowledged[key] = i
            except requests.RequestException:
                time.sleep(0.05)
            i += 1

    writers = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(4)]
    for thread in writers:
        thread.start()
    try:
        for _ in range(5):
            time.sleep(1.0)
            for node in nodes:
                node.cleanup()  # kill -9 of the whole node, in the middle of the stream
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_ready()
    finally:
        stop.set()
        for thread in writers:
            thread.join(10)
    assert len(acknowledged) > 50
    for node in nodes:
        for key, value in acknowledged.items():
            assert node.value(key) == value, f"{node.name} lost {key}"


def test_a_resent_shorter_batch_keeps_the_entries_a_follower_has_on_disk(cluster, tmp_path):
    node0, node1 = cluster.start(2)
    leader = cluster.leader()
    follower = node1 if leader is node0 else node0
    for i in range(12):
        assert leader.set({f"k{i}": i}).status_code == 200
    wait_for(lambda: follower.get("k11", level="stale").status_code == 200, 10, "the follower to catch up")

    def follower_log() -> list[tuple[bytes, int, int]]:
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        for name in ("raft.log", "raft.state"):
            shutil.copy(follower.data_dir / name, copy / name)
        journal = Journal(str(copy / "raft.log"), str(copy / "raft.state"), str(copy / "none"))
        entries = list(journal[:])
        journal._destroy()
        return entries

    before = follower_log()
    last, term = before[-1][1], before[-1][2]
    older = [entry for entry in before if last - 6 < entry[1] <= last - 3]
    secret = read_secret(follower.data_dir)
    peer = Peer(follower.raft_addr, leader.raft_addr, secret)  # the leader's own, resent earlier batch
    peer.send({"type": "append_entries", "term": term, "commit_index": last, "prevLogIdx": older[0][1] - 1,
               "prevLogTerm": term, "entries": [list(entry) for entry in older]})
    answer = peer.receive()
    while answer.get("type") != "next_node_idx":
        answer = peer.receive()
    assert answer == {"type": "next_node_idx", "next_node_idx": older[-1][1] + 1, "reset": False, "success": True}
    after = follower_log()
    assert after[-1][1] == last and after[-len(before):] == before[-len(after):]  # nothing cut
    peer.close()
