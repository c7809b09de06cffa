"""The leases of the state machine: grant, revoke, expire, and the leadership epoch that makes an expiry from a
deposed leader harmless.

Mixed into ``KVState`` (``hraftd.state``), whose rules hold here too: deterministic, no clocks. The state
machine never decides that a lease has run out; the leader does, on its own clock, and proposes ``lease_expire``
with the term it leads in. Every new leader first commits ``lease_epoch`` with its term; from then on an expiry
decided in an earlier term is refused, so a deposed leader's late expiry (forwarded to the new leader after it
stepped down) can never end a lease the new leader is keeping alive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from hraftd.commands import BadCommand, optional_int, short

_Outcome = tuple[dict[str, Any], list[dict[str, Any]]]


class LeaseRecord:
    __slots__ = ("keys", "ttl")

    def __init__(self, ttl: float, keys: set[str]) -> None:
        self.ttl = ttl
        self.keys = keys


class LeaseCommands:
    """The lease commands and reads of ``KVState``; it provides ``_leases``, ``_next_lease_id``,
    ``lease_term``, ``revision`` and ``_remove``."""

    _leases: dict[int, LeaseRecord]
    _next_lease_id: int
    lease_term: int
    revision: int
    _remove: Callable[[str, int, str], dict[str, Any]]

    def _lease_grant(self, command: dict[str, Any]) -> _Outcome:
        ttl = command.get("ttl")
        if type(ttl) not in (int, float) or not 0 < ttl < math.inf:
            raise BadCommand(f"ttl must be a positive number of seconds, not {short(ttl)}")
        # The proposer's cap, decided here so that every node refuses the same grants: the leader's keeper
        # looks at every live lease, and what it costs grows with their number.
        max_leases = optional_int(command, "max_leases", minimum=1)
        if max_leases is not None and len(self._leases) >= max_leases:
            return {"error": "too_many_leases", "max_leases": max_leases}, []
        lease_id = self._next_lease_id
        self._next_lease_id += 1
        self._leases[lease_id] = LeaseRecord(ttl, set())
        return {"id": lease_id, "ttl": ttl}, []

    def _lease_revoke(self, command: dict[str, Any]) -> _Outcome:
        return self._end_lease(command, "delete")

    def _lease_expire(self, command: dict[str, Any]) -> _Outcome:
        term = optional_int(command, "term", minimum=0)
        if term is not None and term < self.lease_term:  # decided by a leader that has been replaced since
            return {"revoked": False, "deleted": 0, "revision": self.revision, "stale": True}, []
        return self._end_lease(command, "expire")

    def _lease_epoch(self, command: dict[str, Any]) -> _Outcome:
        term = optional_int(command, "term", minimum=0)
        if term is None:
            raise BadCommand("term must be an integer >= 0")
        self.lease_term = max(self.lease_term, term)
        return {"lease_term": self.lease_term}, []

    def _end_lease(self, command: dict[str, Any], event_type: str) -> _Outcome:
        lease_id = optional_int(command, "id")
        if lease_id is None:
            raise BadCommand("id must be an integer")
        lease = self._leases.get(lease_id)
        if lease is None:
            return {"revoked": False, "deleted": 0, "revision": self.revision}, []
        revision = self.revision + 1
        events = [self._remove(key, revision, event_type) for key in sorted(lease.keys)]
        del self._leases[lease_id]
        if events:
            self.revision = revision
        return {"revoked": True, "deleted": len(events), "revision": self.revision}, events

    # Reads: local, read-only

    def lease(self, lease_id: int) -> dict[str, Any] | None:
        lease = self._leases.get(lease_id)
        return None if lease is None else {"id": lease_id, "ttl": lease.ttl, "keys": sorted(lease.keys)}

    def lease_ttl(self, lease_id: int) -> float | None:
        """The granted ttl of a live lease, None if there is none; O(1)."""
        lease = self._leases.get(lease_id)
        return None if lease is None else lease.ttl

    def lease_mark(self) -> tuple[int, int]:
        """(the next lease id, the number of live leases): changes whenever the set of live leases does, as ids
        are never granted twice; O(1)."""
        return self._next_lease_id, len(self._leases)

    def leases(self) -> list[int]:
        """The ids of the live leases, in ascending order."""
        return list(self._leases)  # granted in ascending order and never granted again
