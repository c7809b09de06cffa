"""The hot requests, ``GET``/``DELETE /key/<key>`` and ``POST /key``: coroutines on the worker's event loop.

Each one is the only handler of its request. It checks the request with the rules of ``hraftd.protocol``, asks
the store with a callback, and awaits the outcome as a future, so a request waiting for Raft holds no thread.
The store calls back from PySyncObj's thread (or at once, on this one); the outcome is handed to the loop with
``call_soon_threadsafe``, and dropped if the request is gone by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

from hraftd.errors import HraftdError
from hraftd.protocol import (
    BadRequest,
    authorize,
    check_parameters,
    check_write,
    error_document,
    json_body,
    parse_json_object,
    path_key,
    read_level,
)
from hraftd.request import Request, Response

KEY_ROUTE = "/key/<key:key>"
WRITE_ROUTE = "/key"
# (route, method) -> endpoint, the names of hraftd.protocol's rules; ``KeyHandlers.route`` answers by it.
ENDPOINTS = {(WRITE_ROUTE, "POST"): "set_keys", (KEY_ROUTE, "GET"): "get_key", (KEY_ROUTE, "DELETE"): "delete_key"}


class AsyncStore(Protocol):
    """What the hot requests need of a store (``hraftd.store.ReplicatedKV`` is one)."""

    applied_index: int

    def read(self, key: str, *, level: str) -> Any: ...
    def write_async(self, items: dict[str, Any], done: Callable[[Any, HraftdError | None], None]) -> None: ...
    def delete_async(self, key: str, done: Callable[[Any, HraftdError | None], None]) -> None: ...
    def sync_reads_async(self, level: str, done: Callable[[HraftdError | None], None]) -> None: ...


class KeyHandlers:
    """The handlers of one node's hot requests."""

    def __init__(self, store: AsyncStore, limits: Any, tokens: Any) -> None:
        self._store = store
        self._limits = limits
        self._tokens = tokens

    def route(self, method: str, path: str) -> tuple[str, str | None, Callable[..., Any] | None] | None:
        """(route, endpoint, handler) of a ``/key`` request, endpoint and handler None when the method is not
        allowed there; None for a path that is not ``/key``'s (the Flask app answers those)."""
        if path == WRITE_ROUTE:
            return (WRITE_ROUTE, "set_keys", self.set_keys) if method == "POST" else (WRITE_ROUTE, None, None)
        if len(path) > 5 and path.startswith("/key/"):
            if method in ("GET", "HEAD"):
                return KEY_ROUTE, "get_key", self.get_key
            if method == "DELETE":
                return KEY_ROUTE, "delete_key", self.delete_key
            return KEY_ROUTE, None, None
        return None

    def allowed_methods(self, route: str) -> str:
        return "POST" if route == WRITE_ROUTE else "DELETE, GET, HEAD"

    def check(self, request: Request, endpoint: str | None) -> dict[str, str]:
        """Authorize the request, refuse unknown query parameters; returns the first value of each parameter."""
        authorize(self._tokens, endpoint, request.header("authorization"))
        parameters = _parameters(request.query) if request.query else {}
        if endpoint is not None:
            check_parameters(endpoint, parameters)
        return parameters

    async def get_key(self, request: Request, parameters: dict[str, str]) -> Response:
        key = path_key(request.path, self._limits)
        level = read_level(parameters.get("level"))
        store = self._store
        if level != "stale":
            error = await _outcome(lambda done: store.sync_reads_async(level, done))
            if error is not None:
                raise error
        index = str(store.applied_index)  # read before the value, so the value reflects at least this index
        item = store.read_item(key)  # the stored value itself: encoded at once, never changed
        if item is None:
            body, headers = error_document(404, "key_not_found", f"key {key!r} does not exist")
            return Response(404, body, [*headers, ("X-Raft-Index", index)])
        return Response(200, json_body({key: item["value"]}), [("X-Raft-Index", index)])

    async def set_keys(self, request: Request, parameters: dict[str, str]) -> Response:
        items = parse_json_object(request.body)
        check_write(items, self._limits)
        revision, error = await _outcome(lambda done: self._store.write_async(items, done))
        if error is not None:
            raise error
        return Response(200, json_body({"revision": revision}))

    async def delete_key(self, request: Request, parameters: dict[str, str]) -> Response:
        key = path_key(request.path, self._limits)
        result, error = await _outcome(lambda done: self._store.delete_async(key, done))
        if error is not None:
            raise error
        existed, revision = result
        return Response(200, json_body({"deleted": existed, "revision": revision}))


@functools.lru_cache(maxsize=256)  # a few query strings recur (level=stale): parse each once
def _parameters(query: str) -> dict[str, str]:
    """The first value of each parameter of a query string (as werkzeug's ``request.args.get``)."""
    parameters: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        parameters.setdefault(name, value)
    return parameters


def _outcome(start: Callable[[Callable[..., None]], None]) -> asyncio.Future[Any]:
    """A future of what ``start`` passes to the callback it is given: one value as is, several as a tuple."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop_thread = threading.get_ident()

    def done(*outcome: Any) -> None:
        if threading.get_ident() == loop_thread:
            _settle(future, outcome)
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the worker is exiting
                loop.call_soon_threadsafe(_settle, future, outcome)

    try:
        start(done)
    except ValueError as error:  # the store cannot take it (e.g. larger than one log entry may be)
        raise BadRequest(str(error), "not_storable") from None
    return future


def _settle(future: asyncio.Future[Any], outcome: tuple[Any, ...]) -> None:
    if not future.done():  # cancelled: the connection closed while the request waited
        future.set_result(outcome[0] if len(outcome) == 1 else outcome)
