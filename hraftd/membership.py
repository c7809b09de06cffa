"""Joining, removing and replacing members, on the leader, one change at a time.

A member is two records that change together: a voter of the Raft layer (its raft address) and an entry of
the state machine's member table (id -> raft and HTTP addresses). A change never replaces a member that is
alive and connected unless asked to (``force``), and the leader removes itself only by handing leadership over
first.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from typing import TYPE_CHECKING, Any

from hraftd.errors import (
    MembershipConflictError,
    NotLeaderError,
    OutcomeUnknownError,
    UnknownMemberError,
    WrongSecretError,
)
from hraftd.outcome import Waiter, translate
from hraftd.raft import RaftError, Refused

if TYPE_CHECKING:
    from hraftd.store import ReplicatedKV

_POLL = 0.02


def join_proof(secret: str, node_id: str, raft_addr: str) -> str:
    """What a joining node sends to show it holds the cluster secret, without sending the secret."""
    message = f"hraftd-join\n{node_id}\n{raft_addr}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class Membership:
    def __init__(self, store: ReplicatedKV) -> None:
        self._store = store
        self._lock = threading.Lock()  # one change at a time: PySyncObj does not serialize them itself

    def add(self, node_id: str, raft_addr: str, http_addr: str | None, proof: str | None,
            force: bool = False) -> bool:
        """Make ``raft_addr`` a voting member named ``node_id``; False if it already is, exactly so.

        With an explicit cluster secret, ``proof`` must be ``join_proof(secret, node_id, raft_addr)``. A member
        that would be replaced (the same id at another address, or the same address under another id) must not
        be connected, unless ``force``.
        """
        store = self._store
        if proof is not None and store.secret and not hmac.compare_digest(
                proof, join_proof(store.secret, node_id, raft_addr)):
            raise WrongSecretError("the joining node does not hold this cluster's secret")
        with self._lock:
            deadline = self._start(store.timeout)
            table = store.members()
            current = table.get(node_id)
            if http_addr is None and current is not None and current["raft_addr"] == raft_addr:
                http_addr = current["http_addr"]  # a Go-style join names no HTTP address: keep the known one
            if current == {"raft_addr": raft_addr, "http_addr": http_addr}:
                return False
            self._refuse_replacing_live(node_id, raft_addr, current, table, force)
            self._ensure_snapshot(deadline)
            voters = self.voters()
            if current is not None and current["raft_addr"] != raft_addr and current["raft_addr"] in voters:
                self._change(False, current["raft_addr"], deadline)
            if raft_addr not in voters:
                self._change(True, raft_addr, deadline)
            store.execute({"op": "set_member", "id": node_id, "raft_addr": raft_addr, "http_addr": http_addr})
            return True

    def _refuse_replacing_live(self, node_id: str, raft_addr: str, current: dict[str, Any] | None,
                               table: dict[str, dict[str, Any]], force: bool) -> None:
        """A join that would take the id or the raft address of another member: never while that member is
        connected, and otherwise only when asked to (``force``): an unreachable member may only be cut off."""
        replaced = []
        if current is not None and current["raft_addr"] != raft_addr:
            replaced.append((f"id {node_id!r} belongs to the member at {current['raft_addr']}", current["raft_addr"]))
        holder = next((other for other, member in table.items()
                       if other != node_id and member["raft_addr"] == raft_addr), None)
        if holder is not None:
            replaced.append((f"raft address {raft_addr} belongs to the member {holder!r}", raft_addr))
        connected = self.connected()
        for what, address in replaced:
            if address in connected:
                raise MembershipConflictError(
                    f"{what}, which is connected: a node at {raft_addr} cannot take its place. Give the new node "
                    "another -id, or stop and remove that member first")
            if not force:
                raise MembershipConflictError(
                    f"{what}, which is not connected now. If it is gone for good, join again with -replace (force) "
                    "to take its place; otherwise give the new node another -id")

    def remove(self, node_id: str) -> None:
        """Remove member ``node_id``. On the leader; removing the leader hands leadership over first and then
        raises ``NotLeaderError`` pointing at the new leader, which does the removal."""
        store = self._store
        with self._lock:
            deadline = self._start(store.timeout)
            member = store.members().get(node_id)
            if member is None:
                raise UnknownMemberError(f"no member has id {node_id!r}")
            voters = self.voters()
            if member["raft_addr"] == store.raft_addr:
                if len(voters) == 1:
                    raise MembershipConflictError("refusing to remove the only member of the cluster")
                self.transfer_leadership(max(deadline - time.monotonic(), 0.5))
                leader = store.leader()
                raise NotLeaderError("leadership was handed over so that this node can be removed",
                                     leader and leader["http_addr"])
            if member["raft_addr"] in voters:
                self._change(False, member["raft_addr"], deadline)
            store.execute({"op": "forget_member", "id": node_id})

    def transfer_leadership(self, timeout: float) -> bool:
        """Hand leadership to the most caught-up follower; True once another node leads."""
        node = self._store.node
        waiter = Waiter()
        node.transfer_leadership(timeout, lambda moved: waiter.done(moved, None))
        moved = waiter.wait(timeout)
        deadline = time.monotonic() + timeout
        while node.status.get("leader") in (None, self._store.raft_addr) and time.monotonic() < deadline:
            time.sleep(_POLL)
        return bool(moved)

    def announce_self(self, deadline: float) -> None:
        """Record this node's addresses in the member table if they are missing or changed."""
        store = self._store
        if not self.is_recorded():
            store.execute({"op": "set_member", "id": store.node_id, "raft_addr": store.raft_addr,
                           "http_addr": store.http_addr})

    def is_recorded(self) -> bool:
        store = self._store
        return store.members().get(store.node_id) == {"raft_addr": store.raft_addr, "http_addr": store.http_addr}

    def voters(self) -> set[str]:
        return set(self._store.node.status["voters"])

    def connected(self) -> set[str]:
        status = self._store.node.status
        return {*status["connected"], self._store.raft_addr}

    # ----- on the Raft layer -----

    def _start(self, timeout: float) -> float:
        store = self._store
        if not store.is_leader():
            leader = store.leader()
            raise NotLeaderError("membership changes run on the leader", leader and leader["http_addr"])
        deadline = time.monotonic() + timeout
        store.sync_reads()  # the member table now reflects every earlier change
        return deadline

    def _ensure_snapshot(self, deadline: float) -> None:
        """A joining node gets its state from a snapshot, which lists every member, the founding one included."""
        node = self._store.node
        if node.has_snapshot:
            return
        node.compact()
        while not node.has_snapshot:
            if time.monotonic() >= deadline:
                raise OutcomeUnknownError("the leader could not take its first snapshot in time; retry the join")
            time.sleep(_POLL)

    def _change(self, add: bool, raft_addr: str, deadline: float) -> None:
        node = self._store.node
        while True:
            waiter = Waiter()
            node.change_membership(add, raft_addr, lambda error, waiter=waiter: waiter.done(None, error))
            try:
                waiter.wait(max(deadline - time.monotonic(), 0))
                return
            except Refused as refused:
                # A new leader refuses changes until its first entry commits: that is worth waiting for.
                if time.monotonic() >= deadline:
                    raise translate(refused) from None
            except RaftError as error:
                raise translate(error) from None
            time.sleep(_POLL)
