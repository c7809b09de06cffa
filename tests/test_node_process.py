"""What an operator sees of a node's processes: exit statuses, process titles, signals to the worker, log lines."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from nodes import wait_for


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def worker_of(node) -> int:
    workers = [pid for pid in node.processes() if pid != node.process.pid]
    assert len(workers) == 1, workers
    return workers[0]


def test_a_busy_http_port_stops_the_node_at_once_with_status_3(cluster):
    node = cluster.node("busy")
    host, port = node.http_addr.rsplit(":", 1)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((host, int(port)))
        taken.listen()
        node.start()
        assert node.process.wait(30) == 3
    log = node.log()
    assert f"cannot start the node: cannot listen on -haddr {node.http_addr}: Address already in use" in log
    assert "Starting gunicorn" not in log and "Connection in use" not in log  # no retries: nothing started
    assert not node.data_dir.exists()


def test_gunicorn_with_preload_exits_3_with_the_reason(cluster):
    node = cluster.node("gnode").start_with_gunicorn("--preload")
    assert node.process.wait(30) == 3
    assert "refusing --preload: the Raft node must be built in the worker process" in node.log()


def test_process_titles_tell_master_from_worker(cluster):
    node = cluster.node("node0").start().wait_ready()
    master, worker = node.process.pid, worker_of(node)
    assert cmdline(master) == "hraftd master node0"
    assert cmdline(worker) == "hraftd worker node0"
    for pid in (master, worker):  # what pgrep matches: both, still under the program's name
        assert Path(f"/proc/{pid}/comm").read_text().startswith("hraftd")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_worker_stops_the_node(cluster, signum):
    node = cluster.node("node0").start().wait_ready()
    worker = worker_of(node)
    os.kill(worker, signum)
    assert node.process.wait(30) == 0  # the master stops too, cleanly, instead of starting a new worker
    assert not node.processes()
    assert node.log().count("Booting worker") == 1


def test_a_worker_killed_outright_is_replaced(cluster):
    """kill -9 (or the OOM killer) is not a request to stop: the master starts a new worker on the same data."""
    node = cluster.node("node0").start().wait_ready()
    assert node.set({"kept": 1}).status_code == 200
    worker = worker_of(node)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: worker not in node.processes() and len(node.processes()) == 2, 30, "a new worker")
    node.wait_ready()
    assert node.value("kept") == 1
    assert f"Worker (pid:{worker}) was sent SIGKILL!" in node.log()


def test_log_lines_are_named_for_the_project_with_millisecond_json_times(cluster):
    node = cluster.node("jsonlog").start(None, "-log-json").wait_ready()
    assert node.signal_and_wait(signal.SIGTERM) == 0
    lines = [json.loads(line) for line in node.log().splitlines() if line.strip()]
    loggers = {line["logger"] for line in lines}
    assert "hraftd.server" in loggers and "gunicorn.error" not in loggers, loggers
    assert all(logger == "hraftd" or logger.startswith("hraftd.") for logger in loggers), loggers
    assert any(line["logger"] == "hraftd.server" and "Starting gunicorn" in line["message"] for line in lines)
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", line["time"]), line["time"]


LOG_FROM_CONFIG = textwrap.dedent("""
    import logging, logging.config, sys
    from hraftd.logs import logging_config
    logging.config.dictConfig(logging_config("n1", sys.argv[1]))
    logging.getLogger("hraftd.raft").info("leader elected: n1")
    logging.getLogger("hraftd.raft.membership").info("member added: n2")
    logging.getLogger("pysyncobj").info("connection churn")
""")


def test_every_hraftd_logger_is_shown_at_info():
    """The cluster-event lines come from loggers under hraftd.*: shown at info, hidden at warning."""
    shown = subprocess.run([sys.executable, "-c", LOG_FROM_CONFIG, "info"], capture_output=True, text=True,
                           timeout=60).stderr
    assert "INFO [n1] hraftd.raft: leader elected: n1" in shown
    assert "INFO [n1] hraftd.raft.membership: member added: n2" in shown
    assert "connection churn" not in shown
    quiet = subprocess.run([sys.executable, "-c", LOG_FROM_CONFIG, "warning"], capture_output=True, text=True,
                           timeout=60).stderr
    assert "leader elected" not in quiet
