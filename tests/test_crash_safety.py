"""Killed at any step of taking a snapshot and cutting the log, a node loses nothing it acknowledged.

The node takes a snapshot every few writes (-compact-log-bytes 4096) and runs under strace, which kills it
(SIGKILL) when it makes one chosen system call on one chosen file: each step of writing the snapshot (in the
child that writes it) and of replacing the log beside itself (in the node). gunicorn starts a new worker, which
reopens the data directory; every write answered 200 must read back.
"""

from __future__ import annotations

import time

import pytest
import requests
import syscalls
from nodes import wait_for

# (system call, file, which call of that thread): a child writes each snapshot and makes its calls once.
STEPS = [
    ("fsync", "raft.snapshot.tmp", 1),  # the child, syncing the new snapshot
    ("rename", "raft.snapshot.tmp", 1),  # the child, putting it in place
    ("fsync", "raft.snapshot", 2),  # the node, making sure the snapshot is on disk before cutting the log
    ("pwrite64", "raft.log.next", 2),  # the node, writing the shortened log beside the old one
    ("fdatasync", "raft.log.next", 2),  # ... syncing it
    ("rename", "raft.log.next", 2),  # ... renaming it over the old one
    ("fallocate", "raft.log", 2),  # ... reserving space in it, after the rename and the directory's sync
]


@pytest.mark.skipif(not syscalls.available(), reason="strace is needed to kill the node at a chosen step")
@pytest.mark.parametrize(("call", "file", "when"), STEPS, ids=[f"{call}-{file}" for call, file, _ in STEPS])
def test_a_kill_at_any_step_of_a_compaction_loses_nothing_acknowledged(cluster, tmp_path, call, file, when):
    node = cluster.node("node0")
    trace = tmp_path / "kill.trace"
    node.data_dir.mkdir(parents=True)
    node.run(["strace", "-f", "-qq", "-o", str(trace), "-P", str(node.data_dir / file), "-e", f"trace={call}",
              "-e", f"inject={call}:signal=KILL:when={when}", *node_command(node)])
    node.wait_ready()
    acknowledged = {}
    deadline = time.monotonic() + 90
    i = 0
    while len(acknowledged) < 80 or "+++ killed by SIGKILL +++" not in trace.read_text():
        assert time.monotonic() < deadline, f"{len(acknowledged)} writes acknowledged; no kill at {call} on {file}"
        value = f"value {i} " * 25
        try:
            if requests.post(f"{node.url}/key", json={f"k{i}": value}, timeout=10).status_code == 200:
                acknowledged[f"k{i}"] = value
        except requests.RequestException:
            time.sleep(0.1)  # the worker was just killed (the outcome is unknown: not counted); a new one starts
        i += 1
    for key, value in acknowledged.items():
        # The restarted worker may compact again and be killed at the same step: read through that.
        response = wait_for(lambda key=key: answered(node.get(key)), 60, f"{key} to be read")[0]
        assert response.status_code == 200 and response.json()[key] == value, f"{key} was acknowledged and is lost"


def answered(response: requests.Response) -> list[requests.Response] | None:
    """The response, unless the node is still starting (503); in a list, so that a 404 counts as an answer."""
    return None if response.status_code == 503 else [response]


def node_command(node) -> list[str]:
    import sys

    return [sys.executable, "-m", "hraftd", "-id", node.name, "-haddr", node.http_addr, "-raddr", node.raft_addr,
            "-compact-log-bytes", "4096", str(node.data_dir)]
