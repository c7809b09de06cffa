"""Plots of a benchmarks/run.py result: throughput vs clients, and latency percentiles.

    pip install matplotlib   # not a dependency of hraftd
    python benchmarks/plot.py benchmarks/results/full.json --out-dir docs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

GO_HRAFTD_32 = 6718
ETCD_32 = 5691
TARGET_32 = 4000  # the target: writes/s at 32 clients, 3 nodes


def series(rows: list[dict[str, Any]], target: str, field: str) -> tuple[list[int], list[float]]:
    chosen = sorted((row for row in rows if row["target"] == target), key=lambda row: row["clients"])
    return [row["clients"] for row in chosen], [row[field] for row in chosen]


def subtitle(results: dict[str, Any]) -> str:
    env = results["environment"]
    return (f"{env['cores']} cores, Python {env['python']}, PySyncObj {env['pysyncobj']}, {env['durability']}; "
            f"{env['date'][:10]}")


def throughput_plot(results: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 5))
    inprocess = (results.get("inprocess") or {}).get("writes", [])
    for rows, label_prefix, style in ((results["writes"], "HTTP", "-o"), (inprocess, "ReplicatedKV in-process",
                                                                          "--s")):
        for target in ("leader", "follower"):
            x, y = series(rows, target, "throughput")
            if x:
                axes.plot(x, y, style, label=f"{label_prefix}, writes to the {target}")
    for row in results["writes"]:
        refused = row["requests"] - row.get("ok", row["requests"])
        if refused:
            axes.annotate(f"+{refused / row['requests']:.0%} of answers\nrefused (503)",
                          (row["clients"], row["throughput"]), textcoords="offset points",
                          xytext=(-70, 12 if row["target"] == "leader" else -24), fontsize=7)
    axes.scatter([32], [GO_HRAFTD_32], marker="*", s=120, color="black", label="Go hraftd at 32 clients (fsync on)")
    axes.scatter([32], [ETCD_32], marker="^", s=80, color="grey", label="etcd 3.4 at 32 clients")
    axes.axhline(TARGET_32, color="red", linestyle=":", linewidth=1, label=f"target at 32 clients ({TARGET_32:,}/s)")
    axes.set_xscale("log", base=2)
    clients = sorted({row["clients"] for row in results["writes"]} | {row["clients"] for row in inprocess})
    axes.set_xticks(clients, [str(c) for c in clients])
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel("successful writes/s")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(f"Write throughput, 3-node cluster on one machine\n{subtitle(results)}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def latency_plot(results: dict[str, Any], path: Path) -> None:
    figure, (writes_axes, reads_axes) = plt.subplots(1, 2, figsize=(11, 4.8),
                                                     gridspec_kw={"width_ratios": [3, 2]})
    for target, color in (("leader", "tab:blue"), ("follower", "tab:orange")):
        for field, style in (("p50_ms", "-o"), ("p90_ms", "--^"), ("p99_ms", ":s")):
            x, y = series(results["writes"], target, field)
            if x:
                writes_axes.plot(x, y, style, color=color, label=f"{target} {field.split('_')[0]}")
    writes_axes.set_xscale("log", base=2)
    writes_axes.set_yscale("log")
    clients = sorted({row["clients"] for row in results["writes"]})
    writes_axes.set_xticks(clients, [str(c) for c in clients])
    writes_axes.set_xlabel("concurrent clients")
    writes_axes.set_ylabel("latency, ms (log)")
    shed = sorted({row["clients"] for row in results["writes"] if row["requests"] != row.get("ok", row["requests"])})
    note = f"\n(at {', '.join(map(str, shed))} clients, including fast 503 refusals)" if shed else ""
    writes_axes.set_title(f"HTTP write latency{note}", fontsize=10)
    writes_axes.grid(True, which="both", alpha=0.3)
    writes_axes.legend(fontsize=8, ncol=2)

    reads = results["reads"]
    labels = [f"{row['target']}\n{row['level']}" for row in reads]
    positions = range(len(reads))
    width = 0.25
    for offset, (field, color) in zip((-width, 0, width), (("p50_ms", "tab:green"), ("p90_ms", "tab:olive"),
                                                           ("p99_ms", "tab:red")), strict=True):
        reads_axes.bar([p + offset for p in positions], [row[field] for row in reads], width, color=color,
                       label=field.split("_")[0])
    reads_axes.set_xticks(list(positions), labels, fontsize=8)
    reads_axes.set_ylabel("latency, ms")
    clients = reads[0]["clients"] if reads else "?"
    reads_axes.set_title(f"HTTP read latency, {clients} clients", fontsize=10)
    reads_axes.grid(True, axis="y", alpha=0.3)
    reads_axes.legend(fontsize=8)
    figure.suptitle(subtitle(results), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="JSON written by benchmarks/run.py")
    parser.add_argument("--out-dir", type=Path, default=Path("docs"), help="where the PNGs go (default docs/)")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    throughput = args.out_dir / "benchmarks-throughput.png"
    latency = args.out_dir / "benchmarks-latency.png"
    throughput_plot(results, throughput)
    latency_plot(results, latency)
    print(f"wrote {throughput} and {latency}")


if __name__ == "__main__":
    main()
