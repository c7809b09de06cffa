"""The coordination API beside plain writes and reads, measured in one run on one 3-node cluster.

    python benchmarks/coordination.py [--rounds 3] [--duration 5] [--clients 32] [--out FILE]

A frozen copy of the work tree's ``hraftd`` runs as three ``python -m hraftd`` nodes on 127.0.0.1 (fsync on).
In each round, one wrk run per kind, all against the leader, in this order:

- ``write``: ``POST /key`` of one unique key (as benchmarks/run.py);
- ``cas``: ``POST /key?if_revision=0`` of one unique key (compare-and-set: create if absent);
- ``txn``: ``POST /txn`` that creates one unique key if its version is 0 (one compare, one set);
- ``read``: linearizable ``GET /key/r<random>`` over 1,000 keys (as benchmarks/run.py);
- ``range10`` and ``range100``: linearizable ``GET /keys?prefix=p/&limit=10`` (or 100) from a random key of
  10,000 under ``p/``.

The kinds are interleaved round by round, so that a noisy spell of the machine touches all of them alike;
the table gives the median over the rounds of each kind's throughput (2xx answers per second) and latency.
Every process it starts is killed when it ends; the data lives in a temp dir that is removed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster import Cluster, Registry, http_request, wait_for
from generator import run_wrk, wrk_version
from httplayer import freeze

ROOT = Path(__file__).resolve().parent.parent
VALUE = "0123456789abcdef"
READ_KEYS = 1000
RANGE_KEYS = 10_000
KINDS: dict[str, tuple[str, dict[str, str]]] = {
    "write": ("write.lua", {"WRK_PREFIX": "w"}),
    "cas": ("write.lua", {"WRK_PREFIX": "c", "WRK_PATH": "/key?if_revision=0"}),
    "txn": ("txn.lua", {"WRK_PREFIX": "t"}),
    "read": ("read.lua", {"WRK_PREFIX": "r", "WRK_KEYS": str(READ_KEYS), "WRK_LEVEL": "linearizable"}),
    "range10": ("range.lua", {"WRK_PREFIX": "p/", "WRK_KEYS": str(RANGE_KEYS), "WRK_LIMIT": "10"}),
    "range100": ("range.lua", {"WRK_PREFIX": "p/", "WRK_KEYS": str(RANGE_KEYS), "WRK_LIMIT": "100"}),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def preload(cluster: Cluster) -> None:
    leader = cluster.leader()
    batches = [{f"r{i}": VALUE for i in range(1, READ_KEYS + 1)}]
    batches += [{f"p/{i:05d}": VALUE for i in range(start, start + 1000)} for start in range(0, RANGE_KEYS, 1000)]
    for batch in batches:
        status, body = http_request(leader.http_addr, "POST", "/key", batch, timeout=30)
        if status != 200:
            raise RuntimeError(f"preloading failed: {status} {body}")
    for node in cluster.nodes:
        wait_for(lambda node=node: http_request(node.http_addr, "GET", "/keys?prefix=p/&count_only=true"
                                                "&level=stale")[1]["count"] == RANGE_KEYS, 30,
                 f"{node.name} to have the keys")


def measure(cluster: Cluster, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    leader = cluster.leader()
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for kind, (script, env) in KINDS.items():  # warm-up, not kept
        run_wrk(f"http://{leader.http_addr}", script, 8, 1, {**env, "WRK_PREFIX": f"warm-{env['WRK_PREFIX']}"}
                if kind not in ("read", "range10", "range100") else env)
    for round_number in range(1, args.rounds + 1):
        for kind, (script, env) in KINDS.items():
            if kind in ("write", "cas", "txn"):
                env = {**env, "WRK_PREFIX": f"{env['WRK_PREFIX']}{round_number}"}  # unique keys every run
            result = run_wrk(f"http://{leader.http_addr}", script, args.clients, args.duration, env, cluster.nodes)
            errors = sum(count for status, count in result["statuses"].items() if status >= 300)
            result.update(round=round_number, errors=errors + result["socket_errors"])
            runs[kind].append(result)
            log(f"round {round_number} {kind:8}: {result['throughput']:8.0f}/s p50 {result['p50_ms']:.2f} ms "
                f"p99 {result['p99_ms']:.2f} ms, errors {result['errors']}, other CPU {result['other_cpu_cores']:.2f}")
    return runs


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    table = {}
    for kind, results in runs.items():
        table[kind] = {
            "throughput_median": round(statistics.median(r["throughput"] for r in results)),
            "throughputs": [round(r["throughput"]) for r in results],
            "p50_ms_median": round(statistics.median(r["p50_ms"] for r in results), 2),
            "p99_ms_median": round(statistics.median(r["p99_ms"] for r in results), 2),
            "errors": sum(r["errors"] for r in results),
            "other_cpu_cores_max": max(r["other_cpu_cores"] for r in results),
        }
    write, read = table["write"]["throughput_median"], table["read"]["throughput_median"]
    for kind, row in table.items():
        base = write if kind in ("write", "cas", "txn") else read
        row["over_plain"] = round(row["throughput_median"] / base, 3) if base else None
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "coordination.json")
    args = parser.parse_args()
    registry = Registry()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = Path(tempfile.mkdtemp(prefix="hraftd-coordination-"))
    try:
        source, description = freeze(None, root / "src")
        cluster = Cluster(registry, root / "cluster", [], source).start()
        log(f"cluster up ({description}); leader {cluster.leader().name}")
        preload(cluster)
        runs = measure(cluster, args)
    finally:
        registry.kill_all()
        shutil.rmtree(root, ignore_errors=True)
    table = summary(runs)
    result = {"source": description, "generator": f"{wrk_version()}, 1 thread", "clients": args.clients,
              "duration_s": args.duration, "rounds": args.rounds, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "summary": table, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{args.clients} clients against the leader, medians of {args.rounds} interleaved rounds of "
          f"{args.duration:g} s ({description})")
    print(f"{'kind':10}{'per s':>8}{'p50 ms':>9}{'p99 ms':>9}{'vs plain':>10}{'errors':>8}")
    for kind, row in table.items():
        print(f"{kind:10}{row['throughput_median']:>8,}{row['p50_ms_median']:>9.2f}{row['p99_ms_median']:>9.2f}"
              f"{row['over_plain']:>10.2f}{row['errors']:>8}")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
