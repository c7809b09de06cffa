"""The shapes of a range's answer, shared by ``ReplicatedKV`` and ``hraftd.client`` (which imports nothing else
of the server side)."""

from __future__ import annotations

from typing import Any, NamedTuple


class Entry(NamedTuple):
    """One key of a range. ``value`` is None in a range of keys only."""

    key: str
    value: Any
    mod_revision: int


class Page(NamedTuple):
    """One consistent view of part of a range: the data's ``revision`` then, the entries in key order, and
    whether more keys of the range follow the last one."""

    revision: int
    items: list[Entry]
    more: bool
