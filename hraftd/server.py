"""Serving a node: gunicorn with exactly one worker, which owns the Raft node.

Two ways in, one code path: ``hraftd`` embeds gunicorn (``NodeServer``), and
``gunicorn 'hraftd.server:create_app()'`` loads the same node from HRAFTD_* environment variables.
Either way the node is built in the worker, never in the master; the worker dies with its master, and a stop
signal sent to the worker stops the master too. Opening the store (join, restore) is ``hraftd.startup``'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import logging.config
import os
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from setproctitle import setproctitle

from hraftd import web
from hraftd.auth import TokenFile
from hraftd.errors import HraftdError
from hraftd.logs import logging_config
from hraftd.settings import NodeSettings, host_of
from hraftd.startup import StartupError, open_store, restore_needed
from hraftd.store import ReplicatedKV

log = logging.getLogger("hraftd")

_WORKER_BOOT_ERROR = 3  # gunicorn's arbiter halts, exit status 3, when a worker exits with this
_PR_SET_PDEATHSIG = 1


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
        _stop_master_with_worker(worker)
        _protect_threads(worker, settings)
    log.info("node %s: %s %s, raft %s%s, data %s", settings.node_id, "https" if peer_tls else "http",
             settings.http_adv, settings.raft_addr, " (encrypted)" if settings.raft_secret else "", settings.data_dir)
    if not settings.raft_secret and settings.raft_insecure:
        log.warning("raft traffic on %s is neither encrypted nor authenticated (-raft-insecure)", settings.raft_addr)
    return web.create_app(store, limits=settings.limits, tokens=tokens, peer_tls=peer_tls)


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
        config = {
            "bind": [self.settings.http_addr],
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.settings.threads,
            # The worker is silent while it joins: give it that long before the master thinks it hung.
            "timeout": int(self.settings.join_timeout) + 30,
            "graceful_timeout": 10,
            "control_socket_disable": True,
            "limit_request_line": 8190,  # gunicorn's maximum: room for the longest key, percent-encoded
            "proc_name": f"hraftd {self.settings.node_id}",
            "logconfig_dict": logging_config(self.settings.node_id, self.settings.log_level,
                                             self.settings.log_json, self.settings.access_log),
            "logger_class": NodeLogger,
            "accesslog": "-" if self.settings.access_log else None,
        }
        if self.settings.tls_cert:
            config.update(certfile=str(self.settings.tls_cert), keyfile=str(self.settings.tls_key))
        for name, value in config.items():
            self.cfg.set(name, value)

    def load(self) -> Flask:
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
    """A node must be one process, built in gunicorn's worker: refuse every other way of running it."""
    from gunicorn.workers.gthread import ThreadWorker
    from gunicorn.workers.sync import SyncWorker

    if worker is None and arbiter is not None:
        raise StartupError("refusing --preload: the Raft node must be built in the worker process, "
                           "where its threads run. Start gunicorn without --preload")
    if worker is None:
        return
    if worker.cfg.workers != 1:
        if worker.age > 1:  # the first worker refuses; a second status 3 would make gunicorn's halt exit 1
            sys.exit(0)
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


def _stop_master_with_worker(worker: Any) -> None:
    """A stop signal sent to the worker alone stops the node, as one sent to the master does.

    Otherwise gunicorn would start a new worker at once, undoing the stop. A worker that dies otherwise
    (kill -9, a crash) is still replaced: the new one reopens the data directory.
    """
    master = worker.ppid
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        previous = signal.getsignal(signum)

        def stop(received: int, frame: Any, previous: Any = previous) -> None:
            if os.getppid() == master:
                os.kill(master, signal.SIGTERM)  # when the master sent this, it is stopping already
            if callable(previous):
                previous(received, frame)

        signal.signal(signum, stop)


def _close_on_worker_exit(worker: Any, store: ReplicatedKV) -> None:
    """Stop the Raft node when the worker exits (its tick thread would otherwise keep the process alive)."""
    previous_hook = worker.cfg.worker_exit

    def worker_exit(arbiter: Any, exiting_worker: Any) -> None:
        store.close()
        previous_hook(arbiter, exiting_worker)

    worker.cfg.set("worker_exit", worker_exit)


def _protect_threads(worker: Any, settings: NodeSettings) -> None:
    """Keep slow or numerous clients from taking every request thread of a gthread worker.

    gunicorn reads a request on a blocking socket with no timeout, so a client that sends half a request
    holds a thread for good. Each client socket gets a kernel timeout for every read and write, a request
    still running after a deadline has its socket shut down, a connection being closed is not lingered on,
    and requests that would wait for a thread beyond ``max_pending`` are answered 503 at once.
    """
    from gunicorn.workers.gthread import ThreadWorker

    if not isinstance(worker, ThreadWorker):
        return
    seconds = int(settings.io_timeout)
    timeval = struct.pack("ll", seconds, int((settings.io_timeout - seconds) * 1e6))
    deadline = max(60.0, 4 * settings.timeout)  # longer than any request that is making progress
    lock = threading.Lock()
    waiting = 0
    running: dict[Any, float] = {}
    enqueue_req, handle = worker.enqueue_req, worker.handle

    def guarded_enqueue_req(conn: Any) -> None:
        nonlocal waiting
        if not getattr(conn, "hraftd_timeouts_set", False):  # once per connection: this runs on the main loop
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            conn.hraftd_timeouts_set = True
        with lock:
            refuse = waiting >= settings.max_pending
            waiting += 0 if refuse else 1
        if refuse:
            _answer_busy(worker, conn)
        else:
            enqueue_req(conn)

    def guarded_handle(conn: Any) -> Any:
        nonlocal waiting
        with lock:
            waiting -= 1
            running[conn] = time.monotonic()
        try:
            keep_alive = handle(conn)
        finally:
            with lock:
                running.pop(conn, None)
        if not keep_alive:
            # gunicorn's main loop then waits up to 2 s per connection for the client to close its side:
            # a client that never does would stall the loop, so stop reading first.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RD)
        return keep_alive

    def cut_overdue_requests() -> None:
        while True:
            time.sleep(1.0)
            with lock:
                overdue = [conn for conn, started in running.items() if time.monotonic() - started > deadline]
            for conn in overdue:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)

    worker.enqueue_req, worker.handle = guarded_enqueue_req, guarded_handle
    threading.Thread(target=cut_overdue_requests, name="hraftd-request-deadline", daemon=True).start()


_BUSY_BODY = b'{"error": "the node is busy: too many requests are waiting; retry", "code": "busy"}'
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


def _answer_busy(worker: Any, conn: Any) -> None:
    try:
        conn.sock.setblocking(True)
        conn.sock.sendall(_BUSY_RESPONSE)
    except OSError:
        pass
    worker.nr_conns -= 1
    conn.close()


class _SlowClientFilter(logging.Filter):
    """gunicorn logs a traceback at ERROR when a client socket times out (-io-timeout): say it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], BlockingIOError):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "closed a connection whose client was too slow (-io-timeout)", (), None, None)
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _configure_logging() -> None:
    """Under gunicorn directly (no logconfig of ours), at least log our lines somewhere."""
    logging.getLogger("gunicorn.error").addFilter(_SlowClientFilter())
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("hraftd").setLevel(logging.INFO)


def _set_log_levels(level: str) -> None:
    logging.getLogger("hraftd").setLevel(level.upper())
    logging.getLogger("pysyncobj").setLevel(level.upper() if level == "debug" else logging.WARNING)
