"""1,000 long-poll watchers on one node: how soon each gets a write after its acknowledgement, and what they
cost the node in memory over 1,000 keys and over 100,000 keys.

    python benchmarks/watchers.py [--watchers 1000] [--writes 20] [--out benchmarks/results/watchers.json]

Self-contained (stdlib only). One ``python -m hraftd`` node (fsync on) runs on free 127.0.0.1 ports in a temp
dir, killed and removed at the end.

- Latency: every watcher long-polls ``GET /watch?key=hot&since=R`` on a keep-alive connection of its own (all
  from one asyncio loop in this process) and asks again as soon as it is answered. A writer then writes
  ``hot`` ``--writes`` times, 0.5 s apart, each time noting when the ``POST /key`` was acknowledged. For every
  (watcher, write) pair, the latency is from that acknowledgement to the moment the watcher has read the
  answer carrying it; negative when the watcher read it before the writer read its acknowledgement.
- Memory: the node's worker RSS (``/proc/<pid>/status``) with the keys loaded and no watcher, then with the
  watchers waiting, each on a key of its own; once over 1,000 keys and once over 100,000 (a fresh node each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One hraftd node in its own process group."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "hraftd", "-id", "bench", "-haddr", self.addr,
                "-raddr", f"127.0.0.1:{free_port()}", str(data_dir)]
        self.log = open(data_dir.parent / "node.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 60
        while not self._ready():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"the node did not start; see {data_dir.parent / 'node.log'}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return bool(self.request("GET", "/status")["ready"])
        except OSError:
            return False

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{self.addr}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())

    def worker_rss(self) -> int:
        """Resident bytes of the gunicorn worker (the one child of the master), which holds the Raft node."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        for line in Path(f"/proc/{children[0]}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.log.close()


class Watcher:
    """One keep-alive connection that long-polls one key."""

    def __init__(self, key: str, since: int) -> None:
        self.key, self.since = key, since
        self.delivered: dict[int, float] = {}  # revision -> when the answer carrying it was read
        self.armed = asyncio.Event()  # its first request has been sent

    async def run(self, port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not stop.is_set():
                writer.write(f"GET /watch?key={self.key}&since={self.since}&timeout=30 HTTP/1.1\r\n"
                             "Host: bench\r\n\r\n".encode())
                self.armed.set()
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                answer = json.loads(await reader.readexactly(length))
                now = time.monotonic()
                for event in answer["events"]:
                    self.delivered.setdefault(event["mod_revision"], now)
                self.since = answer["revision"]
        finally:
            writer.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def latency(node: Node, watchers: int, writes: int) -> dict[str, Any]:
    since = node.request("GET", "/keys?count_only=true")["revision"]
    stop = asyncio.Event()
    group = [Watcher("hot", since) for _ in range(watchers)]
    tasks = [asyncio.create_task(watcher.run(node.port, stop)) for watcher in group]
    await asyncio.gather(*(watcher.armed.wait() for watcher in group))
    await asyncio.sleep(2)  # let the node register every request
    acknowledged: dict[int, float] = {}
    loop = asyncio.get_running_loop()
    for number in range(writes):
        answer = await loop.run_in_executor(None, node.request, "POST", "/key", {"hot": number})
        acknowledged[answer["revision"]] = time.monotonic()
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)
    stop.set()
    node.request("POST", "/key", {"hot": "stop"})  # answers every watcher, which then ends
    await asyncio.wait(tasks, timeout=10)
    samples = [watcher.delivered[revision] - acked for watcher in group for revision, acked in acknowledged.items()
               if revision in watcher.delivered]
    missing = watchers * writes - len(samples)
    return {
        "watchers": watchers, "writes": writes, "deliveries": len(samples), "missing": missing,
        "latency_ms": {"p50": round(1000 * statistics.median(samples), 2),
                       "p99": round(1000 * percentile(samples, 0.99), 2),
                       "max": round(1000 * max(samples), 2)},
        "within_1s": sum(sample <= 1.0 for sample in samples) / (watchers * writes),
    }


async def memory(node: Node, keys: int, watchers: int) -> dict[str, Any]:
    for start in range(0, keys, 1000):
        node.request("POST", "/key", {f"k{i:06d}": "0123456789abcdef" for i in range(start, min(start + 1000, keys))})
    since = node.request("GET", "/keys?count_only=true")["revision"]
    await asyncio.sleep(2)
    before = node.worker_rss()
    stop = asyncio.Event()
    group = [Watcher(f"k{i * (keys // watchers):06d}", since) for i in range(watchers)]
    tasks = [asyncio.create_task(watcher.run(node.port, stop)) for watcher in group]
    await asyncio.gather(*(watcher.armed.wait() for watcher in group))
    await asyncio.sleep(3)
    during = node.worker_rss()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"keys": keys, "watchers": watchers, "rss_mib_without_watchers": round(before / 2**20, 1),
            "rss_mib_with_watchers": round(during / 2**20, 1),
            "watchers_cost_kib_each": round((during - before) / watchers / 1024, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "watchers.json")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.watchers)), hard))
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for name, keys in (("latency", 0), ("memory_1k_keys", 1000), ("memory_100k_keys", 100_000)):
        workdir = Path(tempfile.mkdtemp(prefix="hraftd-watchers-"))
        node = Node(workdir / "data")
        try:
            run = latency(node, args.watchers, args.writes) if name == "latency" else \
                memory(node, keys, args.watchers)
            results[name] = asyncio.run(run)
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
        finally:
            node.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
