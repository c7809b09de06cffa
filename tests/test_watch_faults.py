"""Watches through faults against real nodes: a leader killed under an SSE watcher and Client.watch, slow
consumers cut off or told they fell behind, a restart from a snapshot, a node that reopens after a failed
sync, and a node that stops while watches wait."""

from __future__ import annotations

import json
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import syscalls
from nodes import Cluster, Node, wait_for
from test_watch import events_of, revision_of, stream_events, watch, write

from hraftd.client import Client


def sse_reader(urls: list[str], since: int, stop: threading.Event, seen: list[dict[str, Any]],
               connections: list[str]) -> None:
    """A minimal EventSource: reads the stream of one node after another, resuming with Last-Event-ID."""
    last, turn = since, 0
    while not stop.is_set():
        url = urls[turn % len(urls)]
        try:
            with requests.get(f"{url}/watch", params={"key": "k", "timeout": 1}, stream=True, timeout=(2, 3),
                              headers={"Accept": "text/event-stream", "Last-Event-ID": str(last)}) as response:
                if response.status_code != 200:
                    raise requests.ConnectionError(response.text)
                connections.append(url)
                for event in stream_events(response.iter_lines()):
                    if "data" in event and "event" not in event:
                        seen.extend(json.loads(event["data"])["events"])
                        last = int(event["id"])
                    if stop.is_set():
                        return
        except requests.RequestException:
            turn += 1
            time.sleep(0.1)



def test_watches_survive_the_leader_kill_with_no_gap_and_no_duplicate(cluster):
    nodes = cluster.start(3)
    leader = cluster.leader()
    others = [node for node in nodes if node is not leader]
    start = revision_of(leader)
    stop = threading.Event()
    streamed: list[dict[str, Any]] = []
    connections: list[str] = []
    sse = threading.Thread(target=sse_reader, args=([leader.url] + [n.url for n in others], start, stop, streamed,
                                                    connections))
    polled: list[dict[str, Any]] = []
    watching = Client([leader.http_addr] + [n.http_addr for n in others], timeout=3, deadline=30)
    iterator = watching.watch(key="k", since=start, timeout=0.5)

    def poll() -> None:
        for event in iterator:
            polled.append(event)
            if stop.is_set():
                return

    poller = threading.Thread(target=poll)
    sse.start()
    poller.start()
    acknowledged = []
    try:
        with Client([n.http_addr for n in nodes], timeout=3, deadline=30) as writer:
            for i in range(60):
                if i == 20:
                    leader.kill()
                acknowledged.append(writer.set("k", i))
            final = writer.set("k", "end")
        wait_for(lambda: streamed and streamed[-1]["value"] == "end" and polled and polled[-1]["value"] == "end",
                 20, "both watchers to see the last write")
    finally:
        stop.set()
        with Client(others[0].http_addr) as last_writer:
            last_writer.set("k", "stop")  # an event for each watcher, to see that it is to stop
        sse.join(10)
        poller.join(10)
        watching.close()
    history = [(e[2], e[3]) for e in events_of(others[0], key="k", since=start)]
    history = history[:history.index(("end", final)) + 1]
    assert {revision for _, revision in history} >= set(acknowledged)
    for seen in (streamed, polled):
        assert [(e["value"], e["mod_revision"]) for e in seen][:len(history)] == history
    assert len(set(connections)) >= 2, connections  # the stream did move to another node
    assert iterator.revision >= final



def open_stream(node: Node, since: int) -> socket.socket:
    """A stream on a socket that reads as little as the kernel allows, and that the test does not read yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = node.http_addr.split(":")
    sock.connect((host, int(port)))
    sock.sendall(f"GET /watch?since={since}&timeout=300 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
                 .encode())
    return sock



def read_to_the_end(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What the socket gives until the node closes it or ends the chunked answer (True), or until ``timeout``
    passes (False)."""
    received = bytearray()
    deadline = time.monotonic() + timeout
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(received), True
        if not chunk:
            return bytes(received), True
        received += chunk
        if received.endswith(b"\r\n0\r\n\r\n"):
            return bytes(received), True
    return bytes(received), False



def closed_by_the_node(sock: socket.socket) -> bool:
    """Whether the node's end of this connection has left ESTABLISHED (by /proc/net/tcp), read or not."""
    own_port = sock.getsockname()[1]
    node_port = sock.getpeername()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (node_port, own_port):
            return fields[3] != "01"
    return True



def test_a_stream_that_is_not_read_is_cut_off(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        node = cluster.node("impatient").start(None, "-io-timeout", "1", "-no-fsync").wait_ready()
        sock = open_stream(node, revision_of(node))
        try:
            big = "x" * 200_000
            with Client(node.http_addr) as client:
                for i in range(60):  # 12 MB of events: far more than the socket buffers hold
                    client.set(f"big{i % 3}", big)
            wait_for(lambda: closed_by_the_node(sock), 15, "the node to close the stream nobody reads")
            received, closed = read_to_the_end(sock, 15)
        finally:
            sock.close()
        assert closed, f"the node still kept the stream open after {len(received)} bytes"
        assert len(received) < 60 * len(big) and not received.endswith(b"\r\n0\r\n\r\n")
        assert node.status()["ready"]
    finally:
        cluster.cleanup()



def test_a_stream_that_falls_behind_the_window_is_told_compacted(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        node = cluster.node("small").start(None, "-watch-window", "5", "-no-fsync").wait_ready()
        sock = open_stream(node, revision_of(node))
        try:
            with Client(node.http_addr) as client:
                for i in range(40):  # more events than the window holds wait behind the socket's full buffers
                    client.set(f"big{i % 3}", "y" * 200_000)
            received, ended = read_to_the_end(sock, 15)
        finally:
            sock.close()
    finally:
        cluster.cleanup()
    assert ended
    tail = received[-300:].decode(errors="replace")
    assert "event: error" in tail and '"code": "compacted"' in tail, tail


def test_a_restart_from_a_snapshot_starts_the_window_at_its_revision(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        node = cluster.node("snap").start(None, "-compact-log-bytes", "4096").wait_ready()
        for i in range(40):
            write(node, {f"k{i}": "z" * 500})
        node.kill()
        node.start(None, "-compact-log-bytes", "4096").wait_ready()
        refused = watch(node, since=0)
        assert refused.status_code == 410, refused.text
        oldest = refused.json()["oldest_revision"]
        assert 0 < oldest <= 40
        after = events_of(node, since=oldest)
        assert [e[3] for e in after] == list(range(oldest + 1, 41))
    finally:
        cluster.cleanup()



def test_a_stopping_node_answers_its_watches_at_once(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        node = cluster.node("stopping").start().wait_ready()
        answers: list[requests.Response] = []
        waiting = threading.Thread(target=lambda: answers.append(watch(node, key="never", timeout=120)))
        waiting.start()
        wait_for(lambda: b"\nhraftd_watchers 1.0" in requests.get(f"{node.url}/metrics", timeout=5).content, 10,
                 "the watch to wait")
        began = time.monotonic()
        assert node.signal_and_wait(signal.SIGTERM) == 0
        waiting.join(10)
        assert answers and answers[0].status_code == 200 and answers[0].json()["events"] == []
        assert time.monotonic() - began < 10
    finally:
        cluster.cleanup()



def watchers(node: Node) -> int:
    for line in requests.get(f"{node.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("hraftd_watchers "):
            return int(float(line.split()[1]))
    raise AssertionError("no hraftd_watchers in /metrics")


def send_watch(node: Node, query: str, stream: bool) -> socket.socket:
    host, port = node.http_addr.split(":")
    sock = socket.create_connection((host, int(port)))
    accept = "Accept: text/event-stream\r\n" if stream else ""
    sock.sendall(f"GET /watch?{query} HTTP/1.1\r\nHost: x\r\n{accept}\r\n".encode())
    return sock


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_watches_whose_client_resets_the_connection_are_dropped_at_once(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        node = cluster.node("resets").start().wait_ready()
        waiting = [send_watch(node, f"prefix=p{i}/&since=0&timeout=300", stream=i % 2 == 0) for i in range(20)]
        wait_for(lambda: watchers(node) == 20, 10, "20 long polls and streams to wait")
        for sock in waiting:
            reset(sock)
        wait_for(lambda: watchers(node) == 0, 5, "the watches of the reset connections to go")
        # Streams from now, gone while the node still confirms "now": they never write a byte.
        for i in range(20):
            reset(send_watch(node, f"key=gone{i}&timeout=300", stream=True))
        confirmed = watch(node, key="after", timeout=0)  # confirmed after the ones before it were
        assert confirmed.status_code == 200 and watchers(node) == 0
    finally:
        cluster.cleanup()


@pytest.mark.skipif(not syscalls.available(), reason="strace is needed to make a sync fail")
def test_a_watch_on_a_node_that_reopens_after_a_failed_sync_misses_nothing_and_repeats_nothing(cluster, tmp_path):
    node0 = cluster.node("node0").start(None, "-raft-insecure").wait_ready()
    failing = cluster.node("node1")
    failing.trace = tmp_path / "node1.trace"
    failing.inject = "fdatasync:error=EIO:when=25"  # its 25th sync fails: it stops and reopens from its data
    failing.start(node0, "-raft-insecure").wait_ready(60)
    cluster.node("node2").start(node0, "-raft-insecure").wait_ready()
    start = revision_of(node0)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def follow() -> None:
        since = start
        while not stop.is_set():
            try:
                answer = watch(failing, prefix="k", since=since, timeout=1)
            except requests.RequestException:
                continue
            if answer.status_code == 200:  # 503 while it reopens
                seen.extend(answer.json()["events"])
                since = answer.json()["revision"]

    watcher = threading.Thread(target=follow)
    watcher.start()
    try:
        for i in range(60):
            write(node0, {f"k{i}": i})
        wait_for(lambda: "reopened the Raft node from disk" in failing.log(), 30, "node1 to reopen")
        wait_for(lambda: seen and seen[-1]["key"] == "k59", 30, "the watch on node1 to see the last write")
    finally:
        stop.set()
        watcher.join(10)
    history = events_of(node0, since=start)
    assert [(e["key"], e["mod_revision"]) for e in seen] == [(e[1], e[3]) for e in history]
    kept = watch(failing, since=start, timeout=0)  # what node1 still keeps: a suffix of the history, in order
    if kept.status_code == 410:
        kept = watch(failing, since=kept.json()["oldest_revision"], timeout=0)
    told = [(e["type"], e["key"], e.get("value"), e["mod_revision"]) for e in kept.json()["events"]]
    assert told and told == history[len(history) - len(told):]
