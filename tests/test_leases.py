"""Leases on real nodes: grant, attach, keepalive, revoke and their refusals; expiry within its bounds, also
through a leader failover and past a leader stopped longer than the ttl; the same through ReplicatedKV.
The recipes built on leases are in test_lease_recipes.py.

Times are ``time.monotonic()`` of this process. A key "seen" at a time means an answer read then; an expiry is
"seen" at the first answer that no longer finds the key, so it happened before that answer.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests
from nodes import Node, wait_for

from hraftd.client import Client, ClientError
from hraftd.errors import LeaseNotFoundError
from hraftd.leases import LeaseKeeper
from hraftd.state import KVState

TTL = 2.0


def leader_of(nodes: list[Node]) -> Node:
    def agreed() -> Node | None:
        names = {(node.status()["leader"] or {}).get("id") for node in nodes}
        return next((n for n in nodes if n.name in names), None) if len(names) == 1 else None

    return wait_for(agreed, 30, "the nodes to agree on a leader")


def grant(node: Node, ttl: float) -> int:
    answer = requests.post(f"{node.url}/lease", json={"ttl": ttl}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["ttl"] == ttl
    return answer.json()["id"]


def keepalive(node: Node, lease: int) -> requests.Response:
    return requests.post(f"{node.url}/lease/{lease}/keepalive", timeout=10)


def write(node: Node, items: dict, **params) -> requests.Response:
    return requests.post(f"{node.url}/key", params=params, json=items, timeout=10)


def revision(node: Node) -> int:
    return requests.get(f"{node.url}/keys", params={"count_only": "true"}, timeout=10).json()["revision"]


@pytest.fixture(scope="module")
def nodes(three_nodes) -> list[Node]:
    return three_nodes


def test_a_lease_holds_its_keys_while_kept_alive_through_any_node_and_its_revoke_deletes_them_at_once(nodes):
    leader = leader_of(nodes)
    follower = next(node for node in nodes if node is not leader)
    lease = grant(follower, 1)
    assert write(follower, {"svc/a": 1, "svc/b": 2}, lease=lease).status_code == 200
    txn = requests.post(f"{follower.url}/txn", json={"success": [{"set": {"svc/c": 3}, "lease": lease}]}, timeout=10)
    assert txn.status_code == 200 and txn.json()["succeeded"], txn.text
    until = time.monotonic() + 2.5  # more than twice the ttl: only the keepalives (to a follower) keep it
    while time.monotonic() < until:
        renewed = keepalive(follower, lease)
        assert renewed.status_code == 200 and renewed.json() == {"id": lease, "ttl": 1}, renewed.text
        time.sleep(0.25)
    answer = requests.get(f"{follower.url}/lease/{lease}", timeout=10)
    assert answer.status_code == 200, answer.text
    info = answer.json()
    assert info["keys"] == ["svc/a", "svc/b", "svc/c"] and info["ttl"] == 1 and 0.5 < info["remaining"] <= 1
    before = revision(leader)
    revoked = requests.delete(f"{follower.url}/lease/{lease}", timeout=10)
    assert revoked.json() == {"revoked": True, "deleted": 3, "revision": before + 1}, revoked.text
    assert all(follower.get(key).status_code == 404 for key in ("svc/a", "svc/b", "svc/c"))
    for answer in (keepalive(leader, lease), requests.get(f"{leader.url}/lease/{lease}", timeout=10),
                   requests.delete(f"{follower.url}/lease/{lease}", timeout=10)):
        assert answer.status_code == 404 and answer.json()["code"] == "lease_not_found", answer.text


@pytest.mark.parametrize("body", [{"ttl": 0}, {"ttl": 0.5}, {"ttl": 86401}, {"ttl": "5"}, {"ttl": True},
                                  {"ttl": None}, {}, {"ttl": 5, "keys": []}])
def test_a_bad_ttl_is_refused_and_grants_nothing(nodes, body):
    answer = requests.post(f"{nodes[0].url}/lease", json=body, timeout=10)
    assert answer.status_code == 400 and answer.json()["code"] in ("bad_ttl", "bad_field"), answer.text


def test_an_unknown_or_malformed_lease_is_refused_and_nothing_is_written(nodes):
    node = nodes[1]
    before = revision(node)
    for bad in ("abc", "0", "-1", "1.5", "99999999999999999999"):
        for method, path in (("GET", f"/lease/{bad}"), ("DELETE", f"/lease/{bad}"),
                             ("POST", f"/lease/{bad}/keepalive")):
            answer = requests.request(method, node.url + path, timeout=10)
            assert answer.status_code == 400 and answer.json()["code"] == "bad_lease_id", (method, path, answer.text)
        assert write(node, {"x": 1}, lease=bad).json()["code"] == "bad_lease_id"
    missing = 10**9
    for method, path in (("GET", f"/lease/{missing}"), ("DELETE", f"/lease/{missing}"),
                         ("POST", f"/lease/{missing}/keepalive")):
        answer = requests.request(method, node.url + path, timeout=10)
        assert answer.status_code == 404 and answer.json()["code"] == "lease_not_found", (method, path, answer.text)
    answer = write(node, {"x": 1, "y": 2}, lease=missing)
    assert answer.status_code == 404 and answer.json()["code"] == "lease_not_found", answer.text
    for operation in ({"set": {"x": 1}, "lease": missing}, {"lease": missing, "set": {"x": 1}}):
        answer = requests.post(f"{node.url}/txn", json={"success": [{"set": {"y": 1}}, operation]}, timeout=10)
        assert answer.status_code == 404 and answer.json()["code"] == "lease_not_found", answer.text
    for operation in ({"set": {"x": 1}, "lease": "1"}, {"set": {"x": 1}, "lease": 0}, {"get": "x", "lease": 1}):
        answer = requests.post(f"{node.url}/txn", json={"success": [operation]}, timeout=10)
        assert answer.status_code == 400, answer.text
    assert revision(node) == before and node.get("x").status_code == 404 and node.get("y").status_code == 404


def watch_expiry(nodes: list[Node], key: str, give_up: float) -> tuple[float, float]:
    """Poll ``key`` on the live nodes in turn: (the time of the last answer that found it, of the first that
    did not). Answers other than 200 and 404 (an election) prove nothing either way."""
    last_seen = -1.0
    turn = 0
    while time.monotonic() < give_up:
        node = nodes[turn % len(nodes)]
        turn += 1
        try:
            answer = node.get(key)
        except requests.RequestException:
            continue
        answered = time.monotonic()
        if answer.status_code == 200:
            last_seen = answered
        elif answer.status_code == 404:
            return last_seen, answered
        time.sleep(0.02)
    raise AssertionError(f"{key} still exists at the deadline")


def kept_alive_then_abandoned(node: Node, lease: int, seconds: float) -> float:
    """Keepalives every ttl/4 for ``seconds`` (more than a ttl), then none: the time the last was sent."""
    until = time.monotonic() + seconds
    while True:
        sent = time.monotonic()
        assert keepalive(node, lease).status_code == 200
        if sent > until:
            return sent
        time.sleep(TTL / 4)


def test_a_lease_of_2_s_whose_owner_stops_ends_2_to_3_s_after_its_last_keepalive_in_one_expire(nodes):
    node = nodes[2]
    lease = grant(node, TTL)
    before = write(node, {"owned/by-the-dead": 1, "owned/too": 2}, lease=lease).json()["revision"]
    last_keepalive = kept_alive_then_abandoned(node, lease, 2.5)
    last_seen, gone = watch_expiry(nodes, "owned/by-the-dead", last_keepalive + TTL + 5)
    changes = requests.get(f"{nodes[0].url}/watch", params={"prefix": "owned/", "since": before, "timeout": 0},
                           timeout=10).json()["events"]
    assert [(event["type"], event["key"]) for event in changes] == [("expire", "owned/by-the-dead"),
                                                                      ("expire", "owned/too")]
    assert changes[0]["mod_revision"] == changes[1]["mod_revision"]  # one entry
    print(f"last seen {last_seen - last_keepalive:.2f} s, gone {gone - last_keepalive:.2f} s after the last keepalive")
    assert gone > last_keepalive + TTL, "expired before its ttl had run out"
    assert gone < last_keepalive + TTL + 1.0, "the leader was late to expire it"


def test_a_leader_failover_renews_every_lease_to_its_full_ttl_and_the_abandoned_one_still_expires(cluster):
    """The owner of lease A stops at t0 (its last keepalive); the leader is killed at t0 + 1 s. The new leader,
    elected at tL > t0 + 1, gives A its full ttl from tL: A's keys must exist until t0 + 1 + ttl (3 s after the
    owner stopped: more than the 2 s of a lease without failover, since no leader may end a lease less than a
    ttl after it took office), and be gone by tL' + ttl + 1 s, tL' the time the new leader was seen. Lease B,
    kept alive by the client's recipe across the failover, keeps its key (its ttl of 5 s leaves its keepalives
    room for the election on a busy machine)."""
    nodes = cluster.start(3)
    leader = leader_of(nodes)
    survivors = [node for node in nodes if node is not leader]
    lease = grant(leader, TTL)
    write(leader, {"owned/by-the-dead": 1}, lease=lease)
    with Client([node.http_addr for node in nodes], timeout=2.0) as client, client.lease(5) as kept:
        client.set("owned/by-the-living", 1, lease=kept.id)
        last_keepalive = kept_alive_then_abandoned(leader, lease, 2.5)  # longer than a ttl: grant time is stale
        time.sleep(max(last_keepalive + 1.0 - time.monotonic(), 0))
        killed = time.monotonic()
        leader.kill()
        new_leader = leader_of(survivors)
        elected_seen = time.monotonic()
        last_seen, gone = watch_expiry(survivors, "owned/by-the-dead", killed + TTL + 10)
        print(f"after the last keepalive: killed {killed - last_keepalive:.2f} s, new leader {new_leader.name} seen "
              f"{elected_seen - last_keepalive:.2f} s, last seen {last_seen - last_keepalive:.2f} s, gone "
              f"{gone - last_keepalive:.2f} s")
        assert gone > killed + TTL, "a lease expired less than a ttl after the new leader took office"
        assert gone < elected_seen + TTL + 1.0, "the new leader was late to expire the abandoned lease"
        assert client.get("owned/by-the-living") == 1 and kept.alive


def test_replicated_kv_grants_keeps_alive_revokes_and_expires_leases(kv):
    lease = kv.lease_grant(1)
    assert lease["ttl"] == 1
    revision = kv.put({"in/a": 1}, lease=lease["id"])
    assert kv.txn(success=[{"set": {"in/b": 2}, "lease": lease["id"]}])["succeeded"]
    assert kv.item("in/a")["lease"] == lease["id"] and kv.item("in/a")["mod_revision"] == revision
    for _ in range(4):  # 1.2 s: past the ttl, kept by the keepalives alone
        assert kv.lease_keepalive(lease["id"]) == 1
        time.sleep(0.3)
    info = kv.lease_info(lease["id"])
    assert info["keys"] == ["in/a", "in/b"] and 0.5 < info["remaining"] <= 1
    wait_for(lambda: "in/a" not in kv and "in/b" not in kv, 3, "the abandoned lease to expire")
    other = kv.lease_grant(5)["id"]
    kv.put({"in/c": 3}, lease=other)
    assert kv.lease_revoke(other)["deleted"] == 1 and "in/c" not in kv
    for call in (kv.lease_keepalive, kv.lease_info, kv.lease_revoke):
        with pytest.raises(LeaseNotFoundError):
            call(other)
    with pytest.raises(LeaseNotFoundError):
        kv.put({"in/d": 4}, lease=other)
    assert "in/d" not in kv
    for bad_ttl in (0, 0.99, 86_401, "5", True, None):
        with pytest.raises(ValueError):
            kv.lease_grant(bad_ttl)
    for bad_id in (0, -1, "1", 1.0):
        with pytest.raises(ValueError):
            kv.lease_keepalive(bad_id)


def test_a_paused_leader_that_wakes_past_its_deadlines_ends_no_lease_its_successor_keeps(cluster):
    """The leader's worker is stopped (SIGSTOP) for longer than the ttl, so that every deadline it holds has
    passed when it wakes; meanwhile a new leader takes office and the owner's keepalives reach it. Whatever the
    woken leader proposes from its old term must end nothing: the lease and its key live on, no expire event."""
    nodes = cluster.start(3)
    leader = leader_of(nodes)
    ttl = 3.0
    with Client([node.http_addr for node in nodes], timeout=1.0) as client, client.lease(ttl) as kept:
        revision = client.set("kept/key", 1, lease=kept.id)
        time.sleep(0.5)
        worker = next(pid for pid in leader.processes() if pid != leader.process.pid)
        os.kill(worker, signal.SIGSTOP)
        try:
            leader_of([node for node in nodes if node is not leader])
            time.sleep(ttl + 1 - 0.5)  # every deadline the stopped leader holds passes meanwhile
        finally:
            os.kill(worker, signal.SIGCONT)
        cluster.leader()  # all three agree again (a member whose term ran ahead meanwhile is heard)
        time.sleep(1.0)  # room for whatever it proposed from its old term to be applied
        changes = client.watch_once("kept/key", revision, 0)["events"]
        assert changes == [] and client.get("kept/key") == 1 and kept.alive, changes


class GrantingStore:
    """The store a LeaseKeeper reads, on a real KVState, leading term 1: a lease is granted (its grant sent)
    just before the keeper's first read of the leases, as when a grant applies while a tick begins."""

    def __init__(self) -> None:
        self.state = KVState()
        self.state.apply({"op": "lease_epoch", "term": 1}, 0.0)
        self.sent: float | None = None
        self.submitted: list[dict] = []

    def leading_term(self) -> int:
        return 1

    def _local(self, read):
        if self.sent is None:
            self.sent = time.monotonic()
            time.sleep(0.01)  # the grant travels to the leader and applies
            self.state.apply({"op": "lease_grant", "ttl": 5}, 0.0)
        return read(self.state)

    def submit(self, command, done) -> None:
        self.submitted.append(command)


def test_the_leader_gives_a_lease_it_sees_first_no_earlier_deadline_than_sent_plus_ttl():
    store = GrantingStore()
    keeper = LeaseKeeper(store)
    keeper.close()  # its own thread stops; the ticks below are this test's
    keeper._tick()
    assert store.sent is not None and keeper._deadlines[1] >= store.sent + 5


def test_a_node_with_max_leases_3_refuses_a_fourth_live_lease_until_one_ends(cluster):
    node = cluster.node("capped").start(None, "-max-leases", "3", "-no-fsync").wait_ready()
    leases = [grant(node, 60) for _ in range(3)]
    refused = requests.post(f"{node.url}/lease", json={"ttl": 60}, timeout=10)
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_leases", refused.text
    assert "-max-leases" in refused.json()["error"]
    assert requests.delete(f"{node.url}/lease/{leases[0]}", timeout=10).status_code == 200
    assert grant(node, 60) > leases[-1]
    with Client(node.http_addr, timeout=2.0) as client:
        with pytest.raises(ClientError) as again:
            client.lease_grant(60)
        assert again.value.status == 429 and again.value.code == "too_many_leases"


def test_the_keeper_expires_a_lease_seen_between_ticks_and_never_one_that_has_ended():
    """Its ticks skip the scan of every lease while none can be due; a lease granted, or one put back by a
    keepalive that raced its revoke, must still be looked at."""
    store = GrantingStore()
    keeper = LeaseKeeper(store)
    keeper.close()
    keeper._tick()  # lease 1 is granted as it reads, due at sent + 5
    store.state.apply({"op": "lease_grant", "ttl": 1}, 0.0)
    keeper._tick()
    assert set(keeper._deadlines) == {1, 2} and not store.submitted
    wait_for(lambda: keeper._tick() or store.submitted, 3, "lease 2 to be due, before lease 1")
    assert store.submitted == [{"op": "lease_expire", "id": 2, "term": 1}]
    for command in (store.submitted.pop(), {"op": "lease_revoke", "id": 1}):
        store.state.apply(command, 0.0)
    keeper._tick()
    with keeper._lock:  # as a keepalive that read lease 1 just before its revoke applied
        keeper._deadlines[1] = keeper._next_due = time.monotonic()
    keeper._tick()
    assert not store.submitted and not keeper._deadlines
