"""hraftd.client against real clusters: every operation, the dict face, typed errors, failover and the leader
hint, pooled keep-alive connections shared by threads, retries that apply a write once, and an import that
loads nothing of the server side."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from nodes import free_port, wait_for

import hraftd
from hraftd.client import (
    AsyncClient,
    Client,
    ClientError,
    Compacted,
    Entry,
    OutcomeUnknown,
    PreconditionFailed,
    Unavailable,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clients(three_nodes):
    made = [Client(node.http_addr) for node in three_nodes]
    yield made
    for client in made:
        client.close()


@pytest.fixture(scope="module")
def cluster_client(three_nodes):
    with Client([node.http_addr for node in three_nodes], deadline=10) as client:
        yield client


def test_set_get_update_delete_from_any_node(clients):
    a, b, c = clients
    assert isinstance(a.set("user1", "batman"), int)
    assert b.get("user1") == "batman"
    revision = c.update({"user2": "robin", "user3": {"name": "alfred"}})
    assert a.get("user3") == {"name": "alfred"} and a.status()["revision"] >= revision
    assert b.delete("user2") is True and b.delete("user2") is False
    assert c.get("user2") is None and c.get("user2", "gone") == "gone"
    wait_for(lambda: a.get("user1", level="stale") == "batman", 15, "a stale read to catch up with the write")


def test_special_keys(clients):
    a, b, _ = clients
    for key in ("/slash", "a b", "ключ", "x?y#z", "plus+sign", "100%"):
        a.set(key, key)
        assert b.get(key) == key and b.item(key)["key"] == key
        assert b.count(key) == 1 and [entry.key for entry in b.range(key)] == [key]
        assert b.delete(key) is True


def test_the_dict_face(cluster_client):
    kv = cluster_client
    kv["dict/a"] = 1
    kv["dict/b"] = [2]
    assert kv["dict/a"] == 1 and "dict/a" in kv and "dict/none" not in kv and 5 not in kv
    with pytest.raises(KeyError):
        kv["dict/none"]
    del kv["dict/a"]
    with pytest.raises(KeyError):
        del kv["dict/a"]
    assert dict(kv.items("dict/")) == {"dict/b": [2]}
    assert len(kv) == kv.count() and "dict/b" in list(kv)


def test_metadata_cas_and_its_typed_refusal(cluster_client):
    kv = cluster_client
    created = kv.cas("client/cas", "v1", 0)
    item = kv.item("client/cas")
    assert item == {"key": "client/cas", "value": "v1", "create_revision": created, "mod_revision": created,
                    "version": 1}
    with pytest.raises(PreconditionFailed) as refused:
        kv.cas("client/cas", "v2", created - 1)
    assert refused.value.current_revision == created and refused.value.status == 412
    assert isinstance(refused.value, hraftd.PreconditionFailedError) and kv["client/cas"] == "v1"
    replaced = kv.cas("client/cas", "v2", created)
    with pytest.raises(PreconditionFailed):
        kv.delete("client/cas", if_revision=created)
    assert kv.delete("client/cas", if_revision=replaced) is True and kv.item("client/cas") is None


def test_txn_ranges_counts_and_prefix_deletes(cluster_client):
    kv = cluster_client
    for start in range(0, 2500, 1000):
        kv.update({f"client/r/{i:04d}": i for i in range(start, min(start + 1000, 2500))})
    assert kv.count("client/r/") == 2500
    entries = list(kv.range("client/r/"))
    assert [entry.key for entry in entries] == [f"client/r/{i:04d}" for i in range(2500)]
    assert entries[7] == Entry("client/r/0007", 7, entries[7].mod_revision)
    assert [entry.key for entry in kv.range("client/r/", start_after="client/r/2497")] == ["client/r/2498",
                                                                                          "client/r/2499"]
    assert len(list(kv.range("client/r/", limit=1500, keys_only=True))) == 1500
    page = kv.page("client/r/", limit=3, level="stale")
    assert len(page.items) == 3 and page.more is True and page.revision >= entries[0].mod_revision
    answer = kv.txn([{"key": "client/r/0000", "target": "value", "op": "=", "value": 0}],
                    [{"set": {"client/r/0000": "zero"}}, {"get": "client/r/0001"}], [{"get": "client/r/0000"}])
    assert answer["succeeded"] is True and answer["results"][1]["value"] == 1
    assert kv.delete_prefix("client/r/") == 2500 and kv.count("client/r/") == 0


def test_errors_carry_status_and_code(clients):
    with pytest.raises(ClientError) as error:
        clients[0].get("k", level="bogus")
    assert (error.value.status, error.value.code) == (400, "bad_level")
    with pytest.raises(ClientError) as error:
        clients[1].remove("no-such-node")
    assert (error.value.status, error.value.code) == (404, "unknown_member")
    with pytest.raises(ClientError) as error:
        clients[2].delete_prefix("")
    assert (error.value.status, error.value.code) == (400, "empty_prefix")


def test_join_of_a_member_is_idempotent(clients, three_nodes):
    node = three_nodes[1]
    answer = clients[2].join(node.name, node.raft_addr, node.http_addr)
    assert answer["changed"] is False


def test_an_unreachable_cluster_raises_unavailable_at_the_deadline():
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(Unavailable) as error:
        Client(dead, timeout=1, deadline=1.0).set("k", 1)
    assert 1.0 <= time.monotonic() - started < 5
    assert error.value.status is None and isinstance(error.value.__cause__, ConnectionRefusedError)
    assert isinstance(error.value, hraftd.UnavailableError) and not isinstance(error.value, OutcomeUnknown)
    with pytest.raises(Unavailable):
        Client(dead[0], deadline=0).get("k")


def requests_counted(node, route: str) -> float:
    """The node's own count of the requests it answered on ``route`` (from /metrics)."""
    total = 0.0
    for line in requests.get(f"{node.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("hraftd_http_requests_total{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_calls_fail_over_past_dead_nodes_and_go_to_the_leader(three_nodes):
    leader = next(node for node in three_nodes if node.status()["role"] == "leader")
    followers = [node for node in three_nodes if node is not leader]
    before = {node.name: requests_counted(node, "/key/<key:key>") for node in three_nodes}
    dead = f"127.0.0.1:{free_port()}"
    with Client([dead, followers[0].http_addr, followers[1].http_addr, leader.http_addr]) as kv:
        kv["hint"] = 1
        for _ in range(20):
            assert kv["hint"] == 1
    after = {node.name: requests_counted(node, "/key/<key:key>") for node in three_nodes}
    assert after[leader.name] - before[leader.name] == 20
    assert all(after[node.name] == before[node.name] for node in followers)


def connections_to(port: int) -> int:
    """TCP connections on this host with ``port`` at either end, open or in TIME_WAIT (IPv4)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote = (int(address.split(":")[1], 16) for address in line.split()[1:3])
        count += port in (local, remote)
    return count


def test_connections_are_kept_alive_and_shared_by_threads(three_nodes):
    node = three_nodes[0]
    port = int(node.http_addr.rsplit(":", 1)[1])
    before = connections_to(port)
    errors: list[BaseException] = []
    with Client(node.http_addr) as kv:
        def work(thread: int) -> None:
            try:
                for i in range(25):
                    kv[f"alive/{thread}"] = i
                    assert kv[f"alive/{thread}"] == i
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        opened = connections_to(port) - before  # each end counts once: a client socket and the node's
    assert opened <= 2 * 8, f"{opened} socket ends for 400 requests from 8 threads: connections were not reused"


@pytest.fixture
def fragile(cluster):
    """A 3-node cluster whose nodes give up on a write after 1 s (-timeout 1)."""
    first = cluster.node("node0").start(None, "-timeout", "1").wait_ready()
    others = [cluster.node(f"node{i}").start(first, "-timeout", "1") for i in (1, 2)]
    for node in others:
        node.wait_ready()
    return [first, *others]


def test_a_write_without_a_quorum_is_outcome_unknown_and_its_retry_applies_it_once(cluster, fragile):
    leader = cluster.leader(fragile)
    followers = [node for node in fragile if node is not leader]
    kv = Client(leader.http_addr, timeout=5, deadline=3)
    assert kv.set("quorum/k", "before") > 0
    for node in followers:
        node.kill()
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown) as unknown:
        kv.set("quorum/k", "after", idempotency_key="the-write")
    assert time.monotonic() - started >= 3 and isinstance(unknown.value, hraftd.OutcomeUnknownError)
    with pytest.raises(Unavailable):  # a read is never "unknown": it was not applied
        kv.get("quorum/k")
    followers[0].start(None, "-timeout", "1").wait_ready()
    patient = Client([node.http_addr for node in fragile], timeout=5, deadline=30)
    revision = patient.set("quorum/k", "after", idempotency_key="the-write")
    item = patient.item("quorum/k")
    assert item["value"] == "after" and item["version"] == 2 and item["mod_revision"] == revision
    assert patient.set("quorum/k", "after", idempotency_key="the-write") == revision
    assert patient.item("quorum/k")["version"] == 2


def test_a_watch_goes_to_the_next_node_on_410_and_is_compacted_only_when_every_node_says_so(cluster):
    """The leader and one follower keep 3 events, the other follower 10,000: a watch from before the last 3
    is answered by that follower, and only a client that knows no node keeping them gets Compacted."""
    leader = cluster.node("small0").start(None, "-watch-window", "3").wait_ready()
    follower = cluster.node("small1").start(leader, "-watch-window", "3").wait_ready()
    keeper = cluster.node("keeper").start(leader).wait_ready()
    with Client(leader.http_addr) as client:
        start = client.set("w", -1)
        revisions = [client.set("w", i) for i in range(8)]
    with Client([leader.http_addr, follower.http_addr, keeper.http_addr], deadline=20) as client:
        changes = client.watch(key="w", since=start, timeout=5)
        assert [next(changes)["value"] for _ in range(8)] == list(range(8))
        assert changes.revision == revisions[-1]
    began = time.monotonic()
    with Client([leader.http_addr, follower.http_addr], deadline=20) as client, \
            pytest.raises(Compacted) as compacted:
        next(client.watch(key="w", since=start, timeout=5))
    assert compacted.value.oldest_revision == revisions[-4]
    assert time.monotonic() - began < 10  # at once, not by going back to the leader until the deadline


def test_the_asyncio_twin(three_nodes):
    async def main() -> None:
        async with AsyncClient([node.http_addr for node in three_nodes]) as kv:
            revision = await kv.cas("async/k", 1, 0)
            assert (await kv.item("async/k"))["mod_revision"] == revision
            with pytest.raises(PreconditionFailed):
                await kv.cas("async/k", 2, 0)
            await kv.update({"async/a": 1, "async/b": 2})
            assert [entry.key async for entry in kv.range("async/")] == ["async/a", "async/b", "async/k"]
            assert await kv.count("async/") == 3 and await kv.get("async/a") == 1
            assert (await kv.txn(success=[{"get": "async/b"}]))["results"][0]["value"] == 2
            assert await kv.delete_prefix("async/") == 3

    asyncio.run(main())


def test_importing_the_client_loads_nothing_of_the_server_side():
    probe = ("import sys, hraftd.client; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('pysyncobj', 'flask', 'werkzeug', 'gunicorn', 'uvloop', 'httptools', 'sortedcontainers', 'msgpack') "
             "or m in ('hraftd.store', 'hraftd.state', 'hraftd.raft', 'hraftd.web', 'hraftd.app')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]", loaded.stdout
    control = subprocess.run([sys.executable, "-c", "import sys, hraftd; hraftd.ReplicatedKV; "
                              "print('pysyncobj' in sys.modules)"], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
    assert control.stdout.strip() == "True", control.stderr  # the probe would see the server side if loaded

