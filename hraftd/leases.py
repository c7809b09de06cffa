"""Leases on the store's side: the leader's deadlines and expiries, keepalives, and the lease operations of
``ReplicatedKV``.

The state machine knows each lease's ttl and keys, and no clock (``hraftd.leasestate``). The leader keeps every
lease's deadline on its monotonic clock (``LeaseKeeper``):

- when a node becomes leader (a new term), it commits ``lease_epoch`` with its term first, and gives every
  lease its full ttl again from that moment: a leader change never ends a live lease early;
- a keepalive is not a log entry. Only the leader answers it, once a linearizable read has confirmed that it
  still leads and has applied every committed entry, and it sets the lease's deadline to now + ttl;
- once a deadline passes, the leader proposes ``lease_expire`` with its term; from then on it refuses
  keepalives of that lease (its expiry is on the way).

Followers keep no deadlines: a keepalive sent to one is forwarded to the leader (``hraftd.web``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Protocol

from hraftd.commands import BadCommand, check_lease_id, check_lease_ttl
from hraftd.errors import HraftdError, LeaseNotFoundError, NotLeaderError, UnavailableError
from hraftd.state import KVState

log = logging.getLogger("hraftd")
_TICK = 0.05  # seconds between two looks at the deadlines: an expiry is proposed at most this late
_RETRY = 1.0  # an epoch or expiry still not applied this long after it was proposed is proposed again
_EPOCH_WAIT = 2.0  # how long a keepalive on a new leader waits for its epoch to be applied


class _Store(Protocol):
    def leading_term(self) -> int | None: ...
    def leader(self) -> dict[str, str | None] | None: ...
    def sync_reads(self, level: str = ..., timeout: float | None = None) -> None: ...
    def _local(self, read: Any) -> Any: ...
    def submit(self, command: dict[str, Any], done: Any) -> None: ...


def _checked(check: Any, value: Any) -> Any:
    try:
        return check(value)
    except BadCommand as error:
        raise ValueError(str(error)) from None


def _not_found(lease_id: int) -> LeaseNotFoundError:
    return LeaseNotFoundError(f"lease {lease_id} does not exist (never granted, revoked or expired)")


class LeaseKeeper:
    """The deadlines of the leases while this node leads, and the thread that proposes their expiry."""

    def __init__(self, store: _Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._term: int | None = None  # the term this node leads in as last seen; None while it does not lead
        self._epoch_proposed = -math.inf
        self._deadlines: dict[int, float] = {}
        self._expiring: dict[int, float] = {}  # lease id -> when its expiry was proposed
        # So that an idle tick costs O(1), not O(live leases): the state's lease mark as last reconciled with,
        # and a time before which no lease can be due.
        self._mark: tuple[int, int] | None = None
        self._next_due = -math.inf
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hraftd-leases", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()

    def keepalive(self, lease_id: int) -> float:
        """Renew the lease to its full ttl (returned); on the leader only, else ``NotLeaderError``."""
        return self._confirmed(lease_id)[0]

    def remaining(self, lease_id: int) -> tuple[float, float, list[str]]:
        """(ttl, seconds left before the leader expires it, keys), on the leader only."""
        ttl, deadline, keys = self._confirmed(lease_id, renew=False)
        return ttl, max(deadline - time.monotonic(), 0.0), keys

    def _confirmed(self, lease_id: int, renew: bool = True) -> tuple[float, float, list[str]]:
        store = self._store
        term = store.leading_term()
        if term is None:
            leader = store.leader()
            raise NotLeaderError("leases are kept by the leader", leader and leader["http_addr"])

        def read(state: KVState) -> tuple[int, float | None, list[str]]:
            lease = state.lease(lease_id) if not renew else None
            return state.lease_term, state.lease_ttl(lease_id), lease["keys"] if lease else []

        give_up = time.monotonic() + _EPOCH_WAIT
        while True:
            store.sync_reads()  # confirms that this node still led after the request came; applies what it led to
            lease_term, ttl, keys = store._local(read)
            if lease_term == term and store.leading_term() == term:
                break
            if lease_term > term or store.leading_term() != term or time.monotonic() > give_up:
                raise UnavailableError("leadership is changing hands; the new leader renews every lease, retry")
            time.sleep(_TICK / 5)  # a new leader: its epoch is about to be applied
        now = time.monotonic()
        with self._lock:
            self._follow(term)
            if ttl is None or lease_id in self._expiring:
                raise _not_found(lease_id)
            deadline = now + ttl if renew else self._deadlines.setdefault(lease_id, now + ttl)
            self._deadlines[lease_id] = deadline
            self._next_due = min(self._next_due, deadline)
        return ttl, deadline, keys

    def _follow(self, term: int | None) -> None:
        """Under the lock: a new term (or the end of leading) starts every deadline over."""
        if term != self._term:
            self._term = term
            self._epoch_proposed = -math.inf
            self._deadlines.clear()
            self._expiring.clear()
            self._mark = None
            self._next_due = -math.inf

    def _run(self) -> None:
        while not self._stopped.wait(_TICK):
            try:
                self._tick()
            except HraftdError:  # closed, or reopening after a storage failure: look again later
                continue
            except Exception:  # a bug; the next tick tries again rather than leave leases unexpired for good
                log.exception("while expiring leases")

    def _tick(self) -> None:
        store = self._store
        term = store.leading_term()
        with self._lock:
            self._follow(term)
        if term is None:
            return
        known = self._mark

        def read(state: KVState) -> tuple[int, tuple[int, int], list[int] | None]:
            mark = state.lease_mark()
            return state.lease_term, mark, None if mark == known else state.leases()

        lease_term, mark, ids = store._local(read)
        # After the read: a lease seen first now was granted (and its grant sent) before it, so now + ttl is no
        # earlier than the client's sent + ttl.
        now = time.monotonic()
        proposals: list[dict[str, Any]] = []
        with self._lock:
            if self._term != term:
                return
            if lease_term < term:  # our epoch first: expiries decided in earlier terms are refused after it
                if now - self._epoch_proposed > _RETRY:
                    self._epoch_proposed = now
                    proposals.append({"op": "lease_epoch", "term": term})
            else:
                proposals = self._due(mark, ids, term, now)
        for command in proposals:
            store.submit(command, lambda result, error: None)  # not applied: proposed again after _RETRY

    def _due(self, mark: tuple[int, int], ids: list[int] | None, term: int, now: float) -> list[dict[str, Any]]:
        """Under the lock: the expiries to propose now; leases seen for the first time get their full ttl.
        ``ids``: the live leases, None when the state's lease mark is the one last reconciled with."""
        if ids is not None and mark != self._mark:
            self._reconcile(ids, now)
            self._mark = mark
        if now < self._next_due:
            return []
        due = [lease_id for lease_id, deadline in self._deadlines.items()
               if deadline <= now and now - self._expiring.get(lease_id, -math.inf) > _RETRY]
        if due:  # a keepalive may have put back a lease ended since the last reconcile: forget, never expire it
            live = self._store._local(lambda state: [i for i in due if state.lease_ttl(i) is not None])
            for lease_id in set(due) - set(live):
                del self._deadlines[lease_id]
                self._expiring.pop(lease_id, None)
            due = live
        for lease_id in due:
            self._expiring[lease_id] = now
        self._next_due = min((max(deadline, self._expiring.get(lease_id, -math.inf) + _RETRY)
                              for lease_id, deadline in self._deadlines.items()), default=math.inf)
        return [{"op": "lease_expire", "id": lease_id, "term": term} for lease_id in due]

    def _reconcile(self, ids: list[int], now: float) -> None:
        """Under the lock: forget the leases that ended; give the ones seen for the first time their full ttl."""
        live = set(ids)
        for gone in self._deadlines.keys() - live:
            del self._deadlines[gone]
        for gone in self._expiring.keys() - live:
            del self._expiring[gone]
        new = live - self._deadlines.keys()
        if new:
            ttls = self._store._local(lambda state: {lease_id: state.lease_ttl(lease_id) for lease_id in new})
            for lease_id, ttl in ttls.items():
                if ttl is not None:
                    self._deadlines[lease_id] = now + ttl
                    self._next_due = min(self._next_due, now + ttl)


class LeaseOperations:
    """Mixed into ``ReplicatedKV``: leases. Grant and revoke are log entries, sent from any node; keepalive and
    lease info are answered by the leader (``NotLeaderError`` elsewhere, with the leader's HTTP address)."""

    _lease_keeper: LeaseKeeper
    max_leases: int

    def lease_grant(self: Any, ttl: float, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """A new lease of ``ttl`` seconds (1 to 86,400): ``{"id", "ttl"}``. It lives as long as keepalives come
        at least every ``ttl`` seconds, then the leader expires it and deletes its keys in one entry.
        ``TooManyLeasesError`` while ``max_leases`` leases are live."""
        command: dict[str, Any] = {"op": "lease_grant", "ttl": _checked(check_lease_ttl, ttl),
                                   "max_leases": self.max_leases}
        if idempotency_key is not None:
            command["idempotency_key"] = idempotency_key
        return dict(self.execute(command))

    def lease_keepalive(self, lease_id: int) -> float:
        """Renew the lease to its full ttl, which is returned; ``LeaseNotFoundError`` if it has ended."""
        return self._lease_keeper.keepalive(_checked(check_lease_id, lease_id))

    def lease_revoke(self: Any, lease_id: int, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """End the lease now and delete its keys, in one entry: ``{"revoked": True, "deleted", "revision"}``;
        ``LeaseNotFoundError`` if it has already ended."""
        command: dict[str, Any] = {"op": "lease_revoke", "id": _checked(check_lease_id, lease_id)}
        if idempotency_key is not None:
            command["idempotency_key"] = idempotency_key
        result = self.execute(command)
        if not result["revoked"]:
            raise _not_found(lease_id)
        return dict(result)

    def lease_info(self, lease_id: int) -> dict[str, Any]:
        """``{"id", "ttl", "remaining", "keys"}``: the granted ttl, the seconds left before the leader expires
        it (without a keepalive), and its keys in key order."""
        ttl, remaining, keys = self._lease_keeper.remaining(_checked(check_lease_id, lease_id))
        return {"id": lease_id, "ttl": ttl, "remaining": round(remaining, 3), "keys": keys}
