"""GET /watch, ReplicatedKV.watch and Client.watch against real nodes: long polls and Server-Sent Events, the
window and 410, followers, bad parameters, roles, and the watch hub on a real loop (faults: test_watch_faults)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
import requests
from appclient import AppClient
from nodes import Cluster, Node, free_port, wait_for
from test_openapi import FakeStore

from hraftd.app import build_app
from hraftd.auth import TokenFile
from hraftd.client import AsyncClient, Client, Compacted
from hraftd.errors import CompactedError
from hraftd.eventwindow import EventWindow
from hraftd.request import Request
from hraftd.store import ReplicatedKV
from hraftd.watch import Watcher, WatchHandler, WatchHub


def watch(node: Node, **params: Any) -> requests.Response:
    return requests.get(f"{node.url}/watch", params=params, timeout=30)


def events_of(node: Node, **params: Any) -> list[tuple[str, str, Any, int]]:
    """Every event the node still keeps after ``since``, as (type, key, value, mod_revision)."""
    answer = watch(node, timeout=0, **params)
    assert answer.status_code == 200, answer.text
    return [(e["type"], e["key"], e.get("value"), e["mod_revision"]) for e in answer.json()["events"]]


def revision_of(node: Node) -> int:
    return requests.get(f"{node.url}/keys?count_only=true", timeout=15).json()["revision"]


def write(node: Node, items: dict[str, Any]) -> int:
    response = node.set(items)
    assert response.status_code == 200, response.text
    return response.json()["revision"]


def stream_events(lines: Any) -> Any:
    """The Server-Sent Events of a stream of lines: dicts of their fields; comments as {"comment": text}."""
    fields: dict[str, str] = {}
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line:
            if fields:
                yield fields
            fields = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


@pytest.fixture(scope="module")
def nodes(three_nodes):
    return three_nodes


@pytest.fixture(scope="module")
def leader_and_follower(nodes):
    leader = next(node for node in nodes if node.status()["role"] == "leader")
    return leader, next(node for node in nodes if node is not leader)


# ----- long polls -----


def test_a_long_poll_answers_at_once_waits_and_times_out(nodes):
    node = nodes[0]
    start = write(node, {"lp/a": 1, "other": 0})
    first = watch(node, key="lp/a", since=start - 1).json()
    assert first == {"revision": start, "events": [{"type": "set", "key": "lp/a", "value": 1, "mod_revision": start}]}

    began = time.monotonic()
    quiet = watch(node, key="lp/a", since=start, timeout=0.3).json()
    assert quiet["events"] == [] and quiet["revision"] >= start and time.monotonic() - began >= 0.3

    answers: list[dict[str, Any]] = []
    on_key: list[dict[str, Any]] = []
    waiting = [threading.Thread(target=lambda: answers.append(watch(nodes[1], prefix="lp/", since=start,
                                                                    timeout=20).json())),
               threading.Thread(target=lambda: on_key.append(watch(nodes[1], key="lp/c", since=start,
                                                                   timeout=20).json()))]
    for thread in waiting:
        thread.start()
    write(node, {"other": 1, "lp": 1})  # neither under the prefix nor the key: answers neither watch
    time.sleep(0.2)
    assert all(thread.is_alive() for thread in waiting)
    revision = write(node, {"lp/b": 2, "lp/c": None})
    for thread in waiting:
        thread.join(10)
    assert answers == [{"revision": revision, "events": [
        {"type": "set", "key": "lp/b", "value": 2, "mod_revision": revision},
        {"type": "set", "key": "lp/c", "value": None, "mod_revision": revision}]}]
    assert on_key == [{"revision": revision, "events": [
        {"type": "set", "key": "lp/c", "value": None, "mod_revision": revision}]}]

    deleted = requests.delete(f"{node.url}/keys?prefix=lp/", timeout=15).json()["revision"]
    assert events_of(node, prefix="lp/", since=revision) == [
        ("delete", "lp/a", None, deleted), ("delete", "lp/b", None, deleted), ("delete", "lp/c", None, deleted)]


def test_a_since_not_yet_reached_waits_for_it(nodes):
    node = nodes[0]
    now = revision_of(node)
    assert watch(node, since=now + 1, timeout=0).json() == {"revision": now + 1, "events": []}
    answers: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: answers.append(watch(nodes[2], key="ahead", since=now + 1,
                                                                   timeout=20).json()))
    waiting.start()
    first = write(node, {"ahead": 1})
    assert first == now + 1
    second = write(node, {"ahead": 2})
    waiting.join(10)
    assert answers == [{"revision": second, "events": [
        {"type": "set", "key": "ahead", "value": 2, "mod_revision": second}]}]


def test_a_watch_without_since_starts_after_every_acknowledged_write(leader_and_follower):
    leader, follower = leader_and_follower
    for round_number in range(30):
        acknowledged = write(leader, {"fresh": round_number})
        answer = watch(follower, key="fresh", timeout=0).json()
        assert answer["revision"] >= acknowledged, (round_number, answer, acknowledged)


def test_a_follower_shows_every_committed_change_in_order(leader_and_follower):
    leader, follower = leader_and_follower
    start = revision_of(leader)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def follow() -> None:
        since = start
        while not stop.is_set():
            answer = watch(follower, prefix="f/", since=since, timeout=1).json()
            assert answer["revision"] >= since
            seen.extend(answer["events"])
            since = answer["revision"]

    watcher = threading.Thread(target=follow)
    watcher.start()
    written = []  # the revision of every write, each of which changes keys under f/
    try:
        with Client([leader.http_addr]) as client:
            for i in range(60):
                written.append(client.set(f"f/{i % 7}", i))
                if i % 10 == 0:
                    written.append(client.txn(success=[{"set": {f"f/t{i}": i, f"f/u{i}": i}},
                                                       {"delete": f"f/{i % 7}"}])["revision"])
                if i % 25 == 0:
                    assert client.delete_prefix("f/t") > 0
                    written.append(revision_of(leader))
            final = client.set("f/last", True)
        wait_for(lambda: seen and seen[-1]["mod_revision"] == final, 15, "the follower's watch to catch up")
    finally:
        stop.set()
        watcher.join(10)
    committed = events_of(leader, prefix="f/", since=start)
    assert [(e["type"], e["key"], e.get("value"), e["mod_revision"]) for e in seen] == committed
    assert {e["mod_revision"] for e in seen} == {*written, final}


# ----- the window, and refusals -----


@pytest.fixture(scope="module")
def small_window(tmp_path_factory):
    """One node that keeps 5 events."""
    nodes = Cluster(tmp_path_factory.mktemp("window"))
    try:
        yield nodes.node("small").start(None, "-watch-window", "5", "-no-fsync").wait_ready()
    finally:
        nodes.cleanup()


def test_a_since_older_than_the_window_is_answered_410(small_window):
    node = small_window
    start = revision_of(node)
    for i in range(8):
        write(node, {"w": i})
    refused = watch(node, since=start)
    assert refused.status_code == 410
    assert refused.json()["code"] == "compacted" and refused.json()["oldest_revision"] == start + 3
    streamed = requests.get(f"{node.url}/watch", params={"since": start}, timeout=10,
                            headers={"Accept": "text/event-stream"})
    assert streamed.status_code == 410 and streamed.json()["oldest_revision"] == start + 3
    assert [e[2] for e in events_of(node, since=start + 3)] == [3, 4, 5, 6, 7]
    with Client(node.http_addr) as client, pytest.raises(Compacted) as compacted:
        next(client.watch(since=start))
    assert compacted.value.oldest_revision == start + 3 and compacted.value.status == 410


@pytest.mark.parametrize(("query", "code"), [
    ("bogus=1", "unknown_parameter"),
    ("key=a&prefix=b", "bad_parameter"),
    ("key=", "bad_key"),
    ("timeout=301", "bad_parameter"),
    ("timeout=-1", "bad_parameter"),
    ("timeout=nan", "bad_parameter"),
    ("timeout=abc", "bad_parameter"),
    ("since=-1", "bad_revision"),
    ("since=1.5", "bad_revision"),
    ("since=99999999999999999999", "bad_revision"),
    ("key=%01", "bad_key"),
    ("prefix=" + "x" * 2000, "key_too_long"),
])
def test_bad_parameters_are_refused_with_400(nodes, query, code):
    response = requests.get(f"{nodes[0].url}/watch?{query}", timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code


@pytest.mark.parametrize("timeout", ["0", "0.5", "1e-300"])
def test_a_stream_heartbeat_under_a_second_is_refused(nodes, timeout):
    with requests.get(f"{nodes[0].url}/watch", params={"timeout": timeout, "since": 0}, timeout=10, stream=True,
                      headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 400
        assert response.json()["code"] == "bad_parameter"


def test_a_bad_last_event_id_is_refused(nodes):
    response = requests.get(f"{nodes[0].url}/watch", timeout=10,
                            headers={"Accept": "text/event-stream", "Last-Event-ID": "x"})
    assert response.status_code == 400 and response.json()["code"] == "bad_revision"


# ----- Server-Sent Events -----


def test_a_stream_sends_events_heartbeats_and_resumes_after_last_event_id(nodes):
    node = nodes[0]
    start = write(node, {"s/a": 1})
    second = write(node, {"s/b": 2})
    headers = {"Accept": "text/event-stream"}
    with requests.get(f"{node.url}/watch", params={"prefix": "s/", "since": start - 1, "timeout": 1},
                      headers=headers, stream=True, timeout=10) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        received = stream_events(response.iter_lines())
        assert next(received) == {"retry": "1000", "id": str(start - 1), "event": "start",
                                  "data": json.dumps({"revision": start - 1}, separators=(",", ":"))}
        first = next(received)
        assert first["id"] == str(start)
        assert json.loads(first["data"]) == {"revision": start, "events": [
            {"type": "set", "key": "s/a", "value": 1, "mod_revision": start}]}
        assert json.loads(next(received)["data"])["events"][0]["value"] == 2
        assert next(received) == {"comment": "heartbeat"}
        third = write(nodes[1], {"s/c": 3})
        event = next(received)
        assert event["id"] == str(third) and json.loads(event["data"])["events"][0]["key"] == "s/c"
    with requests.get(f"{node.url}/watch", params={"prefix": "s/", "since": 0}, stream=True, timeout=10,
                      headers={**headers, "Last-Event-ID": str(second)}) as response:  # the header wins
        received = stream_events(response.iter_lines())
        assert next(received)["id"] == str(second)
        assert next(received)["id"] == str(third)


# ----- slow consumers -----


# ----- the window over a snapshot, and the Python API -----


def test_replicated_kv_watch(tmp_path):
    with ReplicatedKV(f"127.0.0.1:{free_port()}", data_dir=tmp_path, watch_window=3) as kv:
        kv.wait_ready(20)
        start = kv.put({"a": 1})
        assert kv.watch(key="a", since=start - 1, timeout=0) == (start, [
            {"type": "set", "key": "a", "value": 1, "mod_revision": start}])
        assert kv.watch(key="a", timeout=0.1) == (start, [])
        assert kv.watch(since=start + 5, timeout=0) == (start + 5, [])  # never an answer before its since
        threading.Timer(0.2, kv.put, ({"b": [2]},)).start()
        revision, events = kv.watch(prefix="b", since=start, timeout=10)
        assert (revision, events) == (start + 1, [{"type": "set", "key": "b", "value": [2],
                                                   "mod_revision": start + 1}])
        events[0]["value"].append("changed")  # a copy: the node's state is untouched
        assert kv["b"] == [2]
        for i in range(3):
            kv.put({"c": i})
        with pytest.raises(CompactedError) as compacted:
            kv.watch(since=start, timeout=0)
        assert compacted.value.oldest_revision == start + 1  # 5 events, the window keeps the last 3
        with pytest.raises(ValueError):
            kv.watch(key="a", prefix="b")


def test_head_answers_at_once(nodes):
    for headers in ({}, {"Accept": "text/event-stream"}):
        began = time.monotonic()
        response = requests.head(f"{nodes[0].url}/watch", params={"timeout": 30}, headers=headers, timeout=10)
        assert response.status_code == 200 and response.content == b""
        assert time.monotonic() - began < 5


def test_the_hub_drops_a_watcher_that_falls_behind_and_serves_the_others_once():
    """A watcher with more events waiting than the window holds, its prefix watched by no other (the hub with a
    real window, on a real loop)."""
    window = EventWindow(capacity=3)
    hub = WatchHub(window)

    def applied(revision: int, key: str) -> None:
        window.add([{"type": "set", "key": key, "value": revision, "mod_revision": revision}], revision)

    async def dispatched(revision: int) -> None:
        deadline = time.monotonic() + 5
        while hub.revision != revision:  # the dispatch comes on one of the next loop turns
            assert time.monotonic() < deadline, f"the hub is at revision {hub.revision}, not {revision}"
            await asyncio.sleep(0.001)

    async def turns() -> tuple[Watcher, Watcher, Watcher]:
        alone = hub.open(0, None, "a/")  # the only watcher of its prefix; it never takes its events
        other = hub.open(0, "b", "")
        everything = hub.open(0, None, "")
        for revision in range(1, 4):
            applied(revision, f"a/{revision}")
        await dispatched(3)
        applied(4, "a/4")
        applied(5, "b")
        await dispatched(5)
        return alone, other, everything

    alone, other, everything = asyncio.run(turns())
    assert alone.compacted == 2 and alone.events == [] and everything.compacted == 2
    assert other.compacted is None and [event["value"] for event in other.events] == [5]
    assert hub.count == 1


def test_the_hub_skips_nothing_while_a_reopened_node_applies_its_log_again():
    """The store resets the window to 0 when it reopens the node, and the log is applied again: watches
    opened, answered and waiting meanwhile miss no event and get none twice (the hub with a real window, on a
    real loop)."""
    window = EventWindow(capacity=100)
    hub = WatchHub(window)

    def applied(revisions: range) -> None:
        for revision in revisions:
            window.add([{"type": "set", "key": f"k{revision}", "value": revision, "mod_revision": revision}],
                       revision)

    async def dispatched(revision: int) -> None:
        deadline = time.monotonic() + 5
        while hub.revision != revision:
            assert time.monotonic() < deadline, f"the hub is at revision {hub.revision}, not {revision}"
            await asyncio.sleep(0.001)

    def revisions(watcher: Watcher) -> list[int]:
        return [revision for revision, _ in hub.take(watcher, 1 << 20)[1]]

    async def turns() -> None:
        applied(range(1, 11))
        answered = hub.open(0, None, "k")
        pending = hub.open(7, None, "k")  # 8..10 found for it, not yet taken
        await dispatched(10)
        assert revisions(answered) == list(range(1, 11))
        window.reset(0)  # the node reopens
        applied(range(1, 6))  # and has applied its log again up to 5 when a long poll from 2 comes
        late = hub.open(2, None, "k")
        covered, taken = hub.take(late, 1 << 20)
        assert covered == 5 and [revision for revision, _ in taken] == [3, 4, 5]
        applied(range(6, 13))  # the log applied again, then new writes
        await dispatched(12)
        assert revisions(late) == list(range(6, 13))
        assert revisions(answered) == [11, 12]
        assert revisions(pending) == list(range(8, 13))
        window.reset(0)  # reopens again; this time the hub sees the window behind it at a dispatch
        applied(range(1, 9))
        await dispatched(8)
        applied(range(9, 15))
        await dispatched(14)
        assert revisions(answered) == [13, 14] and revisions(late) == [13, 14]

    asyncio.run(turns())


def test_a_stream_closed_before_its_first_byte_releases_its_watcher():
    """The client went away before the node wrote anything: the server closes the stream it never started."""
    handler = WatchHandler(EventWindow(), limits=None)

    async def unused_sync(level: str) -> None:
        raise AssertionError("a watch with since does not wait")

    async def answered_then_closed() -> None:
        request = Request("GET", "/watch", headers=[("accept", "text/event-stream")])
        response = await handler.answer(request, {"since": "0"}, unused_sync)
        assert handler.hub.count == 1 and response.stream is not None
        await response.stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(answered_then_closed())
    assert handler.hub.count == 0


def test_the_async_client_watches(nodes):
    async def first_change(since: int) -> dict[str, Any]:
        async with AsyncClient([node.http_addr for node in nodes]) as kv:
            async for event in kv.watch(key="async", since=since, timeout=5):
                return event
        raise AssertionError("the watch ended")

    revision = write(nodes[1], {"async": "yes"})
    assert asyncio.run(first_change(revision - 1)) == {"type": "set", "key": "async", "value": "yes",
                                                        "mod_revision": revision}


def test_a_watch_needs_the_read_role(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("read r-0123456789abcdef\n")
    client = AppClient(build_app(FakeStore(), tokens=TokenFile(tokens)))  # tokens are checked before the store
    try:
        assert client.get("/watch?since=0&timeout=0").status_code == 401
        answer = client.get("/watch?since=0&timeout=0", headers={"Authorization": "Bearer r-0123456789abcdef"})
        assert answer.status_code == 200 and answer.get_json() == {"revision": 0, "events": []}
    finally:
        client.close()


def test_lease_expiry_is_told_as_expire_events(tmp_path):
    with ReplicatedKV(f"127.0.0.1:{free_port()}", data_dir=tmp_path) as kv:
        kv.wait_ready(20)
        lease = kv.execute({"op": "lease_grant", "ttl": 5})["id"]
        start = kv.execute({"op": "put", "items": {"svc/a": 1, "svc/b": 2}, "lease": lease})["revision"]
        kv.execute({"op": "lease_expire", "id": lease})
        assert kv.watch(prefix="svc/", since=start, timeout=5) == (start + 1, [
            {"type": "expire", "key": "svc/a", "mod_revision": start + 1},
            {"type": "expire", "key": "svc/b", "mod_revision": start + 1}])
