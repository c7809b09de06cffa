"""The HTTP app of a node: every request the server has read whole comes here, and leaves with one answer.

The hot requests (``hraftd.keys``: ``/key``, ``/keys``, ``/txn``) run as coroutines on the worker's event
loop. Every other request goes to the Flask app (``hraftd.web``) on a small thread pool; when more than
``max_pending`` requests already wait for a thread, the next is answered ``503 busy`` at once. Whoever
answered, this is where the node's headers (``X-Hraftd-Node``, ``X-Raft-Index``), the error documents of the
server's own refusals and the request metrics are added, once for all.
"""

from __future__ import annotations

import asyncio
import io
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hraftd import peercred, web
from hraftd.errors import HraftdError
from hraftd.keys import KeyHandlers
from hraftd.metrics import NodeMetrics, WatchCollector
from hraftd.protocol import BadRequest, error_details, error_document, internal_error_message, status_of
from hraftd.request import Request, Response
from hraftd.settings import Limits
from hraftd.web import ENDPOINT_KEY, ROUTE_KEY

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_WHOLE_BODY_UP_TO = 64 * 1024  # a Flask answer larger than this is streamed from its thread, chunk by chunk
_END = object()


def build_app(store: Any, *, limits: Limits | None = None, tokens: Any = None, peer_tls: ssl.SSLContext | None = None,
              threads: int = 16, max_pending: int = 64, io_timeout: float = 10.0,
              operator: Callable[[str, int, str, int], bool] = peercred.is_operator) -> NodeApp:
    """The app of a node over ``store``, with the Flask app of the requests that are not hot.
    ``operator``: who may change membership without tokens (``web.create_app``)."""
    metrics = NodeMetrics(store)
    flask_app = web.create_app(store, metrics=metrics, tokens=tokens, peer_tls=peer_tls, operator=operator)
    return NodeApp(store, flask_app, limits=limits or Limits(), tokens=tokens, metrics=metrics, threads=threads,
                   max_pending=max_pending, io_timeout=io_timeout)


class NodeApp:
    """One node's answers to HTTP requests. ``respond`` is called on the worker's event loop."""

    def __init__(self, store: Any, flask_app: WSGIApp, *, limits: Limits, tokens: Any, metrics: NodeMetrics,
                 threads: int, max_pending: int, io_timeout: float) -> None:
        self.store = store
        self.limits = limits
        self.io_timeout = io_timeout
        self.metrics = metrics
        self._keys = KeyHandlers(store, limits, tokens)
        metrics.registry.register(WatchCollector(self._keys.watches.hub))
        self._flask = flask_app
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="hraftd-http")
        self._in_pool = 0
        self._pool_limit = threads + max_pending

    async def respond(self, request: Request) -> Response:
        started = time.perf_counter()
        route, endpoint, native = "unmatched", None, None
        try:
            native = self._keys.route(request.method, request.path)
            if native is None:
                response = await self._call_flask(request)
            else:
                route, endpoint, handler = native
                parameters = self._keys.check(request, endpoint)
                response = (await handler(request, parameters) if handler is not None
                            else self._not_allowed(request, route))
        except BadRequest as error:
            response = self._error(error.status, error.code, str(error))
        except HraftdError as error:
            response = self._error(status_of(error), error.code, str(error), error_details(error))
        except Exception:
            response = self._error(500, "internal", internal_error_message(request.method, request.path))
        if native is not None:
            response.route = route if endpoint is not None else "unmatched"  # as Flask: a 405 matched no route
            response.endpoint = endpoint
        return self._finish(request.method, response, started)

    def refuse(self, status: int, code: str, message: str, method: str = "OTHER",
               headers: Iterable[tuple[str, str]] = ()) -> Response:
        """The server's own answer to a request it could not read or will not serve, as a node's answer."""
        response = self._error(status, code, message)
        response.headers.extend(headers)
        return self._finish(method, response, time.perf_counter())

    def stop_waiting(self) -> None:
        """The node stops: requests that wait for changes (watches) answer now."""
        self._keys.watches.hub.stop()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """gunicorn loads only callable apps; hraftd's worker calls ``respond``, and the node refuses to start
        under any other worker, so this WSGI face only says so."""
        body, headers = error_document(500, "internal", "this app is served by hraftd's own gunicorn worker only")
        start_response("500 Internal Server Error", [("Content-Type", "application/json"), *headers])
        return [body]

    def _not_allowed(self, request: Request, route: str) -> Response:
        allowed = self._keys.allowed_methods(route)
        if request.method == "OPTIONS":
            return Response(200, b"", [("Allow", allowed), ("Content-Type", "text/html; charset=utf-8")])
        response = self._error(405, "method_not_allowed", "The method is not allowed for the requested URL.")
        response.headers.append(("Allow", allowed))
        return response

    def _error(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Response:
        body, headers = error_document(status, code, message, details)
        return Response(status, body, headers)

    def _finish(self, method: str, response: Response, started: float) -> Response:
        headers = response.headers
        headers.append(("X-Hraftd-Node", self.store.node_id))
        if not any(name == "X-Raft-Index" for name, _ in headers):
            headers.append(("X-Raft-Index", str(self.store.applied_index)))
        self.metrics.observe(response.route, method, response.status, time.perf_counter() - started)
        return response

    # ----- the Flask app, on the thread pool -----

    async def _call_flask(self, request: Request) -> Response:
        if self._in_pool >= self._pool_limit:
            return self._error(503, "busy", "the node is busy: too many requests are waiting; retry")
        loop = asyncio.get_running_loop()
        environ = _environ(request)
        self._in_pool += 1
        done = loop.run_in_executor(self._pool, self._run_wsgi, environ)
        done.add_done_callback(self._left_pool)  # when the thread is done, even if the request is cancelled
        status, headers, body, rest = await asyncio.shield(done)
        length = None
        own_headers = []
        for name, value in headers:
            if name.lower() == "content-length":
                length = int(value)
            else:
                own_headers.append((name, value))
        response = Response(status, body, own_headers, route=environ[ROUTE_KEY], endpoint=environ[ENDPOINT_KEY],
                            length=length)
        if rest is not None:
            response.stream = self._stream(body, rest)
        return response

    def _left_pool(self, _: Any) -> None:
        self._in_pool -= 1

    def _run_wsgi(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes, Iterator[bytes] | None]:
        """Call the Flask app; its answer whole, or its first part and the iterator of the rest."""
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [int(status.split(" ", 1)[0]), headers]

        result = self._flask(environ, start_response)
        chunks, size = [], 0
        iterator = iter(result)
        for chunk in iterator:
            chunks.append(chunk)
            size += len(chunk)
            if size > _WHOLE_BODY_UP_TO:
                return started[0], started[1], b"".join(chunks), _closing(iterator, result)
        _close(result)
        return started[0], started[1], b"".join(chunks), None

    async def _stream(self, first: bytes, rest: Iterator[bytes]) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        try:
            yield first
            while (chunk := await loop.run_in_executor(self._pool, next, rest, _END)) is not _END:
                yield chunk
        finally:
            await loop.run_in_executor(self._pool, _close, rest)


def _closing(iterator: Iterator[bytes], result: Any) -> Iterator[bytes]:
    try:
        yield from iterator
    finally:
        _close(result)


def _close(result: Any) -> None:
    if hasattr(result, "close"):
        result.close()


def _environ(request: Request) -> dict[str, Any]:
    """The WSGI environ of a request whose body has been read whole."""
    environ = {
        "REQUEST_METHOD": request.method, "SCRIPT_NAME": "", "PATH_INFO": request.path,
        "QUERY_STRING": request.query, "RAW_URI": request.target, "REQUEST_URI": request.target,
        "SERVER_NAME": request.local_addr or "localhost", "SERVER_PORT": str(request.local_port),
        "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
        "REMOTE_ADDR": request.remote_addr, "REMOTE_PORT": str(request.remote_port),
        "CONTENT_LENGTH": str(len(request.body)), "wsgi.version": (1, 0), "wsgi.url_scheme": request.scheme,
        "wsgi.input": io.BytesIO(request.body), "wsgi.input_terminated": True, "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        ROUTE_KEY: "unmatched", ENDPOINT_KEY: None,
    }
    for name, value in request.headers:
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name in ("content-length", "transfer-encoding") or "_" in name:
            continue  # the body is whole; a name with "_" would pass for one with "-" (as gunicorn, dropped)
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
