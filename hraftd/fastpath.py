"""The two requests that carry the load, ``GET /key/<key>`` and ``POST /key``, answered without Flask.

Per request, Flask and werkzeug (request and response objects, routing, contexts, hooks) cost more CPU than
the store does, and a node's HTTP worker is CPU-bound (docs/benchmarks.md). This WSGI middleware answers the
plain form of the two hot requests itself, with the rules of ``hraftd.protocol``. Every other request, and any
hot request that is not plain (a query it does not expect, a body or key that fails a rule, a missing or
refused token, a chunked body, HEAD), goes to the Flask app untouched, so refusals keep one home there. Only
what happens after the store is called, an answer or a store error, is answered here.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, Protocol

from hraftd.auth import TokenFile, allows
from hraftd.errors import HraftdError
from hraftd.protocol import (
    KEY_PATH_PREFIX,
    BadRequest,
    check_write,
    error_document,
    internal_error_message,
    json_body,
    parse_json_object,
    path_key,
    status_of,
)
from hraftd.settings import Limits

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_LEVEL_OF_QUERY = {"": "linearizable", "level=linearizable": "linearizable", "level=stale": "stale"}
Answer = tuple[int, bytes, list[tuple[str, str]], str]  # status, body, extra headers, X-Raft-Index


class KeyStore(Protocol):
    node_id: str
    applied_index: int

    def sync_reads(self, level: str) -> None: ...
    def read(self, key: str, *, level: str) -> Any: ...
    def update(self, items: dict[str, Any]) -> int: ...


class RequestMetrics(Protocol):
    def observe(self, route: str, method: str, status: int, seconds: float) -> None: ...


class KeyFastPath:
    """WSGI middleware: the hot requests here, everything else to ``app``."""

    def __init__(self, app: WSGIApp, store: KeyStore, limits: Limits, metrics: RequestMetrics,
                 tokens: TokenFile | None) -> None:
        self._app = app
        self._store = store
        self._limits = limits
        self._metrics = metrics
        self._tokens = tokens

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")
        started = time.perf_counter()
        if method == "GET" and path.startswith(KEY_PATH_PREFIX) and self._allowed(environ, "read"):
            route, handler = "/key/<key:key>", self._get
        elif method == "POST" and path == "/key" and self._allowed(environ, "write"):
            route, handler = "/key", self._post
        else:
            return self._app(environ, start_response)
        try:
            answer = handler(environ)
        except HraftdError as error:
            answer = self._error(status_of(error), error.code, str(error))
        except Exception:
            answer = self._error(500, "internal", internal_error_message(method, path))
        if answer is None:
            return self._app(environ, start_response)
        status, body, headers, index = answer
        start_response(f"{status} {HTTPStatus(status).phrase.upper()}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            *headers, ("X-Hraftd-Node", self._store.node_id), ("X-Raft-Index", index),
        ])
        self._metrics.observe(route, method, status, time.perf_counter() - started)
        return [body]

    def _error(self, status: int, code: str, message: str) -> Answer:
        body, headers = error_document(status, code, message)
        return status, body, headers, str(self._store.applied_index)

    def _allowed(self, environ: dict[str, Any], needed: str) -> bool:
        if self._tokens is None:
            return True
        role = self._tokens.role_of_authorization(environ.get("HTTP_AUTHORIZATION", ""))
        return role is not None and allows(role, needed)

    def _get(self, environ: dict[str, Any]) -> Answer | None:
        level = _LEVEL_OF_QUERY.get(environ.get("QUERY_STRING", ""))
        if level is None:
            return None
        try:
            key = path_key(environ["PATH_INFO"], self._limits)
        except BadRequest:
            return None
        store = self._store
        store.sync_reads(level)
        index = str(store.applied_index)  # read before the value, so the value reflects at least this index
        try:
            value = store.read(key, level="stale")
        except KeyError:
            body, headers = error_document(404, "key_not_found", f"key {key!r} does not exist")
            return 404, body, headers, index
        return 200, json_body({key: value}), [], index

    def _post(self, environ: dict[str, Any]) -> Answer | None:
        length_header = environ.get("CONTENT_LENGTH", "")
        if not length_header.isdecimal():
            return None
        length = int(length_header)
        if length >= self._limits.max_body_bytes:
            return None
        try:
            raw = environ["wsgi.input"].read(length)
        except Exception as error:  # a read timeout, a reset: the Flask app answers as for any unreadable body
            environ["wsgi.input"] = _FailedBody(error)
            return None
        try:
            if len(raw) != length:
                raise BadRequest("the body was cut short")
            items = parse_json_object(raw)
            check_write(items, self._limits)
        except BadRequest:
            environ["wsgi.input"] = io.BytesIO(raw)  # the Flask app reads it again and says what is wrong
            return None
        revision = self._store.update(items)
        return 200, json_body({"revision": revision}), [], str(self._store.applied_index)


class _FailedBody(io.RawIOBase):
    """A body whose reading failed: reading it again fails the same way."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise self._error
