"""Exactly-once writes across a leader's death, and GET /keys paging through 100k keys while writes go on,
against real nodes."""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading

import requests
from nodes import wait_for

from hraftd.client import Client


def meta(node, key: str, level: str = "linearizable") -> dict | None:
    response = requests.get(f"{node.url}/key/{key}", params={"meta": "true", "level": level}, timeout=15)
    return response.json() if response.status_code == 200 else None


def revision_of(node) -> int:
    return requests.get(f"{node.url}/keys?count_only=true", timeout=15).json()["revision"]


def send_without_reading(node, body: dict, idempotency_key: str) -> socket.socket:
    """A keyed POST /key whose answer the client never reads: as if it had crashed, or timed out."""
    payload = json.dumps(body).encode()
    host, port = node.http_addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /key HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Idempotency-Key: " + idempotency_key.encode() + b"\r\n"
                 b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    return sock


def test_a_write_retried_after_the_leader_died_in_its_window_is_applied_once(cluster):
    """The leader applies a keyed write and dies before its client learns of it; the client, knowing nothing,
    sends the write again with the same key to the survivors: it is answered the first outcome, not applied
    again."""
    nodes = cluster.start(3)
    leader = cluster.leader(nodes)
    survivors = [node for node in nodes if node is not leader]
    sock = send_without_reading(leader, {"once/k": "v"}, "window-1")
    try:
        first = wait_for(lambda: meta(survivors[0], "once/k", "stale"), 15, "a follower to apply the write")
        leader.kill()  # its answer is never read
    finally:
        sock.close()
    assert first["version"] == 1
    with Client([node.http_addr for node in survivors], deadline=30) as kv:
        revision = kv.set("once/k", "v", idempotency_key="window-1")  # fails over until a new leader answers
        before_again = revision_of(survivors[1])
        assert kv.set("once/k", "v", idempotency_key="window-1") == revision
        assert revision == first["mod_revision"], "the retry was applied as a new write"
        assert kv.item("once/k") == first
        assert revision_of(survivors[1]) == before_again
        leader.start(None).wait_ready()
        wait_for(lambda: meta(leader, "once/k", "stale") == first, 15, "the old leader to catch up")


def test_get_keys_pages_through_100k_keys_in_order_with_no_gap_or_duplicate_while_writes_go_on(cluster):
    node = cluster.node("node0").start().wait_ready()
    kept = [f"big/{i:06d}" for i in range(0, 200_000, 2)]  # 100k keys, with room between them for writes
    with requests.Session() as session:
        for start in range(0, len(kept), 1000):
            response = session.post(f"{node.url}/key", json={key: 0 for key in kept[start:start + 1000]}, timeout=30)
            assert response.status_code == 200, response.text
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        rng = random.Random(7)
        with requests.Session() as session:
            while not stop.is_set():
                inserted = [f"big/{rng.randrange(1, 200_000, 2):06d}" for _ in range(20)]
                session.post(f"{node.url}/key", json={key: 1 for key in inserted}
                             | {rng.choice(kept): "updated" for _ in range(20)}, timeout=30)
                session.delete(f"{node.url}/key/{rng.choice(inserted)}", timeout=30)
                writes[0] += 2

    thread = threading.Thread(target=writer)
    thread.start()
    listed: list[str] = []
    pages = 0
    try:
        with requests.Session() as session:
            after = None
            while pages < 300:  # 100 pages of 1000 would do, with some written keys among them
                parameters = {"prefix": "big/", "limit": "1000", **({"start_after": after} if after else {})}
                page = session.get(f"{node.url}/keys", params=parameters, timeout=30).json()
                pages += 1
                assert len(page["items"]) <= 1000
                listed += [item["key"] for item in page["items"]]
                if not page["more"]:
                    break
                after = page["items"][-1]["key"]
    finally:
        stop.set()
        thread.join(30)
    assert writes[0] > 10, "the writes did not go on while paging"
    assert all(first < second for first, second in itertools.pairwise(listed)), "out of order or twice"
    missing = set(kept) - set(listed)
    assert not missing, f"{len(missing)} keys that existed throughout were skipped, e.g. {sorted(missing)[:3]}"
    assert all(key.startswith("big/") for key in listed)
    print(f"{len(listed)} keys in {pages} pages while {writes[0]} writes went on")
