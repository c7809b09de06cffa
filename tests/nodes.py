"""Real hraftd node processes on 127.0.0.1 for the integration tests: free ports, temp dirs, always killed."""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import syscalls

START_TIMEOUT = 30.0
SECRET = "test-cluster-secret-0123456789"  # for in-process clusters given their peers up front


_handed_out: set[int] = set()
# The ports handed out by every process of this test run (pytest-xdist runs several): one file, locked.
_REGISTRY = Path(tempfile.gettempdir()) / f"hraftd-test-ports-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}"


def free_port() -> int:
    """A port nothing listens on now and that no process of this test run has handed out before."""
    with open(_REGISTRY, "a+") as registry:
        fcntl.flock(registry, fcntl.LOCK_EX)
        registry.seek(0)
        _handed_out.update(int(line) for line in registry.read().split())
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                registry.write(f"{port}\n")
                return port


def forget_ports() -> None:
    """The run is over: its registry of ports goes (a process still running writes a new one)."""
    with contextlib.suppress(FileNotFoundError):
        _REGISTRY.unlink()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except (requests.RequestException, KeyError, ValueError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class Node:
    """One hraftd process (the gunicorn master and its worker, in their own process group)."""

    def __init__(self, name: str, data_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.http_addr = f"127.0.0.1:{free_port()}"
        self.raft_addr = f"127.0.0.1:{free_port()}"
        self.data_dir = data_dir
        self.log_path = log_dir / f"{data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.nofile: int | None = None  # a lower limit of open file descriptors for the node, if set
        self.trace: Path | None = None  # run under strace, writing its system calls there (see syscalls.py)
        self.inject: str | None = None  # and make strace inject this fault (e.g. "fdatasync:error=EIO:when=20")
        self.wrapper: list[str] = []  # a command the node runs under (e.g. unshare, for a filesystem of its own)

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    def start(self, join: Node | None = None, *extra: str) -> Node:
        args = [sys.executable, "-m", "hraftd", "-id", self.name, "-haddr", self.http_addr,
                "-raddr", self.raft_addr, *extra]
        if join is not None:
            args += ["-join", join.http_addr]
        return self.run([*args, str(self.data_dir)])

    def start_with_gunicorn(self, *gunicorn_args: str, config: bool = True) -> Node:
        """The operator's way: gunicorn with hraftd's settings module, the node's settings from the environment.
        ``config=False``: without the module, naming the app instead (which the node refuses)."""
        env = {**os.environ, "HRAFTD_DATA_DIR": str(self.data_dir), "HRAFTD_HTTP_ADDR": self.http_addr,
               "HRAFTD_RAFT_ADDR": self.raft_addr, "HRAFTD_ID": self.name}
        setup = ["-c", "python:hraftd.gunicorn_conf"] if config else ["--no-control-socket"]
        args = [sys.executable, "-m", "gunicorn", *setup, "-b", self.http_addr, *gunicorn_args]
        if not config:
            args.append("hraftd.server:create_app()")
        return self.run(args, env)

    def run(self, args: list[str], env: dict[str, str] | None = None) -> Node:
        nofile = self.nofile
        if self.trace is not None:
            args = syscalls.traced(args, self.trace, self.inject)
        args = [*self.wrapper, *args]

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env=env, preexec_fn=limit)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Node:
        wait_for(lambda: self.alive() and self.status()["ready"], timeout, f"{self.name} to be ready")
        return self

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.log()}")
        return True

    def status(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/status", timeout=5).json()

    def get(self, key: str, **params: str) -> requests.Response:
        return requests.get(f"{self.url}/key/{key}", params=params, timeout=15)

    def set(self, items: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.url}/key", json=items, timeout=15)

    def value(self, key: str) -> Any:
        response = self.get(key)
        assert response.status_code == 200, response.text
        return response.json()[key]

    def kill(self) -> None:
        """kill -9 of the process a user sees: the gunicorn master only."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def signal_and_wait(self, signum: int, timeout: float = 15.0) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout)

    def processes(self) -> list[int]:
        """PIDs of the live processes in this node's process group (master, worker); zombies are dead."""
        assert self.process is not None
        pids = []
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            state, pgid = fields[0], int(fields[2])
            if pgid == self.process.pid and state != "Z":
                pids.append(int(stat_file.parent.name))
        return pids

    def cleanup(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """Nodes of one test; every process is killed at the end whatever happens."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.nodes: list[Node] = []

    def node(self, name: str, data_dir: str | None = None) -> Node:
        """A node called ``name`` (its -id), with the data dir ``data_dir`` (default: its name) of this test."""
        node = Node(name, self.tmp_path / (data_dir or name), self.tmp_path)
        self.nodes.append(node)
        return node

    def start(self, size: int) -> list[Node]:
        """node0 bootstraps, the others join it; returns once all are ready."""
        first = self.node("node0").start().wait_ready()
        others = [self.node(f"node{i}").start(join=first) for i in range(1, size)]
        for node in others:
            node.wait_ready()
        wait_for(lambda: all(len(n.status()["members"]) == size for n in [first, *others]), START_TIMEOUT,
                 "every node to see every member")
        return [first, *others]

    def leader(self, among: list[Node] | None = None) -> Node:
        """The node every live node agrees is leader."""
        candidates = among or [n for n in self.nodes if n.process and n.process.poll() is None]

        def agreed_leader() -> Node | None:
            names = {(n.status()["leader"] or {}).get("id") for n in candidates}
            if len(names) == 1 and None not in names:
                return next((n for n in candidates if n.name in names), None)
            return None

        return wait_for(agreed_leader, START_TIMEOUT, "the nodes to agree on a leader")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
