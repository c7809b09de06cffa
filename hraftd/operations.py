"""The data operations of ``ReplicatedKV``: reads at a chosen level, writes, compare-and-set, transactions,
prefix ranges, and writes that carry an idempotency key.

Every write is one replicated command, applied atomically by the state machine (``hraftd.state``). Arguments
are checked here, with the state machine's own rules (``hraftd.commands``), so a bad one raises ``ValueError``
before anything is sent. Values handed back to the caller are deep copies: changing one never changes the
node's state. The ``read_*`` methods are the exception, for the HTTP server: local, without waiting, and
sharing the stored values, which must only be encoded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from hraftd.commands import (
    BadCommand,
    check_compare,
    check_items,
    check_key,
    check_lease_id,
    check_operation,
    check_prefix,
)
from hraftd.entries import Entry, Page
from hraftd.state import KVState


def _checked(check: Callable[..., Any], *args: Any) -> Any:
    try:
        return check(*args)
    except BadCommand as error:
        raise ValueError(str(error)) from None


def _keyed(command: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise ValueError("an idempotency key is a non-empty string")
        command["idempotency_key"] = idempotency_key
    return command


class KVOperations(Mapping):
    """Mixed into ``ReplicatedKV``, which provides the plumbing: ``sync_reads(level)`` (wait until local reads
    are as fresh as ``level`` asks), ``_local(read)`` (``read(state)`` under the state machine's lock) and
    ``execute(command)`` (replicate a command, return its result or raise its error)."""

    # ----- reads -----

    def read(self, key: str, *, level: str = "linearizable") -> Any:
        """A copy of the value of ``key``; ``KeyError`` if it is missing."""
        self.sync_reads(level)
        # A copy: changing the node's own object would change this node's state without replicating it.
        return copy.deepcopy(self._local(lambda state: state.value(key)))

    def item(self, key: str, *, level: str = "linearizable") -> dict[str, Any] | None:
        """``{"key", "value", "create_revision", "mod_revision", "version", "lease"}`` of ``key`` (the value
        a copy), or None if it is missing."""
        self.sync_reads(level)
        return copy.deepcopy(self.read_item(key))

    def read_item(self, key: str) -> dict[str, Any] | None:
        """The key's value and revisions from local state, without waiting and without a copy (read-only)."""
        return self._local(lambda state: state.get(key))

    def page(self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None,
             keys_only: bool = False, level: str = "linearizable") -> Page:
        """Up to ``limit`` (None: all) keys that start with ``prefix`` and sort after ``start_after``, in key
        order, as of one revision. Costs O(log n + limit)."""
        self._check_range(prefix, start_after, limit)
        self.sync_reads(level)
        revision, items, more = self.read_page(prefix, start_after, limit, keys_only)
        entries = [Entry(item["key"], None if keys_only else copy.deepcopy(item["value"]), item["mod_revision"])
                   for item in items]
        return Page(revision, entries, more)

    def range(self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None,
              keys_only: bool = False, level: str = "linearizable") -> list[Entry]:
        """The entries of ``page``: every key of the range by default, as of one revision."""
        return self.page(prefix, start_after=start_after, limit=limit, keys_only=keys_only, level=level).items

    def read_page(self, prefix: str, start_after: str | None, limit: int | None,
                  keys_only: bool) -> tuple[int, list[dict[str, Any]], bool]:
        """(revision, items, more) of a range from local state, without waiting and without a copy."""
        def take(state: KVState) -> tuple[int, list[dict[str, Any]], bool]:
            items, more = state.range(prefix, start_after, limit, keys_only)
            return state.revision, items, more

        return self._local(take)

    def count(self, prefix: str = "", *, level: str = "linearizable") -> int:
        """How many keys start with ``prefix``, in O(log n)."""
        _checked(check_prefix, prefix)
        self.sync_reads(level)
        return self.read_count(prefix)[1]

    def read_count(self, prefix: str) -> tuple[int, int]:
        """(revision, number of keys that start with ``prefix``) from local state, without waiting."""
        return self._local(lambda state: (state.revision, state.count(prefix)))

    def snapshot(self, *, level: str = "linearizable") -> dict[str, Any]:
        """A consistent deep copy of the whole dict."""
        self.sync_reads(level)
        return copy.deepcopy(self._local(lambda state: dict(state.items())))

    def get(self, key: str, default: Any = None, *, level: str = "linearizable") -> Any:
        try:
            return self.read(key, level=level)
        except KeyError:
            return default

    def __getitem__(self, key: str) -> Any:
        return self.read(key)

    def __contains__(self, key: object) -> bool:
        self.sync_reads()
        return self._local(lambda state: key in state)

    def __len__(self) -> int:
        self.sync_reads()
        return self._local(len)

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def keys(self):  # type: ignore[override]
        return self.snapshot().keys()

    def items(self):  # type: ignore[override]
        return self.snapshot().items()

    def values(self):  # type: ignore[override]
        return self.snapshot().values()

    @staticmethod
    def _check_range(prefix: str, start_after: str | None, limit: int | None) -> None:
        _checked(check_prefix, prefix)
        if start_after is not None and not isinstance(start_after, str):
            raise ValueError(f"start_after must be a string or None, not {type(start_after).__name__}")
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ValueError(f"limit must be a whole number of at least 1, or None, not {limit!r}")

    # ----- writes -----

    def update(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kwargs: Any) -> int:
        """Write all the pairs in one Raft entry: all or none. Returns the data's new revision."""
        return self.put(dict(items, **kwargs))

    def put(self, items: Mapping[str, Any], *, lease: int | None = None, idempotency_key: str | None = None) -> int:
        """``update`` with an idempotency key: repeated with the same key, it is applied once, and every
        repeat answers the first outcome (see docs/python.md for how long a key is remembered). ``lease``:
        attach the keys to that lease (``LeaseNotFoundError`` if it has ended: nothing is written)."""
        if not items:
            raise ValueError("nothing to write")
        command: dict[str, Any] = {"op": "put", "items": _checked(check_items, dict(items))}
        if lease is not None:
            command["lease"] = _checked(check_lease_id, lease)
        return self.execute(_keyed(command, idempotency_key))["revision"]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def cas(self, key: str, value: Any, revision: int, *, idempotency_key: str | None = None) -> int:
        """Write ``key`` only if its ``mod_revision`` is ``revision`` (0: only if it is absent); returns the
        new revision. ``PreconditionFailedError`` (with ``current_revision``) if not: nothing is written."""
        _checked(check_key, key)
        if type(revision) is not int or revision < 0:
            raise ValueError(f"a revision is a whole number of at least 0, not {revision!r}")
        items = _checked(check_items, {key: value})
        command = {"op": "put", "items": items, "if_revision": revision}
        return self.execute(_keyed(command, idempotency_key))["revision"]

    def delete(self, key: str, *, if_revision: int | None = None, idempotency_key: str | None = None) -> bool:
        """Delete ``key``; returns whether it existed when the deletion was applied. ``if_revision``: only if
        its ``mod_revision`` is that (else ``PreconditionFailedError``)."""
        command: dict[str, Any] = {"op": "delete", "key": _checked(check_key, key)}
        if if_revision is not None:
            if type(if_revision) is not int or if_revision < 0:
                raise ValueError(f"a revision is a whole number of at least 0, not {if_revision!r}")
            command["if_revision"] = if_revision
        return self.execute(_keyed(command, idempotency_key))["deleted"]

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def delete_prefix(self, prefix: str, *, idempotency_key: str | None = None) -> int:
        """Delete every key that starts with ``prefix`` (not empty), atomically; returns how many."""
        if _checked(check_prefix, prefix) == "":
            raise ValueError("the prefix must not be empty: deleting every key is not done by accident")
        return self.execute(_keyed({"op": "delete_prefix", "prefix": prefix}, idempotency_key))["deleted"]

    def txn(self, compare: Sequence[dict[str, Any]] = (), success: Sequence[dict[str, Any]] = (),
            failure: Sequence[dict[str, Any]] = (), *, idempotency_key: str | None = None) -> dict[str, Any]:
        """If every compare holds, run the ``success`` operations, else the ``failure`` ones: one entry, atomic.
        Returns ``{"succeeded", "revision", "results"}`` (a copy), one result per operation run. The forms
        of compares, operations and results are in docs/python.md."""
        command = {"op": "txn", "compare": list(compare), "success": list(success), "failure": list(failure)}
        for each in command["compare"]:
            _checked(check_compare, each)
        for operation in command["success"] + command["failure"]:
            _checked(check_operation, operation)
        return copy.deepcopy(self.execute(_keyed(command, idempotency_key)))
