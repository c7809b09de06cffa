"""The replicated state machine: keys with revisions (as in etcd), leases, the member table, and the results
of recent writes that carried an idempotency key.

``KVState.apply`` runs on one thread, in log order, on every node. It is deterministic: no I/O, clocks,
randomness or threads, and no result, event or error message depends on hash order or memory addresses, so the
same commands with the same log times give the same state and answers everywhere. It never raises: a command is
checked completely before anything changes, and a refused one leaves the state as it was. Reads change nothing,
not even a cache, so they may run on other threads while ``apply`` is kept out by the caller's lock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, NamedTuple

from sortedcontainers import SortedList

from hraftd.commands import (
    BadCommand,
    check_compare,
    check_items,
    check_key,
    check_operation,
    check_prefix,
    check_text,
    is_number,
    json_equal,
    optional_int,
    optional_list,
    short,
)
from hraftd.leasestate import LeaseCommands, LeaseRecord


class Applied(NamedTuple):
    """What one command did: the proposer's answer, and the changes in the order they happened (for watches)."""

    result: dict[str, Any]
    events: list[dict[str, Any]]


# A key's record: (value, create_revision, mod_revision, version, lease id or None). A tuple is replaced on
# every write, never changed in place, so a dump or a read result never sees half of one.
_VALUE, _CREATE, _MOD, _VERSION, _LEASE = range(5)
_FIELD_OF_TARGET = {"value": _VALUE, "create_revision": _CREATE, "mod_revision": _MOD, "version": _VERSION}
_LAST_CHAR = chr(0x10FFFF)
_DUMP_FORMAT = 1
_Outcome = tuple[dict[str, Any], list[dict[str, Any]]]  # a command's result and events


class _KeyIndex(SortedList):
    """All keys in ``str`` order. SortedList builds its positional index lazily, on the first positional read
    after a change; ``settle`` builds it on the writer's thread instead, so that ``count`` only reads."""

    def settle(self) -> None:
        if not self._index and len(self._lists) > 1:
            self._build_index()

    def count_between(self, low: str, high: str | None) -> int:
        return (self._len if high is None else self.bisect_left(high)) - self.bisect_left(low)

    def between(self, low: str, high: str | None, include_low: bool = True) -> Iterator[str]:
        return self.irange(low, high, inclusive=(include_low, False))


class KVState(LeaseCommands):
    """The replicated dict. ``revision``, ``log_time`` and ``members`` are to be read, never assigned.

    Values in reads, results and events are the stored objects themselves (no copy on the hot path): treat
    them as read-only.
    """

    def __init__(self, idempotency_limit: int = 100_000, idempotency_max_age: float = 600.0) -> None:
        self.revision = 0
        self.log_time = 0.0
        self.members: dict[str, dict[str, str | None]] = {}
        self._records: dict[str, tuple[Any, int, int, int, int | None]] = {}
        self._keys = _KeyIndex()
        self._leases: dict[int, LeaseRecord] = {}
        self._next_lease_id = 1
        self.lease_term = 0
        # Oldest first: entries are added in log order, and log_time never decreases.
        self._remembered: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._idempotency_limit = idempotency_limit
        self._idempotency_max_age = idempotency_max_age

    # Applying commands

    def apply(self, command: dict[str, Any], now: float) -> Applied:
        """Apply one log entry; ``now`` is the wall-clock time its proposer wrote into it."""
        if type(now) in (int, float) and self.log_time < now < math.inf:
            self.log_time = float(now)
        if self._remembered:
            self._forget_expired()
        try:
            return self._apply(command)
        except BadCommand as refusal:
            return Applied({"error": "bad_command", "message": str(refusal)}, [])
        except Exception as error:  # a bug: answered rather than raised, so no node's apply thread dies of it
            return Applied({"error": "internal_error", "message": f"{type(error).__name__} in apply"}, [])

    def _apply(self, command: Any) -> Applied:
        if type(command) is not dict:
            raise BadCommand(f"a command is a dict, not {type(command).__name__}")
        op = command.get("op")
        handler = _HANDLERS.get(op) if type(op) is str else None
        if handler is None:
            raise BadCommand(f"unknown op {short(op)}")
        if not command.keys() <= _FIELDS[op]:
            unknown = ", ".join(short(field) for field in command if field not in _FIELDS[op])
            raise BadCommand(f"unknown fields for {op}: {unknown}")
        idempotency_key = command.get("idempotency_key")
        if idempotency_key is not None:
            if type(idempotency_key) is not str or not idempotency_key:
                raise BadCommand("idempotency_key must be a non-empty string")
            remembered = self._remembered.get(idempotency_key)
            if remembered is not None:
                return Applied(remembered[0], [])
        result, events = handler(self, command)
        if events:
            self._keys.settle()
        if idempotency_key is not None:
            self._remember(idempotency_key, result)
        return Applied(result, events)

    def _remember(self, idempotency_key: str, result: dict[str, Any]) -> None:
        self._remembered[idempotency_key] = (result, self.log_time)
        while len(self._remembered) > self._idempotency_limit:
            self._remembered.popitem(last=False)

    def _forget_expired(self) -> None:
        remembered = self._remembered
        oldest_kept = self.log_time - self._idempotency_max_age
        while remembered and next(iter(remembered.values()))[1] < oldest_kept:
            remembered.popitem(last=False)

    def _put(self, command: dict[str, Any]) -> _Outcome:
        items = check_items(command.get("items"))
        lease = optional_int(command, "lease")
        if_revision = optional_int(command, "if_revision", minimum=0)
        if if_revision is not None:
            if len(items) != 1:
                raise BadCommand("a put with if_revision takes exactly one item")
            refusal = self._precondition_refusal(next(iter(items)), if_revision)
            if refusal:
                return refusal, []
        if lease is not None and lease not in self._leases:
            return {"error": "lease_not_found", "lease": lease}, []
        revision = self.revision + 1
        events = [self._set(key, value, lease, revision) for key, value in items.items()]
        self.revision = revision
        return {"revision": revision}, events

    def _delete(self, command: dict[str, Any]) -> _Outcome:
        key = check_key(command.get("key"))
        if_revision = optional_int(command, "if_revision", minimum=0)
        if if_revision is not None:
            refusal = self._precondition_refusal(key, if_revision)
            if refusal:
                return refusal, []
        if key not in self._records:
            return {"deleted": False, "revision": self.revision}, []
        self.revision += 1
        return {"deleted": True, "revision": self.revision}, [self._remove(key, self.revision, "delete")]

    def _delete_prefix(self, command: dict[str, Any]) -> _Outcome:
        events = self._remove_prefix(check_prefix(command.get("prefix")), self.revision + 1)
        if events:
            self.revision += 1
        return {"deleted": len(events), "revision": self.revision}, events

    def _txn(self, command: dict[str, Any]) -> _Outcome:
        compares, success, failure = (optional_list(command, name) for name in ("compare", "success", "failure"))
        for compare in compares:
            check_compare(compare)
        for operation in success + failure:
            check_operation(operation)
        succeeded = all(self._holds(compare) for compare in compares)
        branch = success if succeeded else failure
        for operation in branch:  # the only refusal that depends on the state; nothing has changed yet
            lease = operation.get("lease")
            if lease is not None and lease not in self._leases:
                return {"error": "lease_not_found", "lease": lease}, []
        revision = self.revision + 1
        events: list[dict[str, Any]] = []
        results = [self._run(operation, revision, events) for operation in branch]
        if events:
            self.revision = revision
        return {"succeeded": succeeded, "revision": self.revision, "results": results}, events

    def _run(self, operation: dict[str, Any], revision: int, events: list[dict[str, Any]]) -> dict[str, Any]:
        """One checked operation of a txn; the writes before it in the txn are visible to it."""
        if "set" in operation:
            lease = operation.get("lease")
            events.extend(self._set(key, value, lease, revision) for key, value in operation["set"].items())
            return {"revision": revision}
        if "delete" in operation:
            existed = operation["delete"] in self._records
            if existed:
                events.append(self._remove(operation["delete"], revision, "delete"))
            return {"deleted": existed}
        if "delete_prefix" in operation:
            removed = self._remove_prefix(operation["delete_prefix"], revision)
            events.extend(removed)
            return {"deleted": len(removed)}
        if "get" in operation:
            key = operation["get"]
            item = self.get(key)
            return {"key": key, "found": True, **item} if item else {"key": key, "found": False}
        bounds = operation["range"]
        items, more = self.range(bounds.get("prefix", ""), limit=bounds.get("limit"))
        return {"items": items, "more": more}

    def _barrier(self, command: dict[str, Any]) -> _Outcome:
        return {"revision": self.revision}, []

    def _set_member(self, command: dict[str, Any]) -> _Outcome:
        node_id, raft_addr = check_text(command, "id"), check_text(command, "raft_addr")
        http_addr = command.get("http_addr")
        if http_addr is not None:
            http_addr = check_text(command, "http_addr")
        # One raft address belongs to one id: a node that rejoins under a new id replaces its old entry.
        for other_id, member in list(self.members.items()):
            if other_id != node_id and member["raft_addr"] == raft_addr:
                del self.members[other_id]
        self.members[node_id] = {"raft_addr": raft_addr, "http_addr": http_addr}
        return {}, []

    def _forget_member(self, command: dict[str, Any]) -> _Outcome:
        self.members.pop(check_text(command, "id"), None)
        return {}, []

    # The only code that changes keys; it is reached only with checked arguments, and cannot fail.

    def _set(self, key: str, value: Any, lease: int | None, revision: int) -> dict[str, Any]:
        old = self._records.get(key)
        if old is None:
            self._records[key] = (value, revision, revision, 1, lease)
            self._keys.add(key)
        else:
            if old[_LEASE] is not None and old[_LEASE] != lease:
                self._leases[old[_LEASE]].keys.discard(key)
            self._records[key] = (value, old[_CREATE], revision, old[_VERSION] + 1, lease)
        if lease is not None:
            self._leases[lease].keys.add(key)
        return {"type": "set", "key": key, "value": value, "mod_revision": revision}

    def _remove(self, key: str, revision: int, event_type: str) -> dict[str, Any]:
        lease = self._records.pop(key)[_LEASE]
        self._keys.remove(key)
        if lease is not None:
            self._leases[lease].keys.discard(key)
        return {"type": event_type, "key": key, "mod_revision": revision}

    def _remove_prefix(self, prefix: str, revision: int) -> list[dict[str, Any]]:
        doomed = list(self._keys.between(prefix, _prefix_end(prefix)))
        return [self._remove(key, revision, "delete") for key in doomed]

    def _precondition_refusal(self, key: str, expected: int) -> dict[str, Any] | None:
        record = self._records.get(key)
        current = 0 if record is None else record[_MOD]
        return None if current == expected else {"error": "precondition_failed", "current_revision": current}

    def _holds(self, compare: dict[str, Any]) -> bool:
        record = self._records.get(compare["key"])
        target, op, expected = compare["target"], compare["op"], compare["value"]
        if target == "value":
            if record is None:  # an absent key has no value: never equal, never ordered
                return op == "!="
            actual = record[_VALUE]
            if op in ("=", "!="):
                return json_equal(actual, expected) == (op == "=")
            if not (is_number(actual) and is_number(expected)) and not (type(actual) is type(expected) is str):
                return False
        else:
            actual = 0 if record is None else record[_FIELD_OF_TARGET[target]]
        if op == "=":
            return actual == expected
        if op == "!=":
            return actual != expected
        return actual < expected if op == "<" else actual > expected

    # Reads: local, read-only

    def get(self, key: str) -> dict[str, Any] | None:
        record = self._records.get(key)
        if record is None:
            return None
        value, create_revision, mod_revision, version, lease = record
        return {"key": key, "value": value, "create_revision": create_revision, "mod_revision": mod_revision,
                "version": version, "lease": lease}

    def value(self, key: str) -> Any:
        """The value of ``key``; KeyError if it is absent."""
        return self._records[key][_VALUE]

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def range(self, prefix: str = "", start_after: str | None = None, limit: int | None = None,
              keys_only: bool = False) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` keys starting with ``prefix`` and greater than ``start_after``, in key order, and
        whether more such keys follow. Costs O(log n + limit)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        end = _prefix_end(prefix)
        if start_after is not None and start_after >= prefix:
            keys = self._keys.between(start_after, end, include_low=False)
        else:
            keys = self._keys.between(prefix, end)
        chosen = list(keys if limit is None else islice(keys, limit + 1))
        more = limit is not None and len(chosen) > limit
        if more:
            del chosen[limit:]
        found = zip(chosen, map(self._records.__getitem__, chosen), strict=True)
        if keys_only:
            return [{"key": key, "mod_revision": record[_MOD]} for key, record in found], more
        return [{"key": key, "value": record[_VALUE], "mod_revision": record[_MOD]} for key, record in found], more

    def count(self, prefix: str = "") -> int:
        """How many keys start with ``prefix``, in O(log n)."""
        return self._keys.count_between(prefix, _prefix_end(prefix)) if prefix else len(self._records)

    def items(self) -> Iterator[tuple[str, Any]]:
        """All (key, value) pairs in key order, lazily: finish iterating before the next ``apply``."""
        records = self._records
        return ((key, records[key][_VALUE]) for key in self._keys)

    # Snapshots

    def dump(self) -> dict[str, Any]:
        """The whole state as plain data (dicts, lists, tuples, str, numbers, None), keys in sorted order.
        Takes no lock and changes nothing, so a forked child can write it. It shares the stored values."""
        records = self._records
        keys = list(self._keys)
        return {
            "format": _DUMP_FORMAT,
            "revision": self.revision,
            "log_time": self.log_time,
            "next_lease_id": self._next_lease_id,
            "lease_term": self.lease_term,
            "keys": keys,
            "records": [records[key] for key in keys],
            "leases": [[lease_id, lease.ttl, sorted(lease.keys)] for lease_id, lease in self._leases.items()],
            "members": {node_id: dict(member) for node_id, member in self.members.items()},
            "idempotency_limit": self._idempotency_limit,
            "idempotency_max_age": self._idempotency_max_age,
            "remembered": [[key, result, log_time] for key, (result, log_time) in self._remembered.items()],
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> KVState:
        """The state ``dump`` gave (also after a JSON round trip), in time linear in its size."""
        if data.get("format") != _DUMP_FORMAT:
            raise ValueError(f"not a KVState dump of format {_DUMP_FORMAT}")
        state = cls(data["idempotency_limit"], data["idempotency_max_age"])
        state.revision, state.log_time = data["revision"], data["log_time"]
        state._next_lease_id = data["next_lease_id"]
        state.lease_term = data.get("lease_term", 0)
        keys, records = data["keys"], data["records"]
        if records and type(records[0]) is not tuple:  # JSON makes lists of them
            records = list(map(tuple, records))
        state._records = dict(zip(keys, records, strict=True))
        state._keys = _KeyIndex(keys)  # sorted input: Timsort's pass is linear
        state._keys.settle()
        state._leases = {lease_id: LeaseRecord(ttl, set(lease_keys)) for lease_id, ttl, lease_keys in data["leases"]}
        state.members = {node_id: dict(member) for node_id, member in data["members"].items()}
        state._remembered = OrderedDict((key, (result, log_time)) for key, result, log_time in data["remembered"])
        return state


_Handler = Callable[[KVState, dict[str, Any]], _Outcome]
_HANDLERS: dict[str, _Handler] = {
    "put": KVState._put, "delete": KVState._delete, "delete_prefix": KVState._delete_prefix, "txn": KVState._txn,
    "barrier": KVState._barrier, "set_member": KVState._set_member, "forget_member": KVState._forget_member,
    "lease_grant": KVState._lease_grant, "lease_revoke": KVState._lease_revoke,
    "lease_expire": KVState._lease_expire, "lease_epoch": KVState._lease_epoch,
}
_OWN_FIELDS = {
    "put": ("items", "lease", "if_revision"), "delete": ("key", "if_revision"), "delete_prefix": ("prefix",),
    "txn": ("compare", "success", "failure"), "barrier": (), "set_member": ("id", "raft_addr", "http_addr"),
    "forget_member": ("id",), "lease_grant": ("ttl", "max_leases"), "lease_revoke": ("id",),
    "lease_expire": ("id", "term"), "lease_epoch": ("term",),
}
# A barrier takes no idempotency key: a repeated barrier must confirm the current revision, not an old one.
_FIELDS = {op: frozenset(("op", *fields, *(() if op == "barrier" else ("idempotency_key",))))
           for op, fields in _OWN_FIELDS.items()}


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``; None if there is none."""
    stem = prefix.rstrip(_LAST_CHAR)
    return stem[:-1] + chr(ord(stem[-1]) + 1) if stem else None
