"""What an operator relies on: health probes, metrics, backup and restore, graceful stop, logs."""

import json
import signal
import time

import requests
from nodes import wait_for
from prometheus_client.parser import text_string_to_metric_families


def test_health_probes(cluster):
    nodes = cluster.start(3)
    for node in nodes:
        assert requests.get(f"{node.url}/livez", timeout=5).json() == {"status": "ok"}
        assert requests.get(f"{node.url}/readyz", timeout=5).status_code == 200
    leader = cluster.leader()
    others = [n for n in nodes if n is not leader]
    others[0].kill()
    others[1].kill()
    # Without a quorum no node is ready, the old leader included, but every process is alive.
    wait_for(lambda: requests.get(f"{leader.url}/readyz", timeout=5).status_code == 503, 30,
             "the leader to report not ready")
    answer = requests.get(f"{leader.url}/readyz", timeout=5)
    assert answer.json()["code"] == "not_ready" and answer.headers["Retry-After"] == "1"
    assert requests.get(f"{leader.url}/livez", timeout=5).status_code == 200
    others[0].start()
    wait_for(lambda: requests.get(f"{leader.url}/readyz", timeout=5).status_code == 200, 30, "readiness back")


def metric_values(node):
    text = requests.get(f"{node.url}/metrics", timeout=5).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics(cluster):
    leader, follower = cluster.start(2)
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    for i in range(5):
        assert follower.set({f"m{i}": i}).status_code == 200
    follower.get("m1")
    assert requests.post(f"{follower.url}/key", data="{", timeout=5).status_code == 400
    for method in ("FROBNICATE", "FROBNICATED"):  # made up: counted under one label, not one label set each
        assert requests.request(method, f"{follower.url}/status", timeout=5).status_code == 405
    values = metric_values(follower)
    assert values[("hraftd_raft_leader", ())] == 0
    assert values[("hraftd_raft_role", (("role", "follower"),))] == 1
    assert values[("hraftd_keys", ())] == 5
    assert values[("hraftd_raft_applied_index", ())] >= 5
    assert values[("hraftd_raft_term", ())] >= 1
    assert values[("hraftd_raft_leader_changes_total", ())] >= 1
    assert values[("hraftd_http_requests_total", (("method", "POST"), ("route", "/key"), ("status", "200")))] == 5
    assert values[("hraftd_http_requests_total", (("method", "POST"), ("route", "/key"), ("status", "400")))] == 1
    assert values[("hraftd_http_requests_total", (("method", "OTHER"), ("route", "unmatched"), ("status", "405")))] == 2
    assert values[("hraftd_http_request_duration_seconds_count", (("method", "GET"), ("route", "/key/<key:key>")))] \
        == 1
    assert values[("hraftd_fsync_duration_seconds_count", ())] >= 5
    assert ("hraftd_snapshot_duration_seconds_count", ()) in values
    assert metric_values(leader)[("hraftd_raft_leader", ())] == 1


def test_backup_restore_round_trip_then_grow(cluster, tmp_path):
    nodes = cluster.start(3)
    data = {f"user{i}": {"name": f"n{i}", "tags": [i, "ü"]} for i in range(2500)}
    data["a/b c"] = None
    for start in range(0, len(data), 500):
        assert nodes[0].set(dict(list(data.items())[start:start + 500])).status_code == 200
    follower = next(n for n in nodes if n.status()["role"] == "follower")
    response = requests.get(f"{follower.url}/backup", timeout=30)
    assert response.status_code == 200
    backup = response.json()
    assert backup["format"] == "hraftd-backup" and backup["keys"] == len(data)
    assert backup["raft_index"] == int(response.headers["X-Raft-Index"]) >= 6
    assert backup["data"] == data
    backup_file = tmp_path / "backup.json"
    backup_file.write_bytes(response.content)

    restored = cluster.node("restored").start(None, "-restore", str(backup_file)).wait_ready()
    assert "restored 2501 keys" in restored.log()
    assert requests.get(f"{restored.url}/backup", timeout=30).json()["data"] == data
    grown = cluster.node("grown").start(join=restored).wait_ready()
    assert grown.value("user2499") == data["user2499"]
    assert grown.value("a/b c") is None

    refused = cluster.node("refused")
    refused.data_dir.mkdir()
    (refused.data_dir / "something").write_text("x")
    refused.start(None, "-restore", str(backup_file))
    assert refused.process.wait(30) == 3
    assert "needs an empty data directory" in refused.log()


def test_sigterm_of_the_leader_hands_over_leadership(cluster):
    nodes = cluster.start(3)
    leader = cluster.leader()
    survivors = [n for n in nodes if n is not leader]
    # The term the hand-over starts from: once every node is in it (a slow node may still be catching up).
    term = wait_for(lambda: len({n.status()["term"] for n in nodes}) == 1 and leader.status()["term"], 30,
                    "every node to be in the leader's term")
    stopped = time.monotonic()
    assert leader.signal_and_wait(signal.SIGTERM, timeout=60) == 0
    wait_for(lambda: survivors[0].set({"after-stop": 1}).status_code == 200, 30, "a write after the stop")
    pause = time.monotonic() - stopped
    print(f"writes paused {pause:.2f} s around the leader's graceful stop")
    assert "handing leadership over" in leader.log()
    new_leader = cluster.leader(among=survivors)
    assert new_leader.status()["term"] == term + 1  # a hand-over is one election, not a timeout and retries


def test_log_format_and_level(cluster):
    node = cluster.node("jsonlog").start(None, "-log-json", "-access-log").wait_ready()
    node.set({"logged": 1})
    node.signal_and_wait(signal.SIGTERM)
    lines = [json.loads(line) for line in node.log().splitlines() if line.strip()]
    assert lines and all(line["node"] == "jsonlog" and line["level"] for line in lines)
    assert any(line["logger"] == "gunicorn.access" and "POST /key" in line["message"] for line in lines)
    assert not any(line["logger"].startswith("pysyncobj") and line["level"] == "info" for line in lines)

    quiet = cluster.node("quiet").start(None, "-log-level", "warning").wait_ready()
    quiet.signal_and_wait(signal.SIGTERM)
    assert " INFO " not in quiet.log()


def test_a_failed_restore_leaves_the_data_dir_ready_for_another_try(cluster, tmp_path):
    not_a_backup = tmp_path / "not-a-backup.json"
    not_a_backup.write_text('{"hello": "world"}')
    node = cluster.node("restore")
    node.start(None, "-restore", str(not_a_backup))
    assert node.process.wait(30) == 3
    assert "not an hraftd backup" in node.log()
    assert not any(node.data_dir.iterdir())
    backup = tmp_path / "backup.json"
    backup.write_text('{"format": "hraftd-backup", "version": 1, "data": {"k": [1]}}')
    node.start(None, "-restore", str(backup)).wait_ready()
    assert node.value("k") == [1]
