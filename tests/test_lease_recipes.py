"""The recipes on leases against real nodes: the client's lease, the lock (5 processes contending while the
leader is killed twice), the election, and python.md's service discovery recipe."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from nodes import Cluster, Node, wait_for
from test_leases import leader_of
from test_recipes import recipe, run

from hraftd.client import Client, ClientError
from hraftd.errors import OutcomeUnknownError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def nodes(three_nodes) -> list[Node]:
    return three_nodes


CANDIDATE = """
import sys, time
from hraftd.client import Client
client = Client(sys.argv[1].split(","), timeout=2.0)
election = client.election("scheduler", ttl=1)
election.campaign("first")
print("elected", flush=True)
time.sleep(60)
"""


def test_an_election_hands_office_to_the_next_candidate_when_the_leader_dies_or_resigns(nodes):
    addresses = [node.http_addr for node in nodes]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-c", CANDIDATE, ",".join(addresses)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert first.stdout is not None and first.stdout.readline() == "elected\n"
        with Client(addresses, timeout=2.0) as client:
            election = client.election("scheduler", ttl=1)
            assert election.leader() == "first" and not election.is_leader
            with pytest.raises(TimeoutError):
                election.campaign("second", timeout=0.5)
            first.kill()
            killed = time.monotonic()
            token = election.campaign("second", timeout=10)
            took = time.monotonic() - killed
            print(f"elected {took:.2f} s after the leader was killed")
            assert election.is_leader and election.leader() == "second" and token == election.token
            assert took < 1 + 2.0, "office passed later than a ttl after the leader's last keepalive, plus slack"
            election.resign()
            assert election.leader() is None and not election.is_leader
    finally:
        first.kill()
        first.wait(10)


def test_a_lease_recipe_revokes_on_exit_and_reports_an_ended_lease(nodes):
    with Client([node.http_addr for node in nodes], timeout=2.0) as client:
        with client.lease(1.5) as lease:
            client.update({"eph/a": 1, "eph/b": 2}, lease=lease.id)
            assert lease.alive and 0 < lease.remaining <= 1.5
            time.sleep(2)  # the keepalives carry it past its ttl
            assert client.get("eph/a") == 1 and lease.alive
        assert client.get("eph/a") is None and not lease.alive
        other = client.lease(1).grant()
        client.lease_revoke(other.id)  # ended behind the recipe's back: it notices at its next keepalive
        wait_for(lambda: not other.alive, 3, "the recipe to notice its lease has ended")
        other.revoke()
        with pytest.raises(ClientError) as refused:
            client.set("eph/c", 1, lease=other.id)
        assert refused.value.status == 404 and refused.value.code == "lease_not_found"


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_service_discovery_lists_three_services_and_drops_the_one_killed(nodes, tmp_path):
    """python.md's discovery recipe as written: three services register, a fourth process lists and watches
    the prefix and sees them come, then sees the killed one go, a lease ttl (3 s) after its last keepalive."""
    path = recipe("discovery.py", nodes, tmp_path)
    watcher = run(path, "watch")
    services = {name: run(path, "register", name, f"10.0.0.{n}:80") for n, name in enumerate(("a", "b", "c"))}
    try:
        seen = lines_of(watcher)
        for service in services.values():
            assert service.stdout is not None and service.stdout.readline() == "registered\n"
        assert sorted(seen.get(timeout=10) for _ in range(3)) == ["up a 10.0.0.0:80", "up b 10.0.0.1:80",
                                                                   "up c 10.0.0.2:80"]
        services["b"].kill()
        killed = time.monotonic()
        assert seen.get(timeout=3 + 3) == "down b"
        took = time.monotonic() - killed
        print(f"the watcher saw b go {took:.2f} s after it was killed")
        assert took > 3 - 3 / 3, "gone before a ttl after its last keepalive could have passed"
        with pytest.raises(queue.Empty):
            seen.get(timeout=1)  # a and c stay
    finally:
        for process in (watcher, *services.values()):
            process.kill()
            process.wait(10)


def kill_leader(cluster: Cluster, nodes: list[Node]) -> Node:
    leader = leader_of(nodes)
    leader.kill()
    leader.start(None)
    return leader


def test_a_lock_contended_by_5_processes_while_the_leader_is_killed_twice_is_never_held_by_two(cluster, tmp_path):
    """Each holder logs [acquired, released] with its fencing token. A holder is sure of the lock from when its
    acquire returned until it releases, or until its lease's keepalives have failed for a ttl, whichever is
    first; those spans must never overlap, and tokens must grow in the order of acquisition."""
    nodes = cluster.start(3)
    log_path = tmp_path / "holds.jsonl"
    seconds = 30.0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holders = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "lockholder.py"),
                                 json.dumps([node.http_addr for node in nodes]), str(log_path), str(seconds)],
                                env=env, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    began = time.monotonic()
    try:
        killed = []
        for at in (seconds / 3, 2 * seconds / 3):
            time.sleep(max(began + at - time.monotonic(), 0))
            killed.append(kill_leader(cluster, nodes).name)
            for node in nodes:
                node.wait_ready()
        for holder in holders:
            _, errors = holder.communicate(timeout=seconds + 60)
            assert holder.returncode == 0, errors
    finally:
        for holder in holders:
            holder.kill()
            holder.wait(10)
    holds = sorted((json.loads(line) for line in log_path.read_text().splitlines()), key=lambda h: h["acquired"])
    lost = [hold for hold in holds if hold["valid_until"] < hold["released"]]
    print(f"{len(holds)} holds by {len({h['pid'] for h in holds})} processes, leaders killed: {killed}, "
          f"{len(lost)} ended by a lost lease")
    assert len(holds) > 50 and len({hold["pid"] for hold in holds}) == 5
    for before, after in itertools.pairwise(holds):
        assert after["token"] > before["token"], (before, after)
        assert after["acquired"] > min(before["released"], before["valid_until"]), (before, after)



def test_a_lock_takes_a_key_its_own_lost_attempt_created_and_replaces_a_lease_that_ended(nodes):
    with Client([node.http_addr for node in nodes], timeout=2.0) as client:
        lock = client.lock("retried", ttl=2)
        lock.lease = client.lease(2).grant()  # as if an attempt had applied and its answer were lost
        created = client.txn(success=[{"set": {"locks/retried": "me"}, "lease": lock.lease.id}])["revision"]
        assert lock.acquire(timeout=1) == created and lock.held
        lock.release()
        assert client.get("locks/retried") is None and not lock.held
        stale = client.lock("stale", ttl=2)
        stale.lease = client.lease(2).grant()
        ended = stale.lease.id
        client.lease_revoke(ended)  # behind the recipe's back, before its keepalive notices
        assert stale.acquire(timeout=2) == client.item("locks/stale")["create_revision"]
        assert stale.held and stale.lease is not None and stale.lease.id != ended
        stale.release()


class GrantSpy:
    """Lets a Client's calls through, noting the leases it grants; ``txn_then_raise``: every txn is applied
    and then answered with ``OutcomeUnknownError``, as when the answer of a committed txn is lost."""

    def __init__(self, client: Client, txn_then_raise: bool = False) -> None:
        self.granted: list[int] = []
        grant, txn = client.lease_grant, client.txn

        def spied_grant(*args, **kwargs):
            answer = grant(*args, **kwargs)
            self.granted.append(answer["id"])
            return answer

        def lost_txn(*args, **kwargs):
            txn(*args, **kwargs)
            raise OutcomeUnknownError("the answer was lost")

        client.lease_grant = spied_grant  # type: ignore[method-assign]
        if txn_then_raise:
            client.txn = lost_txn  # type: ignore[method-assign]


def assert_leases_gone(node: Node, lease_ids: list[int]) -> None:
    assert lease_ids
    for lease_id in lease_ids:
        answer = requests.get(f"{node.url}/lease/{lease_id}", timeout=10)
        assert answer.status_code == 404 and answer.json()["code"] == "lease_not_found", answer.text
    threads = {thread.name for thread in threading.enumerate()}
    assert not threads & {f"hraftd-lease-{lease_id}" for lease_id in lease_ids}, threads


def test_a_failed_acquire_or_campaign_leaves_no_lease_nor_keepalive_thread_behind(nodes):
    addresses = [node.http_addr for node in nodes]
    with Client(addresses, timeout=2.0) as holder_client, Client(addresses, timeout=2.0) as client:
        holder = holder_client.lock("busy", ttl=5)
        holder.acquire(timeout=5)
        spy = GrantSpy(client)
        with pytest.raises(TimeoutError):
            client.lock("busy", ttl=5).acquire(timeout=0.3)
        incumbent = holder_client.election("office", ttl=5)
        incumbent.campaign("first", timeout=5)
        with pytest.raises(TimeoutError):
            client.election("office", ttl=5).campaign("second", timeout=0.3)
        assert_leases_gone(nodes[0], spy.granted)
        holder.release()
        incumbent.resign()


def test_an_acquire_whose_claim_has_an_unknown_outcome_does_not_leave_the_lock_held(nodes):
    with Client([node.http_addr for node in nodes], timeout=2.0) as client:
        spy = GrantSpy(client, txn_then_raise=True)
        with pytest.raises(OutcomeUnknownError):
            client.lock("unknown", ttl=5).acquire(timeout=2)
        assert client.get("locks/unknown") is None, "the claim applied, and its lease was left alive"
        assert_leases_gone(nodes[0], spy.granted)


class RefusingProxy(http.server.BaseHTTPRequestHandler):
    """Grants any lease and answers every keepalive with a load balancer's 502 (an HTML page), counting them."""

    keepalives = 0

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/lease":
            status, kind, body = 200, "application/json", json.dumps({"id": 1, "ttl": 1}).encode()
        else:
            type(self).keepalives += 1
            status, kind, body = 502, "text/html", b"<html>502 Bad Gateway</html>"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_lease_whose_keepalives_are_refused_at_once_tries_again_an_interval_later_not_in_a_tight_loop():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RefusingProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"127.0.0.1:{server.server_address[1]}", timeout=2.0) as client:
            lease = client.lease(1).grant()
            time.sleep(1.0)  # a keepalive every ttl/3: about 3 in this second
            lease._stop.set()
            tried = RefusingProxy.keepalives
            lease._thread.join(5)
        print(f"{tried} keepalives refused in 1 s")
        assert 1 <= tried <= 6 and not lease.alive
    finally:
        server.shutdown()
        server.server_close()
