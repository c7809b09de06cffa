"""The node as a process: signals, kill -9, and running under gunicorn directly."""

import signal
import socket
import time
from pathlib import Path

import pytest
from nodes import wait_for


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (from /proc: connecting could self-connect)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def raft_port(node) -> int:
    return int(node.raft_addr.rsplit(":", 1)[1])


def worker_died_with_its_master(node) -> None:
    """After kill -9 of the master: the kernel kills the worker at once (PR_SET_PDEATHSIG).

    Without that, gunicorn's worker would notice on its own within a second or two and shut down gracefully,
    logging it; the kernel's SIGKILL leaves no such line. So the proof is the absence of the lines, not a
    stopwatch, and the wait may be long.
    """
    # A killed multi-threaded worker can show as a zombie while its threads still close its sockets.
    wait_for(lambda: not node.processes() and not listening_addresses(raft_port(node)), 30,
             "the worker to die with its master and close the raft port")
    log = node.log()
    assert "Parent changed" not in log and "Worker exiting" not in log, log


def test_kill_9_of_the_master_takes_the_raft_node_down_at_once(cluster):
    node = cluster.node("node0").start().wait_ready()
    assert len(node.processes()) == 2  # gunicorn master and its one worker
    node.kill()
    worker_died_with_its_master(node)


def test_raft_listens_only_on_the_raddr_host(cluster):
    node = cluster.node("node0").start().wait_ready()
    assert listening_addresses(raft_port(node)) == {"127.0.0.1"}  # PySyncObj's default would be 0.0.0.0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_node_cleanly_and_promptly(cluster, signum):
    node = cluster.node("node0").start().wait_ready()
    node.set({"before-stop": 1})
    started = time.monotonic()
    assert node.signal_and_wait(signum) == 0
    assert time.monotonic() - started < 10  # gunicorn's graceful timeout: the worker was not killed
    assert not node.processes()
    node.start().wait_ready()
    assert node.value("before-stop") == 1


def test_nodes_side_by_side_do_not_share_a_gunicorn_control_socket(cluster):
    nodes = cluster.start(2)
    for node in nodes:
        assert "Control socket listening" not in node.log()


def test_gunicorn_runs_the_node_with_its_settings_module(cluster):
    node = cluster.node("gnode").start_with_gunicorn("--threads", "4").wait_ready()
    assert "Using worker: hraftd.worker.NodeWorker" in node.log()
    assert node.set({"via": "gunicorn"}).status_code == 200
    assert node.value("via") == "gunicorn"
    node.kill()  # kill -9 of gunicorn's master: the worker follows
    worker_died_with_its_master(node)
    node.start_with_gunicorn().wait_ready()
    assert node.value("via") == "gunicorn"
    assert node.signal_and_wait(signal.SIGTERM) == 0


@pytest.mark.parametrize(
    "args, config, reason",
    [(["-w", "2"], True, "refusing 2 workers"), (["--preload"], True, "refusing --preload"),
     (["-k", "gthread"], True, "refusing gunicorn's worker class ThreadWorker"),
     ([], False, "refusing gunicorn's worker class SyncWorker")],
)
def test_gunicorn_refuses_unsafe_settings_with_a_reason(cluster, args, config, reason):
    node = cluster.node("gnode").start_with_gunicorn(*args, config=config)
    assert node.process.wait(30) == 3  # the documented status, not gunicorn's generic 1
    assert reason in node.log()
    assert "gunicorn -c python:hraftd.gunicorn_conf" in node.log()  # and says how to start it
    assert not node.processes()


def test_the_factory_needs_a_data_dir(cluster, monkeypatch):
    node = cluster.node("gnode")
    monkeypatch.delenv("HRAFTD_DATA_DIR", raising=False)
    node.data_dir = ""
    node.start_with_gunicorn()
    assert node.process.wait(30) == 3
    assert "HRAFTD_DATA_DIR" in node.log()
