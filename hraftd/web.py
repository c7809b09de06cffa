"""The HTTP API apart from the hot requests: a Flask app factory with thin handlers over the store.

Membership, leases, status, health, metrics and backup are answered here, on a thread of the app's pool
(``hraftd.app``); the hot requests (``/key``, ``/keys``, ``/txn``) never reach Flask (``hraftd.keys``).
Handlers parse and validate, call the store, and leave every error to the handlers registered once in
``create_app``; who may call what and which query parameters are taken are ``hraftd.protocol``'s rules,
shared with the hot requests. The app needs only the small ``Store`` interface below, so it is read and
tested apart.
"""

from __future__ import annotations

import itertools
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from hraftd import peercred
from hraftd.auth import TokenFile
from hraftd.errors import HraftdError, NotLeaderError, OutcomeUnknownError, UnavailableError, WrongSecretError
from hraftd.metrics import NodeMetrics
from hraftd.protocol import (
    BadRequest,
    authorize,
    check_parameters,
    error_document,
    idempotency_key,
    internal_error_message,
    lease_grant_body,
    lease_id,
    parse_json_object,
    status_of,
)
from hraftd.settings import normalize_addr
from hraftd.ui import ui

_FORWARD_HEADER = "X-Hraftd-Forwarded"
_IDEMPOTENCY = "Idempotency-Key"
_MAX_FORWARDS = 3
ROUTE_KEY = "hraftd.route"  # where the app tells its caller (hraftd.app) which route answered
ENDPOINT_KEY = "hraftd.endpoint"
# Without tokens, these need the node's operator: a process of the user running it (or root), on its machine.
_OPERATOR_ONLY = frozenset({"join_secret", "remove"})


class Store(Protocol):
    """What the HTTP API needs of a store (``hraftd.store.ReplicatedKV`` is one)."""

    node_id: str
    timeout: float
    applied_index: int
    revision: int
    secret: str | None
    cluster_id: str

    def add_member(self, node_id: str, raft_addr: str, http_addr: str | None, proof: str | None,
                   force: bool) -> bool: ...
    def remove_member(self, node_id: str) -> None: ...
    def status(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    def is_ready(self) -> bool: ...
    def is_alive(self) -> bool: ...
    def consistent_copy(self) -> tuple[int, int, dict[str, Any]]: ...
    def lease_grant(self, ttl: float, *, idempotency_key: str | None = None) -> dict[str, Any]: ...
    def lease_keepalive(self, lease_id: int) -> float: ...
    def lease_revoke(self, lease_id: int, *, idempotency_key: str | None = None) -> dict[str, Any]: ...
    def lease_info(self, lease_id: int) -> dict[str, Any]: ...


api = Blueprint("api", __name__)


def create_app(
    store: Store,
    *,
    metrics: NodeMetrics,
    tokens: TokenFile | None = None,
    peer_tls: ssl.SSLContext | None = None,
    operator: Callable[[str, int, str, int], bool] = peercred.is_operator,
) -> Flask:
    """The API of one node but the hot requests. ``tokens``: require bearer tokens. ``peer_tls``: other nodes speak
    HTTPS. ``operator``: whether the client of a connection (client ip, port, the node's ip, port) is this
    node's operator, who may change membership without tokens. The body of a request must be in
    ``wsgi.input`` whole (the node's HTTP server reads it)."""
    app = Flask("hraftd", static_folder=None)  # an API only: no static files for anyone
    app.url_map.merge_slashes = False  # never redirect a path elsewhere
    app.config.update(STORE=store, TOKENS=tokens, PEER_TLS=peer_tls, METRICS=metrics, OPERATOR=operator)
    app.json.sort_keys = False
    app.register_blueprint(api)
    app.register_blueprint(ui)
    app.before_request(_authorize)
    app.before_request(_refuse_unknown_parameters)
    app.register_error_handler(BadRequest, lambda error: _error(error.status, error.code, str(error)))
    app.register_error_handler(HraftdError, _store_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.after_request(_name_route)
    return app


def _store() -> Store:
    return current_app.config["STORE"]


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


# ----- leases: grant and revoke are log entries; keepalives and lease info are the leader's, forwarded there -----


@api.post("/lease")
def lease_grant() -> Response:
    ttl = lease_grant_body(_json_object())
    return jsonify(_store().lease_grant(ttl, idempotency_key=idempotency_key(request.headers.get(_IDEMPOTENCY, ""))))


@api.post("/lease/<lease>/keepalive")
def lease_keepalive(lease: str) -> Response:
    lease_number = _lease_id(lease)
    try:
        ttl = _store().lease_keepalive(lease_number)
    except NotLeaderError as error:
        return _forward_to_leader(error, {})
    return jsonify(id=lease_number, ttl=ttl)


@api.delete("/lease/<lease>")
def lease_revoke(lease: str) -> Response:
    key = idempotency_key(request.headers.get(_IDEMPOTENCY, ""))
    return jsonify(_store().lease_revoke(_lease_id(lease), idempotency_key=key))


@api.get("/lease/<lease>")
def lease_info(lease: str) -> Response:
    try:
        return jsonify(_store().lease_info(_lease_id(lease)))
    except NotLeaderError as error:
        return _forward_to_leader(error, None)


def _lease_id(text: str) -> int:
    number = lease_id(text, "the lease id in the path")
    assert number is not None  # a path segment is never absent
    return number


# ----- request bookkeeping -----


def _endpoint() -> str | None:
    """The endpoint the request matched, by the names of ``hraftd.protocol``'s rules; None if none."""
    return request.endpoint.removeprefix("api.") if request.url_rule is not None and request.endpoint else None


def _name_route(response: Response) -> Response:
    """Tell the caller the route that answered, for the request metrics."""
    if request.url_rule is not None:
        request.environ[ROUTE_KEY] = request.url_rule.rule
        request.environ[ENDPOINT_KEY] = _endpoint()
    return response


# ----- validation -----


def _json_object() -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type says (``curl -d`` sends a form type)."""
    return parse_json_object(_body())


def _body() -> bytes:
    """The raw body: whole, and within -max-body (the node's HTTP server sees to both)."""
    return request.get_data(cache=False)


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
    endpoint = _endpoint()
    if endpoint is not None:  # no such path: the 404 says more than a complaint about parameters
        check_parameters(endpoint, request.args)


def _authorize() -> None:
    tokens = current_app.config["TOKENS"]
    if tokens is None and _endpoint() in _OPERATOR_ONLY and _store().secret and not _from_operator():
        raise BadRequest("without tokens, only the user running this node (or root), on its machine, may do this: "
                         "run it as that user, or give the nodes tokens (-auth-file)", "forbidden", 403)
    authorize(tokens, _endpoint(), request.headers.get("Authorization", ""))


def _from_operator() -> bool:
    environ = request.environ
    try:
        return current_app.config["OPERATOR"](environ.get("REMOTE_ADDR", ""), int(environ.get("REMOTE_PORT") or 0),
                                              environ.get("SERVER_NAME", ""), int(environ.get("SERVER_PORT") or 0))
    except ValueError:
        return False


# ----- forwarding membership changes -----


def _forward_to_leader(error: NotLeaderError, body: dict[str, Any] | None) -> Response:
    """Membership changes and keepalives are the leader's: relay the request there and its answer back."""
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
        data=None if body is None else json.dumps(body).encode(), method=request.method, headers=headers,
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
    code = (error.name or "http_error").lower().replace(" ", "_")
    response = _error(error.code or 500, code, error.description or error.name)
    if error.code == 405 and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _unexpected_error(error: Exception) -> Response:
    return _error(500, "internal", internal_error_message(request.method, request.path))
