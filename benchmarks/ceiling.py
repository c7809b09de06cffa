"""The ceiling of the HTTP request path: what one gunicorn worker answers with nothing behind it.

    python benchmarks/ceiling.py [--rounds 3] [--duration 5] [--clients 32]

Four servers, each one gunicorn master + one worker on 127.0.0.1, are driven in turn by the same wrk GET
load (benchmarks/lua/read.lua, stale level), round after round, so that machine noise hits all of them alike:

- ``gthread``: a plain WSGI function answering a constant JSON body, on gunicorn's gthread worker (16 threads);
- ``uvicorn``: a plain ASGI function answering the same, on uvicorn's gunicorn worker (uvloop, httptools);
- ``hraftd-worker``: an app answering the same, on hraftd's own worker (``hraftd.worker.NodeWorker``: uvloop,
  httptools), so the worker's own cost per request;
- ``hraftd``: a one-node hraftd answering stale reads of 1,000 stored keys (the real request path).

It prints requests per second (median of the rounds), the worker's CPU (user and system cores), the CPU time
per request, and each server's throughput as a share of ``gthread``'s. No Raft work is involved in any of
them. This module is also the app module of the first three servers; ``uvicorn`` needs the ``uvicorn-worker``
package, which hraftd does not (pip install uvicorn-worker).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster import Node, Registry, cpu_seconds, free_port, http_request, process_group, system_seconds, wait_for
from generator import run_wrk, wrk_version

BODY = b'{"r1":"0123456789abcdef"}\n'
ROOT = Path(__file__).resolve().parent.parent


def plain_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
    return [BODY]


async def plain_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]})
    await send({"type": "http.response.body", "body": BODY})


class ConstantApp:
    """What hraftd's worker serves (``respond``, ``refuse``), answering the constant body: the worker's own cost."""

    io_timeout = 10.0

    def __init__(self) -> None:
        from hraftd.request import Response
        from hraftd.settings import Limits

        self.limits = Limits()
        self._response = Response

    async def respond(self, request: Any) -> Any:
        return self._response(200, BODY)

    def refuse(self, status: int, code: str, message: str, method: str = "OTHER", headers: Any = ()) -> Any:
        return self._response(status, b"{}")

    def close(self) -> None:
        pass

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:  # gunicorn loads callables
        return plain_wsgi(environ, start_response)


def constant_app() -> ConstantApp:
    return ConstantApp()


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
    results: dict[str, list[dict[str, Any]]] = {"gthread": [], "uvicorn": [], "hraftd-worker": [], "hraftd": []}
    try:
        with tempfile.TemporaryDirectory(prefix="hraftd-ceiling-") as temp:
            servers = {}
            for name, worker, app in (("gthread", ["-k", "gthread", "--threads", "16"], "ceiling:plain_wsgi"),
                                      ("uvicorn", ["-k", "uvicorn_worker.UvicornWorker"], "ceiling:plain_asgi"),
                                      ("hraftd-worker", ["-k", "hraftd.worker.NodeWorker"],
                                       "ceiling:constant_app()")):
                addr = f"127.0.0.1:{free_port()}"
                process = registry.popen([sys.executable, "-m", "gunicorn", "-w", "1", *worker, "-b", addr, app],
                                         Path(temp) / f"{name}.log", cwd=str(here),
                                         env={**os.environ, "PYTHONPATH": f"{here}:{ROOT}"})
                servers[name] = (addr, process.pid)
            node = Node(registry, "hraftd", Path(temp) / "data", Path(temp), [], ROOT).start()
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
                    print(f"round {round_} {name:14s} {run['throughput']:8.0f} req/s  server CPU {cores:.2f} cores "
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
    print("server          req/s   CPU cores (system)   CPU us/request   share of gthread")
    for name, row in summary.items():
        share = row["throughput"] / summary["gthread"]["throughput"]
        print(f"{name:14s} {row['throughput']:7.0f}   {row['cpu_cores']:.2f} ({row['system_cores']:.2f})"
              f"          {row['cpu_us_per_request']:7.1f}          {share:.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "clients": args.clients,
                                    "rounds": args.rounds, "duration": args.duration, "servers": summary},
                                   indent=1) + "\n")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
