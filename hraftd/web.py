"""The HTTP API: a Flask app factory with thin handlers over the store.

Handlers parse and validate, call the store, and leave every error to the handlers registered once in
``create_app``. The app needs only the small ``Store`` interface below, so it is read and tested apart.
The plain form of the two hot requests, ``GET /key/<key>`` and ``POST /key``, is answered in front of Flask
by ``hraftd.fastpath`` with the same rules (``hraftd.protocol``); everything else reaches these handlers.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.routing import BaseConverter

from hraftd import peercred
from hraftd.auth import TokenFile, allows
from hraftd.errors import HraftdError, NotLeaderError, OutcomeUnknownError, UnavailableError, WrongSecretError
from hraftd.fastpath import KeyFastPath
from hraftd.metrics import NodeMetrics
from hraftd.protocol import (
    READ_LEVELS,
    BadRequest,
    check_write,
    error_document,
    internal_error_message,
    parse_json_object,
    path_key,
    status_of,
)
from hraftd.settings import Limits, normalize_addr
from hraftd.ui import ui

_FORWARD_HEADER = "X-Hraftd-Forwarded"
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
_MAX_FORWARDS = 3
# The role each endpoint needs when tokens are configured; endpoints not named here need none.
_ROLE_OF_ENDPOINT = {
    "api.get_key": "read",
    "api.status": "read",
    "api.metrics": "read",
    "api.backup": "read",
    "api.set_keys": "write",
    "api.delete_key": "write",
    "api.join": "admin",
    "api.join_secret": "admin",
    "api.remove": "admin",
    "ui.cluster": "read",
}
# Without tokens, these need the node's operator: a process of the user running it (or root), on its machine.
_OPERATOR_ONLY = frozenset({"api.join_secret", "api.remove"})
# The query parameters each endpoint accepts; any other is refused rather than silently ignored.
_PARAMETERS_OF_ENDPOINT = {"api.get_key": {"level"}}


class Store(Protocol):
    """What the HTTP API needs of a store (``hraftd.store.ReplicatedKV`` is one)."""

    node_id: str
    timeout: float
    applied_index: int
    revision: int
    secret: str | None
    cluster_id: str

    def sync_reads(self, level: str) -> None: ...
    def read(self, key: str, *, level: str) -> Any: ...
    def update(self, items: dict[str, Any]) -> int: ...
    def delete(self, key: str) -> bool: ...
    def add_member(self, node_id: str, raft_addr: str, http_addr: str | None, proof: str | None,
                   force: bool) -> bool: ...
    def remove_member(self, node_id: str) -> None: ...
    def status(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    def is_ready(self) -> bool: ...
    def is_alive(self) -> bool: ...
    def consistent_copy(self) -> tuple[int, int, dict[str, Any]]: ...


class KeyConverter(BaseConverter):
    """Any non-empty rest of the path, slashes included, also a leading one (werkzeug's path converter refuses)."""

    regex = ".+"
    part_isolating = False


api = Blueprint("api", __name__)


def create_app(
    store: Store,
    *,
    limits: Limits | None = None,
    tokens: TokenFile | None = None,
    peer_tls: ssl.SSLContext | None = None,
    operator: Callable[[str, int], bool] = peercred.is_operator,
) -> Flask:
    """The API of one node. ``tokens``: require bearer tokens. ``peer_tls``: other nodes speak HTTPS.
    ``operator``: whether a client at (ip, port) is this node's operator, who may change membership without
    tokens."""
    limits = limits or Limits()
    app = Flask("hraftd", static_folder=None)  # an API only: no static files for anyone
    app.url_map.merge_slashes = False  # a key may start with or contain "//": never redirect it elsewhere
    app.url_map.converters["key"] = KeyConverter
    metrics = NodeMetrics(store)
    app.config.update(STORE=store, LIMITS=limits, TOKENS=tokens, PEER_TLS=peer_tls, METRICS=metrics, OPERATOR=operator,
                      MAX_CONTENT_LENGTH=limits.max_body_bytes)
    app.json.sort_keys = False
    app.register_blueprint(api)
    app.register_blueprint(ui)
    app.before_request(_start_clock)
    app.before_request(_authorize)
    app.before_request(_refuse_unknown_parameters)
    app.register_error_handler(BadRequest, lambda error: _error(error.status, error.code, str(error)))
    app.register_error_handler(HraftdError, _store_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.after_request(_add_node_headers)
    app.after_request(_count_request)
    app.wsgi_app = KeyFastPath(app.wsgi_app, store, limits, metrics, tokens)  # type: ignore[method-assign]
    return app


def _store() -> Store:
    return current_app.config["STORE"]


def _limits() -> Limits:
    return current_app.config["LIMITS"]


@api.post("/key")
def set_keys() -> Response:
    items = _json_object()
    check_write(items, _limits())
    return jsonify(revision=_store().update(items))


@api.get("/key/<key:key>")
def get_key(key: str) -> Response:
    key = path_key(request.environ["PATH_INFO"], _limits())
    level = request.args.get("level", "linearizable")
    if level not in READ_LEVELS:
        raise BadRequest(f"unknown read level {level!r}: use linearizable or stale", "bad_level")
    store = _store()
    store.sync_reads(level)
    index = store.applied_index  # read before the value, so the value reflects at least this index
    try:
        value = store.read(key, level="stale")
    except KeyError:
        response = _error(404, "key_not_found", f"key {key!r} does not exist")
    else:
        response = jsonify({key: value})
    response.headers["X-Raft-Index"] = str(index)
    return response


@api.delete("/key/<key:key>")
def delete_key(key: str) -> Response:
    key = path_key(request.environ["PATH_INFO"], _limits())
    store = _store()
    return jsonify(deleted=store.delete(key), revision=store.revision)


@api.post("/join")
def join() -> Response:
    body = _json_object()
    node_id, raft_addr = _string_field(body, "id"), _address_field(body, "addr")
    http_addr = _address_field(body, "http_addr") if body.get("http_addr") is not None else None
    proof = _string_field(body, "proof") if body.get("proof") is not None else None
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("field 'force' must be true or false", "bad_field")
    store = _store()
    if current_app.config["TOKENS"] is None and store.secret and proof is None and not _from_operator():
        raise WrongSecretError("a node may join only with proof that it holds the cluster secret, or when the "
                               "request comes from this node's own user on this machine")
    try:
        changed = store.add_member(node_id, raft_addr, http_addr, proof, force)
    except NotLeaderError as error:
        return _forward_to_leader(error, body)
    return jsonify(id=node_id, addr=raft_addr, http_addr=http_addr, changed=changed)


@api.post("/join/secret")
def join_secret() -> Response:
    """The cluster secret and members, for a node about to join (admin; without tokens, the operator only)."""
    store = _store()
    return jsonify(secret=store.secret, cluster_id=store.cluster_id,
                   members=[member["raft_addr"] for member in store.status()["members"]])


@api.delete("/remove")
def remove() -> Response:
    body = _json_object()
    node_id = _string_field(body, "id")
    try:
        _store().remove_member(node_id)
    except NotLeaderError as error:
        return _forward_to_leader(error, body)
    return jsonify(removed=node_id)


@api.get("/status")
def status() -> Response:
    return jsonify(_store().status())


@api.get("/livez")
def livez() -> Response:
    """The process answers and its Raft node runs; for restarts by a supervisor."""
    if not _store().is_alive():
        return _error(503, "raft_stopped", "the Raft node of this process has stopped")
    return jsonify(status="ok")


@api.get("/readyz")
def readyz() -> Response:
    """Knows a leader and has caught up; for load balancers. Cheap: no Raft round trip."""
    if not _store().is_ready():
        return _error(503, "not_ready", "no leader known, or this node has not caught up yet")
    return jsonify(status="ready")


@api.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(current_app.config["METRICS"].registry), mimetype=CONTENT_TYPE_LATEST)


@api.get("/backup")
def backup() -> Response:
    """All the data as one JSON document, exactly as of the raft index in its header (and X-Raft-Index)."""
    store = _store()
    index, revision, data = store.consistent_copy()
    header = {"format": BACKUP_FORMAT, "version": 1, "raft_index": index, "revision": revision,
              "node": store.node_id, "keys": len(data)}

    def document() -> Any:
        yield json.dumps(header)[:-1] + ', "data": {'
        items = iter(data.items())
        separator = ""
        while batch := [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in itertools.islice(items, 1000)]:
            yield separator + ", ".join(batch)
            separator = ", "
        yield "}}\n"

    response = Response(document(), mimetype="application/json")
    response.headers["X-Raft-Index"] = str(index)
    response.headers["Content-Disposition"] = f'attachment; filename="hraftd-backup-{index}.json"'
    return response


BACKUP_FORMAT = "hraftd-backup"


# ----- request bookkeeping -----


def _start_clock() -> None:
    g.started = time.perf_counter()


def _count_request(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    # A label set per made-up method would grow the metrics without bound.
    method = request.method if request.method in _HTTP_METHODS else "OTHER"
    current_app.config["METRICS"].observe(route, method, response.status_code, seconds)
    return response


# ----- validation -----


def _json_object() -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type says (``curl -d`` sends a form type)."""
    return parse_json_object(_body())


def _body() -> bytes:
    """The raw body, whole, or a 4xx: too large, cut short, or not decodable as HTTP chunks."""
    try:
        raw = request.get_data(cache=False)
    except HTTPException:
        raise
    except Exception as error:  # gunicorn's chunk parser: InvalidChunkSize, ChunkMissingTerminator, ...
        _stop_reading_request()
        raise BadRequest(f"the body could not be read: {type(error).__name__}", "bad_request") from None
    if len(raw) >= _limits().max_body_bytes:  # a chunked body (no Content-Length) is cut at the limit
        raise RequestEntityTooLarge()
    if request.content_length is not None and len(raw) != request.content_length:
        # The client closed its side before sending all it announced: half a request is not applied.
        _stop_reading_request()
        raise BadRequest(f"the body has {len(raw)} of the {request.content_length} bytes announced", "bad_request")
    return raw


def _string_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"field {name!r} must be a non-empty string", "bad_field")
    return value


def _address_field(body: dict[str, Any], name: str) -> str:
    try:
        return normalize_addr(_string_field(body, name))
    except ValueError as error:
        raise BadRequest(f"field {name!r}: {error}", "bad_field") from None


def _refuse_unknown_parameters() -> None:
    if request.url_rule is None:  # no such path: the 404 says more than a complaint about parameters
        return
    allowed = _PARAMETERS_OF_ENDPOINT.get(request.endpoint or "", set())
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0][:100]!r}", "unknown_parameter")


# ----- authentication -----


def _authorize() -> None:
    tokens: TokenFile | None = current_app.config["TOKENS"]
    needed = _ROLE_OF_ENDPOINT.get(request.endpoint or "", "read" if request.url_rule is None else None)
    if tokens is None and request.endpoint in _OPERATOR_ONLY and _store().secret and not _from_operator():
        raise BadRequest("without tokens, only the user running this node (or root), on its machine, may do this: "
                         "run it as that user, or give the nodes tokens (-auth-file)", "forbidden", 403)
    if tokens is None or needed is None:
        return
    role = tokens.role_of_authorization(request.headers.get("Authorization", ""))
    if role is None:
        raise BadRequest("a valid bearer token is required (Authorization: Bearer TOKEN)", "unauthorized", 401)
    if not allows(role, needed):
        raise BadRequest(f"this token's role is {role!r}; this request needs {needed!r}", "forbidden", 403)


def _from_operator() -> bool:
    try:
        return current_app.config["OPERATOR"](request.environ.get("REMOTE_ADDR", ""),
                                              int(request.environ.get("REMOTE_PORT") or 0))
    except ValueError:
        return False


# ----- forwarding membership changes -----


def _forward_to_leader(error: NotLeaderError, body: dict[str, Any]) -> Response:
    """Membership changes are serialized on the leader: relay the request there and its answer back."""
    try:
        hops = max(0, int(request.headers.get(_FORWARD_HEADER, "0") or 0))
    except ValueError:  # not ours: forward no further
        hops = _MAX_FORWARDS
    if error.leader_http_addr is None or hops >= _MAX_FORWARDS:
        raise UnavailableError(f"{error}; the leader's HTTP address is not known yet, retry") from None
    tls = current_app.config["PEER_TLS"]
    headers = {"Content-Type": "application/json", _FORWARD_HEADER: str(hops + 1)}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    forwarded = urllib.request.Request(
        f"{'https' if tls else 'http'}://{error.leader_http_addr}{request.path}",
        data=json.dumps(body).encode(), method=request.method, headers=headers,
    )
    try:
        with urllib.request.urlopen(forwarded, timeout=3 * _store().timeout, context=tls) as answer:
            status, payload, answer_headers = answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as answer:
        status, payload, answer_headers = answer.code, answer.read(), answer.headers
    except TimeoutError:
        raise OutcomeUnknownError(f"the leader at {error.leader_http_addr} did not answer in time; "
                                  "outcome unknown, the change may still be applied") from None
    except OSError as failure:  # refused or unreachable: the leader never saw the request
        raise UnavailableError(f"could not reach the leader at {error.leader_http_addr}: {failure}") from None
    response = Response(payload, status=status, mimetype="application/json")
    if "Retry-After" in answer_headers:
        response.headers["Retry-After"] = answer_headers["Retry-After"]
    return response


# ----- errors, in one place -----


def _error(status: int, code: str, message: str) -> Response:
    body, headers = error_document(status, code, message)
    return Response(body, status=status, headers=headers, mimetype="application/json")


def _store_error(error: HraftdError) -> Response:
    return _error(status_of(error), error.code, str(error))


def _http_error(error: HTTPException) -> Response:
    if isinstance(error, (ClientDisconnected, RequestEntityTooLarge)):
        _stop_reading_request()
    code = (error.name or "http_error").lower().replace(" ", "_")
    response = _error(error.code or 500, code, error.description or error.name)
    if error.code == 405 and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _stop_reading_request() -> None:
    """The body was cut off or is too large: answer, then take no more from this client on this connection.

    Otherwise gunicorn would wait for the rest of the body (seconds, on a thread) before its next request.
    """
    client = request.environ.get("gunicorn.socket")
    if client is not None:
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RD)


def _unexpected_error(error: Exception) -> Response:
    return _error(500, "internal", internal_error_message(request.method, request.path))


def _add_node_headers(response: Response) -> Response:
    store = _store()
    response.headers["X-Hraftd-Node"] = store.node_id
    response.headers.setdefault("X-Raft-Index", str(store.applied_index))
    return response
