"""The gunicorn worker class of a node: one event loop (uvloop) serving HTTP/1.1 with ``hraftd.connection``.

gunicorn's master binds the listening sockets, starts this worker and restarts it if it dies; the worker loads
the node's app (``hraftd.server``), serves every connection on its loop, and sends gunicorn its heartbeat. On
SIGTERM it stops accepting, lets the requests in progress finish (up to ``--graceful-timeout``), then exits;
SIGINT and SIGQUIT stop it at once. ``HttpServer`` keeps the worker's connections: at most
``--worker-connections`` open, the longest idle closed to make room for a new one, and every connection's
deadline enforced once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import resource
import signal
import sys
from typing import Any

import uvloop
from gunicorn.arbiter import Arbiter
from gunicorn.sock import ssl_context
from gunicorn.workers.base import Worker

from hraftd.connection import HttpConnection

_SWEEP_INTERVAL = 1.0  # seconds between deadline checks and heartbeats
_SPARE_FILES = 256  # file descriptors beyond the connection cap: the Raft node's sockets, its journal, logs


class NodeWorker(Worker):
    """A gunicorn worker whose app is a ``hraftd.app.NodeApp`` (anything with ``respond``, ``refuse`` and
    ``stop_waiting``)."""

    def init_signals(self) -> None:
        # The loop handles the stop signals (run); gunicorn's handlers would exit from inside a callback.
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.siginterrupt(signal.SIGUSR1, False)

    def run(self) -> None:
        if not hasattr(self.wsgi, "respond"):
            self.log.error("%s serves hraftd's app only, not %r", type(self).__name__, self.wsgi)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        self._allow_open_files(self.cfg.worker_connections + _SPARE_FILES)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        app = self.wsgi
        access_log = self.log.access_log if self.cfg.accesslog else None
        server = HttpServer(app, loop, keepalive=self.cfg.keepalive, max_connections=self.cfg.worker_connections,
                            limit_request_line=self.cfg.limit_request_line or 8190,
                            limit_request_fields=self.cfg.limit_request_fields or 100,
                            limit_request_field_size=self.cfg.limit_request_field_size or 8190,
                            scheme="https" if self.cfg.is_ssl else "http", access_log=access_log)
        tls = ssl_context(self.cfg) if self.cfg.is_ssl else None
        listeners = [await loop.create_server(server.connection, sock=listener.sock, ssl=tls,
                                              ssl_handshake_timeout=app.io_timeout if tls else None,
                                              backlog=self.cfg.backlog)
                     for listener in self.sockets]
        stopping = loop.create_future()

        def stop(graceful: bool) -> None:
            # A stop signal sent to the worker alone stops the node, as one sent to the master does; otherwise
            # gunicorn would start a new worker at once. (When the master sent it, it is stopping already.)
            if os.getppid() == self.ppid:
                os.kill(self.ppid, signal.SIGTERM)
            if not stopping.done():
                stopping.set_result(graceful)

        for signum, graceful in ((signal.SIGTERM, True), (signal.SIGINT, False), (signal.SIGQUIT, False)):
            loop.add_signal_handler(signum, stop, graceful)
        while not stopping.done():
            self.notify()
            if self.ppid != os.getppid():  # the master is gone
                self.log.info("parent changed, stopping")
                stopping.set_result(False)
                break
            server.sweep()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopping), _SWEEP_INTERVAL)
        for listener in listeners:
            listener.close()
        app.stop_waiting()
        if stopping.result():
            await self._finish_requests(server, loop.time() + self.cfg.graceful_timeout)
        for connection in list(server.connections):
            connection.close()
        app.close()

    async def _finish_requests(self, server: HttpServer, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while server.busy() and loop.time() < deadline:
            server.close_idle()
            self.notify()
            await asyncio.sleep(0.05)

    def _allow_open_files(self, wanted: int) -> None:
        """Raise the soft limit on open files towards the hard one, so the connection cap can be reached."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        if soft != resource.RLIM_INFINITY and soft < wanted:
            self.log.warning("at most %d open files (ulimit -n): fewer than %d connections can be open", soft,
                             self.cfg.worker_connections)

    def handle_usr1(self, sig: int, frame: Any) -> None:
        self.log.reopen_files()


class HttpServer:
    """The connections of one worker, their cap, and their deadlines (checked by ``sweep``, once a second)."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop, *, keepalive: float, max_connections: int,
                 limit_request_line: int = 8190, limit_request_fields: int = 100,
                 limit_request_field_size: int = 8190, scheme: str = "http",
                 access_log: logging.Logger | None = None) -> None:
        self.app, self.loop, self.scheme, self.access_log = app, loop, scheme, access_log
        self.io_timeout: float = app.io_timeout
        self.max_body: int = app.limits.max_body_bytes
        self.linger_bytes = max(16 * 2**20, 2 * self.max_body)
        self.keepalive, self.max_connections = keepalive, max_connections
        self.limit_line, self.limit_fields, self.limit_field = (limit_request_line, limit_request_fields,
                                                                limit_request_field_size)
        self.limit_head = limit_request_line + limit_request_fields * (limit_request_field_size + 4) + 4
        self.connections: set[HttpConnection] = set()
        self.refused: set[HttpConnection] = set()  # over the cap: answered 503, waiting for the client to read it
        self.date_line = ""
        self.sweep()

    def connection(self) -> HttpConnection:
        return HttpConnection(self)

    def admit(self, connection: HttpConnection) -> bool:
        """Count a new connection in; at the cap, close the one idle the longest for it, or refuse it."""
        if len(self.connections) >= self.max_connections:
            idle = [c for c in self.connections if c.is_idle()]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c.idle_since)
            oldest.close()
            self.connections.discard(oldest)
        self.connections.add(connection)
        return True

    def sweep(self) -> None:
        """Enforce every connection's deadline; refresh the Date header."""
        self.date_line = f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
        now = self.loop.time()
        for connection in [c for c in (*self.connections, *self.refused) if c.overdue(now)]:
            connection.expire(now)

    def busy(self) -> bool:
        """Whether any request is being answered or waits to be."""
        return any(c.busy or c.pending for c in self.connections)

    def close_idle(self) -> None:
        for connection in [c for c in self.connections if c.is_idle()]:
            connection.close()
