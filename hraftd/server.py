"""Serving a node: gunicorn with exactly one worker of hraftd's own class, which owns the Raft node.

Two ways in, one code path: ``hraftd`` embeds gunicorn (``NodeServer``), and
``gunicorn -c python:hraftd.gunicorn_conf`` loads the same node from HRAFTD_* environment variables.
Either way the node is built in the worker, never in the master, and the worker dies with its master.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from hraftd import web
from hraftd.app import NodeApp, build_app
from hraftd.auth import TokenFile
from hraftd.client import Client, ClientError
from hraftd.errors import HraftdError
from hraftd.gunicorn_conf import gunicorn_settings
from hraftd.logs import logging_config
from hraftd.settings import NodeSettings
from hraftd.store import ReplicatedKV, join_proof

log = logging.getLogger("hraftd")

_WORKER_BOOT_ERROR = 3  # gunicorn's arbiter halts, exit status 3, when a worker exits with this
_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """The node cannot start; the message says why and what to do."""


GUNICORN_COMMAND = "gunicorn -c python:hraftd.gunicorn_conf -b HOST:PORT"


def create_app() -> NodeApp:
    """The app gunicorn loads (``hraftd.gunicorn_conf``); settings come from HRAFTD_* variables."""
    return start_node(NodeSettings.from_env)


def start_node(load_settings: Callable[[], NodeSettings]) -> NodeApp:
    """Build the node in this gunicorn worker: Raft node, join, HTTP app."""
    _configure_logging()
    worker, arbiter = _gunicorn_context()
    try:
        _refuse_unsafe_gunicorn(worker, arbiter)
        settings = load_settings()
        _set_log_levels(settings.log_level)
        if worker is not None:
            _die_with_master()
        tokens = TokenFile(settings.auth_file) if settings.auth_file else None
        peer_tls = _peer_tls(settings, worker)
        store = open_store(settings, peer_tls)
    except (StartupError, HraftdError, ValueError, OSError) as error:
        log.error("cannot start the node: %s", error)
        if worker is None:  # not under gunicorn, or --preload in gunicorn's master
            raise StartupError(str(error)) from None
        sys.exit(_WORKER_BOOT_ERROR)
    if worker is not None:
        _close_on_worker_exit(worker, store)
    log.info("node %s: %s %s, raft %s%s, data %s", settings.node_id, "https" if peer_tls else "http",
             settings.http_addr, settings.raft_addr, " (encrypted)" if settings.raft_secret else "", settings.data_dir)
    if not settings.raft_secret and settings.raft_insecure:
        log.warning("raft traffic on %s is neither encrypted nor authenticated (-raft-insecure)", settings.raft_addr)
    threads = worker.cfg.threads if worker is not None else settings.threads
    return build_app(store, limits=settings.limits, tokens=tokens, peer_tls=peer_tls, threads=threads,
                     max_pending=settings.max_pending, io_timeout=settings.io_timeout)


def _peer_tls(settings: NodeSettings, worker: Any) -> ssl.SSLContext | None:
    """How to reach other nodes: over HTTPS, verified with -tls-ca, whenever this node serves HTTPS."""
    serves_tls = settings.tls_cert is not None or (worker is not None and worker.cfg.is_ssl)
    if not serves_tls:
        return None
    return ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)


def open_store(settings: NodeSettings, peer_tls: ssl.SSLContext | None = None) -> ReplicatedKV:
    """Open the node's store; join the cluster at ``settings.join`` if this data dir is new to clusters."""
    saved_peers = ReplicatedKV.saved_peers(settings.data_dir)
    join = settings.join
    if settings.restore and settings.data_dir.exists() and any(settings.data_dir.iterdir()):
        raise StartupError(f"-restore needs an empty data directory; {settings.data_dir} is not empty")
    if join and saved_peers:
        log.info("%s already holds a member of a cluster; it rejoins from its data and ignores -join %s",
                 settings.data_dir, join)
        join = None
    if join and saved_peers is not None:
        raise StartupError(f"{settings.data_dir} holds a single-node cluster of its own; joining {join} would "
                           "overwrite its data. Join with an empty data directory instead")
    deadline = time.monotonic() + settings.join_timeout

    def client(addr: str) -> Client:
        return Client(addr, timeout=max(deadline - time.monotonic(), 1.0), token=settings.auth_token,
                      ssl_context=peer_tls)

    peers = _cluster_peers(client(join), deadline) if join else set()
    if not settings.fsync:
        log.warning("fsync is off: a power loss of a majority of nodes can lose acknowledged writes")
    store = ReplicatedKV(settings.raft_addr, peers, data_dir=settings.data_dir, node_id=settings.node_id,
                         http_addr=settings.http_addr, timeout=settings.timeout, fsync=settings.fsync,
                         secret=settings.raft_secret)
    if join:
        proof = None
        if settings.raft_secret:
            proof = join_proof(settings.raft_secret, settings.node_id, settings.raft_addr)
        try:
            _retry(lambda: client(join).join(settings.node_id, settings.raft_addr, settings.http_addr, proof),
                   deadline, f"join the cluster at {join}")
        except StartupError:
            store.close()
            raise
        log.info("joined the cluster at %s as %s", join, settings.node_id)
    if settings.restore:
        try:
            _restore(store, settings)
        except (HraftdError, OSError, ValueError) as error:
            store.close()
            for leftover in settings.data_dir.iterdir():  # it was empty: leave it so, ready for another try
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            raise StartupError(f"cannot restore {settings.restore}: {error}") from None
    threading.Thread(target=_announce_when_ready, args=(store,), name="hraftd-announce", daemon=True).start()
    return store


def _restore(store: ReplicatedKV, settings: NodeSettings) -> None:
    """Load a backup into the new one-node cluster, in entries of 1000 keys."""
    with open(settings.restore, "rb") as file:
        backup = json.load(file)
    if not isinstance(backup, dict) or backup.get("format") != web.BACKUP_FORMAT or not isinstance(
            backup.get("data"), dict):
        raise ValueError("not an hraftd backup (GET /backup)")
    store.wait_ready(settings.join_timeout)
    items = list(backup["data"].items())
    for start in range(0, len(items), 1000):
        store.update(dict(items[start:start + 1000]))
    log.info("restored %d keys from %s (taken at raft index %s of node %s)", len(items), settings.restore,
             backup.get("raft_index"), backup.get("node"))


def _cluster_peers(client: Client, deadline: float) -> set[str]:
    status = _retry(client.status, deadline, f"reach the node at {client.base_url}")
    return {member["raft_addr"] for member in status["members"]}


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


class NodeLogger(Logger):
    """gunicorn's logger, logging requests only with -access-log.

    gunicorn treats any logconfig_dict as "access log on" and formats a line for every request; the
    handler's level dropped it afterwards, at a few percent of the worker's CPU.
    """

    def _compute_access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)


class NodeServer(BaseApplication):
    """gunicorn embedded in the ``hraftd`` process, with the settings a Raft node needs."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        config = gunicorn_settings(self.settings.join_timeout)
        del config["wsgi_app"]  # the app is load()'s
        config.update({
            "bind": [self.settings.http_addr],
            "threads": self.settings.threads,
            "worker_connections": self.settings.max_connections,
            "proc_name": f"hraftd {self.settings.node_id}",
            "logconfig_dict": logging_config(self.settings.node_id, self.settings.log_level,
                                             self.settings.log_json, self.settings.access_log),
            "logger_class": NodeLogger,
            "accesslog": "-" if self.settings.access_log else None,
        })
        if self.settings.tls_cert:
            config.update(certfile=str(self.settings.tls_cert), keyfile=str(self.settings.tls_key))
        for name, value in config.items():
            self.cfg.set(name, value)

    def load(self) -> NodeApp:
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
    """A node must be one process, built in hraftd's gunicorn worker: refuse every other way of running it."""
    from hraftd.worker import NodeWorker

    if worker is None and arbiter is not None:
        raise StartupError("refusing --preload: the Raft node must be built in the worker process, "
                           f"where its threads run. Start gunicorn without --preload: {GUNICORN_COMMAND}")
    if worker is None:
        return
    if worker.cfg.workers != 1:
        raise StartupError(f"refusing {worker.cfg.workers} workers: a node is one Raft member and must be one "
                           "process (a second worker cannot bind the raft port). Leave -w out: "
                           f"{GUNICORN_COMMAND}")
    if not isinstance(worker, NodeWorker):
        raise StartupError(f"refusing gunicorn's worker class {type(worker).__name__}: a node serves HTTP with "
                           f"its own. Start gunicorn with hraftd's settings and without -k: {GUNICORN_COMMAND}")


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
    """Under gunicorn directly (no logconfig of ours), at least log our lines somewhere."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("hraftd").setLevel(logging.INFO)


def _set_log_levels(level: str) -> None:
    logging.getLogger("hraftd").setLevel(level.upper())
    logging.getLogger("pysyncobj").setLevel(level.upper() if level == "debug" else logging.WARNING)
