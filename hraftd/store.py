"""ReplicatedKV: a dict replicated by Raft, the public Python face of a node.

It owns the node's Raft layer (``hraftd.raft``) and state machine (``hraftd.state``): read levels, the mapping
of the Raft layer's outcomes onto hraftd's errors, the node's identity and secret, and reopening the node from
disk after a storage failure. The HTTP server is one user of it; a Python program is another.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hraftd import datadir
from hraftd.errors import ClosedError, DataDirError, HraftdError, UnavailableError
from hraftd.eventwindow import EventWindow, matcher
from hraftd.leases import LeaseKeeper, LeaseOperations
from hraftd.membership import Membership, join_proof
from hraftd.operations import Entry, KVOperations, Page
from hraftd.outcome import Waiter, refusal, translate
from hraftd.raft import DamagedFile, IncompatibleEngine, RaftError, RaftNode, RaftOptions
from hraftd.raft import StorageError as RaftStorageError
from hraftd.settings import parse_address
from hraftd.state import Applied, KVState

LINEARIZABLE = "linearizable"
STALE = "stale"
READ_LEVELS = (LINEARIZABLE, STALE)
log = logging.getLogger("hraftd")
_READY_LAG = 1000  # applied entries may trail the known commit index by this much and still be "ready"
_REOPEN_INTERVAL = 1.0

Done = Callable[[Any, HraftdError | None], None]
__all__ = ["LINEARIZABLE", "READ_LEVELS", "STALE", "Entry", "Page", "ReplicatedKV", "join_proof"]


class ReplicatedKV(KVOperations, LeaseOperations):
    """A dict whose contents are agreed by a Raft cluster; any node reads and writes.

    ``self_addr`` is this node's raft ``host:port`` (it binds only that host); ``peers`` are the raft addresses
    of the other members when the cluster is defined up front (on a restart they may be left out: the node
    knows its cluster from its data). Data, Raft log and membership live in ``data_dir``.
    Reads are linearizable unless ``level="stale"`` is asked for. Writes return once a majority has them on
    disk and this node has applied them; ``fsync=False`` drops the "on disk" (faster, but a power loss of a
    majority can lose acknowledged writes).
    ``secret``: authenticates and encrypts Raft traffic; every node needs the same one. Without one, a node
    alone makes its own (kept in ``data_dir``); a node with peers must be given one, or ``insecure=True``.
    ``compact_log_bytes``: take a snapshot once the log holds this many bytes (memory and disk stay bounded).
    ``watch_window``: how many recent events the node keeps for watches (``watch``).
    Errors: :class:`UnavailableError` (not applied), :class:`OutcomeUnknownError` (may or may not be applied),
    :class:`PreconditionFailedError` and :class:`InsufficientStorageError` (not applied), :class:`ClosedError`
    after ``close``.
    """

    def __init__(
        self,
        self_addr: str,
        peers: Iterable[str] = (),
        *,
        data_dir: str | Path,
        node_id: str | None = None,
        http_addr: str | None = None,
        timeout: float = 5.0,
        fsync: bool = True,
        secret: str | None = None,
        insecure: bool = False,
        cluster_id: str | None = None,
        compact_log_bytes: int = 64 << 20,
        watch_window: int = 10_000,
        max_leases: int = 10_000,
    ) -> None:
        self_addr = parse_address(self_addr, listen=True, raft=True)
        peers = [parse_address(peer, raft=True) for peer in peers]
        self.raft_addr = self_addr
        self.node_id = node_id or self_addr
        self.http_addr = http_addr
        self.timeout = timeout
        self.max_leases = max_leases  # live leases the cluster grants while this node proposes the grant
        self._data_dir = Path(data_dir).expanduser()
        self._peers = sorted(set(peers) - {self_addr})
        if cluster_id is None:
            cluster_id = datadir.static_cluster_id([self_addr, *self._peers]) if self._peers else \
                datadir.new_cluster_id()
        fresh = datadir.read_identity(self._data_dir) is None
        identity = datadir.claim(self._data_dir, self.node_id, self_addr, not self._peers, cluster_id)
        self.cluster_id = identity.cluster_id
        if not self._peers and not datadir.holds_member(self._data_dir) and not identity.bootstrapped:
            raise DataDirError(f"{self._data_dir} joined a cluster but never received its data: start it again "
                               "with -join (or with its peers) to fetch it")
        self.secret = self._choose_secret(secret, insecure, fresh)
        self._options = RaftOptions(fsync=fsync, secret=self.secret, compact_log_bytes=compact_log_bytes)
        self._closed = False
        self.event_window = EventWindow(watch_window)
        self._reopening = threading.Lock()
        self._node = self._open_at_start()
        self.membership = Membership(self)
        self._lease_keeper = LeaseKeeper(self)

    def _choose_secret(self, secret: str | None, insecure: bool, fresh: bool) -> str | None:
        if insecure:
            return None
        if secret is not None:
            if len(secret) < 16:
                raise ValueError("a cluster secret must have at least 16 characters")
            return secret
        stored = datadir.read_secret(self._data_dir)
        if stored is not None:
            return stored
        if self._peers:
            raise ValueError("a cluster of several nodes needs a shared secret: pass secret=... (the same on every "
                             "node), or insecure=True to run Raft without authentication")
        if not fresh:
            raise DataDirError(f"{self._data_dir} holds no cluster secret: its cluster was started with an explicit "
                               "secret (-raft-secret-file) or none (-raft-insecure); start this node the same way")
        made = datadir.new_secret()
        datadir.write_secret(self._data_dir, made)
        return made

    def _open(self, discard_after: int | None = None) -> RaftNode:
        return RaftNode(self.raft_addr, self._peers, self._data_dir, KVState(), self._options,
                        on_applied=self._applied, on_loaded=self.event_window.reset, discard_after=discard_after,
                        on_failure=lambda error: self._reopen_soon())

    def _applied(self, applied: list[Applied], revision: int) -> None:
        self.event_window.add([event for each in applied for event in each.events], revision)

    def _open_at_start(self) -> RaftNode:
        try:
            return self._open()
        except (DamagedFile, IncompatibleEngine) as error:
            raise DataDirError(str(error)) from None
        except RaftStorageError as error:
            raise DataDirError(str(error)) from None

    # ----- lifecycle -----

    @property
    def node(self) -> RaftNode:
        """The running Raft node; ``ClosedError`` after ``close``, ``StorageFailedError`` while it reopens."""
        if self._closed:
            raise ClosedError("this store is closed")
        node = self._node
        if node.failure is not None:
            raise translate(node.failure)
        return node

    def _reopen_soon(self) -> None:
        if self._closed or isinstance(self._node.failure, DamagedFile) or \
                not self._reopening.acquire(blocking=False):
            return
        threading.Thread(target=self._reopen, name="hraftd-reopen", daemon=True).start()

    def _reopen(self) -> None:
        """After a storage failure: open the node again from what is on disk, until it works or the store closes."""
        try:
            failed = self._node
            failed.close()
            while not self._closed:
                time.sleep(_REOPEN_INTERVAL)
                try:
                    self.event_window.reset(0)  # the new node applies its log again from its snapshot, or from 0
                    self._node = self._open(discard_after=failed.journal.synced_index)
                    log.info("reopened the Raft node from disk after: %s", failed.failure)
                    return
                except DamagedFile as error:
                    log.error("cannot reopen: %s", error)
                    return
                except (RaftError, OSError) as error:
                    log.warning("cannot reopen the Raft node yet: %s", error)
        finally:
            self._reopening.release()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until this node knows a leader and has applied everything committed before the call."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                self.sync_reads(LINEARIZABLE, max(deadline - time.monotonic(), 0.01))
                break
            except UnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        self.membership.announce_self(deadline)

    def close(self) -> None:
        """Stop the Raft node and release its port and files. Idempotent.

        A leader first hands leadership to the most caught-up follower, so that writes pause for one
        round trip instead of an election timeout.
        """
        if self._closed:
            return
        node = self._node
        if node.failure is None and node.engine.is_leader and node.engine.voters:
            log.info("handing leadership over before stopping")
            self.membership.transfer_leadership(min(self.timeout, 2.0))
        self._closed = True
        self._lease_keeper.close()
        node.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ReplicatedKV:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- reads -----

    def sync_reads_async(self, level: str, done: Callable[[HraftdError | None], None]) -> None:
        """``done(None)`` once local reads reflect every write acknowledged before the call (at once for
        ``stale``), or ``done(error)``. ``done`` runs on another thread, or this one, and must be quick."""
        if level not in READ_LEVELS:
            raise ValueError(f"unknown read level {level!r}; use one of {', '.join(READ_LEVELS)}")
        node = self.node
        if level == STALE:
            done(None)
            return
        node.read_index(lambda error: done(None if error is None else translate(error)), self.timeout)

    def sync_reads(self, level: str = LINEARIZABLE, timeout: float | None = None) -> None:
        """Make the local state reflect every write acknowledged before this call (for ``linearizable``)."""
        wait = Waiter()
        self.sync_reads_async(level, lambda error: wait.done(None, error))
        wait.wait(self.timeout if timeout is None else timeout)

    def _local(self, read: Callable[[KVState], Any]) -> Any:
        """``read`` of the state this node has applied; also while the node reopens after a failure."""
        if self._closed:
            raise ClosedError("this store is closed")
        machine = self._node.machine
        with machine.lock:
            return read(machine.state)

    # ----- watches -----

    def watch(self, key: str | None = None, prefix: str | None = None, since: int | None = None,
              timeout: float = 60.0) -> tuple[int, list[dict[str, Any]]]:
        """The changes of ``key`` (or of the keys under ``prefix``; neither: every key) after revision ``since``,
        waiting up to ``timeout`` seconds for the first: ``(revision, events)``, each event ``{"type": "set" |
        "delete" | "expire", "key", "value" (set only), "mod_revision"}`` in revision order. Call again with
        ``since=revision`` to get the next ones, none skipped or repeated. ``since=None``: from a revision at
        least as new as every write acknowledged before the call. ``CompactedError`` when the events after
        ``since`` are no longer kept (see ``watch_window``)."""
        if key is not None and prefix is not None:
            raise ValueError("watch a key or a prefix, not both")
        if since is None:
            self.sync_reads(LINEARIZABLE)
            since = self.event_window.revision
        elif type(since) is not int or since < 0:
            raise ValueError(f"since must be a revision (a whole number from 0), not {since!r}")
        covered, events = self.event_window.wait(since, matcher(key, prefix), timeout)
        return covered, copy.deepcopy(events)

    # ----- writes -----

    def submit(self, command: dict[str, Any], done: Done) -> None:
        """Replicate one state machine command; ``done(result, None)`` once applied here, or ``done(None,
        error)``. ``done`` runs on another thread, or this one, and must be quick. ``ValueError`` at once for a
        command that cannot be stored (not plain data, too large)."""
        def finished(result: Any, error: RaftError | None) -> None:
            if error is not None:
                done(None, translate(error))
                return
            refused = refusal(result)
            done(None, refused) if refused is not None else done(result, None)

        self.node.propose(command, finished, self.timeout)

    def execute(self, command: dict[str, Any]) -> Any:
        """``submit``, waiting for the result."""
        wait = Waiter()
        self.submit(command, wait.done)
        return wait.wait(self.timeout)

    # ----- the node -----

    @property
    def revision(self) -> int:
        """The revision of the data this node has applied (local, may lag)."""
        return self._node.machine.state.revision

    @property
    def applied_index(self) -> int:
        """The raft index of the last entry this node applied (local, may lag)."""
        return self._node.engine.applied_index

    def is_ready(self) -> bool:
        """Knows a leader, is connected to a quorum, has caught up with what it knows is committed, has room
        for its log, and is in the member table. Local: no Raft round trip."""
        node = self._node
        status = node.status
        return (not self._closed and node.failure is None and status["ready"] and status["leader"] is not None
                and status["has_quorum"] and not status["space_low"]
                and status["commit_index"] - status["applied_index"] <= _READY_LAG
                and self.membership.is_recorded())

    def is_alive(self) -> bool:
        """The Raft node runs, or is being reopened after a storage failure it can recover from."""
        node = self._node
        return not self._closed and (node.running or not isinstance(node.failure, DamagedFile))

    def stats(self) -> dict[str, Any]:
        """Numbers for monitoring, read without waiting for anything."""
        node = self._node
        status = node.status
        return {
            "is_leader": status.get("role") == "leader",
            "role": status.get("role", "stopped"),
            "term": node.engine.term,
            "commit_index": node.engine.commit_index,
            "applied_index": node.engine.applied_index,
            "leader_changes": node.events.leader_changes,
            "log_entries": status.get("log_entries", 0),
            "log_bytes": status.get("log_bytes", 0),
            "snapshots": node.snapshots,
            "snapshot_seconds": node.snapshot_seconds,
            "fsync_latency": node.sync_latency,
            "keys": len(node.machine.state),
            "revision": node.machine.state.revision,
            "watch_oldest_revision": self.event_window.oldest_revision,
        }

    def consistent_copy(self) -> tuple[int, int, dict[str, Any]]:
        """(raft index, revision, data) taken between two applied entries, after a linearizable read."""
        self.sync_reads(LINEARIZABLE)
        node = self.node
        taken: list[tuple[int, int, dict[str, Any]]] = []
        done = threading.Event()

        def take() -> None:  # on the tick thread no entry is half applied: the copy is exactly that index's state
            state = node.machine.state
            taken.append((node.engine.applied_index, state.revision, dict(state.items())))
            done.set()

        node.run_on_tick_thread(take)
        if not done.wait(self.timeout):
            raise UnavailableError("the Raft node did not take a copy in time")
        return taken[0]

    def is_leader(self) -> bool:
        return self._node.status.get("role") == "leader"

    def leading_term(self) -> int | None:
        """The term this node leads in, None when it does not lead (its own belief, as of its last tick)."""
        status = self._node.status
        return status["term"] if status.get("role") == "leader" else None

    def members(self) -> dict[str, dict[str, str | None]]:
        """id -> {"raft_addr", "http_addr"} as this node last applied it."""
        return self._local(lambda state: {node_id: dict(member) for node_id, member in state.members.items()})

    def leader(self) -> dict[str, str | None] | None:
        """The leader this node believes in: {"id", "raft_addr", "http_addr"}, or None during an election."""
        raft_addr = self._node.status.get("leader")
        if raft_addr is None:
            return None
        for node_id, member in self.members().items():
            if member["raft_addr"] == raft_addr:
                return {"id": node_id, **member}
        return {"id": None, "raft_addr": raft_addr, "http_addr": None}

    def status(self) -> dict[str, Any]:
        node = self._node
        status = node.status
        table = self.members()
        connected = set(status.get("connected", ()))
        members = []
        for raft_addr in status.get("voters", [self.raft_addr]):
            node_id = next((i for i, m in table.items() if m["raft_addr"] == raft_addr), None)
            members.append({
                "id": node_id,
                "raft_addr": raft_addr,
                "http_addr": table[node_id]["http_addr"] if node_id is not None else None,
                "connected": raft_addr == self.raft_addr or raft_addr in connected,
            })
        return {
            "id": self.node_id,
            "cluster_id": self.cluster_id,
            "raft_addr": self.raft_addr,
            "http_addr": self.http_addr,
            "role": status.get("role", "stopped"),
            "leader": self.leader(),
            "members": members,
            "term": node.engine.term,
            "commit_index": node.engine.commit_index,
            "applied_index": node.engine.applied_index,
            "revision": self.revision,
            "ready": self.is_ready(),
            "error": None if node.failure is None else str(node.failure),
        }

    # ----- membership, in hraftd.membership -----

    def add_member(self, node_id: str, raft_addr: str, http_addr: str | None = None, proof: str | None = None,
                   force: bool = False) -> bool:
        return self.membership.add(node_id, raft_addr, http_addr, proof, force)

    def remove_member(self, node_id: str) -> None:
        self.membership.remove(node_id)
