"""The ceiling of the HTTP request path: what one gunicorn gthread worker answers with nothing behind it.

    python benchmarks/ceiling.py [--rounds 3] [--duration 5] [--clients 32]

Three servers, each one gunicorn master + one gthread worker with 16 threads on 127.0.0.1, are driven in
turn by the same wrk GET load (benchmarks/lua/read.lua, stale level), round after round, so that machine
noise hits all of them alike:

- ``wsgi``: a plain WSGI function answering a constant JSON body (gunicorn's own cost per request);
- ``flask``: a minimal Flask app, one route and ``jsonify`` (what Flask adds);
- ``hraftd``: a one-node hraftd answering stale reads of 1,000 stored keys (the real request path).

It prints requests per second (median of the rounds), the worker's CPU (user and system cores), the CPU time
per request, and each server's throughput as a share of ``wsgi``'s. No Raft work is involved in any of them:
if ``wsgi`` stays under a target, no change to hraftd's own code can reach that target with this worker.
This module is also the gunicorn app module of the first two servers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster import Node, Registry, cpu_seconds, free_port, http_request, process_group, system_seconds, wait_for
from flask import Flask, jsonify
from generator import run_wrk, wrk_version

BODY = b'{"r1":"0123456789abcdef"}\n'


def plain_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
    return [BODY]


minimal_flask = Flask("minimal")


@minimal_flask.get("/key/<path:key>")
def read_key(key: str) -> Any:
    return jsonify({key: "0123456789abcdef"})


class Server:
    """A server's processes (master and worker), as generator.Accounting counts their CPU."""

    def __init__(self, name: str, pgid: int) -> None:
        self.name, self.pgid = name, pgid

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in process_group(self.pgid))

    def system_seconds(self) -> float:
        return sum(system_seconds(pid) for pid in process_group(self.pgid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ceiling.json")
    args = parser.parse_args()

    registry = Registry()
    here = Path(__file__).resolve().parent
    results: dict[str, list[dict[str, Any]]] = {"wsgi": [], "flask": [], "hraftd": []}
    try:
        with tempfile.TemporaryDirectory(prefix="hraftd-ceiling-") as temp:
            servers = {}
            for name, app in (("wsgi", "ceiling:plain_wsgi"), ("flask", "ceiling:minimal_flask")):
                addr = f"127.0.0.1:{free_port()}"
                process = registry.popen([sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread",
                                          "--threads", "16", "-b", addr, app], Path(temp) / f"{name}.log",
                                         cwd=str(here))
                servers[name] = (addr, process.pid)
            node = Node(registry, "hraftd", Path(temp) / "data", Path(temp), []).start()
            node.wait_ready()
            servers["hraftd"] = (node.http_addr, node.pid)
            status, _ = http_request(node.http_addr, "POST", "/key",
                                     {f"r{i}": "0123456789abcdef" for i in range(1, 1001)})
            assert status == 200, status
            for addr, _pid in servers.values():
                wait_for(lambda a=addr: http_request(a, "GET", "/key/r1?level=stale")[0] == 200, 30, addr)

            for round_ in range(1, args.rounds + 1):
                for name, (addr, pgid) in servers.items():
                    worker = Server(name, pgid)
                    run = run_wrk(f"http://{addr}", "read.lua", args.clients, args.duration,
                                  {"WRK_LEVEL": "stale", "WRK_KEYS": "1000", "WRK_PREFIX": "r"}, [worker])
                    cores = run["node_cpu_cores"][name]
                    system = run["node_system_cpu_cores"][name]
                    results[name].append({"throughput": run["throughput"], "cpu_cores": cores,
                                          "system_cores": system, "other_cpu_cores": run["other_cpu_cores"],
                                          "errors": run["socket_errors"] + run["status_errors"]})
                    print(f"round {round_} {name:7s} {run['throughput']:8.0f} req/s  server CPU {cores:.2f} cores "
                          f"({system:.2f} system)  other {run['other_cpu_cores']:.2f}", flush=True)
    finally:
        registry.kill_all()

    summary = {}
    for name, runs in results.items():
        throughput = statistics.median(r["throughput"] for r in runs)
        cores = statistics.median(r["cpu_cores"] for r in runs)
        summary[name] = {"throughput": throughput, "cpu_cores": cores,
                         "system_cores": statistics.median(r["system_cores"] for r in runs),
                         "cpu_us_per_request": round(1e6 * cores / throughput, 1), "runs": runs}
    print(f"\n{args.clients} clients, {args.rounds} rounds of {args.duration:g} s, medians; {wrk_version()}")
    print("server   req/s   CPU cores (system)   CPU us/request   share of wsgi")
    for name, row in summary.items():
        share = row["throughput"] / summary["wsgi"]["throughput"]
        print(f"{name:7s} {row['throughput']:7.0f}   {row['cpu_cores']:.2f} ({row['system_cores']:.2f})"
              f"          {row['cpu_us_per_request']:7.1f}          {share:.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "clients": args.clients,
                                    "rounds": args.rounds, "duration": args.duration, "servers": summary},
                                   indent=1) + "\n")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
