from __future__ import annotations

from collections.abc import Iterator

import pytest
from nodes import Cluster, Node, forget_ports, free_port

from hraftd.store import ReplicatedKV


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    """An empty cluster for one test; the test starts and kills its nodes."""
    nodes = Cluster(tmp_path)
    yield nodes
    nodes.cleanup()


@pytest.fixture(scope="module")
def kv(tmp_path_factory) -> Iterator[ReplicatedKV]:
    """A one-node ReplicatedKV in this process, shared by the tests of one module."""
    store = ReplicatedKV(f"127.0.0.1:{free_port()}", data_dir=tmp_path_factory.mktemp("kv"))
    try:
        store.wait_ready(20)
        yield store
    finally:
        store.close()


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory) -> Iterator[list[Node]]:
    """A running 3-node cluster shared by the tests of one module; they must not kill its nodes."""
    nodes = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield nodes.start(3)
    finally:
        nodes.cleanup()


def pytest_sessionfinish(session: pytest.Session) -> None:
    forget_ports()
