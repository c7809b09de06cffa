"""ReplicatedKV: a dict replicated by Raft. The only module that touches PySyncObj's internals.

It owns the SyncObj: configuration, durability settings, membership, read levels, and the mapping of
PySyncObj's failure codes onto hraftd's errors. The HTTP server is one user of it; a Python program is another.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException
from pysyncobj.monotonic import monotonic
from pysyncobj.transport import TCPTransport

from hraftd.durability import DurableJournal, SyncBeforeAckTransport, fsync_directory_of
from hraftd.errors import (
    DataDirError,
    HraftdError,
    MembershipConflictError,
    NotLeaderError,
    OutcomeUnknownError,
    UnavailableError,
    UnknownMemberError,
    WrongSecretError,
)
from hraftd.state import KVStateMachine

LINEARIZABLE = "linearizable"
STALE = "stale"
READ_LEVELS = (LINEARIZABLE, STALE)

# Failure codes after which the command was certainly not appended to the log.
_NOT_APPLIED = {
    FAIL_REASON.QUEUE_FULL: "the node's command queue is full",
    FAIL_REASON.MISSING_LEADER: "there is no leader",
    FAIL_REASON.DISCARDED: "a new leader replaced the entry",
    FAIL_REASON.NOT_LEADER: "the node it was sent to is no longer the leader",
    FAIL_REASON.REQUEST_DENIED: "the leader refused it",
}
_ROLES = {0: "follower", 1: "candidate", 2: "leader"}
log = logging.getLogger("hraftd")
_POLL_INTERVAL = 0.01
_READY_LAG = 1000  # applied entries may trail the known commit index by this much and still be "ready"
_CLUSTER_FILE = "cluster.json"


class _ResentEntriesFilter(logging.Filter):
    """Demote PySyncObj's "truncating already-applied log entries" from CRITICAL to DEBUG.

    With immediate sends (appendEntriesUseBatch=False) a leader's nextIndex can step back when an older
    acknowledgement arrives, so it resends entries the follower already has; the follower deletes and re-adds
    the same entries of the same term. The state does not diverge (measured: equal states after 3,200
    concurrent writes), but the message would alarm every operator on every busy second.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.CRITICAL and str(record.msg).startswith("truncating already-applied"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("pysyncobj.syncobj").addFilter(_ResentEntriesFilter())


class _EchoedSends:
    """Transport mixin: every append-entries a node sends carries a sequence number, and every answer to one
    carries the number of the message it answers (see ``_BatchingSyncObj``'s leader reads)."""

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict):
            kind = message.get("type")
            if kind == "append_entries":
                message[_SEQ] = self._syncObj.next_append_seq()  # type: ignore[attr-defined]
            elif kind == "next_node_idx" and self._syncObj.answering_seq is not None:  # type: ignore[attr-defined]
                message[_SEQ] = self._syncObj.answering_seq  # type: ignore[attr-defined]
        return super().send(node, message)  # type: ignore[misc]


class _EchoedTCPTransport(_EchoedSends, TCPTransport):
    pass


class _EchoedSyncBeforeAckTransport(_EchoedSends, SyncBeforeAckTransport):
    pass


class _LeaderRead:
    """One round of leadership confirmation for the reads that arrived before it began."""

    def __init__(self, callback: Callable[[Any, Any], None], barrier: Callable[[Callable[[Any, Any], None]], None],
                 term: int, read_index: int, after_seq: int) -> None:
        self.callback = callback
        self.barrier = barrier
        self.term = term
        self.read_index = read_index
        self.after_seq = after_seq  # answers to append-entries numbered above this were sent after it began
        self.started = time.monotonic()
        self.confirmed = False


class _BatchingSyncObj(SyncObj):
    """PySyncObj sending new entries to followers once per tick rather than once per command, confirming
    leadership for linearizable reads without a log entry, and waiting a full election timeout after loading
    its snapshot.

    With ``appendEntriesUseBatch=False`` PySyncObj sends an append-entries message after every command it
    takes from its queue. Idle, that is one command and one message, at once; under load, the commands
    queued during a tick now share one message per follower (adaptive batching).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before SyncObj.__init__: it starts the tick thread, which uses them, and it leaves the attributes
        # that exist by its end out of the snapshot it takes of this object (callbacks cannot be pickled, and
        # a restored sequence number or process id would let an old answer count).
        self.answering_seq: Any = None  # the number of the append-entries being processed, if any
        self._leader_read_requests: list[tuple[Callable[[Any, Any], None], Callable[..., None]]] = []
        self._leader_reads: list[_LeaderRead] = []
        self._append_seq = 0
        self._incarnation = os.urandom(8)
        self._echoed_seq: dict[Any, int] = {}
        super().__init__(*args, **kwargs)

    def _checkCommandsToApply(self) -> None:
        journal = self._SyncObj__raftLog
        last_before = journal[-1][1]
        self.conf.appendEntriesUseBatch = True  # read only by the per-command send, and by _applyCommand:
        try:
            super()._checkCommandsToApply()
        finally:
            self.conf.appendEntriesUseBatch = False
        if self._SyncObj__commandsQueue._FastQueue__queue:
            self._SyncObj__pipeNotifier.notify()  # ...which skipped waking us for commands queued meanwhile
        if self._isLeader() and journal[-1][1] != last_before:
            self._SyncObj__sendAppendEntries()
        self._start_leader_reads()

    # ----- linearizable reads on the leader: Raft's ReadIndex (Ongaro's thesis, section 6.4) -----
    #
    # A read that arrived at time T may return the state at commit index C, read after T, once (1) this leader
    # has committed an entry of its own term (its no-op), so C covers every write acknowledged before T, and
    # (2) a majority answered append-entries sent after T, so no leader of a later term can have committed
    # anything before T, and (3) C is applied. For (2) each append-entries carries a sequence number that the
    # follower's answer echoes; a follower answers only messages of its current term or newer, so a deposed
    # leader gets no answers. The number is tagged with a random id of this process, so an answer to a
    # message of an earlier run of this node never counts. A round not confirmed within
    # _LEADER_READ_PATIENCE (a follower that does not echo, an overloaded node, a partition) falls back to a
    # barrier entry, the slower way to the same answer.

    def next_append_seq(self) -> tuple[bytes, int]:
        """(this process's random id, a number): an answer sent to an earlier run of this node never counts."""
        self._append_seq += 1
        return self._incarnation, self._append_seq

    def request_leader_read(self, callback: Callable[[Any, Any], None],
                            barrier: Callable[[Callable[[Any, Any], None]], None]) -> None:
        """From any thread: call ``callback(None, error)`` on the tick thread once a read arriving now may be
        served locally (error ``FAIL_REASON.SUCCESS``), or when it may not (another error). A node that is
        not a leader with a committed entry of its term by then calls ``barrier(callback)`` instead."""
        self._leader_read_requests.append((callback, barrier))
        self._SyncObj__pipeNotifier.notify()

    def _start_leader_reads(self) -> None:
        while self._leader_read_requests:
            callback, barrier = self._leader_read_requests.pop(0)
            commit_index, noop_index = self._SyncObj__raftCommitIndex, self._SyncObj__noopIDx
            if not self._isLeader() or noop_index is None or commit_index < noop_index:
                barrier(callback)
                continue
            self._leader_reads.append(_LeaderRead(
                callback, barrier, self._SyncObj__raftCurrentTerm, commit_index, self._append_seq))
            self._SyncObj__sendAppendEntries()
        self._finish_leader_reads()

    def _finish_leader_reads(self) -> None:
        rounds = self._leader_reads
        if not rounds:
            return
        echoed = self._echoed_seq
        still_leader = self._isLeader()
        voters = self._SyncObj__otherNodes
        now = time.monotonic()
        for round_ in list(rounds):
            if not still_leader or self._SyncObj__raftCurrentTerm != round_.term:
                rounds.remove(round_)
                round_.callback(None, FAIL_REASON.LEADER_CHANGED)
                continue
            if not round_.confirmed:
                acks = 1 + sum(1 for node in voters if echoed.get(node, 0) > round_.after_seq)
                round_.confirmed = acks > (len(voters) + 1) / 2
            if not round_.confirmed and now - round_.started > _LEADER_READ_PATIENCE:
                rounds.remove(round_)
                round_.barrier(round_.callback)
                continue
            if round_.confirmed and self._SyncObj__raftLastApplied >= round_.read_index:
                rounds.remove(round_)
                round_.callback(None, FAIL_REASON.SUCCESS)

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "append_entries":
            self.answering_seq = message.get(_SEQ)
        try:
            super()._SyncObj__onMessageReceived(node, message)
        finally:
            self.answering_seq = None
        echo = message.get(_SEQ) if kind == "next_node_idx" else None
        if isinstance(echo, tuple) and len(echo) == 2 and echo[0] == self._incarnation and isinstance(echo[1], int):
            self._echoed_seq[node] = max(self._echoed_seq.get(node, 0), echo[1])
            self._finish_leader_reads()

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        """Load the snapshot, then give the leader a full election timeout to be heard.

        PySyncObj sets the first election deadline when the node is built and loads the snapshot later, on
        the first tick. A large snapshot takes longer to load than an election timeout (about 1 s for 1M
        keys), so a restarted follower used to call an election the moment it connected, and took the
        leadership from a healthy leader. Waiting for a leader is always safe in Raft.
        """
        super()._SyncObj__loadDumpFile(clearJournal)
        self._SyncObj__raftElectionDeadline = monotonic() + self._SyncObj__generateRaftTimeout()


_SEQ = "hraftd_seq"  # the field of append-entries and of their answers that leader reads rely on
_LEADER_READ_PATIENCE = 0.5  # seconds a leader read waits for a quorum's answers before using a barrier


def join_proof(secret: str, node_id: str, raft_addr: str) -> str:
    """What a joining node sends to show it holds the cluster secret, without sending the secret."""
    message = f"hraftd-join\n{node_id}\n{raft_addr}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _translate(error_code: Any, what: str) -> HraftdError:
    if error_code in _NOT_APPLIED:
        return UnavailableError(f"{what} was not applied: {_NOT_APPLIED[error_code]}; retry")
    if error_code == "Timeout":
        return OutcomeUnknownError(f"{what} was not confirmed in time; outcome unknown, it may still be applied")
    return OutcomeUnknownError(f"{what} lost contact with the leader (code {error_code}); outcome unknown")


class _Call:
    """One asynchronous PySyncObj call whose callback may come from the tick thread, or never."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.result: Any = None
        self.error: Any = None

    def __call__(self, result: Any, error: Any) -> None:
        self.result, self.error = result, error
        self._done.set()

    def wait(self, deadline: float) -> bool:
        return self._done.wait(max(deadline - time.monotonic(), 0))


class _BarrierRound(_Call):
    def __init__(self) -> None:
        super().__init__()
        self.started_at = 0.0
        self.joined: list[Callable[[Any], None]] = []

    def __call__(self, result: Any, error: Any) -> None:
        super().__call__(result, error)
        outcome = None
        if error != FAIL_REASON.SUCCESS:
            outcome = UnavailableError(f"read barrier failed: {_NOT_APPLIED.get(error, 'leader changed')}")
        for done in self.joined:
            done(outcome)


class _Once:
    """A callback that runs exactly once: with the outcome, or with ``timeout_error`` at ``deadline``."""

    def __init__(self, done: Callable[..., None], deadline: float, timeout_error: HraftdError) -> None:
        self._done = done
        self._lock = threading.Lock()
        self.deadline = deadline
        self.timeout_error = timeout_error
        self.called = False

    def __call__(self, *outcome: Any) -> None:
        with self._lock:
            if self.called:
                return
            self.called = True
        self._done(*outcome)

    def __lt__(self, other: _Once) -> bool:
        return self.deadline < other.deadline


class _ReadBarrier:
    """Linearizable reads with at most one round in flight per node: on the leader a confirmation by a
    quorum's answers (no log entry), elsewhere a barrier entry.

    A reader may only rely on a round issued after its read arrived: it joins the round that will start
    next, never the one already in flight. When a round completes, the next one starts at once.
    """

    def __init__(self, issue: Callable[[Callable[[Any, Any], None]], None], give_up_after: float) -> None:
        self._issue = issue
        self._give_up_after = give_up_after
        # Re-entrant: a full command queue calls back at once, on the issuing thread.
        self._lock = threading.RLock()
        self._in_flight: _BarrierRound | None = None
        self._next: _BarrierRound | None = None

    def wait(self, deadline: float) -> None:
        round_ = self._join()
        if not round_.wait(deadline):
            raise UnavailableError("could not confirm leadership with a quorum in time; no leader or no quorum")
        if round_.error != FAIL_REASON.SUCCESS:
            raise UnavailableError(f"read barrier failed: {_NOT_APPLIED.get(round_.error, 'leader changed')}")

    def join(self, done: Callable[[Any], None]) -> None:
        """Call ``done(None)`` once a round issued after this call has confirmed, or ``done(error)``."""
        with self._lock:
            round_ = self._join(start=False)
            round_.joined.append(done)
            if self._in_flight is None:
                self._next = None
                self._start(round_)

    def _join(self, start: bool = True) -> _BarrierRound:
        with self._lock:
            in_flight = self._in_flight
            # A barrier whose answer was lost (e.g. its forward to a dying leader) must not block reads forever.
            if in_flight is not None and time.monotonic() - in_flight.started_at > self._give_up_after:
                in_flight = self._in_flight = None
            if in_flight is None:
                round_ = self._next or _BarrierRound()
                if start:
                    self._next = None
                    self._start(round_)
                else:
                    self._next = round_
            else:
                round_ = self._next = self._next or _BarrierRound()
            return round_

    def _start(self, round_: _BarrierRound) -> None:
        """Issue ``round_``; the caller holds the lock."""
        self._in_flight = round_
        round_.started_at = time.monotonic()

        def on_done(result: Any, error: Any) -> None:
            round_(result, error)
            with self._lock:
                if self._in_flight is round_:
                    self._in_flight = None
                    next_round, self._next = self._next, None
                    if next_round is not None:
                        self._start(next_round)

        self._issue(on_done)


class ReplicatedKV(Mapping):
    """A dict whose contents are agreed by a Raft cluster; any node reads and writes.

    ``self_addr`` is this node's raft ``host:port`` (it binds only that host); ``peers`` are the raft addresses
    of the other members, if any are known. Data, Raft log and membership live in ``data_dir``.
    Reads are linearizable unless ``level="stale"`` is asked for. Writes return once a majority has them on
    disk and this node has applied them; ``fsync=False`` drops the "on disk" (faster, but a power loss of a
    majority can lose acknowledged writes). ``secret``: encrypt and authenticate raft traffic; every node
    needs the same one, and a node without it cannot join or send commands.
    Errors: :class:`UnavailableError` (not applied), :class:`OutcomeUnknownError` (may or may not be applied).
    """

    def __init__(
        self,
        self_addr: str,
        peers: Iterable[str] = (),
        *,
        data_dir: str | os.PathLike[str],
        node_id: str | None = None,
        http_addr: str | None = None,
        timeout: float = 5.0,
        fsync: bool = True,
        secret: str | None = None,
    ) -> None:
        self.raft_addr = self_addr
        self.node_id = node_id or self_addr
        self.http_addr = http_addr
        self.timeout = timeout
        self._secret = secret
        self._data_dir = Path(data_dir)
        self._data_dir.mkdir(parents=True, exist_ok=True)
        known_peers = self._load_cluster_file() | set(peers)
        known_peers.discard(self_addr)
        self._membership_lock = threading.Lock()
        self._state = KVStateMachine()
        snapshot_path = str(self._data_dir / "raft.snapshot")
        conf = SyncObjConf(
            journalFile=str(self._data_dir / "raft.journal"),
            fullDumpFile=snapshot_path,
            dynamicMembershipChange=True,
            bindAddress=self_addr,
            connectionRetryTime=1.0,
            maxBindRetries=5,
            bindRetryTime=0.5,
            password=secret,
            # Send each entry at once (~3 ms a write) instead of at the next heartbeat (~170 ms).
            appendEntriesUseBatch=False,
        )
        transport = _EchoedSyncBeforeAckTransport if fsync else _EchoedTCPTransport
        self._sync = _BatchingSyncObj(self_addr, sorted(known_peers), conf=conf, consumers=[self._state],
                                      transportClass=transport)
        if fsync:
            self._sync._SyncObj__raftLog = DurableJournal(self._sync._SyncObj__raftLog, snapshot_path)
        try:
            self._sync.waitBinded()
        except SyncObjException:
            self._sync.destroy()
            raise DataDirError(f"cannot listen on raft address {self_addr}: is it in use or not local?") from None
        self._written_peers: frozenset[str] | None = None
        self._last_leader: Any = None
        self.leader_changes = 0
        self._snapshot_started: float | None = None
        self.snapshots = 0
        self.snapshot_seconds = 0.0
        self._sync.addOnTickCallback(self._on_tick)
        self._barrier = _ReadBarrier(self._issue_read_round, give_up_after=timeout)
        self._deadlines: list[_Once] = []
        self._deadlines_lock = threading.Lock()
        self._closed = False

    # ----- lifecycle -----

    def _issue_read_round(self, callback: Callable[[Any, Any], None]) -> None:
        """Start one round that lets every read that arrived before it be answered from this node's state."""
        def barrier(callback: Callable[[Any, Any], None]) -> None:
            self._state.barrier(callback=callback)

        if self._sync._isLeader():
            self._sync.request_leader_read(callback, barrier)
        else:
            barrier(callback)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until this node knows a leader and has applied everything committed before the call."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._wait_for_leader(deadline)
        self._barrier.wait(deadline)
        self._announce_self()

    def close(self) -> None:
        """Stop the Raft node and release its port and files. Idempotent.

        A leader first hands leadership to the most caught-up follower, so that writes pause for one
        round trip instead of an election timeout.
        """
        if self._closed:
            return
        self._closed = True
        if self._sync._isLeader() and self._sync.otherNodes:
            log.info("handing leadership over before stopping")
            self._transfer_leadership(time.monotonic() + min(self.timeout, 2.0))
        self._sync.destroy()
        self._sync._SyncObj__thread.join(self.timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ReplicatedKV:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- reads -----

    def read(self, key: str, *, level: str = LINEARIZABLE) -> Any:
        """A copy of the value of ``key``; ``KeyError`` if it is missing."""
        self.sync_reads(level)
        # A copy: changing the node's own object would change this node's state without replicating it.
        return copy.deepcopy(self._state.data[key])

    def sync_reads(self, level: str = LINEARIZABLE) -> None:
        """Make the local state reflect every write acknowledged before this call (for ``linearizable``)."""
        if level not in READ_LEVELS:
            raise ValueError(f"unknown read level {level!r}; use one of {', '.join(READ_LEVELS)}")
        if level == LINEARIZABLE:
            self._barrier.wait(time.monotonic() + self.timeout)

    def snapshot(self, *, level: str = LINEARIZABLE) -> dict[str, Any]:
        """A consistent deep copy of the whole dict."""
        self.sync_reads(level)
        return copy.deepcopy(self._state.data.copy())

    def get(self, key: str, default: Any = None, *, level: str = LINEARIZABLE) -> Any:
        try:
            return self.read(key, level=level)
        except KeyError:
            return default

    def __getitem__(self, key: str) -> Any:
        return self.read(key)

    def __contains__(self, key: object) -> bool:
        self.sync_reads()
        return key in self._state.data

    def __len__(self) -> int:
        self.sync_reads()
        return len(self._state.data)

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def keys(self):  # type: ignore[override]
        return self.snapshot().keys()

    def items(self):  # type: ignore[override]
        return self.snapshot().items()

    def values(self):  # type: ignore[override]
        return self.snapshot().values()

    # ----- writes -----

    def update(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kwargs: Any) -> int:
        """Write all the pairs in one Raft entry: all or none. Returns the data's new revision."""
        batch = dict(items, **kwargs)
        if not batch:
            raise ValueError("nothing to write")
        if not all(isinstance(key, str) and key for key in batch):
            raise ValueError("keys must be non-empty strings")
        return self._replicate(self._state.put_many, "the write", batch)

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def delete(self, key: str) -> bool:
        """Delete ``key``; returns whether it existed when the deletion was applied."""
        existed, _revision = self._replicate(self._state.delete_key, "the delete", key)
        return existed

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    # ----- the same, without blocking: for callers on an event loop -----
    # Each ``done`` runs exactly once, on another thread (PySyncObj's) or on the calling one, and must be quick.

    def write_async(self, items: dict[str, Any], done: Callable[[Any, HraftdError | None], None]) -> None:
        """Like ``update``: ``done(revision, None)`` once applied here, or ``done(None, error)``."""
        self._submit(self._state.put_many, "the write", done, items)

    def delete_async(self, key: str, done: Callable[[Any, HraftdError | None], None]) -> None:
        """Like ``delete``: ``done((existed, revision), None)`` once applied here, or ``done(None, error)``."""
        self._submit(self._state.delete_key, "the delete", done, key)

    def sync_reads_async(self, level: str, done: Callable[[HraftdError | None], None]) -> None:
        """Like ``sync_reads``: ``done(None)`` once local reads reflect every write acknowledged before the call,
        or ``done(error)``."""
        if level not in READ_LEVELS:
            raise ValueError(f"unknown read level {level!r}; use one of {', '.join(READ_LEVELS)}")
        if level == STALE:
            done(None)
            return
        once = self._once(done, UnavailableError("could not confirm leadership with a quorum in time"))
        self._barrier.join(once)

    def _submit(self, method: Callable[..., Any], what: str, done: Callable[[Any, HraftdError | None], None],
                *args: Any) -> None:
        once = self._once(done, OutcomeUnknownError(
            f"{what} was not confirmed in time; outcome unknown, it may still be applied"), None)

        def on_applied(result: Any, error: Any) -> None:
            if error == FAIL_REASON.SUCCESS:
                once(result, None)
            else:
                once(None, _translate(error, what))

        method(*args, callback=on_applied)

    def _once(self, done: Callable[..., None], timeout_error: HraftdError, *prefix: Any) -> _Once:
        once = _Once(lambda *outcome: done(*outcome), time.monotonic() + self.timeout, timeout_error)
        once.timeout_outcome = (*prefix, timeout_error)  # type: ignore[attr-defined]
        with self._deadlines_lock:
            heapq.heappush(self._deadlines, once)
        return once

    def _expire_calls(self) -> None:
        now = time.monotonic()
        expired = []
        with self._deadlines_lock:
            while self._deadlines and (self._deadlines[0].called or self._deadlines[0].deadline <= now):
                expired.append(heapq.heappop(self._deadlines))
        for once in expired:
            once(*once.timeout_outcome)  # type: ignore[attr-defined]

    def _replicate(self, method: Callable[..., Any], what: str, *args: Any) -> Any:
        deadline = time.monotonic() + self.timeout
        self._wait_for_leader(deadline)
        try:
            return method(*args, sync=True, timeout=max(deadline - time.monotonic(), 0.001))
        except SyncObjException as error:
            raise _translate(error.errorCode, what) from None

    def _wait_for_leader(self, deadline: float) -> None:
        while self._sync._getLeader() is None:
            if time.monotonic() >= deadline:
                raise UnavailableError("no leader is known: an election is running or there is no quorum")
            time.sleep(_POLL_INTERVAL)

    # ----- cluster -----

    @property
    def revision(self) -> int:
        """The revision of the data this node has applied (local, may lag)."""
        return self._state.revision

    @property
    def applied_index(self) -> int:
        """The raft index of the last entry this node applied (local, may lag)."""
        return self._sync.raftLastApplied

    def is_ready(self) -> bool:
        """Knows a leader, is connected to a quorum, has caught up with what it knows is committed, and is in
        the member table. Local: no Raft round trip."""
        return (self._sync.isReady() and self._sync._getLeader() is not None and self._sync.hasQuorum
                and self._sync.raftCommitIndex - self._sync.raftLastApplied <= _READY_LAG
                and self._state.members.get(self.node_id) == self._own_record())

    def is_alive(self) -> bool:
        """The Raft node's thread runs (it stops only on close or on a fatal error)."""
        return self._sync.tick_thread_alive()

    def stats(self) -> dict[str, Any]:
        """Numbers for monitoring, read without waiting for anything."""
        journal = self._sync._SyncObj__raftLog
        return {
            "is_leader": self._sync._isLeader(),
            "role": _ROLES.get(self._sync._SyncObj__raftState, "unknown"),
            "term": self._sync.raftCurrentTerm,
            "commit_index": self._sync.raftCommitIndex,
            "applied_index": self._sync.raftLastApplied,
            "leader_changes": self.leader_changes,
            "log_entries": len(journal),
            "snapshots": self.snapshots,
            "snapshot_seconds": self.snapshot_seconds,
            "fsync_latency": journal.sync_latency if isinstance(journal, DurableJournal) else None,
            "keys": len(self._state.data),
            "revision": self._state.revision,
        }

    def consistent_copy(self) -> tuple[int, int, dict[str, Any]]:
        """(raft index, revision, data) taken between two applied entries, after a linearizable barrier."""
        self.sync_reads(LINEARIZABLE)
        taken: list[tuple[int, int, dict[str, Any]]] = []
        # On the tick thread no entry is half applied: the copy is exactly the state at that index.
        self._on_tick_thread(
            lambda: taken.append((self._sync.raftLastApplied, self._state.revision, self._state.data.copy())),
            time.monotonic() + self.timeout)
        if not taken:
            raise UnavailableError("the Raft node did not tick in time to take a copy")
        return taken[0]

    def is_leader(self) -> bool:
        return self._sync._isLeader()

    def members(self) -> dict[str, dict[str, str | None]]:
        """id -> {"raft_addr", "http_addr"} as this node last applied it."""
        return {node_id: dict(member) for node_id, member in self._state.members.copy().items()}

    def leader(self) -> dict[str, str | None] | None:
        """The leader this node believes in: {"id", "raft_addr", "http_addr"}, or None during an election."""
        node = self._sync._getLeader()
        if node is None:
            return None
        raft_addr = node.address
        for node_id, member in self.members().items():
            if member["raft_addr"] == raft_addr:
                return {"id": node_id, **member}
        return {"id": None, "raft_addr": raft_addr, "http_addr": None}

    def status(self) -> dict[str, Any]:
        table = self.members()
        connected = {node.address for node in self._sync.otherNodes if self._sync.isNodeConnected(node)}
        members = []
        for raft_addr in sorted(self._raft_members()):
            node_id = next((i for i, m in table.items() if m["raft_addr"] == raft_addr), None)
            http_addr = table[node_id]["http_addr"] if node_id is not None else None
            members.append({
                "id": node_id,
                "raft_addr": raft_addr,
                "http_addr": http_addr,
                "connected": raft_addr == self.raft_addr or raft_addr in connected,
            })
        return {
            "id": self.node_id,
            "raft_addr": self.raft_addr,
            "http_addr": self.http_addr,
            "role": _ROLES.get(self._sync._SyncObj__raftState, "unknown"),
            "leader": self.leader(),
            "members": members,
            "term": self._sync.raftCurrentTerm,
            "commit_index": self._sync.raftCommitIndex,
            "applied_index": self._sync.raftLastApplied,
            "revision": self._state.revision,
            "ready": self.is_ready(),
        }

    def add_member(self, node_id: str, raft_addr: str, http_addr: str | None = None, proof: str | None = None) -> bool:
        """Make ``raft_addr`` a voting member named ``node_id``. Runs on the leader only, one change at a time.

        Idempotent: returns False if the member already exists exactly so. An existing id with another address,
        or an existing address under another id, is replaced. With a cluster secret, ``proof`` must be
        ``join_proof(secret, node_id, raft_addr)``: a node that could never talk to the others is not added.
        """
        if self._secret and not hmac.compare_digest(proof or "", join_proof(self._secret, node_id, raft_addr)):
            raise WrongSecretError("the joining node does not hold this cluster's secret")
        with self._membership_lock:
            deadline = self._start_membership_change()
            current = self._state.members.get(node_id)
            if http_addr is None and current is not None and current["raft_addr"] == raft_addr:
                http_addr = current["http_addr"]  # a Go-style join names no HTTP address: keep the known one
            if current == {"raft_addr": raft_addr, "http_addr": http_addr}:
                return False
            cluster = self._raft_members()
            if current is not None and current["raft_addr"] != raft_addr and current["raft_addr"] in cluster:
                self._change_raft_membership(self._sync.removeNodeFromCluster, current["raft_addr"], deadline)
            if raft_addr not in cluster:
                self._change_raft_membership(self._sync.addNodeToCluster, raft_addr, deadline)
            self._replicate(self._state.set_member, "the member update", node_id, raft_addr, http_addr)
            return True

    def remove_member(self, node_id: str) -> None:
        """Remove member ``node_id`` from the cluster. Runs on the leader only, one change at a time."""
        with self._membership_lock:
            deadline = self._start_membership_change()
            member = self._state.members.get(node_id)
            if member is None:
                raise UnknownMemberError(f"no member has id {node_id!r}")
            cluster = self._raft_members()
            if member["raft_addr"] == self.raft_addr:
                if len(cluster) == 1:
                    raise MembershipConflictError("refusing to remove the only member of the cluster")
                self._hand_over_leadership(deadline)
            if member["raft_addr"] in cluster:
                self._change_raft_membership(self._sync.removeNodeFromCluster, member["raft_addr"], deadline)
            self._replicate(self._state.forget_member, "the member removal", node_id)

    def _start_membership_change(self) -> float:
        if not self._sync._isLeader():
            leader = self.leader()
            raise NotLeaderError("membership changes run on the leader", leader and leader["http_addr"])
        deadline = time.monotonic() + self.timeout
        self._barrier.wait(deadline)  # the member table now reflects every earlier change
        return deadline

    def _raft_members(self) -> set[str]:
        return {node.address for node in self._sync.otherNodes} | {self.raft_addr}

    def _change_raft_membership(self, change: Callable[..., None], raft_addr: str, deadline: float) -> None:
        while True:
            call = _Call()
            change(raft_addr, callback=call)
            if not call.wait(deadline):
                raise OutcomeUnknownError(f"membership change for {raft_addr} not confirmed in time; outcome unknown")
            if call.error == FAIL_REASON.SUCCESS:
                return
            # A new leader refuses changes until its first entry commits: that is worth waiting for.
            if call.error != FAIL_REASON.REQUEST_DENIED or time.monotonic() >= deadline:
                raise _translate(call.error, f"the membership change for {raft_addr}")
            time.sleep(_POLL_INTERVAL)

    def _hand_over_leadership(self, deadline: float) -> None:
        """Make another node leader (a leader cannot remove itself), then send the caller there."""
        self._transfer_leadership(deadline)
        leader = self.leader()
        raise NotLeaderError("leadership was handed over so that this node can be removed",
                             leader and leader["http_addr"])

    def _transfer_leadership(self, deadline: float) -> None:
        """Ask the most caught-up follower to take over, until another leader is known or ``deadline``."""
        while self._sync._isLeader() and time.monotonic() < deadline:
            # On the tick thread: it sends through the transport, which is not thread-safe.
            self._on_tick_thread(self._sync.transferLeadership, deadline)
            settle = min(time.monotonic() + 0.5, deadline)  # a denied transfer (follower behind) is retried
            while self._sync._isLeader() and time.monotonic() < settle:
                time.sleep(_POLL_INTERVAL)
        while self._sync._getLeader() in (None, self._sync.selfNode) and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL)

    def _on_tick_thread(self, action: Callable[[], Any], deadline: float) -> None:
        """Run ``action`` once on PySyncObj's tick thread and wait for it (until ``deadline``)."""
        done = threading.Event()
        started = threading.Event()

        def run_once() -> None:
            if not started.is_set():
                started.set()
                try:
                    action()
                finally:
                    done.set()

        self._sync.addOnTickCallback(run_once)
        try:
            done.wait(max(deadline - time.monotonic(), 0))
        finally:
            self._sync.removeOnTickCallback(run_once)

    def _announce_self(self) -> None:
        """Record this node's addresses in the member table if they are missing or changed."""
        if self._state.members.get(self.node_id) != self._own_record():
            self._replicate(self._state.set_member, "the member update", self.node_id, self.raft_addr, self.http_addr)

    def _own_record(self) -> dict[str, str | None]:
        return {"raft_addr": self.raft_addr, "http_addr": self.http_addr}

    # ----- the cluster file: which node this data dir belongs to, and its peers -----
    # PySyncObj's journal does not restore the founding member on restart, so the peer list is kept here.

    @staticmethod
    def saved_peers(data_dir: str | os.PathLike[str]) -> set[str] | None:
        """The peers a node with this data dir last knew, or None if it never was part of a cluster."""
        path = Path(data_dir) / _CLUSTER_FILE
        if not path.exists():
            return None
        return set(json.loads(path.read_text())["peers"])

    def _load_cluster_file(self) -> set[str]:
        path = self._data_dir / _CLUSTER_FILE
        if not path.exists():
            return set()
        saved = json.loads(path.read_text())
        if saved["raft_addr"] != self.raft_addr:
            raise DataDirError(
                f"{self._data_dir} belongs to the node with raft address {saved['raft_addr']}, "
                f"not {self.raft_addr}: start it with that address or use another data directory"
            )
        return set(saved["peers"])

    def _on_tick(self) -> None:
        """Bookkeeping on the tick thread: the cluster file, leader changes, snapshots, calls past their deadline."""
        self._expire_calls()
        self._save_cluster_file_if_changed()
        leader = self._sync._getLeader()
        if leader is not None and leader != self._last_leader:
            self.leader_changes += 1
        self._last_leader = leader
        snapshotting = self._sync._SyncObj__serializer._Serializer__pid != 0
        if snapshotting and self._snapshot_started is None:
            self._snapshot_started = time.monotonic()
        elif not snapshotting and self._snapshot_started is not None:
            self.snapshots += 1
            self.snapshot_seconds += time.monotonic() - self._snapshot_started
            self._snapshot_started = None

    def _save_cluster_file_if_changed(self) -> None:
        # Only once a leader is known: a node whose join failed never was a member, and must not look like one.
        peers = frozenset(node.address for node in self._sync.otherNodes)
        if peers == self._written_peers or self._sync._getLeader() is None:
            return
        path = self._data_dir / _CLUSTER_FILE
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w") as file:
            json.dump({"raft_addr": self.raft_addr, "peers": sorted(peers)}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_directory_of(str(path))
        self._written_peers = peers
