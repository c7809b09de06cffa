"""What a valid ``POST /txn`` body is: every part checked with the limits of any write (key and value sizes,
nesting; -max-keys-per-write for the transaction as a whole; a page for its ranges), and refused with a 400
whose message points into the body (``success[2].set``).

The state machine checks the command again (``hraftd.commands``); this adds the limits of the HTTP API and
errors a curl user can act on.
"""

from __future__ import annotations

from typing import Any

from hraftd.commands import COMPARE_OPS, TARGETS, TXN_OPERATIONS
from hraftd.protocol import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_REVISION,
    BadRequest,
    check_key,
    check_value,
)
from hraftd.settings import Limits

TXN_FIELDS = ("compare", "success", "failure")


def txn_command(body: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The state machine's ``txn`` command for a checked body; ranges without a limit get the default page."""
    unknown = [name for name in body if name not in TXN_FIELDS]
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:100]!r}: a txn has compare, success and failure", "bad_txn")
    command: dict[str, Any] = {"op": "txn"}
    for name in TXN_FIELDS:
        part = body.get(name, [])
        if type(part) is not list:
            raise BadRequest(f"{name} must be a list, not {_json_type(part)}", "bad_txn")
        command[name] = part
    size = len(command["compare"])
    for index, compare in enumerate(command["compare"]):
        _check_compare(f"compare[{index}]", compare, limits)
    for branch in ("success", "failure"):
        read = 0
        for index, operation in enumerate(command[branch]):
            kind = _check_operation(f"{branch}[{index}]", operation, limits)
            size += len(operation["set"]) if kind == "set" else 1
            read += operation["range"]["limit"] if kind == "range" else 0
        if read > MAX_PAGE_SIZE:
            raise BadRequest(f"the ranges of {branch} read up to {read} keys; a txn reads at most {MAX_PAGE_SIZE} "
                             "(a page): page through larger ranges with GET /keys", "txn_too_large")
    if size > limits.max_keys_per_write:
        raise BadRequest(f"the txn has {size} compares, operations and keys set; the limit is "
                         f"{limits.max_keys_per_write} (-max-keys-per-write)", "txn_too_large")
    return command


def _check_compare(where: str, compare: Any, limits: Limits) -> None:
    if type(compare) is not dict:
        raise BadRequest(f"{where} must be an object, not {_json_type(compare)}", "bad_txn")
    fields = {"key", "target", "op", "value"}
    if compare.keys() != fields:
        missing, extra = sorted(fields - compare.keys()), sorted(compare.keys() - fields)
        what = f"lacks {', '.join(missing)}" if missing else f"has the unknown field {extra[0][:100]!r}"
        raise BadRequest(f"{where} {what}: a compare is {{key, target, op, value}}", "bad_txn")
    _check_key(f"{where}.key", compare["key"], limits)
    target, op, value = compare["target"], compare["op"], compare["value"]
    if type(target) is not str or target not in TARGETS:
        raise BadRequest(f"{where}.target must be one of {', '.join(TARGETS)}, not {_short(target)}", "bad_txn")
    if type(op) is not str or op not in COMPARE_OPS:
        raise BadRequest(f"{where}.op must be one of {' '.join(COMPARE_OPS)}, not {_short(op)}", "bad_txn")
    if target == "value":
        check_value(compare["key"], value, limits)
    elif type(value) is not int or not 0 <= value <= MAX_REVISION:
        raise BadRequest(f"{where}.value must be a whole number from 0 to {MAX_REVISION} to compare with "
                         f"{target}, not {_short(value)}", "bad_revision")


def _check_operation(where: str, operation: Any, limits: Limits) -> str:
    """The kind of a checked operation."""
    leased = type(operation) is dict and "lease" in operation and "set" in operation and len(operation) == 2
    if type(operation) is not dict or len(operation) != 1 + leased or \
            (not leased and next(iter(operation)) not in TXN_OPERATIONS):
        shown = (f"an object of {', '.join(repr(name[:100]) for name in list(operation)[:3]) or 'nothing'}"
                 if type(operation) is dict else _json_type(operation))
        raise BadRequest(f"{where} must be an object of exactly one of {', '.join(TXN_OPERATIONS)} (and lease with "
                         f"set), not {shown}", "bad_txn")
    kind, argument = ("set", operation["set"]) if leased else next(iter(operation.items()))
    if leased:
        lease = operation["lease"]
        if type(lease) is not int or not 1 <= lease <= MAX_REVISION:
            raise BadRequest(f"{where}.lease must be a lease id, a whole number from 1 to {MAX_REVISION}, not "
                             f"{_short(lease)}", "bad_lease_id")
    if kind == "set":
        if type(argument) is not dict or not argument:
            raise BadRequest(f"{where}.set must be a non-empty object of keys and values", "bad_txn")
        for key, value in argument.items():
            _check_key(f"{where}.set", key, limits)
            check_value(key, value, limits)
    elif kind in ("delete", "get"):
        _check_key(f"{where}.{kind}", argument, limits)
    elif kind == "delete_prefix":
        if argument == "":
            raise BadRequest(f"{where}.delete_prefix is empty: deleting every key is not done by accident",
                             "empty_prefix")
        _check_key(f"{where}.delete_prefix", argument, limits)
    else:
        if type(argument) is not dict or not argument.keys() <= {"prefix", "limit"}:
            raise BadRequest(f"{where}.range must be an object of prefix and limit", "bad_txn")
        prefix, limit = argument.get("prefix", ""), argument.setdefault("limit", DEFAULT_PAGE_SIZE)
        if prefix != "":
            _check_key(f"{where}.range.prefix", prefix, limits)
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE_SIZE:
            raise BadRequest(f"{where}.range.limit must be a whole number from 1 to {MAX_PAGE_SIZE}, not "
                             f"{_short(limit)}", "bad_txn")
    return kind


def _check_key(where: str, key: Any, limits: Limits) -> None:
    if type(key) is not str:
        raise BadRequest(f"{where}: a key must be a string, not {_json_type(key)}", "bad_key")
    try:
        check_key(key, limits)
    except BadRequest as error:
        raise BadRequest(f"{where}: {error}", error.code) from None


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _short(value: Any) -> str:
    if type(value) in (int, float):
        text = repr(value)
        return text if len(text) <= 30 else text[:27] + "..."
    return repr(value[:100]) if type(value) is str else _json_type(value)
