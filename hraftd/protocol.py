"""The rules of the HTTP API, apart from any web framework: who may call what, which query parameters each
endpoint takes, what a valid body, key and value are, and what an error answer looks like.

The native handlers of the hot requests (``hraftd.keys``), the Flask app of the others (``hraftd.web``) and the
HTTP server itself (``hraftd.connection``) all use these, so each rule and each error document has one
definition.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterable
from typing import Any

from hraftd.auth import TokenFile, allows
from hraftd.commands import BadCommand, check_lease_ttl
from hraftd.errors import (
    ClosedError,
    CompactedError,
    HraftdError,
    InsufficientStorageError,
    LeaseNotFoundError,
    MembershipConflictError,
    NotLeaderError,
    OutcomeUnknownError,
    PreconditionFailedError,
    TooManyLeasesError,
    UnavailableError,
    UnknownMemberError,
    WrongSecretError,
)
from hraftd.settings import Limits

log = logging.getLogger("hraftd.http")

READ_LEVELS = ("linearizable", "stale")
KEY_PATH_PREFIX = "/key/"
_STATUS_OF = {
    UnavailableError: 503,
    ClosedError: 503,
    InsufficientStorageError: 507,
    NotLeaderError: 503,
    OutcomeUnknownError: 504,
    PreconditionFailedError: 412,
    UnknownMemberError: 404,
    LeaseNotFoundError: 404,
    TooManyLeasesError: 429,
    MembershipConflictError: 409,
    WrongSecretError: 403,
    CompactedError: 410,
}


# The role each endpoint needs when tokens are configured; endpoints not named here need none. A request that
# matches no endpoint needs "read", so that a stranger learns nothing of which paths exist.
ROLE_OF_ENDPOINT = {
    "get_key": "read",
    "list_keys": "read",
    "watch": "read",
    "status": "read",
    "metrics": "read",
    "backup": "read",
    "set_keys": "write",
    "delete_key": "write",
    "delete_keys": "write",
    "txn": "write",
    "lease_grant": "write",
    "lease_keepalive": "write",
    "lease_revoke": "write",
    "lease_info": "read",
    "join": "admin",
    "join_secret": "admin",
    "remove": "admin",
    "ui.cluster": "read",
}
# The query parameters each endpoint accepts; any other is refused rather than silently ignored.
PARAMETERS_OF_ENDPOINT = {
    "get_key": frozenset({"level", "meta"}),
    "set_keys": frozenset({"if_revision", "lease"}),
    "delete_key": frozenset({"if_revision"}),
    "list_keys": frozenset({"prefix", "start_after", "limit", "keys_only", "count_only", "level"}),
    "delete_keys": frozenset({"prefix"}),
    "watch": frozenset({"key", "prefix", "since", "timeout"}),
}
# A range answers at most this many keys (a page), DEFAULT_PAGE_SIZE unless asked; and stops early once its
# items take PAGE_BYTES of JSON, so that no answer grows with the store.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
PAGE_BYTES = 4 * 1024 * 1024
MAX_REVISION = 2**63 - 1
_IDEMPOTENCY_KEY_CHARACTERS = frozenset(map(chr, range(0x21, 0x7F)))


class BadRequest(Exception):
    """The request is malformed; the message says how."""

    def __init__(self, message: str, code: str = "bad_request", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def required_role(endpoint: str | None) -> str | None:
    """The role a request for ``endpoint`` (None: no endpoint matched) needs when tokens are configured."""
    return "read" if endpoint is None else ROLE_OF_ENDPOINT.get(endpoint)


def authorize(tokens: TokenFile | None, endpoint: str | None, authorization: str) -> None:
    """Refuse (401, 403) a request whose ``Authorization`` header does not grant what ``endpoint`` needs."""
    needed = required_role(endpoint)
    if tokens is None or needed is None:
        return
    role = tokens.role_of_authorization(authorization)
    if role is None:
        raise BadRequest("a valid bearer token is required (Authorization: Bearer TOKEN)", "unauthorized", 401)
    if not allows(role, needed):
        raise BadRequest(f"this token's role is {role!r}; this request needs {needed!r}", "forbidden", 403)


def check_parameters(endpoint: str, names: Iterable[str]) -> None:
    """Refuse a query parameter that ``endpoint`` does not take."""
    allowed = PARAMETERS_OF_ENDPOINT.get(endpoint, frozenset())
    if allowed.issuperset(names):
        return
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0][:100]!r}", "unknown_parameter")


def read_level(value: str | None) -> str:
    """The read level a ``level`` query parameter asks for (linearizable when absent)."""
    if value is None:
        return READ_LEVELS[0]
    if value not in READ_LEVELS:
        raise BadRequest(f"unknown read level {value!r}: use linearizable or stale", "bad_level")
    return value


def boolean(parameters: dict[str, str], name: str) -> bool:
    """A ``true``/``false`` query parameter (false when absent)."""
    value = parameters.get(name)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise BadRequest(f"{name} must be true or false, not {value[:100]!r}", "bad_parameter")


def revision(value: str | None, name: str = "if_revision") -> int | None:
    """A revision in a query parameter: a whole number from 0 (the key is absent) to 2**63-1."""
    if value is None:
        return None
    number = _whole_number(value, 19)
    if number is None or number > MAX_REVISION:
        raise BadRequest(f"{name} must be a revision: a whole number from 0 to {MAX_REVISION}, not {value[:100]!r}",
                         "bad_revision")
    return number


def lease_id(value: str | None, name: str = "lease") -> int | None:
    """A lease id in a path or query parameter: a whole number from 1 to 2**63-1; None when absent."""
    if value is None:
        return None
    number = _whole_number(value, 19)
    if number is None or not 1 <= number <= MAX_REVISION:
        raise BadRequest(f"{name} must be a lease id: a whole number from 1 to {MAX_REVISION}, not {value[:100]!r}",
                         "bad_lease_id")
    return number


def lease_grant_body(body: dict[str, Any]) -> float:
    """The ttl of ``POST /lease``: ``{"ttl": seconds}``, a number from MIN_LEASE_TTL to MAX_LEASE_TTL."""
    unknown = sorted(body.keys() - {"ttl"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:100]!r}: a lease is granted with {{\"ttl\": seconds}}",
                         "bad_field")
    try:
        return check_lease_ttl(body.get("ttl"))
    except BadCommand as error:
        raise BadRequest(str(error), "bad_ttl") from None


def page_size(value: str | None) -> int:
    """The ``limit`` of a range: 1 to MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE when absent."""
    if value is None:
        return DEFAULT_PAGE_SIZE
    number = _whole_number(value, 6)
    if number is None or not 1 <= number <= MAX_PAGE_SIZE:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}, not {value[:100]!r}",
                         "bad_parameter")
    return number


def wait_seconds(value: str | None, default: float, maximum: float) -> float:
    """A ``timeout`` query parameter: seconds from 0 to ``maximum``, ``default`` when absent."""
    if value is None:
        return default
    try:
        seconds = float(value) if value.isascii() and len(value) <= 20 else math.nan
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= maximum:  # NaN too
        raise BadRequest(f"timeout must be a number of seconds from 0 to {maximum:g}, not {value[:100]!r}",
                         "bad_parameter")
    return seconds


def _whole_number(text: str, max_digits: int) -> int | None:
    """The number that ASCII digits spell, if it has at most ``max_digits`` significant ones; else None."""
    significant = text.lstrip("0")
    if not text.isascii() or not text.isdigit() or len(significant) > max_digits:
        return None
    return int(significant or "0")


def key_parameter(parameters: dict[str, str], name: str, limits: Limits) -> str | None:
    """A query parameter that holds a key or a prefix of keys, checked like a key; None when absent or empty."""
    value = parameters.get(name)
    if not value:
        return None
    try:
        check_key(value, limits)
    except BadRequest as error:
        raise BadRequest(f"{name}: {error}", error.code) from None
    return value


def idempotency_key(value: str) -> str | None:
    """The ``Idempotency-Key`` header: 1 to 255 visible ASCII characters; None when absent."""
    if not value:
        return None
    if len(value) > 255 or not _IDEMPOTENCY_KEY_CHARACTERS.issuperset(value):
        raise BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces), such as a UUID",
                         "bad_idempotency_key")
    return value


def status_of(error: HraftdError) -> int:
    return next((status for kind, status in _STATUS_OF.items() if isinstance(error, kind)), 500)


def error_document(status: int, code: str, message: str,
                   details: dict[str, Any] | None = None) -> tuple[bytes, list[tuple[str, str]]]:
    """The body and the extra headers of an error answer; ``details`` are more fields of the body."""
    headers = []
    if status == 503:
        headers.append(("Retry-After", "1"))
    if status == 401:
        headers.append(("WWW-Authenticate", 'Bearer realm="hraftd"'))
    return json_body({"error": message, "code": code, **(details or {})}), headers


def error_details(error: HraftdError) -> dict[str, Any] | None:
    """The fields an error answer has beyond ``error`` and ``code``."""
    if isinstance(error, PreconditionFailedError):
        return {"current_revision": error.current_revision}
    if isinstance(error, CompactedError):
        return {"oldest_revision": error.oldest_revision}
    return None


def internal_error_message(method: str, path: str) -> str:
    """Log the exception being handled under a new request id; the message for the client names only the id."""
    request_id = uuid.uuid4().hex[:12]
    log.exception("unexpected error, request id %s: %s %s", request_id, method, path)
    return f"internal error; the node's log has the details under request id {request_id}"


def _compact_json_encoder() -> Any:
    """``json.dumps(document, separators=(",", ":"))`` without making an encoder per call. Answers are built
    from parsed JSON and our own dicts, never circular, so the circular-reference check is left out."""
    python_encoder = json.JSONEncoder(separators=(",", ":"), check_circular=False)
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:
        return python_encoder.encode
    encode = make(None, python_encoder.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False,
                  True)
    return lambda document: "".join(encode(document, 0))


_encode_json = _compact_json_encoder()


def json_body(document: Any) -> bytes:
    """A JSON answer's body, byte for byte what ``flask.jsonify`` makes (compact, ASCII, one newline)."""
    return (_encode_json(document) + "\n").encode()


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON: no NaN or Infinity, no number that overflows a double, no duplicate keys; an object."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float,
                          object_pairs_hook=_object_without_duplicates)
    except RecursionError:
        raise BadRequest("the JSON is nested too deeply", "bad_json") from None
    except ValueError as error:
        raise BadRequest(f"the body is not valid JSON: {error}", "bad_json") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, not {type(body).__name__}", "not_an_object")
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:20]}... is too large for a double")
    return number


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"duplicate key {duplicate[:100]!r} in an object")
    return result


def check_write(items: dict[str, Any], limits: Limits) -> None:
    """A write: at least one key, not too many, and every key and value within the limits."""
    if not items:
        raise BadRequest("the JSON object is empty: send at least one key", "empty")
    if len(items) > limits.max_keys_per_write:
        raise BadRequest(f"{len(items)} keys in one write; the limit is {limits.max_keys_per_write}", "too_many_keys")
    for key, value in items.items():
        check_key(key, limits)
        check_value(key, value, limits)


def check_key(key: str, limits: Limits, status: int = 400) -> None:
    """Keys: non-empty, valid UTF-8 (no lone surrogates), no control characters, at most max_key_bytes."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("keys must be valid UTF-8 (a lone surrogate is not)", "bad_key") from None
    if size == 0:
        raise BadRequest("keys must be non-empty strings", "bad_key")
    if size > limits.max_key_bytes:
        raise BadRequest(f"a key of {size} bytes; the limit is {limits.max_key_bytes}", "key_too_long", status)
    if not key.isprintable() and any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        raise BadRequest("keys must not contain control characters", "bad_key")


def path_key(path: str, limits: Limits) -> str:
    """The key of a ``/key/<key>`` path as WSGI gives it (latin-1), checked like a key in a body, with the
    status 414 for one too long for a URL."""
    # werkzeug would turn invalid UTF-8 into U+FFFD silently.
    try:
        key = path[len(KEY_PATH_PREFIX):].encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise BadRequest("the key in the path is not valid UTF-8 once percent-decoded", "bad_key") from None
    check_key(key, limits, status=414)
    return key


def check_value(key: str, value: Any, limits: Limits) -> None:
    if _depth(value, limits.max_depth) > limits.max_depth:
        raise BadRequest(f"the value of {key[:100]!r} is nested deeper than {limits.max_depth}", "value_too_deep")
    if isinstance(value, str) and 6 * len(value) + 2 <= limits.max_value_bytes:
        return  # fits without encoding it: in JSON a character takes at most 6 bytes (an escape like \u001f)
    try:
        size = len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError):  # cannot happen for parsed JSON; kept as a guard for the message
        raise BadRequest(f"the value of {key[:100]!r} is not JSON", "bad_value") from None
    if size > limits.max_value_bytes:
        raise BadRequest(f"the value of {key[:100]!r} has {size} bytes; the limit is {limits.max_value_bytes}",
                         "value_too_large")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, counting no further than ``limit + 1``."""
    if limit < 0 or not isinstance(value, (dict, list)):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)
