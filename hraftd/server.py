"""Serving a node: gunicorn with exactly one worker, which owns the Raft node.

Two ways in, one code path: ``hraftd`` embeds gunicorn (``NodeServer``), and
``gunicorn 'hraftd.server:create_app()'`` loads the same node from HRAFTD_* environment variables.
Either way the node is built in the worker, never in the master, and the worker dies with its master.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from hraftd import web
from hraftd.client import Client, ClientError
from hraftd.errors import HraftdError
from hraftd.settings import NodeSettings
from hraftd.store import ReplicatedKV

log = logging.getLogger("hraftd")

_WORKER_BOOT_ERROR = 3  # gunicorn's arbiter halts, exit status 3, when a worker exits with this
_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """The node cannot start; the message says why and what to do."""


def create_app() -> Flask:
    """Entry point for ``gunicorn 'hraftd.server:create_app()'``; settings come from HRAFTD_* variables."""
    return start_node(NodeSettings.from_env)


def start_node(load_settings: Callable[[], NodeSettings]) -> Flask:
    """Build the node in this gunicorn worker: Raft node, join, HTTP app."""
    _configure_logging()
    worker, arbiter = _gunicorn_context()
    try:
        _refuse_unsafe_gunicorn(worker, arbiter)
        settings = load_settings()
        if worker is not None:
            _die_with_master()
        store = open_store(settings)
    except (StartupError, HraftdError, ValueError) as error:
        log.error("cannot start the node: %s", error)
        if worker is None:  # not under gunicorn, or --preload in gunicorn's master
            raise StartupError(str(error)) from None
        sys.exit(_WORKER_BOOT_ERROR)
    if worker is not None:
        _close_on_worker_exit(worker, store)
    log.info("node %s: http %s, raft %s, data %s", settings.node_id, settings.http_addr, settings.raft_addr,
             settings.data_dir)
    return web.create_app(store)


def open_store(settings: NodeSettings) -> ReplicatedKV:
    """Open the node's store; join the cluster at ``settings.join`` if this data dir is new to clusters."""
    saved_peers = ReplicatedKV.saved_peers(settings.data_dir)
    join = settings.join
    if join and saved_peers:
        log.info("%s already holds a member of a cluster; it rejoins from its data and ignores -join %s",
                 settings.data_dir, join)
        join = None
    if join and saved_peers is not None:
        raise StartupError(f"{settings.data_dir} holds a single-node cluster of its own; joining {join} would "
                           "overwrite its data. Join with an empty data directory instead")
    deadline = time.monotonic() + settings.join_timeout
    peers = _cluster_peers(join, deadline) if join else set()
    if not settings.fsync:
        log.warning("fsync is off: a power loss of a majority of nodes can lose acknowledged writes")
    store = ReplicatedKV(settings.raft_addr, peers, data_dir=settings.data_dir, node_id=settings.node_id,
                         http_addr=settings.http_addr, timeout=settings.timeout, fsync=settings.fsync)
    if join:
        try:
            _retry(lambda: _client(join, deadline).join(settings.node_id, settings.raft_addr, settings.http_addr),
                   deadline, f"join the cluster at {join}")
        except StartupError:
            store.close()
            raise
        log.info("joined the cluster at %s as %s", join, settings.node_id)
    threading.Thread(target=_announce_when_ready, args=(store,), name="hraftd-announce", daemon=True).start()
    return store


def _cluster_peers(join: str, deadline: float) -> set[str]:
    status = _retry(lambda: _client(join, deadline).status(), deadline, f"reach the node at {join}")
    return {member["raft_addr"] for member in status["members"]}


def _client(addr: str, deadline: float) -> Client:
    return Client(addr, timeout=max(deadline - time.monotonic(), 1.0))


def _retry(action: Callable[[], Any], deadline: float, what: str) -> Any:
    """Retry ``action`` with backoff while the failure may pass (no connection, 5xx), until ``deadline``."""
    delay = 0.2
    while True:
        try:
            return action()
        except ClientError as error:
            if error.status < 500:
                raise StartupError(f"cannot {what}: {error.message}") from None
            last_error: Exception = error
        except OSError as error:
            last_error = error
        if time.monotonic() + delay > deadline:
            raise StartupError(f"cannot {what} in time: {last_error}")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def _announce_when_ready(store: ReplicatedKV) -> None:
    """Wait for a leader, then make sure the member table has this node's HTTP address."""
    while not store.closed:
        try:
            store.wait_ready()
            return
        except HraftdError as error:
            log.debug("not ready yet: %s", error)


class NodeServer(BaseApplication):
    """gunicorn embedded in the ``hraftd`` process, with the settings a Raft node needs."""

    def __init__(self, settings: NodeSettings, threads: int = 16) -> None:
        self.settings = settings
        self.threads = threads
        super().__init__()

    def load_config(self) -> None:
        config = {
            "bind": [self.settings.http_addr],
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.threads,
            # The worker is silent while it joins: give it that long before the master thinks it hung.
            "timeout": int(self.settings.join_timeout) + 30,
            "graceful_timeout": 10,
            "control_socket_disable": True,
            "proc_name": f"hraftd {self.settings.node_id}",
        }
        for name, value in config.items():
            self.cfg.set(name, value)

    def load(self) -> Flask:
        return start_node(lambda: self.settings)


def _gunicorn_context() -> tuple[Any, Any]:
    """The gunicorn worker and arbiter on the call stack (either may be None)."""
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

    worker = arbiter = None
    frame = sys._getframe(1)
    while frame is not None:
        caller = frame.f_locals.get("self")
        worker = worker or (caller if isinstance(caller, Worker) else None)
        arbiter = arbiter or (caller if isinstance(caller, Arbiter) else None)
        frame = frame.f_back
    return worker, arbiter


def _refuse_unsafe_gunicorn(worker: Any, arbiter: Any) -> None:
    """A node must be one process, built in gunicorn's worker: refuse every other way of running it."""
    from gunicorn.workers.gthread import ThreadWorker
    from gunicorn.workers.sync import SyncWorker

    if worker is None and arbiter is not None:
        raise StartupError("refusing --preload: the Raft node must be built in the worker process, "
                           "where its threads run. Start gunicorn without --preload")
    if worker is None:
        return
    if worker.cfg.workers != 1:
        raise StartupError(f"refusing {worker.cfg.workers} workers: a node is one Raft member and must be one "
                           "process (a second worker cannot bind the raft port). Use -w 1 and raise --threads")
    if not isinstance(worker, (ThreadWorker, SyncWorker)):
        raise StartupError(f"refusing worker class {type(worker).__name__}: use -k gthread")
    if not isinstance(worker, ThreadWorker):
        log.warning("the sync worker answers one request at a time; use -k gthread --threads 16")


def _die_with_master() -> None:
    """Make the kernel kill this worker when its master dies, so kill -9 of hraftd stops the Raft node too."""
    if not sys.platform.startswith("linux"):
        return
    master = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != master:  # the master died before prctl took effect
        os._exit(1)


def _close_on_worker_exit(worker: Any, store: ReplicatedKV) -> None:
    """Stop the Raft node when the worker exits (its tick thread would otherwise keep the process alive)."""
    previous_hook = worker.cfg.worker_exit

    def worker_exit(arbiter: Any, exiting_worker: Any) -> None:
        store.close()
        previous_hook(arbiter, exiting_worker)

    worker.cfg.set("worker_exit", worker_exit)


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("hraftd").setLevel(logging.INFO)
