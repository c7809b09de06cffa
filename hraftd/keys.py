"""The hot requests: ``/key``, ``/key/<key>``, ``/keys``, ``/txn`` and ``/watch`` (``hraftd.watch``), as
coroutines on the worker's event loop.

Each one is the only handler of its request. It checks the request with the rules of ``hraftd.protocol``, asks
the store with a callback, and awaits the outcome as a future, so a request waiting for Raft holds no thread.
The store calls back from the Raft node's thread (or at once, on this one); the outcome is handed to the loop
with ``call_soon_threadsafe``, and dropped if the request is gone by then. A read is answered from one
consistent view of the state, taken under the state machine's lock after the read level's wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

from hraftd.errors import HraftdError
from hraftd.eventwindow import EventWindow
from hraftd.protocol import (
    PAGE_BYTES,
    BadRequest,
    authorize,
    boolean,
    check_parameters,
    check_write,
    error_document,
    idempotency_key,
    json_body,
    key_parameter,
    lease_id,
    page_size,
    parse_json_object,
    path_key,
    read_level,
    revision,
)
from hraftd.request import Request, Response
from hraftd.txnbody import txn_command
from hraftd.watch import WATCH_ROUTE, WatchHandler

KEY_ROUTE = "/key/<key:key>"
WRITE_ROUTE = "/key"
KEYS_ROUTE = "/keys"
TXN_ROUTE = "/txn"
# (route, method) -> endpoint, the names of hraftd.protocol's rules and of the handlers that answer them.
ENDPOINTS = {(WRITE_ROUTE, "POST"): "set_keys", (KEY_ROUTE, "GET"): "get_key", (KEY_ROUTE, "DELETE"): "delete_key",
             (KEYS_ROUTE, "GET"): "list_keys", (KEYS_ROUTE, "DELETE"): "delete_keys", (TXN_ROUTE, "POST"): "txn",
             (WATCH_ROUTE, "GET"): "watch"}
_METHODS: dict[str, dict[str, str]] = {}
for (_route, _method), _endpoint in ENDPOINTS.items():
    _METHODS.setdefault(_route, {})[_method] = _endpoint
_ALLOWED = {route: ", ".join(sorted({*methods, *(("HEAD",) if "GET" in methods else ())}))
            for route, methods in _METHODS.items()}
_CHUNK = 100  # items encoded at a time while a page is measured against PAGE_BYTES


class AsyncStore(Protocol):
    """What the hot requests need of a store (``hraftd.store.ReplicatedKV`` is one)."""

    applied_index: int
    event_window: EventWindow

    def submit(self, command: dict[str, Any], done: Callable[[Any, HraftdError | None], None]) -> None: ...
    def sync_reads_async(self, level: str, done: Callable[[HraftdError | None], None]) -> None: ...
    def read_item(self, key: str) -> dict[str, Any] | None: ...
    def read_page(self, prefix: str, start_after: str | None, limit: int | None,
                  keys_only: bool) -> tuple[int, list[dict[str, Any]], bool]: ...
    def read_count(self, prefix: str) -> tuple[int, int]: ...


class KeyHandlers:
    """The handlers of one node's hot requests."""

    def __init__(self, store: AsyncStore, limits: Any, tokens: Any) -> None:
        self._store = store
        self._limits = limits
        self._tokens = tokens
        self.watches = WatchHandler(store.event_window, limits)

    def route(self, method: str, path: str) -> tuple[str, str | None, Callable[..., Any] | None] | None:
        """(route, endpoint, handler) of a hot request, endpoint and handler None when the method is not
        allowed there; None for a path that is not theirs (the Flask app answers those)."""
        if len(path) > 5 and path.startswith("/key/"):
            route = KEY_ROUTE
        elif path in _METHODS:
            route = path
        else:
            return None
        endpoint = _METHODS[route].get("GET" if method == "HEAD" else method)
        return (route, None, None) if endpoint is None else (route, endpoint, getattr(self, endpoint))

    def allowed_methods(self, route: str) -> str:
        return _ALLOWED[route]

    def check(self, request: Request, endpoint: str | None) -> dict[str, str]:
        """Authorize the request, refuse unknown query parameters; returns the first value of each parameter."""
        if self._tokens is not None:
            authorize(self._tokens, endpoint, request.header("authorization"))
        parameters = _parameters(request.query) if request.query else {}
        if endpoint is not None:
            check_parameters(endpoint, parameters)
        return parameters

    # ----- one key -----

    async def get_key(self, request: Request, parameters: dict[str, str]) -> Response:
        key = path_key(request.path, self._limits)
        level = read_level(parameters.get("level"))
        meta = boolean(parameters, "meta") if parameters else False
        store = self._store
        if level != "stale":
            await self._sync_reads(level)
        index = str(store.applied_index)  # read before the value, so the value reflects at least this index
        item = store.read_item(key)  # the stored value itself: encoded at once, never changed
        if item is None:
            body, headers = error_document(404, "key_not_found", f"key {key!r} does not exist")
            return Response(404, body, [*headers, ("X-Raft-Index", index)])
        if meta:
            body = json_body({"key": key, "value": item["value"], "create_revision": item["create_revision"],
                              "mod_revision": item["mod_revision"], "version": item["version"]})
        else:
            body = json_body({key: item["value"]})
        return Response(200, body, [("X-Raft-Index", index), ("X-Revision", str(item["mod_revision"]))])

    async def set_keys(self, request: Request, parameters: dict[str, str]) -> Response:
        items = parse_json_object(request.body)
        check_write(items, self._limits)
        command: dict[str, Any] = {"op": "put", "items": items}
        if parameters:
            if_revision, lease = revision(parameters.get("if_revision")), lease_id(parameters.get("lease"))
            if if_revision is not None:
                if len(items) != 1:
                    raise BadRequest(f"a write with if_revision writes exactly one key, not {len(items)}",
                                     "not_one_key")
                command["if_revision"] = if_revision
            if lease is not None:
                command["lease"] = lease
        result = await self._submit(command, request)
        return Response(200, json_body({"revision": result["revision"]}))

    async def delete_key(self, request: Request, parameters: dict[str, str]) -> Response:
        command: dict[str, Any] = {"op": "delete", "key": path_key(request.path, self._limits)}
        if_revision = revision(parameters.get("if_revision")) if parameters else None
        if if_revision is not None:
            command["if_revision"] = if_revision
        result = await self._submit(command, request)
        return Response(200, json_body({"deleted": result["deleted"], "revision": result["revision"]}))

    # ----- ranges and transactions -----

    async def list_keys(self, request: Request, parameters: dict[str, str]) -> Response:
        prefix = key_parameter(parameters, "prefix", self._limits) or ""
        start_after = key_parameter(parameters, "start_after", self._limits)
        limit = page_size(parameters.get("limit"))
        keys_only, count_only = boolean(parameters, "keys_only"), boolean(parameters, "count_only")
        if count_only and (start_after is not None or "limit" in parameters or keys_only):
            raise BadRequest("count_only counts the whole prefix: it takes no start_after, limit or keys_only",
                             "bad_parameter")
        level = read_level(parameters.get("level"))
        store = self._store
        if level != "stale":
            await self._sync_reads(level)
        index = str(store.applied_index)
        if count_only:
            data_revision, count = store.read_count(prefix)
            return Response(200, json_body({"revision": data_revision, "count": count}), [("X-Raft-Index", index)])
        data_revision, items, more = store.read_page(prefix, start_after, limit, keys_only)
        return Response(200, _page_body(data_revision, items, more), [("X-Raft-Index", index)])

    async def delete_keys(self, request: Request, parameters: dict[str, str]) -> Response:
        prefix = key_parameter(parameters, "prefix", self._limits)
        if prefix is None:
            raise BadRequest("DELETE /keys needs a non-empty prefix: deleting every key is not done by accident",
                             "empty_prefix")
        result = await self._submit({"op": "delete_prefix", "prefix": prefix}, request)
        return Response(200, json_body({"deleted": result["deleted"], "revision": result["revision"]}))

    async def txn(self, request: Request, parameters: dict[str, str]) -> Response:
        command = txn_command(parse_json_object(request.body), self._limits)
        return Response(200, json_body(await self._submit(command, request)))

    async def watch(self, request: Request, parameters: dict[str, str]) -> Response:
        return await self.watches.answer(request, parameters, self._sync_reads)

    # ----- the store, awaited -----

    async def _sync_reads(self, level: str) -> None:
        error = await _outcome(lambda done: self._store.sync_reads_async(level, done))
        if error is not None:
            raise error

    async def _submit(self, command: dict[str, Any], request: Request) -> dict[str, Any]:
        """The result of a write; with the request's ``Idempotency-Key``, applied at most once."""
        key = idempotency_key(request.header("idempotency-key"))
        if key is not None:
            command["idempotency_key"] = key
        result, error = await _outcome(lambda done: self._store.submit(command, done))
        if error is not None:
            raise error
        return result


def _page_body(data_revision: int, items: list[dict[str, Any]], more: bool) -> bytes:
    """A page of a range as JSON, cut short (``more``) before its items pass PAGE_BYTES; at least one item."""
    parts: list[str] = []
    room = PAGE_BYTES
    for start in range(0, len(items), _CHUNK):
        chunk = items[start:start + _CHUNK]
        text = json.dumps(chunk, separators=(",", ":"))[1:-1]
        if len(text) <= room:
            parts.append(text)
            room -= len(text) + 1
            continue
        for item in chunk:  # this chunk crosses the bound: take what fits of it, item by item
            text = json.dumps(item, separators=(",", ":"))
            if len(text) > room and parts:
                return _page(data_revision, parts, True)
            parts.append(text)
            room -= len(text) + 1
    return _page(data_revision, parts, more)


def _page(data_revision: int, items: list[str], more: bool) -> bytes:
    return f'{{"revision":{data_revision},"items":[{",".join(items)}],"more":{json.dumps(more)}}}\n'.encode()


@functools.lru_cache(maxsize=256)  # a few query strings recur (level=stale): parse each once
def _parameters(query: str) -> dict[str, str]:
    """The first value of each parameter of a query string (as werkzeug's ``request.args.get``). Bytes that are
    not UTF-8 become lone surrogates, which the checks of keys refuse."""
    parameters: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
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
