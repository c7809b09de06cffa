"""Coordination recipes on an hraftd cluster: a lease kept alive in the background, a lock with fencing tokens,
and a leader election. Built on ``hraftd.client.Client`` only (stdlib, nothing of the server side).

What they guarantee, and what not, is in docs/consistency.md ("Leases and locks"). In short: a lock key lives
under its holder's lease, so it disappears when the holder stops keeping the lease alive; the holder itself
knows that it may have lost the lock once its keepalives have failed for a ttl (``Lease.alive`` turns false
then, never later than the leader can expire it); the lock key's ``create_revision`` is a fencing token that
grows with every new holder, for the resource to refuse the writes of a holder that lost the lock.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from typing import Any

from hraftd.errors import HraftdError

_WAIT = 30.0  # seconds one long poll of a watch waits for a held lock or office to be let go


class Lease:
    """A lease of ``ttl`` seconds, kept alive by a background thread (a keepalive every ttl/3, failing over
    between the client's nodes) from ``grant`` until ``revoke``. As a context manager: granted on entry,
    revoked on exit."""

    def __init__(self, client: Any, ttl: float) -> None:
        self._client = client
        self.ttl = ttl
        self.id: int | None = None
        self._valid_until = 0.0  # when the last acknowledged keepalive was sent, plus ttl (monotonic clock)
        self._ended = False  # the cluster said the lease does not exist any more
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def grant(self) -> Lease:
        sent = time.monotonic()
        self.id = self._client.lease_grant(self.ttl)["id"]
        self._valid_until = sent + self.ttl
        self._thread = threading.Thread(target=self._keep_alive, name=f"hraftd-lease-{self.id}", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """False once the cluster has said the lease ended, or once no keepalive has been acknowledged for a
        ttl: the leader may have expired it (and deleted its keys) by then."""
        return not self._ended and time.monotonic() < self._valid_until

    @property
    def valid_until(self) -> float:
        """The ``time.monotonic()`` until which the lease is sure to last without another acknowledged
        keepalive: when the last acknowledged one was sent, plus ttl (the leader's deadline is no earlier)."""
        return self._valid_until if not self._ended else 0.0

    @property
    def remaining(self) -> float:
        """Seconds the lease is sure to last without another acknowledged keepalive (0 when not ``alive``)."""
        return max(self._valid_until - time.monotonic(), 0.0) if not self._ended else 0.0

    def revoke(self) -> None:
        """Stop the keepalives and end the lease now: its keys are deleted. A lease already ended is fine."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.id is not None and not self._ended:
            self._ended = True
            try:
                self._client.lease_revoke(self.id)
            except HraftdError as error:
                if getattr(error, "code", None) != "lease_not_found":
                    raise

    def _keep_alive(self) -> None:
        interval = self.ttl / 3
        pause = interval
        while not self._stop.wait(pause):
            sent = time.monotonic()
            try:
                self._client.lease_keepalive(self.id, deadline=interval, timeout=interval)
            except HraftdError as error:
                if getattr(error, "code", None) == "lease_not_found":
                    self._ended = True
                    return
                # The next try an interval after this one began: at once after an attempt that spent its time
                # failing over (unavailable, outcome unknown), not in a tight loop on a refusal answered at once
                # (401, 403, a proxy's 502), which may pass before a ttl is over.
                pause = max(sent + interval - time.monotonic(), 0.0)
                continue
            with self._lock:
                self._valid_until = max(self._valid_until, sent + self.ttl)
            pause = interval

    def __enter__(self) -> Lease:
        return self if self.id is not None else self.grant()

    def __exit__(self, *exc_info: object) -> None:
        self.revoke()


class _Claim:
    """A key that one holder at a time creates under its own lease: the shared part of Lock and Election."""

    def __init__(self, client: Any, key: str, ttl: float) -> None:
        self._client = client
        self.key = key
        self.ttl = ttl
        self.lease: Lease | None = None
        self.token: int | None = None  # the key's create_revision while held: the fencing token

    @property
    def held(self) -> bool:
        """Claimed, and the lease behind it is sure to be alive (see ``Lease.alive``)."""
        return self.token is not None and self.lease is not None and self.lease.alive

    def _claim(self, value: Any, timeout: float | None) -> int:
        """Create the key if it is absent (compare-and-set on version 0), else wait until it is deleted and try
        again. Returns the fencing token; ``TimeoutError`` after ``timeout`` seconds."""
        give_up = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if self.lease is None or not self.lease.alive:
                    self._drop_lease()
                    self.lease = Lease(self._client, self.ttl).grant()
                try:
                    answer = self._client.txn(
                        compare=[{"key": self.key, "target": "version", "op": "=", "value": 0}],
                        success=[{"set": {self.key: value}, "lease": self.lease.id}],
                        failure=[{"get": self.key}])
                except HraftdError as error:
                    if getattr(error, "code", None) == "lease_not_found":  # our lease ended while we waited
                        self._drop_lease()
                        continue
                    raise
                if answer["succeeded"]:
                    self.token = answer["revision"]
                    return self.token
                holder = answer["results"][0]
                if holder.get("lease") == self.lease.id:  # an earlier attempt of ours, its answer lost, created it
                    self.token = holder["create_revision"]
                    return self.token
                self._wait_for_change(answer["revision"], give_up)
        except BaseException:
            # The claiming txn may have created the key under our lease although we could not learn it: revoking
            # the lease deletes that key, else it would stay held as long as this process keeps the lease alive.
            self._drop_lease(best_effort=True)
            raise

    def _drop_lease(self, best_effort: bool = False) -> None:
        """Revoke our lease (deleting any key under it) and stop its keepalives. ``best_effort``: a revoke
        that fails is left to the leader's expiry, a ttl after the last keepalive."""
        lease, self.lease = self.lease, None
        if lease is None:
            return
        try:
            lease.revoke()
        except HraftdError:
            if not best_effort:
                raise

    def _wait_for_change(self, revision: int, give_up: float | None) -> None:
        """Until the key held at ``revision`` is deleted (or expires) after it: long polls of a watch on it."""
        since = revision
        while True:
            left = _WAIT if give_up is None else give_up - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.key} is still held")
            try:
                answer = self._client.watch_once(self.key, since, min(left, _WAIT))
            except HraftdError as error:
                if getattr(error, "code", None) == "compacted":  # too far behind to tell: look again
                    return
                raise
            if any(event["type"] != "set" for event in answer["events"]):
                return
            since = answer["revision"]

    def _release(self) -> None:
        """Delete the key if it is still ours, then end the lease."""
        token, self.token = self.token, None
        lease, self.lease = self.lease, None
        try:
            if token is not None:
                self._client.txn(compare=[{"key": self.key, "target": "create_revision", "op": "=", "value": token}],
                                 success=[{"delete": self.key}])
        finally:
            if lease is not None:
                lease.revoke()


class Lock(_Claim):
    """Mutual exclusion between the processes that lock the same ``name``. ``acquire`` returns a fencing
    token; ``held`` turns false once the holder's keepalives have failed for a ttl (it may have lost the lock).

        with client.lock("reports") as token:
            storage.write(report, fencing_token=token)
    """

    def __init__(self, client: Any, name: str, ttl: float = 10.0, *, prefix: str = "locks/") -> None:
        super().__init__(client, prefix + name, ttl)

    def acquire(self, timeout: float | None = None) -> int:
        return self._claim({"acquired_at": time.time()}, timeout)

    def release(self) -> None:
        self._release()

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Election(_Claim):
    """One leader at a time among the processes that campaign for ``name``: the leader holds the office key
    (its value says who leads) under its lease; ``resign`` or the leader's death hands it to the next."""

    def __init__(self, client: Any, name: str, ttl: float = 10.0, *, prefix: str = "elections/") -> None:
        super().__init__(client, prefix + name, ttl)

    def campaign(self, value: Any, timeout: float | None = None) -> int:
        """Block until elected (``TimeoutError`` after ``timeout``); returns the term's fencing token."""
        return self._claim(value, timeout)

    def leader(self) -> Any:
        """The value of the current leader, or None while nobody leads."""
        item = self._client.item(self.key)
        return None if item is None else item["value"]

    @property
    def is_leader(self) -> bool:
        return self.held

    def resign(self) -> None:
        self._release()


class LeaseCalls:
    """Mixed into ``hraftd.client.Client``: the lease requests, and the recipes above. It provides ``_call``
    and ``_write`` (a request that fails over and retries; a write with an idempotency key)."""

    def lease_grant(self: Any, ttl: float, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """A new lease of ``ttl`` seconds (1 to 86,400): ``{"id", "ttl"}``."""
        return self._write("POST", "/lease", {"ttl": ttl}, idempotency_key)

    def lease_keepalive(self: Any, lease_id: int, *, deadline: float | None = None,
                        timeout: float | None = None) -> float:
        """Renew the lease to its full ttl (returned). ``deadline``, ``timeout``: this call's own."""
        return self._call("POST", f"/lease/{int(lease_id)}/keepalive", changes=False, deadline=deadline,
                          attempt_timeout=timeout)["ttl"]

    def lease_revoke(self: Any, lease_id: int, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """End the lease and delete its keys: ``{"revoked", "deleted", "revision"}``."""
        return self._write("DELETE", f"/lease/{int(lease_id)}", None, idempotency_key)

    def lease_info(self: Any, lease_id: int) -> dict[str, Any]:
        """``{"id", "ttl", "remaining", "keys"}`` as the leader knows them."""
        return self._call("GET", f"/lease/{int(lease_id)}")

    def watch_once(self: Any, key: str, since: int, timeout: float) -> dict[str, Any]:
        """One long poll of ``GET /watch`` on ``key``: ``{"revision", "events"}`` after ``since``, waiting up to
        ``timeout`` seconds for the first."""
        query = urllib.parse.urlencode({"key": key, "since": since, "timeout": f"{timeout:g}"})
        return self._call("GET", "/watch?" + query, attempt_timeout=timeout + self.timeout)

    def lease(self, ttl: float) -> Lease:
        """A lease kept alive in the background while ``with client.lease(ttl) as lease:`` runs."""
        return Lease(self, ttl)

    def lock(self, name: str, ttl: float = 10.0) -> Lock:
        """A lock: ``with client.lock(name) as fencing_token:``; see ``hraftd.recipes.Lock``."""
        return Lock(self, name, ttl)

    def election(self, name: str, ttl: float = 10.0) -> Election:
        """A leader election: ``campaign(value)``, ``leader()``, ``resign()``; see ``hraftd.recipes.Election``."""
        return Election(self, name, ttl)
