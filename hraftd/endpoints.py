"""The nodes a client talks to: one pool of keep-alive HTTP connections per node, and one request's exchange.

Stdlib only, and nothing of the server side. A pool is shared by threads: each exchange takes a connection of
its own (an idle one, or a new one) and gives it back once the answer has been read whole. An exchange either
answers (status, headers, body) or raises ``ExchangeFailed``, which says whether the request may have
reached the node (so a write may have been applied).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterable

_RESET = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_IDLE_PER_NODE = 32  # idle connections kept per node; more threads than that open and close their own


class ExchangeFailed(Exception):
    """No answer came. ``sent``: the request may have reached the node. The cause is ``__cause__``."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class Endpoint:
    """One node: ``http://host:port`` (or ``https``, or a URL with a path prefix), and its idle connections."""

    def __init__(self, address: str, ssl_context: ssl.SSLContext | None) -> None:
        url = urllib.parse.urlsplit(address if "://" in address else
                                    f"{'https' if ssl_context else 'http'}://{address}")
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise ValueError(f"{address!r} is not HOST:PORT or an http(s):// URL of a node")
        try:
            port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"{address!r} has a bad port") from None
        self.scheme, self.host, self.port = url.scheme, url.hostname, port
        self.prefix = url.path.rstrip("/")
        self.name = f"{self.host}:{port}" if ":" not in self.host else f"[{self.host}]:{port}"
        self._context = (ssl_context or ssl.create_default_context()) if url.scheme == "https" else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{self.scheme}://{self.name}{self.prefix}"

    def matches(self, addr: str) -> bool:
        """Whether ``host:port`` (a node's advertised HTTP address) names this endpoint."""
        host, _, port = addr.rpartition(":")
        return port.isdigit() and int(port) == self.port and host.strip("[]").lower() == self.host.lower()

    def exchange(self, method: str, path: str, body: bytes | None, headers: dict[str, str],
                 timeout: float) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Send one request and read its answer whole, on a pooled connection. A reused connection that the
        node closed (idle too long, most likely) is replaced once at once. The client's writes carry
        idempotency keys, so sending one again is safe even if the node did read it before it closed."""
        connection, reused = self._take(timeout)
        try:
            return self._send(connection, method, path, body, headers)
        except ExchangeFailed as failure:
            if not (reused and isinstance(failure.__cause__, _RESET)):
                raise
        try:
            return self._send(self._new(timeout), method, path, body, headers)
        except ExchangeFailed as failure:
            failure.sent = True  # the first attempt may have reached the node
            raise

    def _send(self, connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
              headers: dict[str, str]) -> tuple[int, http.client.HTTPMessage, bytes]:
        try:
            if connection.sock is None:
                connection.connect()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise ExchangeFailed(f"cannot connect to {self.name}: {_describe(error)}", sent=False) from error
        try:
            connection.request(method, self.prefix + path, body, headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise ExchangeFailed(f"no answer from {self.name}: {_describe(error)}", sent=True) from error
        if response.will_close:
            connection.close()
        else:
            self._give_back(connection)
        return response.status, response.headers, data

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            return self._new(timeout), False
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection, True

    def _new(self, timeout: float) -> http.client.HTTPConnection:
        if self._context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self._context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < _IDLE_PER_NODE:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def endpoints(addresses: str | Iterable[str], ssl_context: ssl.SSLContext | None) -> list[Endpoint]:
    listed = [addresses] if isinstance(addresses, str) else list(addresses)
    if not listed:
        raise ValueError("give at least one node's address")
    return [Endpoint(address, ssl_context) for address in listed]


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"the host does not resolve ({error.strerror})"
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
