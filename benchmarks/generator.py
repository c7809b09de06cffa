"""The load generator: wrk (C, epoll, one thread) driven by the Lua scripts in benchmarks/lua/.

Each run reports the generator's own CPU time (from wait4's rusage of the wrk process), the CPU time of
every node process group over the same interval, and the machine's busy share, so a reader can see how much
of the 2 cores the generator took from the system it measures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cluster import Node, machine_cpu

LUA_DIR = Path(__file__).resolve().parent / "lua"
CORES = os.cpu_count() or 1
WRK_TIMEOUT = "10s"  # a request slower than this counts as a wrk timeout error


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: apt-get update && apt-get install -y wrk")
    return path


def wrk_version() -> str:
    result = subprocess.run([wrk_path(), "--version"], capture_output=True, text=True)
    return (result.stdout or result.stderr).splitlines()[0].strip()


class Accounting:
    """CPU used by each node (anything with ``name`` and ``cpu_seconds()``) and by the machine, start() to stop()."""

    def __init__(self, nodes: Sequence[Any]) -> None:
        self.nodes = list(nodes)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._nodes0 = {node.name: node.cpu_seconds() for node in self.nodes}
        self._system0 = {node.name: _system_seconds(node) for node in self.nodes}
        self._machine0 = machine_cpu()

    def stop(self, generator_cpu_seconds: float = 0.0) -> dict[str, Any]:
        """Per-node CPU in cores, the machine's busy share, and ``other_cpu_cores``: CPU used by processes that
        are neither the nodes nor the generator (other work on the machine, which distorts the results)."""
        wall = time.monotonic() - self._t0
        busy1, total1 = machine_cpu()
        busy0, total0 = self._machine0
        nodes = {node.name: (node.cpu_seconds() - self._nodes0[node.name]) / wall for node in self.nodes}
        busy = (busy1 - busy0) / max(total1 - total0, 1)
        ours = sum(nodes.values()) + generator_cpu_seconds / wall
        system = {node.name: (_system_seconds(node) - self._system0[node.name]) / wall for node in self.nodes}
        return {
            "node_cpu_cores": {name: round(cores, 3) for name, cores in nodes.items()},
            "node_system_cpu_cores": {name: round(cores, 3) for name, cores in system.items()},
            "machine_busy": round(busy, 3),
            "other_cpu_cores": round(max(busy * CORES - ours, 0.0), 3),
        }


def _system_seconds(node: Any) -> float:
    """Kernel-mode CPU seconds of a node, for nodes that can tell (0 otherwise)."""
    return node.system_seconds() if hasattr(node, "system_seconds") else 0.0


def run_wrk(url: str, script: str, clients: int, duration: float, env: dict[str, str],
            nodes: Sequence[Node] = (), stop_after: int = 0) -> dict[str, Any]:
    """One wrk run of ``duration`` seconds (or until ``stop_after`` responses); returns the measurements.

    Latencies come from wrk's histogram (per request, from sending it to the full response, errors included).
    ``throughput`` counts 2xx answers only; ``statuses`` counts every answer by status code.
    """
    args = [wrk_path(), "-t1", f"-c{clients}", f"-d{max(round(duration), 1)}s", "--timeout", WRK_TIMEOUT,
            "-s", str(LUA_DIR / script), url]
    environment = {**os.environ, "WRK_LUA_DIR": str(LUA_DIR), **env}
    if stop_after:
        environment["WRK_STOP_AFTER"] = str(stop_after)
    accounting = Accounting(nodes)
    accounting.start()
    started = time.monotonic()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment,
                               start_new_session=True)
    stopped_at = None
    lines = []
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").strip()
            lines.append(line)
            if line == "STOPPED" and stopped_at is None:
                stopped_at = time.monotonic()
                process.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        _, _, rusage = os.wait4(process.pid, 0)
    finally:
        if process.poll() is None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(process.pid, 0)
    ended = time.monotonic()
    generator_cpu = rusage.ru_utime + rusage.ru_stime
    usage = accounting.stop(generator_cpu)
    result_line = next((line for line in lines if line.startswith("WRKJSON ")), None)
    if result_line is None:
        raise RuntimeError("wrk printed no result:\n" + "\n".join(lines[-20:]))
    raw_result = json.loads(result_line[len("WRKJSON "):])
    wall = (stopped_at or ended) - started
    seconds = raw_result["duration_us"] / 1e6
    errors = sum(raw_result[name] for name in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    statuses = {int(code): count for code, count in raw_result["statuses"].items()}
    ok = sum(count for code, count in statuses.items() if 200 <= code < 300)
    return {
        "clients": clients,
        "requests": raw_result["requests"],
        "ok": ok,
        "statuses": statuses,
        "seconds": round(seconds, 3),
        "wall_seconds": round(wall, 3),
        "throughput": round(ok / seconds, 1),
        "all_responses_per_s": round(raw_result["requests"] / seconds, 1),
        "p50_ms": raw_result["p50_us"] / 1000,
        "p90_ms": raw_result["p90_us"] / 1000,
        "p99_ms": raw_result["p99_us"] / 1000,
        "p999_ms": raw_result["p999_us"] / 1000,
        "mean_ms": round(raw_result["mean_us"] / 1000, 3),
        "max_ms": raw_result["max_us"] / 1000,
        "status_errors": raw_result["status_errors"],
        "socket_errors": errors,
        "generator_cpu_seconds": round(generator_cpu, 3),
        "generator_cpu_cores": round(generator_cpu / max(ended - started, 1e-9), 4),
        **usage,
    }
