"""Real hraftd processes for the benchmarks: free ports on 127.0.0.1, temp dirs, always killed at the end.

Stdlib only. A ``Node`` is one ``python -m hraftd`` process (the gunicorn master, which the kernel pairs with
its one worker: the worker dies with the master). Every process is started in its own session, so a node is
killed as a process group, and ``Registry`` kills every group it started when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

START_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and that this run has not handed out before (the OS may repeat one)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
            last_error = error
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def http_request(addr: str, method: str, path: str, body: Any = None,
                 timeout: float = 10.0) -> tuple[int, Any]:
    """One request on a fresh connection; returns (status, decoded JSON body or None)."""
    host, port = addr.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, None
    finally:
        connection.close()


class KeepAlive:
    """A keep-alive HTTP/1.1 connection for sequential requests from one thread (bulk loading)."""

    def __init__(self, addr: str, timeout: float = 60.0) -> None:
        host, port = addr.rsplit(":", 1)
        self._connection = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def post(self, path: str, payload: bytes) -> tuple[int, bytes]:
        self._connection.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
        response = self._connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self._connection.close()


# ----- /proc accounting -----

def process_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    pids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat_file.parent.name))
    return sorted(pids)


def cpu_seconds(pid: int) -> float:
    """CPU seconds of one process and of its children that it has reaped, 0 if it is gone.

    The children count: PySyncObj writes each snapshot in a forked child (pickle + gzip of the whole state),
    and that work belongs to the node.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / CLK_TCK


def system_seconds(pid: int) -> float:
    """The kernel-mode part of ``cpu_seconds``: system calls (sockets, msync/fsync, futexes of the GIL)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[12]) + int(fields[14])) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """Pss and Rss of one process from /proc/<pid>/smaps_rollup, in KiB."""
    result = {"pss": 0, "rss": 0}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return result
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Pss", "Rss"):
            result[name.lower()] = int(rest.split()[0])
    return result


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return float(total - idle), float(total)


def machine_busy(seconds: float) -> float:
    """Share of all cores busy over the next ``seconds`` (0..1)."""
    busy0, total0 = machine_cpu()
    time.sleep(seconds)
    busy1, total1 = machine_cpu()
    return (busy1 - busy0) / max(total1 - total0, 1)


# ----- processes -----

class Registry:
    """Every process group this run started; ``kill_all`` kills whatever is still alive."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def popen(self, args: list[str], log_path: Path | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        if log_path is not None:
            with open(log_path, "ab") as log:
                process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True, **kwargs)
        else:
            process = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)

    def kill_all(self) -> None:
        for process in self.processes:
            self.kill(process)
        self.processes = [p for p in self.processes if p.poll() is None]


def source_env(source: Path | None) -> dict[str, Any]:
    """Popen arguments that make ``python -m hraftd`` import the package under ``source`` (None: as installed)."""
    if source is None:
        return {}
    return {"cwd": str(source), "env": {**os.environ, "PYTHONPATH": str(source)}}


class Node:
    """One hraftd node process on 127.0.0.1 with free ports and its own data dir.

    ``source`` is a directory holding the ``hraftd`` package to run (a frozen copy, so that edits to the work
    tree during a run do not change the code under test); None runs the installed package.
    """

    def __init__(self, registry: Registry, name: str, data_dir: Path, log_dir: Path, node_args: list[str],
                 source: Path | None = None) -> None:
        self.registry = registry
        self.source = source
        self.name = name
        self.http_addr = f"127.0.0.1:{free_port()}"
        self.raft_addr = f"127.0.0.1:{free_port()}"
        self.data_dir = data_dir
        self.log_path = log_dir / f"{name}.log"
        self.node_args = node_args
        self.process: subprocess.Popen[bytes] | None = None
        self.join: Node | None = None

    def start(self, join: Node | None = None) -> Node:
        self.join = join or self.join
        args = [sys.executable, "-m", "hraftd", "-id", self.name, "-haddr", self.http_addr,
                "-raddr", self.raft_addr, *self.node_args]
        if self.join is not None:
            args += ["-join", self.join.http_addr]
        self.process = self.registry.popen([*args, str(self.data_dir)], self.log_path, **source_env(self.source))
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited; last log lines:\n{self.log_tail()}")
        return True

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        status, body = http_request(self.http_addr, "GET", "/status", timeout=timeout)
        if status != 200:
            raise ValueError(f"/status answered {status}")
        return body

    def ready(self) -> bool:
        return self.alive() and bool(self.status()["ready"])

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Node:
        wait_for(self.ready, timeout, f"{self.name} to be ready")
        return self

    def kill(self) -> None:
        """kill -9 of the hraftd process (the gunicorn master); its worker dies with it (PDEATHSIG)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def wait_gone(self, timeout: float = 10.0) -> None:
        """Wait until no process of the node's group is alive (the worker follows its master)."""
        assert self.process is not None
        pgid = self.process.pid
        wait_for(lambda: not process_group(pgid), timeout, f"{self.name}'s worker to exit")

    def pids(self) -> list[int]:
        assert self.process is not None
        return process_group(self.process.pid)

    def worker_pid(self) -> int | None:
        others = [pid for pid in self.pids() if pid != self.pid]
        return others[0] if others else None

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def system_seconds(self) -> float:
        return sum(system_seconds(pid) for pid in self.pids())

    def memory(self) -> dict[str, Any]:
        per_process = {pid: memory_kib(pid) for pid in self.pids()}
        worker = self.worker_pid()
        return {
            "pss_mib": sum(m["pss"] for m in per_process.values()) / 1024,
            "rss_mib": sum(m["rss"] for m in per_process.values()) / 1024,
            "worker_rss_mib": per_process.get(worker, {"rss": 0})["rss"] / 1024 if worker else None,
            "master_pss_mib": per_process.get(self.pid, {"pss": 0})["pss"] / 1024,
            "processes": len(per_process),
        }

    def files(self) -> dict[str, int | None]:
        sizes: dict[str, int | None] = {}
        for name in ("raft.snapshot", "raft.log"):
            path = self.data_dir / name
            sizes[name] = path.stat().st_size if path.exists() else None
        return sizes

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Cluster:
    """Three (or ``size``) nodes: node0 bootstraps, the others join it."""

    def __init__(self, registry: Registry, root: Path, node_args: list[str], source: Path | None = None,
                 size: int = 3) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.nodes = [Node(registry, f"node{i}", root / f"node{i}", root, node_args, source) for i in range(size)]

    def start(self) -> Cluster:
        first, *others = self.nodes
        first.start().wait_ready()
        for node in others:
            node.start(join=first)
        for node in others:
            node.wait_ready()
        self.wait_healthy()
        return self

    def healthy(self) -> bool:
        """Every node is ready, sees every member connected, and all agree on one leader."""
        leaders = set()
        for node in self.nodes:
            status = node.status()
            if not status["ready"] or len(status["members"]) != len(self.nodes):
                return False
            if not all(member["connected"] for member in status["members"]):
                return False
            leaders.add((status["leader"] or {}).get("id"))
        return len(leaders) == 1 and None not in leaders

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        wait_for(self.healthy, timeout, "every node to be ready, connected and agreeing on the leader")

    def leader(self) -> Node:
        def agreed() -> Node | None:
            names = {(node.status()["leader"] or {}).get("id") for node in self.nodes}
            if len(names) == 1 and None not in names:
                return next(node for node in self.nodes if node.name in names)
            return None

        return wait_for(agreed, START_TIMEOUT, "the nodes to agree on a leader")

    def followers(self) -> list[Node]:
        leader = self.leader()
        return [node for node in self.nodes if node is not leader]
