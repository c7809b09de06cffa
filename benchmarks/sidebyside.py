"""Two versions of hraftd measured side by side in one run, interleaved: before, after, before, after, ...

    python benchmarks/sidebyside.py --before REV [--after REV] [--nodes 3] [--rounds 3] [--duration 5]

Each side is a cluster of ``--nodes`` ``python -m hraftd`` processes on 127.0.0.1 (fsync on), from
``git archive REV hraftd`` or, for ``after`` without ``--after``, from the work tree as it is now. Both
clusters stay up for the whole run; in each round every load runs against both sides, one right after the
other, so that a noisy spell of the machine touches both alike. The side that goes first alternates from
round to round (before-after, after-before, ...): measured with the same code on both sides, the second run of
a pair was up to 1.2x faster often enough to bias a fixed order. Loads (wrk, keep-alive connections):

- ``write32``, ``write1``: POST of unique keys to the leader, 32 clients and 1 client;
- ``linearizable_leader``, ``stale_leader``: GET of 1,000 keys at random on the leader, 32 clients;
- ``linearizable_follower``, ``stale_follower``: the same on a follower (3 nodes only).

The table gives each side's median over the rounds, and after/before for each round's pair. Every process it
starts is killed when it ends. Results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster import Cluster, Registry
from generator import run_wrk, wrk_version
from httplayer import freeze
from run import READ_KEYS, preload_read_keys, quiet_gate

ROOT = Path(__file__).resolve().parent.parent
READ = {"WRK_PREFIX": "r", "WRK_KEYS": str(READ_KEYS)}
LOADS: dict[str, tuple[str, str, int, dict[str, str]]] = {  # name -> (on, wrk script, clients, environment)
    "write32": ("leader", "write.lua", 32, {}),
    "write1": ("leader", "write.lua", 1, {}),
    "linearizable_leader": ("leader", "read.lua", 32, {**READ, "WRK_LEVEL": "linearizable"}),
    "stale_leader": ("leader", "read.lua", 32, {**READ, "WRK_LEVEL": "stale"}),
    "linearizable_follower": ("follower", "read.lua", 32, {**READ, "WRK_LEVEL": "linearizable"}),
    "stale_follower": ("follower", "read.lua", 32, {**READ, "WRK_LEVEL": "stale"}),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(cluster: Cluster, name: str, round_number: int, duration: float) -> dict[str, Any]:
    on, script, clients, env = LOADS[name]
    node = cluster.leader() if on == "leader" else cluster.followers()[0]
    if script == "write.lua":
        env = {"WRK_PREFIX": f"{name}-{round_number}-{time.monotonic_ns()}"}
    result = run_wrk(f"http://{node.http_addr}", script, clients, duration, env, cluster.nodes)
    return {key: result[key] for key in ("throughput", "p50_ms", "p99_ms", "statuses", "socket_errors",
                                         "node_cpu_cores", "other_cpu_cores")}


def summary(sides: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    table = {}
    for name in sides["before"]:
        before, after = sides["before"][name], sides["after"][name]
        field = "p50_ms" if name == "write1" else "throughput"
        pairs = [round(a[field] / b[field], 3) for b, a in zip(before, after, strict=True) if b[field]]
        table[name] = {"field": field, "before": statistics.median(r[field] for r in before),
                       "after": statistics.median(r[field] for r in after), "pairs": pairs,
                       "other_cpu_cores_max": max(r["other_cpu_cores"] for r in before + after)}
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision measured as before")
    parser.add_argument("--after", help="git revision measured as after (default: the work tree)")
    parser.add_argument("--nodes", type=int, default=3, choices=[1, 3])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated, of {', '.join(LOADS)}")
    parser.add_argument("--max-other", type=float, default=0.15, help=argparse.SUPPRESS)
    parser.add_argument("--gate-wait", type=float, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sidebyside.json")
    args = parser.parse_args()
    loads = [name for name in args.loads.split(",") if args.nodes > 1 or LOADS[name][0] == "leader"]
    registry = Registry()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sides: dict[str, dict[str, list[dict[str, Any]]]] = {"before": {}, "after": {}}
    sources = {}
    with tempfile.TemporaryDirectory(prefix="hraftd-sidebyside-") as temp:
        try:
            clusters = {}
            for side, rev in (("before", args.before), ("after", args.after)):
                source, sources[side] = freeze(rev, Path(temp) / side / "src")
                clusters[side] = Cluster(registry, Path(temp) / side / "cluster", [], source, size=args.nodes).start()
                preload_read_keys(clusters[side])
                sides[side] = {name: [] for name in loads}
            log(f"before: {sources['before']}; after: {sources['after']}")
            for round_number in range(1, args.rounds + 1):
                order = ["before", "after"] if round_number % 2 else ["after", "before"]
                for name in loads:
                    for side in order:
                        cluster = clusters[side]
                        quiet_gate(cluster.nodes, args)
                        row = measure(cluster, name, round_number, args.duration)
                        sides[side][name].append(row)
                        log(f"round {round_number} {name:22} {side:6}: {row['throughput']:8.0f}/s "
                            f"p50 {row['p50_ms']:.2f} ms, other CPU {row['other_cpu_cores']:.2f}")
        finally:
            registry.kill_all()
    table = summary(sides)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "generator": wrk_version(), "nodes": args.nodes,
              "rounds": args.rounds, "duration_s": args.duration, "sources": sources, "summary": table,
              "runs": sides}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{args.nodes} node(s); before {sources['before']}, after {sources['after']}; medians of {args.rounds} "
          "interleaved rounds")
    print(f"{'load':24}{'measure':>12}{'before':>10}{'after':>10}  after/before per pair")
    for name, row in table.items():
        print(f"{name:24}{row['field']:>12}{row['before']:>10,.2f}{row['after']:>10,.2f}  "
              + ", ".join(f"{pair:.2f}" for pair in row["pairs"]))
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
