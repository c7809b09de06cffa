"""Markdown tables of a benchmarks/run.py result, for docs/benchmarks.md.

    python benchmarks/report.py benchmarks/results/full.json > /tmp/tables.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CONTAMINATED = 0.15  # cores used by other processes during a run above which it is flagged


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((row for row in rows if all(row.get(k) == v for k, v in match.items())), None)


def other(row: dict[str, Any]) -> str:
    value = row.get("other_cpu_cores", 0)
    return f"**{value:.2f}**" if value > CONTAMINATED else f"{value:.2f}"


def fmt(value: Any, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A markdown table; the first ``left`` columns are left-aligned, the others right-aligned (numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < left else "---:" for i in range(len(header)))
             + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    env = results["environment"]
    inproc = results.get("inprocess") or {"writes": [], "reads": []}
    out = [f"Run of {env['date']} ({env['mode']}): {env['cores']} cores ({env['cpu_model']}), Python {env['python']}, "
           f"PySyncObj {env['pysyncobj']}, Flask {env['flask']}, gunicorn {env['gunicorn']}; code: {env['source']}; "
           f"durability: {env['durability']}; node flags: {' '.join(env['node_args']) or 'none'}; "
           f"total {results['total_seconds']:.0f} s.", ""]

    one = results.get("one_node")
    if one:
        out.append("**One node alone** (32 clients; the in-process column drives the same handlers without "
                   "sockets)\n")
        labels = {"stale_get": "stale GET", "linearizable_get": "linearizable GET", "post": "POST"}
        rows = []
        for row in one["http"]:
            ceiling = one["inprocess"].get(row["kind"], {}).get("throughput")
            node_cpu = sum(row["node_cpu_cores"].values())
            rows.append([labels.get(row["kind"], row["kind"]), fmt(row["throughput"]), fmt(row["p50_ms"], ".2f"),
                         fmt(row["p99_ms"], ".2f"), fmt(row["requests"] - row["ok"], ","),
                         f"{row['generator_cpu_cores']:.1%}", f"{node_cpu:.2f}", other(row), fmt(ceiling),
                         fmt(row["throughput"] / ceiling if ceiling else None, ".0%")])
        out.append(table(["request", "per s", "p50 ms", "p99 ms", "errors", "wrk CPU", "node CPU", "other CPU",
                          "in-process/s", "HTTP / in-process"], rows))
        slow, idle = one.get("slow_clients"), one.get("idle_connections")
        if slow:
            ordinary = slow["ordinary"]
            not_ok = ordinary["requests"] - sum(n for code, n in ordinary["statuses"].items() if 200 <= int(code) < 300)
            out.append(f"\nBeside 256 connections that each send a request one byte every 2 s: ordinary stale GETs "
                       f"on 8 connections, {fmt(ordinary['throughput'])}/s, p50 {ordinary['p50_ms']:.2f} ms, "
                       f"**p99 {ordinary['p99_ms']:.2f} ms**, max {ordinary['max_ms']:.1f} ms, "
                       f"{not_ok:,} not 2xx; slow connections cut and reopened {slow['slow_reconnects']:,} times; "
                       f"other CPU {ordinary.get('other_cpu_cores', 0):.2f}.")
        if idle:
            out.append(f"\n2,000 idle keep-alive connections, each after one request: PSS (master + worker) "
                       f"{idle['pss_before_mib']} -> {idle['pss_after_mib']} MiB, **+{idle['pss_cost_mib']} MiB** "
                       f"(worker RSS +{idle['worker_rss_cost_mib']} MiB); {idle['open_after_1s']:,} still open "
                       f"after 1 s.")
        out.append("")

    out.append("**Writes** (unique keys, 16-byte values; writes/s counts 2xx answers only)\n")
    rows = []
    for row in results["writes"]:
        mine = find(inproc["writes"], target=row["target"], clients=row["clients"]) or {}
        refused = row["requests"] - row["ok"]
        node_cpu = row["node_cpu_cores"].get(row["node"], 0)
        rows.append([row["target"], str(row["clients"]), fmt(row["throughput"]), fmt(row["p50_ms"], ".2f"),
                     fmt(row["p90_ms"], ".2f"), fmt(row["p99_ms"], ".2f"), fmt(refused, ","),
                     f"{row['generator_cpu_cores']:.1%}", f"{node_cpu:.2f}", other(row),
                     fmt(mine.get("throughput")), fmt(mine.get("p50_ms"), ".2f"),
                     fmt(row["throughput"] / mine["throughput"] if mine.get("throughput") else None, ".0%")])
    out.append(table(["to", "clients", "writes/s", "p50 ms", "p90 ms", "p99 ms", "503s", "wrk CPU",
                      "node CPU", "other CPU", "in-process/s", "in-proc p50 ms", "HTTP / in-process"], rows))

    clients = results["reads"][0]["clients"] if results["reads"] else "?"
    out.append(f"\n**Reads** ({clients} clients, 1,000 keys read at random)\n")
    rows = []
    for row in results["reads"]:
        mine = find(inproc["reads"], target=row["target"], level=row["level"]) or {}
        node_cpu = row["node_cpu_cores"].get(row["node"], 0)
        rows.append([row["target"], row["level"], fmt(row["throughput"]), fmt(row["p50_ms"], ".2f"),
                     fmt(row["p99_ms"], ".2f"), fmt(row["requests"] - row["ok"], ","),
                     f"{row['generator_cpu_cores']:.1%}", f"{node_cpu:.2f}", other(row), fmt(mine.get("throughput")),
                     fmt(row["throughput"] / mine["throughput"] if mine.get("throughput") else None, ".1%")])
    out.append(table(["on", "level", "reads/s", "p50 ms", "p99 ms", "errors", "wrk CPU", "node CPU", "other CPU",
                      "in-process/s", "HTTP / in-process"], rows, left=2))
    ratios = results["ratios"]["linearizable_over_stale"]
    if ratios:
        out.append("\nlinearizable/stale throughput: " + ", ".join(f"{role} {value:.2f}" for role, value in
                                                                  ratios.items()))

    failover = results.get("failover")
    if failover:
        times = ", ".join(f"{r['write_ok_s']:.2f}" for r in failover["rounds"])
        out.append(f"\n**Failover**: median **{failover['median_s']:.2f} s** of {len(failover['rounds'])} rounds "
                   f"(min {failover['min_s']:.2f}, max {failover['max_s']:.2f}; each: {times}); a survivor reported "
                   f"a new leader after {failover['new_leader_median_s']:.2f} s (median).")

    recovery = results.get("recovery")
    if recovery:
        load = recovery["single_key_load"]
        note = "" if load["keys"] >= 100_000 else f" (projected to 100k: {load['projected_100k_s']} s)"
        out.append(f"\n**Loading**: {load['keys']:,} keys with single-key POSTs at 32 clients in "
                   f"**{load['seconds']:.1f} s** ({load['keys_per_s']:,} keys/s){note}; other CPU "
                   f"{load.get('other_cpu_cores', 0):.2f} cores.")
        for bulk in recovery["bulk_load"]:
            out.append(f"Bulk: {bulk['keys']:,} keys in {bulk['keys_per_post']:,}-key POSTs over "
                       f"{bulk['connections']} connections in {bulk['seconds']} s ({bulk['keys_per_s']:,} keys/s).")
        out.append("\n**Memory and snapshot** (PSS = master + worker of one node)\n")
        rows = []
        for memory in recovery["memory"]:
            rows.append([f"{memory['keys']:,}", fmt(memory["max_pss_mib"], ".1f"), fmt(memory["leader_pss_mib"], ".1f"),
                         fmt(memory["leader_rss_mib"], ".1f"), fmt(memory["leader_worker_rss_mib"], ".1f"),
                         fmt(memory["snapshot_mib"], ".2f")])
        out.append(table(["keys", "largest PSS MiB", "leader PSS MiB", "leader RSS MiB", "leader worker RSS MiB",
                          "raft.snapshot MiB"], rows))
        out.append("")
        for keys, restart in recovery["restart"].items():
            runs = ", ".join(f"{r['ready_s']:.2f}" for r in restart["runs"])
            moved = sum(1 for r in restart["runs"] if r.get("leader_after", r.get("leader_before")) !=
                        r.get("leader_before"))
            out.append(f"Restart (kill -9) of a follower holding {int(keys):,} keys: ready after "
                       f"**{restart['median_ready_s']:.2f} s** (median; each: {runs})"
                       + (f"; the leader changed in {moved} of {len(restart['runs'])} restarts" if moved else "") + ".")

    out.append("\n**Targets**\n")
    rows = [[t["target"], t["goal"], "-" if t["measured"] is None else str(t["measured"]),
             {True: "met", False: "**not met**", None: "-"}[t["met"]], t["where"]] for t in results["targets"]]
    out.append(table(["target", "goal", "measured", "verdict", "how"], rows, left=5))
    env_other = env.get("max_other_cpu_cores", 0)
    out.append(f"\nOther processes: the machine was {env['busy_before']:.0%} busy just before the run; during runs "
               f"other processes used up to {env_other:.2f} cores (bold values above {CONTAMINATED} distort the row).")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    print(render(json.loads(args.results.read_text())), end="")


if __name__ == "__main__":
    main()
