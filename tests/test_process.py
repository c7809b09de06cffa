"""The node as a process: signals, kill -9, and running under gunicorn directly."""

import signal
import socket
import time

import pytest
from nodes import wait_for


def raft_port_closed(node) -> bool:
    host, port = node.raft_addr.split(":")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) != 0


def test_kill_9_of_the_master_takes_the_raft_node_down_at_once(cluster):
    node = cluster.node("node0").start().wait_ready()
    assert len(node.processes()) == 2  # gunicorn master and its one worker
    node.kill()
    wait_for(lambda: not node.processes(), 2, "the worker to die with its master")
    assert raft_port_closed(node)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_node_cleanly_and_promptly(cluster, signum):
    node = cluster.node("node0").start().wait_ready()
    node.set({"before-stop": 1})
    started = time.monotonic()
    assert node.signal_and_wait(signum) == 0
    assert time.monotonic() - started < 10
    assert not node.processes()
    node.start().wait_ready()
    assert node.value("before-stop") == 1


def test_nodes_side_by_side_do_not_share_a_gunicorn_control_socket(cluster):
    nodes = cluster.start(2)
    for node in nodes:
        assert "Control socket listening" not in node.log()


def test_gunicorn_runs_the_app_factory(cluster):
    node = cluster.node("gnode").start_with_gunicorn("-w", "1", "-k", "gthread", "--threads", "4").wait_ready()
    assert node.set({"via": "gunicorn"}).status_code == 200
    assert node.value("via") == "gunicorn"
    node.kill()  # kill -9 of gunicorn's master: the worker follows
    wait_for(lambda: not node.processes(), 2, "the worker to die with its master")
    node.start_with_gunicorn("-k", "gthread").wait_ready()
    assert node.value("via") == "gunicorn"
    assert node.signal_and_wait(signal.SIGTERM) == 0


@pytest.mark.parametrize(
    "args, reason",
    [(["-w", "2", "-k", "gthread"], "refusing 2 workers"), (["--preload"], "refusing --preload")],
)
def test_gunicorn_refuses_unsafe_settings_with_a_reason(cluster, args, reason):
    node = cluster.node("gnode").start_with_gunicorn(*args)
    assert node.process.wait(30) != 0
    assert reason in node.log()
    assert not node.processes()


def test_the_factory_needs_a_data_dir(cluster, monkeypatch):
    node = cluster.node("gnode")
    monkeypatch.delenv("HRAFTD_DATA_DIR", raising=False)
    node.data_dir = ""
    node.start_with_gunicorn()
    assert node.process.wait(30) != 0
    assert "HRAFTD_DATA_DIR" in node.log()
