"""The one module that calls into PySyncObj's ``SyncObj``: the replicated machine as PySyncObj sees it, and the
view of the Raft state that the rest of this package reads.

Every name used here is listed in ``compat`` and checked before a node starts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pysyncobj import SyncObj, SyncObjConsumer, replicated

from hraftd.raft.codec import Deferred, decode_command
from hraftd.raft.journal import Journal

LEADER = 2
ROLES = {0: "follower", 1: "candidate", 2: "leader"}


class Machine(SyncObjConsumer):
    """The state machine behind PySyncObj: one replicated method, ``apply_batch``, so that the log's format is
    ours (a batch of commands, see ``codec.encode_batch``) and never depends on method names.

    ``lock`` is held while a batch is applied and must be held by every reader of the state, so that no reader
    sees half a batch.
    """

    def __init__(self, state: Any, on_applied: Callable[[list[Any], int], None],
                 on_loaded: Callable[[int], None]) -> None:
        super().__init__()
        self.state = state
        self.lock = threading.Lock()
        self.on_applied = on_applied  # told each batch's results and the revision after it (watches, metrics)
        self.on_loaded = on_loaded  # told the revision of a snapshot that replaced the state
        self.on_serialize: Callable[[], None] = lambda: None  # a snapshot is about to be taken

    @replicated
    def apply_batch(self, batch: bytes) -> list[Any]:
        log_time, commands = decode_command(batch)
        with self.lock:
            applied = [self.state.apply(command, log_time) for command in commands]
        self.on_applied(applied, self.state.revision)
        return [each.result for each in applied]

    def _serialize(self) -> dict[str, Any]:
        self.on_serialize()
        return {"state": Deferred(self.state.dump)}

    def _deserialize(self, data: dict[str, Any]) -> None:
        loaded = type(self.state).load(data["state"])
        with self.lock:
            self.state = loaded
        self.on_loaded(loaded.revision)


class Engine:
    """What the rules, reads and the node read and set of the Raft state, in our words."""

    def __init__(self, sync: SyncObj, journal: Journal, send: Callable[[Any, dict[str, Any]], bool]) -> None:
        self.sync = sync
        self.journal = journal
        self._send = send
        conf = sync.conf
        self.min_timeout = conf.raftMinTimeout
        self.max_timeout = conf.raftMaxTimeout

    @property
    def term(self) -> int:
        return self.sync.raftCurrentTerm

    @property
    def is_leader(self) -> bool:
        return self.sync._isLeader()

    @property
    def leader(self) -> Any:
        return self.sync._getLeader()

    @property
    def voters(self) -> set[Any]:
        return self.sync.otherNodes

    @property
    def commit_index(self) -> int:
        return self.sync.raftCommitIndex

    @property
    def applied_index(self) -> int:
        return self.sync.raftLastApplied

    @property
    def election_deadline(self) -> float:
        return self.sync._SyncObj__raftElectionDeadline

    @election_deadline.setter
    def election_deadline(self, value: float) -> None:
        self.sync._SyncObj__raftElectionDeadline = value

    def entry(self, index: int) -> tuple[bytes, int, int] | None:
        journal = self.journal
        if not len(journal):
            return None
        position = index - journal[0][1]
        return journal[position] if 0 <= position < len(journal) else None

    def last_log(self) -> tuple[int, int]:
        last = self.journal[-1]
        return last[1], last[2]

    def send(self, node: Any, message: dict[str, Any]) -> bool:
        return self._send(node, message)
