"""A full disk: writes get a clear error, readiness says so, nothing acknowledged is lost, and the node recovers
by itself once space is freed. The node's data dir is a small tmpfs in a mount namespace of its own."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import requests
from nodes import wait_for

ROOT_ONLY = os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter")
pytestmark = pytest.mark.skipif(ROOT_ONLY, reason="needs root, unshare and nsenter for a private small filesystem")


def on_a_small_filesystem(node, megabytes: int) -> None:
    """Start ``node`` with its data dir on a tmpfs of ``megabytes`` that only it sees."""
    node.data_dir.mkdir(parents=True)
    node.wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f'mount -t tmpfs -o size={megabytes}m tmpfs {node.data_dir} && exec "$@"', "sh"]


def in_its_namespace(node, *command: str) -> str:
    return subprocess.run(["nsenter", "-t", str(node.process.pid), "-m", *command], check=True, capture_output=True,
                          text=True, timeout=30).stdout


def fill(node, leave_kib: int) -> None:
    free = int(in_its_namespace(node, "df", "--output=avail", "-k", str(node.data_dir)).split()[-1])
    in_its_namespace(node, "fallocate", "-l", f"{max(free - leave_kib, 1)}k", str(node.data_dir / "filler"))


def test_a_full_disk_refuses_writes_loses_nothing_and_recovers(cluster):
    node0 = cluster.node("node0").start().wait_ready()
    node1 = cluster.node("node1").start(join=node0).wait_ready()
    node2 = cluster.node("node2")
    on_a_small_filesystem(node2, 24)
    node2.start(join=node0).wait_ready()
    acknowledged = {}
    big = "x" * 100_000

    def write(via, key: str) -> int:
        status = requests.post(f"{via.url}/key", json={key: big}, timeout=30).status_code
        if status == 200:
            acknowledged[key] = big
        return status

    assert write(node2, "before") == 200
    fill(node2, leave_kib=512)
    for i in range(60):  # the log of node2 uses up the space it reserved, then cannot reserve more
        assert write(node0, f"k{i}") == 200
    answer = requests.post(f"{node2.url}/key", json={"refused": 1}, timeout=30)
    assert answer.status_code == 507 and answer.json()["code"] == "insufficient_storage", answer.text
    assert requests.get(f"{node2.url}/readyz", timeout=10).status_code == 503
    for i in range(60, 120):  # the cluster goes on without it: a majority still has room
        assert write(node1, f"k{i}") == 200

    in_its_namespace(node2, "rm", str(node2.data_dir / "filler"))
    wait_for(lambda: requests.get(f"{node2.url}/readyz", timeout=10).status_code == 200, 60,
             "node2 to recover once space is freed")
    assert write(node2, "after") == 200
    for node in (node0, node1, node2):
        for key, value in acknowledged.items():
            assert requests.get(f"{node.url}/key/{key}", timeout=30).json()[key] == value
    assert requests.get(f"{node0.url}/key/refused", timeout=10).status_code == 404  # refused means not written
