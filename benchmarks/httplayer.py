"""The HTTP layer of one node, before and after a change, measured side by side in one run.

    python benchmarks/httplayer.py [--before REV] [--after REV] [--rounds 3] [--duration 10] [--skip PART ...]

Two one-node clusters run at once: ``before`` (a commit, ``git archive REV hraftd``; by default where this
branch left main) and ``after`` (the work tree as it is now, or ``--after REV``), each one ``python -m hraftd``
on 127.0.0.1. In rounds, before then after:

- ``throughput``: wrk, 32 keep-alive clients: stale GET, linearizable GET, POST of unique keys;
- ``slow``: 256 connections that each send a request one byte every 2 s (reconnecting when the node closes
  them) for ``--slow-duration`` s, while wrk sends ordinary stale GETs on 8 connections: their latency;
- ``idle``: 2,000 keep-alive connections that made one request each and stay open: the node's memory before
  and after they opened (PSS of master and worker, and the worker's RSS);
- ``inprocess``: the after side's hot handlers driven without sockets (``NodeApp.respond`` called on an
  event loop, 32 concurrent requests, a one-node ReplicatedKV in the same process): the ceiling of the HTTP
  path, so that the gap to the HTTP figures is what the HTTP layer still costs.

Medians over the rounds, and after/before ratios, are printed and written as JSON (benchmarks/results/httplayer.json).
Every process it starts is killed when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cluster import Node, Registry, free_port, http_request, source_env, wait_for
from generator import run_wrk, wrk_version

ROOT = Path(__file__).resolve().parent.parent
VALUE = "0123456789abcdef"
SLOW_CONNECTIONS = 256
IDLE_CONNECTIONS = 2000


def freeze(rev: str | None, into: Path) -> tuple[Path, str]:
    into.mkdir(parents=True)
    if rev is None:
        shutil.copytree(ROOT / "hraftd", into / "hraftd", ignore=shutil.ignore_patterns("__pycache__"))
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return into, f"work tree at {head.stdout.strip()}"
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "hraftd"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into, f"git {commit}"


# ----- load -----

def throughput(node: Node, duration: float) -> dict[str, Any]:
    results = {}
    for name, script, env in (("stale_get", "read.lua", {"WRK_LEVEL": "stale"}),
                              ("linearizable_get", "read.lua", {"WRK_LEVEL": "linearizable"}),
                              ("post", "write.lua", {"WRK_PREFIX": f"w{time.monotonic_ns()}"})):
        run = run_wrk(f"http://{node.http_addr}", script, 32, duration,
                      {"WRK_KEYS": "1000", "WRK_PREFIX": env.get("WRK_PREFIX", "r"), **env}, [node])
        results[name] = {key: run[key] for key in ("throughput", "p50_ms", "p99_ms", "statuses", "socket_errors",
                                                   "node_cpu_cores", "other_cpu_cores")}
    return results


class SlowClients:
    """``count`` connections that each send a request one byte every ``interval`` s; reconnect when closed."""

    REQUEST = b"GET /status HTTP/1.1\r\nHost: slow\r\n" + b"X-Slow: " + b"s" * 100_000

    def __init__(self, addr: str, count: int, interval: float) -> None:
        host, port = addr.rsplit(":", 1)
        self.target = (host, int(port))
        self.count, self.interval = count, interval
        self.stop = threading.Event()
        self.reconnects = self.answers = self.failed_connects = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(self.target, timeout=2)
        except OSError:
            self.failed_connects += 1
            return None
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        sockets: list[list[Any]] = []  # [socket, bytes sent]
        for _ in range(self.count):
            sock = self._connect()
            sockets.append([sock, 0])
            if sock is not None:
                selector.register(sock, selectors.EVENT_READ, len(sockets) - 1)
        step = self.interval / self.count
        index = 0
        while not self.stop.is_set():
            for key, _ in selector.select(timeout=step):  # an answer (408, 503) or a close: start over
                slot = key.data
                with_data = b""
                with contextlib.suppress(OSError):
                    with_data = key.fileobj.recv(65536)
                self.answers += bool(with_data)
                selector.unregister(key.fileobj)
                key.fileobj.close()
                sockets[slot][0] = None
            sock, sent = sockets[index]
            if sock is None:
                sock = self._connect()
                self.reconnects += 1
                sockets[index] = [sock, 0]
                if sock is not None:
                    selector.register(sock, selectors.EVENT_READ, index)
            elif sent < len(self.REQUEST):
                try:
                    sock.send(self.REQUEST[sent:sent + 1])
                    sockets[index][1] += 1
                except OSError:
                    pass
            index = (index + 1) % self.count
        for sock, _ in sockets:
            if sock is not None:
                sock.close()


def slow_clients(node: Node, duration: float) -> dict[str, Any]:
    with SlowClients(node.http_addr, SLOW_CONNECTIONS, 2.0) as slow:
        time.sleep(3)  # every slow connection is open and has sent a byte
        run = run_wrk(f"http://{node.http_addr}", "read.lua", 8, duration,
                      {"WRK_LEVEL": "stale", "WRK_KEYS": "1000", "WRK_PREFIX": "r"}, [node])
    return {"ordinary": {key: run[key] for key in ("throughput", "p50_ms", "p99_ms", "max_ms", "statuses",
                                                   "socket_errors", "requests", "other_cpu_cores")},
            "slow_reconnects": slow.reconnects, "slow_answers": slow.answers,
            "slow_failed_connects": slow.failed_connects}


def idle_connections(node: Node) -> dict[str, Any]:
    host, port = node.http_addr.rsplit(":", 1)
    before = node.memory()
    sockets = []
    opened_at = time.monotonic()
    for _ in range(IDLE_CONNECTIONS):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: idle\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        sockets.append(sock)
    opened = time.monotonic() - opened_at
    time.sleep(1)
    after = node.memory()
    still_open = 0
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = {key.fileobj for key, _ in selector.select(timeout=0)}
    still_open = len(sockets) - len(closed)
    for sock in sockets:
        sock.close()
    return {"pss_before_mib": round(before["pss_mib"], 1), "pss_after_mib": round(after["pss_mib"], 1),
            "pss_cost_mib": round(after["pss_mib"] - before["pss_mib"], 1),
            "worker_rss_cost_mib": round((after["worker_rss_mib"] or 0) - (before["worker_rss_mib"] or 0), 1),
            "open_after_1s": still_open, "seconds_to_open": round(opened, 2)}


# ----- in-process: the hot handlers without sockets -----

def inprocess(duration: float, data_dir: str, port: int) -> dict[str, Any]:
    from hraftd.app import build_app
    from hraftd.request import Request
    from hraftd.store import ReplicatedKV

    store = ReplicatedKV(f"127.0.0.1:{port}", data_dir=data_dir)
    store.wait_ready(30)
    store.update({f"r{i}": VALUE for i in range(1, 1001)})
    app = build_app(store)
    results = {}

    async def load(make: Any) -> dict[str, Any]:
        done = [0]
        stop_at = time.perf_counter() + duration

        async def client(index: int) -> None:
            n = 0
            while time.perf_counter() < stop_at:
                n += 1
                response = await app.respond(make(index, n))
                assert response.status == 200, response.body
                done[0] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(32)))
        return {"throughput": round(done[0] / (time.perf_counter() - started), 1)}

    for name, make in (
        ("stale_get", lambda i, n: Request("GET", f"/key/r{(i * 31 + n) % 1000 + 1}", "level=stale")),
        ("linearizable_get", lambda i, n: Request("GET", f"/key/r{(i * 31 + n) % 1000 + 1}", "level=linearizable")),
        ("post", lambda i, n: Request("POST", "/key", "", [], f'{{"p-{i}-{n}":"{VALUE}"}}'.encode())),
    ):
        results[name] = asyncio.run(load(make), debug=False)
    store.close()
    app.close()
    return results


# ----- the run -----

def median_of(rows: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for row in rows:
        for part in path:
            row = row.get(part) if isinstance(row, dict) else None
        if isinstance(row, (int, float)):
            values.append(row)
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=None,
                        help="commit measured as before (default: where this branch left main, git merge-base)")
    parser.add_argument("--after", default=None, help="commit measured as after (default: the work tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument("--slow-duration", type=float, default=30.0)
    parser.add_argument("--skip", action="append", default=[], choices=["throughput", "slow", "idle", "inprocess"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "httplayer.json")
    parser.add_argument("--inprocess-child", nargs=2, metavar=("DATA_DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inprocess_child:
        print(json.dumps(inprocess(args.duration, args.inprocess_child[0], int(args.inprocess_child[1]))))
        return

    if args.before is None:
        args.before = subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True,
                                     check=True).stdout.strip()
    registry = Registry()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "generator": wrk_version(),
                               "rounds": args.rounds, "duration": args.duration, "sides": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="hraftd-http-") as temp:
            nodes = {}
            for side, rev in (("before", args.before), ("after", args.after)):
                source, description = freeze(rev, Path(temp) / side / "src")
                results["sides"][side] = {"source": description, "rounds": []}
                node = Node(registry, side, Path(temp) / side / "data", Path(temp) / side, [], source).start()
                nodes[side] = node.wait_ready()
                status, _ = http_request(node.http_addr, "POST", "/key", {f"r{i}": VALUE for i in range(1, 1001)})
                assert status == 200, status
            for round_ in range(1, args.rounds + 1):
                for side, node in nodes.items():
                    row: dict[str, Any] = {}
                    if "throughput" not in args.skip:
                        row["throughput"] = throughput(node, args.duration)
                    if "slow" not in args.skip:
                        row["slow"] = slow_clients(node, args.slow_duration)
                        wait_for(lambda n=node: http_request(n.http_addr, "GET", "/livez")[0] == 200, 60, "recovery")
                    if "idle" not in args.skip:
                        row["idle"] = idle_connections(node)
                    results["sides"][side]["rounds"].append(row)
                    print(f"round {round_} {side}: {json.dumps(row)}", flush=True)
            if "inprocess" not in args.skip:
                after_source = Path(temp) / "after" / "src"
                child = subprocess.run([sys.executable, __file__, "--inprocess-child", str(Path(temp) / "inproc"),
                                        str(free_port()), "--duration", str(args.duration)],
                                       capture_output=True, text=True, timeout=600, **source_env(after_source))
                results["inprocess"] = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 \
                    else {"error": child.stderr[-2000:]}
    finally:
        registry.kill_all()
    summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"JSON: {args.out}")


def summarise(results: dict[str, Any]) -> None:
    measures = [("stale GET/s, 32 clients", ("throughput", "stale_get", "throughput")),
                ("linearizable GET/s, 32 clients", ("throughput", "linearizable_get", "throughput")),
                ("POST/s, 32 clients", ("throughput", "post", "throughput")),
                ("p99 ms of 8 ordinary clients beside 256 slow ones", ("slow", "ordinary", "p99_ms")),
                ("ordinary GET/s beside 256 slow clients", ("slow", "ordinary", "throughput")),
                ("MiB of PSS for 2,000 idle keep-alive connections", ("idle", "pss_cost_mib")),
                ("idle connections still open after 1 s", ("idle", "open_after_1s"))]
    results["medians"] = {}
    print(f"\n{'':52s} {'before':>10s} {'after':>10s} {'after/before':>12s}")
    for label, path in measures:
        before = median_of(results["sides"]["before"]["rounds"], *path)
        after = median_of(results["sides"]["after"]["rounds"], *path)
        ratio = after / before if before and after is not None else None
        results["medians"][label] = {"before": before, "after": after, "ratio": ratio}
        print(f"{label:52s} {before if before is not None else '-':>10} {after if after is not None else '-':>10} "
              f"{f'{ratio:.2f}x' if ratio is not None else '-':>12s}")
    if "inprocess" in results:
        print(f"in-process (after, no sockets): {results['inprocess']}")


if __name__ == "__main__":
    main()
