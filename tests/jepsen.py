"""A Jepsen-style harness: client threads record a history against a real cluster while a nemesis injects faults.

Afterwards every fault is healed, the cluster must become ready, final linearizable reads of every key on every
node join the history, the history must be linearizable (``linearizability.check``), and the nodes' local copies
must converge.

Faults: kill -9 and restart of the leader or of a follower, SIGSTOP/SIGCONT of the leader's worker (the process
holding the Raft node), and a network partition that cuts the leader off from the other Raft members. Partitions
need one network namespace per node, joined by a bridge (``Network``); the test process still reaches every node
over HTTP during a partition. All of it lives inside network and mount namespaces made for the test
(``own_namespace_command``): the host's interfaces and namespaces are never touched. Without root, ``ip`` or
``unshare``, nodes run on 127.0.0.1 and the partition fault is unavailable.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from linearizability import ABSENT, DELETE, FAIL, OK, READ, UNKNOWN, WRITE, CheckResult, Op, check
from nodes import Node, wait_for

NODE_TIMEOUT = "1"  # the nodes' -timeout: requests fail fast (503/504), histories stay short
CLIENT_TIMEOUT = (1.0, 2.5)  # connect, read
READY_TIMEOUT = 30.0
FAULTS = ("kill-leader", "kill-follower", "pause-leader", "partition-leader")
EXTRA_FAULTS = ("kill-all",)  # every node at once: acknowledged writes must survive it (durability)

_NS_PREFIX = "hrt-"
INSIDE_OWN_NAMESPACE = "HRAFTD_TEST_OWN_NETNS"  # set in the child that runs in it
_networks = itertools.count()


@functools.cache
def _hraftd_help() -> str:
    """``hraftd --help``, to pass only the flags this version has."""
    return subprocess.run([sys.executable, "-m", "hraftd", "--help"], capture_output=True, text=True,
                          timeout=60).stdout


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def own_namespace_command(argv: list[str]) -> list[str]:
    """``argv`` run in network and mount namespaces of its own, with loopback up and a private /run/netns.

    Everything it creates (bridge, veths, the nodes' namespaces) is invisible to the host and disappears with
    its last process.
    """
    setup = ('ip link set lo up && if [ -d /run/netns ]; then mount -t tmpfs hraftd-test /run/netns; '
             'else mount -t tmpfs hraftd-test /run && mkdir /run/netns; fi && exec "$@"')
    return ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", setup, "sh", *argv]


def inside_own_namespace() -> bool:
    return os.environ.get(INSIDE_OWN_NAMESPACE) == "1"


def partitions_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None if they can (tried in a namespace of its own)."""
    if os.geteuid() != 0:
        return "network partitions need root (network namespaces)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"network partitions need the {tool} command"
    probe = subprocess.run(own_namespace_command(["ip", "netns", "add", "probe"]), capture_output=True, text=True,
                           timeout=30)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.strip()}"
    return None


def host_network_names() -> set[str]:
    """The interfaces and named network namespaces this process sees."""
    names = {line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.split()}
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@")[0])
    return names


class Network:
    """One bridge and one network namespace per node; partitions are blackhole routes inside the namespaces."""

    def __init__(self, size: int) -> None:
        pid, number = os.getpid(), next(_networks)
        self.tag = f"{pid:x}-{number:x}"
        self.bridge = f"hr{self.tag}b"
        self.namespaces = [f"{_NS_PREFIX}{pid}-{number}-node{i}" for i in range(size)]
        self.subnet = self._free_subnet(pid * 16 + number)
        self.ips = [f"{self.subnet}.{i + 2}" for i in range(size)]
        self.cut: list[tuple[str, str]] = []  # (namespace, blackholed ip)

    @staticmethod
    def _free_subnet(seed: int) -> str:
        routes = _ip("route", "show", check=False).stdout
        for attempt in range(250):
            subnet = f"10.77.{(seed + attempt) % 250 + 1}"
            if f"{subnet}.0/24" not in routes:
                return subnet
        raise RuntimeError("no free 10.77.X.0/24 subnet for the test network")

    def create(self) -> Network:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, (namespace, address) in enumerate(zip(self.namespaces, self.ips, strict=True)):
                veth = f"hr{self.tag}v{i}"
                _ip("netns", "add", namespace)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", namespace, "link", "set", "eth0", "up")
                _ip("-n", namespace, "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def isolate(self, index: int) -> None:
        """Cut node ``index`` off from every other node, both ways; the root namespace still reaches it."""
        for other in range(len(self.ips)):
            if other != index:
                self._blackhole(self.namespaces[index], self.ips[other])
                self._blackhole(self.namespaces[other], self.ips[index])

    def _blackhole(self, namespace: str, address: str) -> None:
        _ip("-n", namespace, "route", "add", "blackhole", f"{address}/32")
        self.cut.append((namespace, address))

    def heal(self) -> None:
        while self.cut:
            namespace, address = self.cut.pop()
            _ip("-n", namespace, "route", "del", "blackhole", f"{address}/32", check=False)

    def destroy(self) -> None:
        self.cut.clear()
        for i, namespace in enumerate(self.namespaces):
            for pid in _ip("netns", "pids", namespace, check=False).stdout.split():  # normally none are left
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            # Deleting one end deletes the pair at once; a deleted namespace may free its end only much later.
            _ip("link", "del", f"hr{self.tag}v{i}", check=False)
            _ip("netns", "del", namespace, check=False)
        _ip("link", "del", self.bridge, check=False)


class JepsenNode(Node):
    """A node that may live in a network namespace, at fixed ports on its namespace's own address."""

    def __init__(self, name: str, data_dir: Path, log_dir: Path, namespace: str | None = None,
                 ip: str | None = None) -> None:
        super().__init__(name, data_dir, log_dir)
        self.namespace = namespace
        if ip is not None:
            self.http_addr, self.raft_addr = f"{ip}:11000", f"{ip}:12000"
        self.paused_worker: int | None = None

    def run(self, args: list[str], env: dict[str, str] | None = None) -> Node:
        if self.namespace is not None:
            args = ["ip", "netns", "exec", self.namespace, *args]  # ip execs the command: the pid is hraftd's
        return super().run(args, env)

    def boot(self, join: Node | None = None) -> JepsenNode:
        extra = ["-timeout", NODE_TIMEOUT]
        if self.namespace is not None and "-raft-insecure" in _hraftd_help():
            extra.append("-raft-insecure")  # a private test network: no cluster secret
        self.start(join, *extra)
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def quick_status(self) -> dict[str, Any] | None:
        try:
            return requests.get(f"{self.url}/status", timeout=1).json()
        except (requests.RequestException, ValueError):
            return None

    def worker_pid(self) -> int:
        """The gunicorn worker (the master's child), which holds the Raft node."""
        assert self.process is not None
        master = self.process.pid
        children: list[int] = []
        for path in Path(f"/proc/{master}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                children += [int(pid) for pid in path.read_text().split()]
        if not children:
            children = [pid for pid in self.processes() if pid != master]
        assert children, f"{self.name}: no worker process under master {master}"
        return children[0]

    def hard_kill(self) -> None:
        """kill -9 of the whole node, master and worker."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.paused_worker = None

    def pause(self) -> None:
        self.paused_worker = self.worker_pid()
        os.kill(self.paused_worker, signal.SIGSTOP)

    def resume(self) -> None:
        if self.paused_worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.paused_worker, signal.SIGCONT)
            self.paused_worker = None

    def cleanup(self) -> None:
        self.resume()
        super().cleanup()


class JepsenCluster:
    """Three (or more) nodes with ``-timeout 1``, in namespaces when ``network`` is given, always cleaned up."""

    def __init__(self, tmp_path: Path, size: int = 3, network: Network | None = None) -> None:
        self.network = network
        self.nodes = [
            JepsenNode(f"node{i}", tmp_path / f"node{i}", tmp_path,
                       network.namespaces[i] if network else None, network.ips[i] if network else None)
            for i in range(size)
        ]

    def start(self) -> JepsenCluster:
        first = self.nodes[0].boot()
        first.wait_ready()
        for node in self.nodes[1:]:
            node.boot(join=first)
        for node in self.nodes[1:]:
            node.wait_ready()
        wait_for(lambda: all(len(n.status()["members"]) == len(self.nodes) for n in self.nodes), READY_TIMEOUT,
                 "every node to see every member")
        return self

    def leader(self, among: list[JepsenNode] | None = None, timeout: float = READY_TIMEOUT,
               exclude: JepsenNode | None = None) -> JepsenNode:
        """The leader that a majority of ``among`` (default: all nodes) agrees on."""
        candidates = among or self.nodes

        def agreed() -> JepsenNode | None:
            votes = Counter()
            for node in candidates:
                status = node.quick_status() if node.running() and node.paused_worker is None else None
                if status and status.get("leader"):
                    votes[status["leader"]["id"]] += 1
            for name, count in votes.most_common(1):
                if count > len(self.nodes) // 2 and (exclude is None or name != exclude.name):
                    return next((n for n in self.nodes if n.name == name), None)
            return None

        return wait_for(agreed, timeout, "a majority to agree on a leader", interval=0.1)

    def wait_healthy(self, timeout: float = READY_TIMEOUT) -> None:
        """Every node runs and is ready, and a majority agrees on a leader."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            wait_for(lambda n=node: n.alive() and (n.quick_status() or {}).get("ready"),
                     max(deadline - time.monotonic(), 1), f"{node.name} to be ready")
        self.leader(timeout=max(deadline - time.monotonic(), 1))

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


# ----- the history -----


class Recorder:
    """The history of one run, appended to by every client thread."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._lock = threading.Lock()

    def add(self, op: Op) -> Op:
        with self._lock:
            op.id = len(self.ops)
            self.ops.append(op)
        return op


_values = itertools.count(1)


def _not_sent(error: requests.RequestException) -> bool:
    """True when the request certainly never reached a node (refused or no connection made)."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    text = repr(error)
    return isinstance(error, requests.ConnectionError) and ("NewConnectionError" in text
                                                            or "Connection refused" in text)


def do_write(session: requests.Session, node: JepsenNode, key: str, value: Any) -> tuple[str, str | None]:
    try:
        response = session.post(f"{node.url}/key", json={key: value}, timeout=CLIENT_TIMEOUT)
    except requests.RequestException as error:
        return (FAIL if _not_sent(error) else UNKNOWN), None
    answered_by = response.headers.get("X-Hraftd-Node")
    if response.status_code == 200:
        return OK, answered_by
    return (FAIL if response.status_code == 503 else UNKNOWN), answered_by


def do_delete(session: requests.Session, node: JepsenNode, key: str) -> tuple[str, bool | None, str | None]:
    try:
        response = session.delete(f"{node.url}/key/{key}", timeout=CLIENT_TIMEOUT)
    except requests.RequestException as error:
        return (FAIL if _not_sent(error) else UNKNOWN), None, None
    answered_by = response.headers.get("X-Hraftd-Node")
    if response.status_code == 200:
        return OK, bool(response.json()["deleted"]), answered_by
    return (FAIL if response.status_code == 503 else UNKNOWN), None, answered_by


def do_read(session: requests.Session, node: JepsenNode, key: str, level: str) -> tuple[str, Any, str | None]:
    try:
        response = session.get(f"{node.url}/key/{key}", params={"level": level}, timeout=CLIENT_TIMEOUT)
    except requests.RequestException:
        return FAIL, None, None
    answered_by = response.headers.get("X-Hraftd-Node")
    if response.status_code == 200:
        return OK, response.json()[key], answered_by
    if response.status_code == 404 and response.json().get("code") == "key_not_found":
        return OK, ABSENT, answered_by
    return FAIL, None, answered_by


def perform(recorder: Recorder, session: requests.Session, process: Any, node: JepsenNode, key: str, kind: str,
            level: str = "linearizable", value: Any = None) -> Op:
    """Run one operation and record it with its invocation and completion times."""
    invoke = time.monotonic()
    existed = None
    if kind == WRITE:
        value = next(_values) if value is None else value
        outcome, answered_by = do_write(session, node, key, value)
    elif kind == DELETE:
        outcome, existed, answered_by = do_delete(session, node, key)
    else:
        outcome, value, answered_by = do_read(session, node, key, level)
    complete = time.monotonic()
    return recorder.add(Op(process, key, kind, value, invoke, complete, outcome, existed=existed,
                           node=answered_by or node.name))


class Clients:
    """``count`` threads, each doing random reads, writes and deletes of ``keys`` on random nodes."""

    def __init__(self, cluster: JepsenCluster, recorder: Recorder, keys: list[str], count: int = 6,
                 level: str = "linearizable", seed: int | None = None) -> None:
        self.cluster, self.recorder, self.keys, self.level = cluster, recorder, keys, level
        self.stop = threading.Event()
        self.rng = random.Random(seed)
        self.threads = [threading.Thread(target=self._loop, args=(i, random.Random(self.rng.random())),
                                         name=f"jepsen-client-{i}", daemon=True) for i in range(count)]

    def start(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def _loop(self, process: int, rng: random.Random) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                node = rng.choice(self.cluster.nodes)
                key = rng.choice(self.keys)
                roll = rng.random()
                kind = READ if roll < 0.5 else WRITE if roll < 0.9 else DELETE
                perform(self.recorder, session, process, node, key, kind, self.level)
                if not node.running():
                    self.stop.wait(0.05)  # refused at once: do not spin on a dead node

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT[0] + CLIENT_TIMEOUT[1] + 5)
            assert not thread.is_alive(), f"{thread.name} did not stop"


# ----- the nemesis -----


@dataclass
class Fault:
    name: str
    target: str
    start: float
    end: float = 0.0
    note: str = ""


class Nemesis:
    """Injects faults from ``faults`` one at a time, each for ``hold`` seconds after ``quiet`` seconds of calm."""

    def __init__(self, cluster: JepsenCluster, faults: list[str], *, quiet: tuple[float, float] = (1.5, 1.5),
                 hold: tuple[float, float] = (3.0, 3.0), seed: int | None = None) -> None:
        unknown = set(faults) - set(FAULTS) - set(EXTRA_FAULTS)
        assert not unknown, f"unknown faults {unknown}"
        if "partition-leader" in faults:
            assert cluster.network is not None, "partitions need a Network"
        self.cluster, self.faults, self.quiet, self.hold = cluster, faults, quiet, hold
        self.rng = random.Random(seed)
        self.log: list[Fault] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.origin = time.monotonic()
        self.thread = threading.Thread(target=self._loop, name="jepsen-nemesis", daemon=True)

    def start(self) -> Nemesis:
        self.origin = time.monotonic()
        self.thread.start()
        return self

    def _loop(self) -> None:
        try:
            while not self.stop.wait(self.rng.uniform(*self.quiet)):
                self.inject(self.rng.choice(self.faults), self.rng.uniform(*self.hold))
        except Exception as error:  # reported by finish(); the test fails there
            self.errors.append(f"{type(error).__name__}: {error}")

    def inject(self, name: str, hold: float) -> Fault:
        cluster = self.cluster
        leader = cluster.leader(timeout=15)
        target = leader if name != "kill-follower" else self.rng.choice([n for n in cluster.nodes if n is not leader])
        fault = Fault(name, target.name, time.monotonic() - self.origin)
        self.log.append(fault)
        try:
            if name == "kill-all":
                for node in cluster.nodes:
                    node.hard_kill()
                self.stop.wait(hold)
            elif name.startswith("kill"):
                target.hard_kill()
                self.stop.wait(hold)
            elif name == "pause-leader":
                target.pause()
                self.stop.wait(hold)
            else:
                assert cluster.network is not None
                cluster.network.isolate(cluster.nodes.index(target))
                others = [n for n in cluster.nodes if n is not target]
                # The majority side must elect a leader of its own: proof that the cut is real.
                new_leader = cluster.leader(among=others, timeout=max(hold, 10), exclude=target)
                held = time.monotonic() - self.origin - fault.start
                fault.note = f"majority elected {new_leader.name} after {held:.1f}s"
                self.stop.wait(max(hold - held, 0))
        finally:
            self.heal()
            fault.end = time.monotonic() - self.origin
        return fault

    def heal(self) -> None:
        if self.cluster.network is not None:
            self.cluster.network.heal()
        for node in self.cluster.nodes:
            node.resume()
        for node in self.cluster.nodes:
            if not node.running():
                node.boot()
        for node in self.cluster.nodes:  # a restarted node must catch up before the next fault, or the quorum goes
            wait_for(lambda n=node: n.alive() and (n.quick_status() or {}).get("ready"), READY_TIMEOUT,
                     f"{node.name} to be ready after the fault")

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(READY_TIMEOUT + 20)
        assert not self.thread.is_alive(), "the nemesis did not stop"
        self.heal()


# ----- a run -----


@dataclass
class Report:
    history: list[Op]
    faults: list[Fault]
    result: CheckResult
    seconds: float
    converged: dict[str, Any] = field(default_factory=dict)
    nemesis_errors: list[str] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter((op.kind, op.outcome) for op in self.history)

    def summary(self) -> str:
        counts = self.counts()
        by_outcome = Counter(op.outcome for op in self.history)
        kinds = ", ".join(f"{kind} {counts[kind, OK]}/{counts[kind, FAIL]}/{counts[kind, UNKNOWN]}"
                          for kind in (READ, WRITE, DELETE))
        faults = Counter(fault.name for fault in self.faults)
        lines = [f"{len(self.history)} ops in {self.seconds:.1f}s: ok {by_outcome[OK]}, fail {by_outcome[FAIL]}, "
                 f"unknown {by_outcome[UNKNOWN]} (ok/fail/unknown: {kinds})",
                 f"faults: {dict(faults) or 'none'}"]
        lines += [f"  {f.start:6.1f}-{f.end:6.1f}s {f.name} {f.target} {f.note}".rstrip() for f in self.faults]
        lines.append(f"checker: {self.result.explain()}")
        return "\n".join(lines)


def final_reads(cluster: JepsenCluster, recorder: Recorder, keys: list[str], timeout: float = READY_TIMEOUT) -> None:
    """A linearizable read of every key on every node, retried until it answers; recorded in the history."""
    with requests.Session() as session:
        for node in cluster.nodes:
            for key in keys:
                wait_for(lambda n=node, k=key: perform(recorder, session, "final", n, k, READ).outcome == OK,
                         timeout, f"a linearizable read of {key} on {node.name}", interval=0.2)


def converge(cluster: JepsenCluster, keys: list[str], timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    """Wait until every node's local (stale) copy of every key is the same; returns those values."""

    def same_everywhere() -> dict[str, Any] | None:
        with requests.Session() as session:
            seen = {key: {do_read(session, node, key, "stale")[1] for node in cluster.nodes} for key in keys}
        if all(len(values) == 1 and None not in values for values in seen.values()):
            return {key: values.pop() for key, values in seen.items()}
        return None

    return wait_for(same_everywhere, timeout, "every node to hold the same value of every key", interval=0.2)


def run(cluster: JepsenCluster, *, seconds: float, faults: list[str], keys: list[str] | None = None,
        level: str = "linearizable", clients: int = 6, quiet: tuple[float, float] = (1.5, 1.5),
        hold: tuple[float, float] = (3.0, 3.0), seed: int | None = None, recorder: Recorder | None = None,
        check_seconds: float = 60.0) -> Report:
    """Load the cluster for ``seconds`` while injecting ``faults``, heal, then check the history."""
    keys = keys or ["k0", "k1", "k2"]
    recorder = recorder or Recorder()
    seed = random.randrange(1 << 30) if seed is None else seed
    started = time.monotonic()
    load = Clients(cluster, recorder, keys, clients, level, seed).start()
    nemesis = Nemesis(cluster, faults, quiet=quiet, hold=hold, seed=seed).start() if faults else None
    try:
        time.sleep(seconds)  # the length of the run, not a synchronization
    finally:
        if nemesis is not None:
            nemesis.stop.set()
        load.finish()
        if nemesis is not None:
            nemesis.finish()
    elapsed = time.monotonic() - started
    cluster.wait_healthy()
    final_reads(cluster, recorder, keys)
    converged = converge(cluster, keys)
    result = check(recorder.ops, max_seconds=check_seconds)
    return Report(recorder.ops, nemesis.log if nemesis else [], result, elapsed, converged,
                  nemesis.errors if nemesis else [])
