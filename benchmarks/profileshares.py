"""Where a node's worker spends its Python time, from the collapsed stacks of ``run.py --profile``.

    python benchmarks/profileshares.py benchmarks/results/profile/*.txt

py-spy ran with ``--gil``: every sample is of the thread that held the GIL. Each sample is put in one part,
named by the innermost frame (leaf first) that one of ``PARTS`` recognises, within its thread: the event loop
(the worker's main thread, HTTP and the hot handlers) or the Raft thread (``RaftNode._run``: PySyncObj's tick,
the log, the peers' connections, applying entries). C code (uvloop, httptools, system calls) counts towards
the Python frame that called it: the answer's ``send()`` is in ``HttpConnection._write``; the loop's own
``epoll_wait`` and ``recv()`` are in ``Runner.run``. (perf found the worker's system calls, all together,
at a smaller share than py-spy's ``_write`` alone: read that part as an upper bound.)
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# (part, what a frame's text contains), tried on each frame from the leaf outwards; the first match names the part.
PARTS: dict[str, list[tuple[str, str]]] = {
    "event loop": [
        ("HTTP: writing the answer (_write, _head)", "HttpConnection._write"),
        ("HTTP: writing the answer (_write, _head)", "Response.head"),
        ("store (ReplicatedKV, state machine)", "hraftd/store.py"),
        ("store (ReplicatedKV, state machine)", "hraftd/operations.py"),
        ("store (ReplicatedKV, state machine)", "hraftd/state.py"),
        ("hand-off to the Raft thread (proposals, read index)", "hraftd/raft/"),
        ("handlers: routing, rules, JSON, metrics", "hraftd/keys.py"),
        ("handlers: routing, rules, JSON, metrics", "hraftd/app.py"),
        ("handlers: routing, rules, JSON, metrics", "hraftd/protocol.py"),
        ("handlers: routing, rules, JSON, metrics", "hraftd/metrics.py"),
        ("handlers: routing, rules, JSON, metrics", "hraftd/request.py"),
        ("HTTP: parsing, connection state", "hraftd/connection.py"),
        ("loop: epoll, recv(), callbacks (uvloop)", "asyncio/"),
    ],
    "Raft thread": [
        ("applying entries (state machine)", "hraftd/state.py"),
        ("applying entries (state machine)", "hraftd/commands.py"),
        ("applying entries (state machine)", "Machine.apply"),
        ("log: journal, fsync", "hraftd/raft/journal.py"),
        ("peers: encode, send, receive", "hraftd/raft/wire.py"),
        ("peers: encode, send, receive", "hraftd/raft/codec.py"),
        ("peers: encode, send, receive", "hraftd/raft/transport.py"),
        ("peers: encode, send, receive", "msgpack"),
        ("read index rounds", "hraftd/raft/reads.py"),
        ("proposals: batching into entries", "hraftd/raft/proposals.py"),
        ("PySyncObj's tick (Raft rules)", "pysyncobj/"),
        ("hraftd's tick loop (wake-ups, events)", "hraftd/raft/"),
    ],
}


def thread_of(frames: list[str]) -> str:
    if any("RaftNode._run" in frame for frame in frames):
        return "Raft thread"
    if frames[0].startswith("Thread._bootstrap") or any("concurrent/futures" in frame for frame in frames):
        return "other threads (Flask pool, logging)"
    return "event loop"  # the main thread; stacks of coroutines resumed by uvloop start at the coroutine


def part_of(thread: str, frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, marker in PARTS.get(thread, []):
            if marker in frame:
                return part
    return "other"


def shares(path: Path) -> tuple[int, Counter[tuple[str, str]]]:
    counts: Counter[tuple[str, str]] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        thread = thread_of(frames)
        counts[thread, part_of(thread, frames)] += int(count_text)
        total += int(count_text)
    return total, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stacks", type=Path, nargs="+", help="collapsed stacks (py-spy --format raw)")
    args = parser.parse_args()
    for path in args.stacks:
        total, counts = shares(path)
        print(f"\n{path.stem}: {total} samples with the GIL held")
        threads = Counter()
        for (thread, _), count in counts.items():
            threads[thread] += count
        for thread, thread_count in threads.most_common():
            print(f"  {thread:58} {thread_count / total:6.1%}")
            for (owner, part), count in counts.most_common():
                if owner == thread:
                    print(f"    {part:56} {count / total:6.1%}")


if __name__ == "__main__":
    main()
