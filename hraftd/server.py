"""Serving a node: gunicorn with exactly one worker of hraftd's own class, which owns the Raft node.

Two ways in, one code path: ``hraftd`` embeds gunicorn (``NodeServer``), and
``gunicorn -c python:hraftd.gunicorn_conf`` loads the same node from HRAFTD_* environment variables.
Either way the node is built in the worker, never in the master; the worker dies with its master, and a stop
signal sent to the worker stops the master too. Opening the store (join, restore) is ``hraftd.startup``'s.
"""

from __future__ import annotations

import ctypes
import logging
import logging.config
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from setproctitle import setproctitle

from hraftd.app import NodeApp, build_app
from hraftd.auth import TokenFile
from hraftd.errors import HraftdError
from hraftd.gunicorn_conf import gunicorn_settings
from hraftd.logs import logging_config
from hraftd.settings import NodeSettings, host_of
from hraftd.startup import StartupError, open_store, restore_needed
from hraftd.store import ReplicatedKV

log = logging.getLogger("hraftd")

_WORKER_BOOT_ERROR = 3  # gunicorn's arbiter halts, exit status 3, when a worker exits with this
_PR_SET_PDEATHSIG = 1


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
        if worker is None and arbiter is None:  # not under gunicorn
            raise StartupError(str(error)) from None
        sys.exit(_WORKER_BOOT_ERROR)  # in gunicorn's master (--preload) too: it then exits with this status
    if worker is not None:
        _close_on_worker_exit(worker, store)
    log.info("node %s: %s %s, raft %s%s, data %s", settings.node_id, "https" if peer_tls else "http",
             settings.http_adv, settings.raft_addr, " (encrypted)" if settings.raft_secret else "", settings.data_dir)
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

    def run(self) -> None:
        """Check what can be checked before gunicorn starts: the HTTP port is free, a backup to restore exists.

        gunicorn would retry a busy port for 5 s and exit with status 1; the node exits with 3 at once.
        """
        logging.config.dictConfig(self.cfg.logconfig_dict)
        try:
            restore_needed(self.settings)
            listener = _bind(self.settings.http_addr)
        except StartupError as error:
            log.error("cannot start the node: %s", error)
            sys.exit(_WORKER_BOOT_ERROR)
        self.cfg.set("bind", [f"fd://{listener.detach()}"])  # gunicorn listens on it, and closes it
        node_id = self.settings.node_id
        # gunicorn's titles ("gunicorn: master [...]") would also rename the process to "gunicorn: maste".
        self.cfg.set("pre_fork", lambda arbiter, worker: setproctitle(f"hraftd master {node_id}"))
        self.cfg.set("post_fork", lambda arbiter, worker: setproctitle(f"hraftd worker {node_id}"))
        super().run()


def _bind(addr: str) -> socket.socket:
    """A socket bound to the HTTP address, not yet listening, or a StartupError saying why it cannot be."""
    try:
        family, kind, protocol, _, sockaddr = socket.getaddrinfo(
            host_of(addr), int(addr.rpartition(":")[2]), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, protocol)
    except OSError as error:
        raise StartupError(f"cannot listen on -haddr {addr}: {error.strerror or error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as error:
        sock.close()
        raise StartupError(f"cannot listen on -haddr {addr}: {error.strerror}") from None
    return sock


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
        if worker.age > 1:  # the first worker refuses; a second status 3 would make gunicorn's halt exit 1
            sys.exit(0)
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
