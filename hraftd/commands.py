"""What a valid command of the state machine is: each check returns the checked value or raises
``BadCommand``, before anything changes. Also JSON equality, which compares values the way clients mean them.
"""

from __future__ import annotations

import math
from typing import Any

TARGETS = ("value", "create_revision", "mod_revision", "version")
COMPARE_OPS = ("=", "!=", "<", ">")
TXN_OPERATIONS = ("set", "delete", "delete_prefix", "get", "range")
JSON_SCALARS = frozenset({str, int, bool, type(None)})
MIN_LEASE_TTL, MAX_LEASE_TTL = 1, 86_400  # seconds a client may ask a lease to live without a keepalive


class BadCommand(Exception):
    """A command refused as a whole; raised only before anything changed."""


def short(value: Any) -> str:
    """A description of any input for an error message: short, and never a memory address."""
    if type(value) in (str, float, bool, type(None)) or (type(value) is int and value.bit_length() < 64):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a value of type {type(value).__name__}"


def check_key(key: Any, what: str = "a key") -> str:
    if type(key) is not str or not key:
        raise BadCommand(f"{what} must be a non-empty string, not {short(key)}")
    return key


def check_prefix(prefix: Any) -> str:
    if type(prefix) is not str:
        raise BadCommand(f"a prefix must be a string, not {short(prefix)}")
    return prefix


def check_text(command: dict[str, Any], field: str) -> str:
    return check_key(command.get(field), field)


def optional_int(command: dict[str, Any], field: str, minimum: int | None = None) -> int | None:
    value = command.get(field)
    if value is not None and (type(value) is not int or (minimum is not None and value < minimum)):
        raise BadCommand(f"{field} must be an integer{'' if minimum is None else f' >= {minimum}'}, "
                          f"not {short(value)}")
    return value


def check_lease_ttl(ttl: Any) -> float:
    """A ttl a client may grant: a number of seconds from MIN_LEASE_TTL to MAX_LEASE_TTL (fractions allowed)."""
    if type(ttl) not in (int, float) or not MIN_LEASE_TTL <= ttl <= MAX_LEASE_TTL:
        raise BadCommand(f"ttl must be a number of seconds from {MIN_LEASE_TTL} to {MAX_LEASE_TTL}, not {short(ttl)}")
    return ttl


def check_lease_id(lease_id: Any) -> int:
    if type(lease_id) is not int or lease_id < 1:
        raise BadCommand(f"a lease id is a whole number from 1, not {short(lease_id)}")
    return lease_id


def optional_list(command: dict[str, Any], field: str) -> list[Any]:
    value = command.get(field, [])
    if type(value) is not list:
        raise BadCommand(f"{field} must be a list, not {short(value)}")
    return value


def check_items(items: Any) -> dict[str, Any]:
    if type(items) is not dict or not items:
        raise BadCommand("items must be a non-empty dict of keys to values")
    for key, value in items.items():
        check_key(key)
        if type(value) not in JSON_SCALARS:  # the common case without a call
            check_json(value)
    return items


def check_json(value: Any) -> None:
    """A JSON value: exact JSON types, str keys, finite floats, and a tree (no container twice, so no cycle)."""
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in JSON_SCALARS:
            continue
        if kind is float:
            if not math.isfinite(item):
                raise BadCommand("NaN and infinite numbers are not JSON")
        elif kind is dict or kind is list:
            if id(item) in seen:
                raise BadCommand("a value must be a tree: a container appears in it twice")
            seen.add(id(item))
            if kind is list:
                stack.extend(item)
            elif any(type(name) is not str for name in item):
                raise BadCommand("the names in a JSON object must be strings")
            else:
                stack.extend(item.values())
        else:
            raise BadCommand(f"a value of type {kind.__name__} is not JSON")


def check_compare(compare: Any) -> None:
    if type(compare) is not dict or compare.keys() != {"key", "target", "op", "value"}:
        raise BadCommand("a compare is a dict of exactly key, target, op and value")
    check_key(compare["key"])
    target, op, value = compare["target"], compare["op"], compare["value"]
    if type(target) is not str or target not in TARGETS:
        raise BadCommand(f"unknown compare target {short(target)}")
    if type(op) is not str or op not in COMPARE_OPS:
        raise BadCommand(f"unknown compare op {short(op)}")
    if target == "value":
        check_json(value)
    elif type(value) is not int:
        raise BadCommand(f"a compare of {target} needs an integer, not {short(value)}")


def check_operation(operation: Any) -> None:
    kinds = [kind for kind in TXN_OPERATIONS if type(operation) is dict and kind in operation]
    allowed = {"set", "lease"} if kinds == ["set"] else set(kinds)
    if len(kinds) != 1 or not operation.keys() <= allowed:
        raise BadCommand(f"an operation is a dict of one of {', '.join(TXN_OPERATIONS)} (and lease with set)")
    argument = operation[kinds[0]]
    if kinds[0] == "set":
        check_items(argument)
        optional_int(operation, "lease")
    elif kinds[0] in ("delete", "get"):
        check_key(argument)
    elif kinds[0] == "delete_prefix":
        check_prefix(argument)
    else:
        if type(argument) is not dict or not argument.keys() <= {"prefix", "limit"}:
            raise BadCommand("a range is a dict of prefix and limit")
        check_prefix(argument.get("prefix", ""))
        optional_int(argument, "limit", minimum=1)


def is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float  # not bool


def json_equal(first: Any, second: Any) -> bool:
    """Equality of JSON values: true is not 1, 1 is 1.0. Iterative, so no depth can exhaust the stack."""
    pairs = [(first, second)]
    while pairs:
        a, b = pairs.pop()
        if type(a) is dict:
            if type(b) is not dict or a.keys() != b.keys():
                return False
            pairs.extend((a[name], b[name]) for name in a)
        elif type(a) is list:
            if type(b) is not list or len(a) != len(b):
                return False
            pairs.extend(zip(a, b, strict=True))
        elif (type(a) is bool) != (type(b) is bool) or a != b:
            return False
    return True
