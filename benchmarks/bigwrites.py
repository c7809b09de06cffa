"""Memory and disk under large writes: bodies of nearly 1 MiB (4 keys of 250,000 bytes), written over and over.

The live data never exceeds 4 MiB, so whatever a node holds beyond that is log, snapshots and buffers. The
run samples every node's RSS (master and worker) and the bytes in its data directory twice a second and prints
the largest of each, with the log's compaction bound (``-compact-log-bytes``) beside them.

    python benchmarks/bigwrites.py                       # 2,000 writes, about a minute
    python benchmarks/bigwrites.py --writes 5000 --node-arg=-compact-log-bytes=16777216
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from cluster import Cluster, KeepAlive, Registry

VALUE_BYTES = 250_000  # under the default value limit (256 KiB); 4 of them just under the 1 MiB body limit


def directory_bytes(path: Path) -> int:
    """Bytes the directory's files take on disk (reserved log space included)."""
    return sum(entry.stat().st_blocks * 512 for entry in path.iterdir() if entry.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--node-arg", action="append", default=[], help="extra flag for every node (use '=')")
    options = parser.parse_args()
    registry = Registry()
    try:
        with tempfile.TemporaryDirectory(prefix="hraftd-bigwrites-") as root:
            cluster = Cluster(registry, Path(root), options.node_arg).start()
            leader = cluster.leader()
            peaks = {node.name: {"rss_mib": 0.0, "data_dir_mib": 0.0} for node in cluster.nodes}
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    for node in cluster.nodes:
                        peak = peaks[node.name]
                        peak["rss_mib"] = max(peak["rss_mib"], node.memory()["rss_mib"])
                        peak["data_dir_mib"] = max(peak["data_dir_mib"], directory_bytes(node.data_dir) / 2**20)
                    time.sleep(0.5)

            counter = iter(range(options.writes))
            lock = threading.Lock()
            failures: list[int] = []

            def write() -> None:
                connection = KeepAlive(leader.http_addr)
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        break
                    body = {f"big{k}": f"{i:08d}".ljust(VALUE_BYTES, "x") for k in range(4)}
                    status, _ = connection.post("/key", json.dumps(body).encode())
                    if status != 200:
                        failures.append(status)
                connection.close()

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            writers = [threading.Thread(target=write) for _ in range(options.clients)]
            for thread in writers:
                thread.start()
            for thread in writers:
                thread.join()
            elapsed = time.monotonic() - started
            time.sleep(2)  # a compaction that the last writes started finishes
            done.set()
            sampler.join()
            print(f"{options.writes} writes of 4 x {VALUE_BYTES:,} bytes in {elapsed:.1f} s "
                  f"({options.writes * 4 * VALUE_BYTES / elapsed / 2**20:.1f} MiB/s), {len(failures)} not 200")
            print(f"{'node':8} {'peak RSS MiB':>13} {'peak data dir MiB':>18} {'final data dir MiB':>19}")
            for node in cluster.nodes:
                peak = peaks[node.name]
                print(f"{node.name:8} {peak['rss_mib']:13.0f} {peak['data_dir_mib']:18.0f} "
                      f"{directory_bytes(node.data_dir) / 2**20:19.0f}")
    finally:
        registry.kill_all()


if __name__ == "__main__":
    main()
