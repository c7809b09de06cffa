"""One ReplicatedKV node in its own process, for the in-process ceiling; driven by run.py over stdin/stdout.

Three of these run as three processes (one Raft node each, as in the HTTP cluster, so each node has its own
GIL). The node that is measured runs the load itself in ``clients`` threads that call ``kv.update`` or
``kv.read`` in a loop: no HTTP, no serialization beyond PySyncObj's own. Commands are JSON lines on stdin;
every command is answered by one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import threading
import time
from typing import Any

from hraftd import ReplicatedKV

VALUE = "0123456789abcdef"  # 16 bytes, as in the HTTP benchmarks


def percentile(sorted_values: list[float], share: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(int(share * len(sorted_values)), len(sorted_values) - 1)]


def run_load(kv: ReplicatedKV, clients: int, duration: float, operation: str, prefix: str,
             level: str = "linearizable", keys: int = 1000) -> dict[str, Any]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_line = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        mine, counter = latencies[index], 0
        perf = time.perf_counter
        start_line.wait()
        if operation == "write":
            while perf() < stop_at[0]:
                counter += 1
                began = perf()
                try:
                    kv.update({f"{prefix}-{index}-{counter}": VALUE})
                except Exception:
                    errors[index] += 1
                mine.append(perf() - began)
        else:
            names = [f"{prefix}{i}" for i in range(1, keys + 1)]
            while perf() < stop_at[0]:
                counter += 1
                began = perf()
                try:
                    kv.read(names[(counter * 7919 + index) % keys], level=level)
                except Exception:
                    errors[index] += 1
                mine.append(perf() - began)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    cpu0, began = time.process_time(), time.perf_counter()
    stop_at[0] = began + duration
    start_line.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu0
    merged = sorted(value for per_client in latencies for value in per_client)
    return {
        "clients": clients,
        "requests": len(merged),
        "seconds": round(seconds, 3),
        "throughput": round(len(merged) / seconds, 1),
        "p50_ms": round(percentile(merged, 0.50) * 1000, 3),
        "p90_ms": round(percentile(merged, 0.90) * 1000, 3),
        "p99_ms": round(percentile(merged, 0.99) * 1000, 3),
        "mean_ms": round(sum(merged) / max(len(merged), 1) * 1000, 3),
        "max_ms": round((merged[-1] if merged else 0) * 1000, 3),
        "errors": sum(errors),
        "process_cpu_cores": round(cpu / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--addr", required=True)
    parser.add_argument("--peers", default="")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--secret", help="the cluster's Raft secret (the same for every node)")
    parser.add_argument("--options", default="{}", help="JSON object of extra ReplicatedKV keyword arguments")
    parser.add_argument("--no-fsync", action="store_true",
                        help="fsync=False, as the HTTP nodes' -no-fsync, if this ReplicatedKV has that option")
    args = parser.parse_args()
    peers = [peer for peer in args.peers.split(",") if peer]
    options = json.loads(args.options)
    if args.no_fsync and "fsync" in inspect.signature(ReplicatedKV).parameters:
        options.setdefault("fsync", False)
    if args.secret:
        options.setdefault("secret", args.secret)
    kv = ReplicatedKV(args.addr, peers, data_dir=args.data_dir, **options)

    def reply(payload: Any) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    reply({"started": args.addr, "options": options, "module": sys.modules["hraftd"].__file__})
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command.pop("op")
            try:
                if op == "wait_ready":
                    kv.wait_ready(command.get("timeout", 30))
                    reply({"ready": True})
                elif op == "status":
                    reply({"role": kv.status()["role"]})
                elif op == "preload":
                    n, prefix = command["keys"], command["prefix"]
                    kv.update({f"{prefix}{i}": VALUE for i in range(1, n + 1)})
                    reply({"preloaded": n})
                elif op == "run":
                    reply(run_load(kv, **command))
                elif op == "quit":
                    reply({"bye": True})
                    break
                else:
                    reply({"error": f"unknown op {op}"})
            except Exception as error:  # report to the driver instead of dying silently
                reply({"error": f"{type(error).__name__}: {error}"})
    finally:
        kv.close()


if __name__ == "__main__":
    main()
