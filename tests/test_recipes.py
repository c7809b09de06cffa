"""The recipes of docs/python.md, run as written against real clusters: the counter by 5 processes while the
leader is killed twice (exactly 500), the config map read whole while it is republished, the job queue worked
by 4 processes (each job done once)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from nodes import Cluster, Node, wait_for

from hraftd.client import Client

ROOT = Path(__file__).resolve().parent.parent
PYTHON_MD = ROOT / "docs" / "python.md"
README_NODES = '["localhost:11000", "localhost:11001", "localhost:11002"]'


def recipe(name: str, nodes: list[Node], directory: Path) -> Path:
    """The block of python.md's recipes that starts with ``# name``, saved as ``name`` with the cluster's nodes."""
    recipes = PYTHON_MD.read_text().split("\n## Recipes\n", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", recipes, flags=re.DOTALL)
    source = next(block for block in blocks if block.startswith(f"# {name}"))
    if "NODES = " in source:
        assert README_NODES in source, f"{name}: NODES is not the list the docs use"
        source = source.replace(README_NODES, repr([node.http_addr for node in nodes]))
    path = directory / name
    path.write_text(source)
    return path


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem + "_recipe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this hraftd, wherever the script lies
    return subprocess.Popen([sys.executable, str(path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def kill_leader(cluster: Cluster, nodes: list[Node]) -> Node:
    """kill -9 of the leader, then the same node started again on its data; returns it."""
    leader = cluster.leader(nodes)
    leader.kill()
    leader.start(None)
    return leader


def test_the_counter_ends_exact_with_5_processes_while_the_leader_is_killed_twice(cluster, tmp_path):
    nodes = cluster.start(3)
    script = recipe("counter.py", nodes, tmp_path)
    processes = [run(script, "100") for _ in range(5)]
    try:
        with Client([node.http_addr for node in nodes], deadline=60) as kv:
            def counted() -> int:
                return kv.get("counters/visits", 0, level="stale")

            killed = []
            for threshold in (100, 300):
                wait_for(lambda threshold=threshold: counted() >= threshold, 120, f"the counter to reach {threshold}")
                running, reached = sum(process.poll() is None for process in processes), counted()
                killed.append((kill_leader(cluster, nodes).name, reached, running))
                assert running == 5, f"the increments ended before the leader was killed: {killed}"
            for process in processes:
                _, errors = process.communicate(timeout=240)
                assert process.returncode == 0, errors[-3000:]
            assert kv["counters/visits"] == 500, killed
            assert kv.item("counters/visits")["version"] == 500
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    print("killed (node, counter then, processes running):", killed)


@pytest.fixture(scope="module")
def nodes(three_nodes):
    return three_nodes


def test_the_config_map_is_read_whole_while_it_is_republished(nodes, tmp_path):
    config = load(recipe("config.py", nodes, tmp_path))
    addresses = [node.http_addr for node in nodes]

    def settings(n: int) -> dict[str, Any]:
        return {"db": f"db-{n}", "pool": n, "replicas": [n, n], f"only-in-{n}": True}

    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        with Client(addresses) as kv:
            while not stop.is_set():
                try:
                    seen.append(config.read(kv))
                except BaseException as error:
                    errors.append(error)
                    return

    def publisher(versions: list[int]) -> None:
        with Client(addresses) as kv:
            for n in versions:
                config.publish(kv, settings(n))

    readers = [threading.Thread(target=reader) for _ in range(3)]
    publishers = [threading.Thread(target=publisher, args=(list(range(start, 60, 2)),)) for start in (0, 1)]
    for thread in readers + publishers:
        thread.start()
    for thread in publishers:
        thread.join(120)
    stop.set()
    for thread in readers:
        thread.join(30)
    assert not errors, errors
    with Client(addresses) as kv:
        final = config.read(kv)
    assert final["version"] == 60  # two publishers, 30 versions each: none lost to the other
    maps = [view for view in seen if view]
    assert len(maps) > 20
    for view in maps:
        n = view["pool"]
        assert view == {"version": view["version"], **settings(n)}, view  # one version whole, nothing of another


def test_the_job_queue_gives_every_job_to_exactly_one_of_4_workers(nodes, tmp_path):
    script = recipe("jobs.py", nodes, tmp_path)
    jobs = load(script)
    with Client([node.http_addr for node in nodes]) as kv:
        for i in range(60):
            jobs.submit(kv, f"{i:03d}", {"a": i, "b": 1000})
        workers = [run(script, f"worker-{w}") for w in range(4)]
        done: list[str] = []
        for worker in workers:
            output, errors = worker.communicate(timeout=120)
            assert worker.returncode == 0, errors[-3000:]
            done += output.split()
        assert sorted(done) == [f"{i:03d}" for i in range(60)]  # each job once
        assert kv.count("queue/jobs/") == 0
        results = {entry.key: entry.value for entry in kv.range("queue/done/")}
        assert [result["answer"] for result in results.values()] == [i + 1000 for i in range(60)]
        assert len({result["worker"] for result in results.values()}) > 1, "one worker did every job"
