"""A Raft node: PySyncObj driven by a tick loop of ours, with our storage, transport and rules around it.

The store sees this interface: ``propose`` (a command, batched with others into one log entry), ``read_index``
(linearizable reads), ``change_membership``, ``transfer_leadership``, ``status``, ``close``. Callbacks run on
the node's thread and must be quick.

The loop keeps the order durability needs, every iteration: sync the log, then send the acknowledgements held
since the previous sync, then tick PySyncObj (its commit counts this node's log only after that sync). Any
failure of storage, or any unexpected error, stops the node (``failure`` says why): it never goes on with
state it cannot vouch for.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.pipe_notifier import PipeNotifier

from hraftd.raft import codec, compat
from hraftd.raft.engine import LEADER, ROLES, Engine, Machine
from hraftd.raft.errors import (
    DamagedFile,
    NotApplied,
    OutcomeUnknown,
    RaftError,
    Refused,
    StorageError,
    StorageFull,
)
from hraftd.raft.events import ClusterEvents, LatencyHistogram
from hraftd.raft.journal import Journal
from hraftd.raft.proposals import Proposal, batch_entry
from hraftd.raft.reads import ReadIndex
from hraftd.raft.rules import RaftRules
from hraftd.raft.transport import RaftTransport
from hraftd.raft.wire import bind

log = logging.getLogger("hraftd.raft")

LOG_FILE, STATE_FILE, SNAPSHOT_FILE = "raft.log", "raft.state", "raft.snapshot"
_NOT_APPLIED = {
    FAIL_REASON.QUEUE_FULL: "the node's command queue is full",
    FAIL_REASON.MISSING_LEADER: "there is no leader",
    FAIL_REASON.DISCARDED: "a new leader replaced the entry",
    FAIL_REASON.NOT_LEADER: "the node it was sent to is no longer the leader",
    FAIL_REASON.REQUEST_DENIED: "the leader refused it",
}
_MAX_BATCH = 4096  # commands in one log entry


@dataclass(frozen=True)
class RaftOptions:
    fsync: bool = True
    secret: str | None = None
    max_entry_bytes: int = 4 << 20  # a proposal larger than this is refused
    compact_log_bytes: int = 64 << 20  # take a snapshot once the log is this large...
    compact_log_entries: int = 10_000  # ...or this long
    min_election_timeout: float = 0.4
    max_election_timeout: float = 1.4
    preallocate_bytes: int = 8 << 20


class RaftNode:
    def __init__(self, address: str, peers: list[str], data_dir: Path, state: Any, options: RaftOptions,
                 on_applied: Callable[[list[Any], int], None] = lambda applied, revision: None,
                 on_loaded: Callable[[int], None] = lambda revision: None,
                 discard_after: int | None = None, on_failure: Callable[[RaftError], None] = lambda error: None,
                 ) -> None:
        """``discard_after``: after a failed sync, the last index known to be on disk; anything later in the log
        may not be, and was never acknowledged, so it is dropped."""
        compat.ensure_compatible()
        self.address = address
        self.options = options
        self.data_dir = Path(data_dir)
        self.failure: RaftError | None = None
        self._snapshot_path = str(self.data_dir / SNAPSHOT_FILE)
        snapshot = codec.read_snapshot_file(self._snapshot_path)
        self.journal = Journal(str(self.data_dir / LOG_FILE), str(self.data_dir / STATE_FILE), self._snapshot_path,
                               fsync=options.fsync, chunk_bytes=options.preallocate_bytes)
        if discard_after is not None:
            self.journal.discard_after(discard_after)
        if snapshot is not None:
            self.journal.start_at(snapshot[2])  # a crash between a snapshot and the log's rewrite: finish it
        try:
            listener = bind(address)
        except OSError as error:
            self.journal._destroy()
            raise StorageError(f"cannot listen on raft address {address}: {error.strerror or error}") from None
        self.snapshots = 0
        self.snapshot_seconds = 0.0
        self._snapshot_started: float | None = None
        self.sync_latency = LatencyHistogram()
        self.journal.on_sync = self.sync_latency.observe
        self.journal.on_compacted = self.snapshot_taken
        self.machine = Machine(state, on_applied, on_loaded)
        self.machine.on_serialize = self._snapshot_starting
        transports: list[RaftTransport] = []

        class Transport(RaftTransport):
            def __init__(self, *args: Any) -> None:
                super().__init__(*args)
                transports.append(self)

        Transport.secret, Transport.listener = options.secret, listener
        Transport.max_frame_bytes = 2 * options.max_entry_bytes + (1 << 20)
        self.role = "follower"
        self.sync = SyncObj(address, peers, conf=self._conf(), consumers=[self.machine], transportClass=Transport)
        compat.check_instance(self.sync)
        self.transport = transports[0]
        self.engine = Engine(self.sync, self.journal, self.transport.send_now)
        self.rules = RaftRules(self.engine)
        self.reads = ReadIndex(self.engine)
        self.transport.inbound = self._inbound
        self.transport.outbound = self.rules.outbound
        self._notifier = PipeNotifier(self.sync._poller)
        self._woken = False
        self._proposals: collections.deque[Proposal] = collections.deque()
        self._deadlines: list[tuple[float, int, Proposal]] = []
        self._serial = itertools.count()
        self._tasks: collections.deque[Callable[[], None]] = collections.deque()
        self._transferring_until = 0.0
        self._stopping = False
        self._on_failure = on_failure
        self.events = ClusterEvents(self.address)
        self._last_compaction_check = 0.0
        self.status = self._status()
        self._thread = threading.Thread(target=self._run, name=f"hraftd-raft-{address}", daemon=True)
        self._thread.start()

    def _conf(self) -> SyncObjConf:
        options = self.options
        conf = SyncObjConf(
            autoTick=False,
            journalFile=self.journal,
            fullDumpFile=self._snapshot_path,
            dynamicMembershipChange=True,
            appendEntriesUseBatch=False,  # send new entries at once, not at the next heartbeat
            appendEntriesBatchSizeBytes=options.max_entry_bytes + 1,  # never split an entry into pieces
            logCompactionBatchSize=1 << 20,
            logCompactionMinEntries=options.compact_log_entries,
            raftMinTimeout=options.min_election_timeout,
            raftMaxTimeout=options.max_election_timeout,
            connectionTimeout=max(3.5, options.max_election_timeout),
            connectionRetryTime=1.0,
            leaderFallbackTimeout=options.max_election_timeout,  # a leader without a quorum steps down
            onStateChanged=self._on_state_changed,
            commandsWaitLeader=True,
        )
        compat.check_conf(conf)
        return conf

    # ----- the interface for the store (any thread) -----

    def propose(self, command: Any, done: Callable[[Any, RaftError | None], None], timeout: float) -> None:
        """Replicate ``command``; ``done(result, None)`` once it is applied on this node, else ``done(None,
        error)``: ``NotApplied``, ``OutcomeUnknown`` (at the deadline), ``StorageFull`` or ``StorageError``.
        ``ValueError`` at once if the command is not plain data or too large."""
        encoded = codec.encode_plain(command)
        if len(encoded) > self.options.max_entry_bytes:
            raise ValueError(f"{len(encoded)} bytes; a write may take at most {self.options.max_entry_bytes}")
        self._proposals.append(Proposal(encoded, done, time.monotonic() + timeout))
        self._wake()

    def read_index(self, done: Callable[[Exception | None], None], timeout: float) -> None:
        """``done(None)`` once this node's state reflects every write acknowledged before the call."""
        if self.failure is None and not self._stopping and self.reads.settled_alone():
            done(None)
            return
        self.reads.request(done, time.monotonic() + timeout)
        self._wake()

    def change_membership(self, add: bool, address: str, done: Callable[[RaftError | None], None]) -> None:
        """Add or remove a voting member (on the leader); ``done(None)`` once the change is committed."""
        def run() -> None:
            def finished(_: Any, error: int) -> None:
                done(None if error == FAIL_REASON.SUCCESS else self._error(error, "the membership change"))

            (self.sync.addNodeToCluster if add else self.sync.removeNodeFromCluster)(address, callback=finished)

        self.run_on_tick_thread(run)

    def transfer_leadership(self, timeout: float, done: Callable[[bool], None]) -> None:
        """Hand leadership to the most caught-up follower: new proposals wait meanwhile, so that it can catch
        up under load. ``done(True)`` once another node leads."""
        deadline = time.monotonic() + timeout

        def attempt() -> None:
            if not self.engine.is_leader:
                self._transferring_until = 0.0
                done(True)
                return
            if time.monotonic() >= deadline:
                self._transferring_until = 0.0
                done(False)
                return
            self._transferring_until = deadline
            self.sync.transferLeadership()
            threading.Timer(0.05, self.run_on_tick_thread, (attempt,)).start()

        self.run_on_tick_thread(attempt)

    def compact(self) -> None:
        """Take a snapshot now (PySyncObj starts it on its next tick)."""
        self.run_on_tick_thread(self.sync.forceLogCompaction)

    def run_on_tick_thread(self, task: Callable[[], None]) -> None:
        self._tasks.append(task)
        self._wake()

    def close(self) -> None:
        self._stopping = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(10)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def has_snapshot(self) -> bool:
        return os.path.exists(self._snapshot_path)

    # ----- the loop -----

    def _wake(self) -> None:
        if self._woken:  # told since the loop last looked at its queues: it will see what was just queued
            return
        self._woken = True
        with contextlib.suppress(OSError):  # the pipe is full: the loop is awake anyway
            self._notifier.notify()

    def _run(self) -> None:
        first = True
        try:
            while not self._stopping:
                self._woken = False  # before the queues are looked at: anything queued later wakes the loop again
                self.journal.sync()
                self.rules.release_acks()
                while self._tasks:
                    self._tasks.popleft()()
                flushed = self._flush_proposals()
                self.reads.tick()
                self.rules.before_tick()
                self.sync.doTick(0.0 if flushed or self._tasks else 0.05)
                self.rules.after_tick()
                failure = codec.take_load_failure()
                if failure is not None:
                    raise DamagedFile(self._snapshot_path, failure)
                if first:  # the snapshot is loaded now: give the leader a full election timeout to be heard
                    first = False
                    alone = not self.engine.voters  # nobody else to hear from: lead at once
                    self.engine.election_deadline = 0.0 if alone else \
                        time.monotonic() + self.options.max_election_timeout
                self._expire()
                self._observe()
        except codec.DecodeError as error:  # an entry of the log is not ours: damaged, or put there by someone
            self.failure = DamagedFile(self.journal.path, f"an entry cannot be applied: {error}")
            log.error("the Raft node stops: %s", self.failure)
        except Exception as error:  # any error stops the node: it must not go on half-done
            self.failure = error if isinstance(error, RaftError) else StorageError(f"the Raft node stopped: {error}")
            log.error("the Raft node stops: %s", self.failure, exc_info=not isinstance(error, RaftError))
        finally:
            self._shut_down()
        if self.failure is not None:
            self._on_failure(self.failure)

    def _shut_down(self) -> None:
        error = self.failure or NotApplied("the node has stopped")
        self.rules.drop_held_acks()
        while self._proposals:
            self._proposals.popleft().finish(None, error)
        for _, _, proposal in self._deadlines:
            proposal.finish(None, OutcomeUnknown("the node stopped before the write was confirmed; outcome unknown"))
        self.reads.fail_all(error)
        try:
            self.sync.destroy()
        except Exception:  # closing what is left; the failure is already recorded
            log.debug("while destroying the Raft node", exc_info=True)
        self.status = self._status()

    def _flush_proposals(self) -> bool:
        if not self._proposals or self.engine.leader is None or time.monotonic() < self._transferring_until:
            return False
        if self.journal.space_low:
            error = StorageFull("no space left on this node's disk for the log; free some space")
            while self._proposals:
                self._proposals.popleft().finish(None, error)
            return False
        batch: list[Proposal] = []
        size = 0
        while self._proposals and len(batch) < _MAX_BATCH:
            proposal = self._proposals[0]
            if batch and size + len(proposal.encoded) > self.options.max_entry_bytes:
                break
            self._proposals.popleft()
            if proposal.finished:
                continue
            batch.append(proposal)
            size += len(proposal.encoded)
        if not batch:
            return False
        for proposal in batch:
            proposal.submitted = True
            heapq.heappush(self._deadlines, (proposal.deadline, next(self._serial), proposal))

        def applied(results: Any, error: int) -> None:
            if error == FAIL_REASON.SUCCESS:
                for proposal, result in zip(batch, results, strict=True):
                    proposal.finish(result, None)
            else:
                failure = self._error(error, "the write")
                for proposal in batch:
                    proposal.finish(None, failure)

        self.machine.apply_batch(batch_entry(time.time(), [p.encoded for p in batch]), callback=applied)
        return True

    def _error(self, code: int, what: str) -> RaftError:
        if code == FAIL_REASON.REQUEST_DENIED:
            return Refused(f"{what} was not applied: {_NOT_APPLIED[code]}; retry")
        if code in _NOT_APPLIED:
            return NotApplied(f"{what} was not applied: {_NOT_APPLIED[code]}; retry")
        return OutcomeUnknown(f"{what} lost contact with the leader before it was confirmed; outcome unknown")

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and (self._deadlines[0][2].finished or self._deadlines[0][0] <= now):
            heapq.heappop(self._deadlines)[2].finish(None, OutcomeUnknown(
                "the write was not confirmed in time; outcome unknown, it may still be applied"))
        if self._proposals and self._proposals[0].deadline <= now:
            waiting = [p for p in self._proposals if p.deadline <= now]
            for proposal in waiting:
                proposal.finish(None, NotApplied("no leader was known in time (an election is running or there "
                                                 "is no quorum); not applied"))
            self._proposals = collections.deque(p for p in self._proposals if not p.finished)

    def _inbound(self, node: Any, message: Any, deliver: Callable[[Any], None]) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        handler = self.reads.handlers.get(kind) if isinstance(kind, str) else None
        if handler is not None:
            handler(node, message)
        elif kind == "apply_command" and time.monotonic() < self._transferring_until:
            if isinstance(message.get("request_id"), int):  # a follower's write during a transfer: retry elsewhere
                self.engine.send(node, {"type": "apply_command_response", "request_id": message["request_id"],
                                        "error": FAIL_REASON.NOT_LEADER})
        else:
            self.rules.inbound(node, message, deliver)

    # ----- what happens: roles, leaders, members, quorum, snapshots -----

    def _on_state_changed(self, old: int, new: int) -> None:
        self.role = ROLES.get(new, "unknown")
        if new == LEADER:
            self.reads.became_leader(self.journal.last_index + 1)  # PySyncObj appends its no-op next
        elif old == LEADER:
            self.reads.stepped_down()

    def _snapshot_starting(self) -> None:
        self._snapshot_started = time.monotonic()

    def snapshot_taken(self) -> None:
        if self._snapshot_started is not None:
            self.snapshots += 1
            self.snapshot_seconds += time.monotonic() - self._snapshot_started
            self._snapshot_started = None

    def _observe(self) -> None:
        engine, sync = self.engine, self.sync
        self.events.observe(engine.leader, engine.term, frozenset(node.address for node in engine.voters),
                            sync.hasQuorum, sync.isReady(), engine.applied_index)
        if self.journal.size_bytes > self.options.compact_log_bytes:
            sync.forceLogCompaction()  # a flag: PySyncObj starts one snapshot when none is running
        now = time.monotonic()
        if now - self._last_compaction_check > 1.0:
            self._last_compaction_check = now
            # A node's first snapshot is taken at once: it lists every member, the founding one included,
            # which the log alone does not (PySyncObj never logs the first member).
            if not self.has_snapshot and engine.applied_index >= 3:
                sync.forceLogCompaction()
        self.status = self._status()

    def _status(self) -> dict[str, Any]:
        sync = self.sync if hasattr(self, "sync") else None
        if sync is None:
            return {}
        leader = self.engine.leader if hasattr(self, "engine") else None
        voters = sync.otherNodes
        return {
            "role": self.role if self.failure is None and not self._stopping else "stopped",
            "term": sync.raftCurrentTerm,
            "commit_index": sync.raftCommitIndex,
            "applied_index": sync.raftLastApplied,
            "leader": leader.address if leader is not None else None,
            "voters": sorted([self.address, *(node.address for node in voters)]),
            "connected": sorted(node.address for node in voters if self.transport.is_connected(node)),
            "has_quorum": sync.hasQuorum,
            "ready": sync.isReady(),
            "log_entries": len(self.journal),
            "log_bytes": self.journal.size_bytes,
            "space_low": self.journal.space_low,
        }
