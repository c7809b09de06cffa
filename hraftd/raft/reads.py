"""Linearizable reads without log entries, on every node: Raft's ReadIndex (Ongaro's thesis, section 6.4).

A read that arrives at time T may be served from local state at index I once (1) the leader has committed an
entry of its own term, so its commit index covers every write acknowledged before T; (2) a majority answered
a message the leader sent after T in that term, so no later leader can have committed anything before T that
this leader lacks; I is the leader's commit index when that round began; (3) the serving node has applied I.
A follower asks the leader for I (one message for all its waiting readers) and waits until it has applied it.
A leader that is the only voter needs no round: (2) holds for it by itself, and it answers at once when it has
applied its commit index.

Rounds are coalesced: one round in flight per node, and a read that arrives while a round is in flight waits
for the next one (a round that began before the read arrived proves nothing about it).
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable
from typing import Any

from hraftd.raft.errors import NotApplied

RETRY_SECONDS = 0.3  # a round or a request not answered by then is sent again (a lost message, a new leader)


class _Reader:
    __slots__ = ("deadline", "done", "finished")

    def __init__(self, done: Callable[[Exception | None], None], deadline: float) -> None:
        self.done = done
        self.deadline = deadline
        self.finished = False

    def finish(self, error: Exception | None) -> None:
        if not self.finished:
            self.finished = True
            self.done(error)


class _Round:
    """One leadership confirmation on the leader, for the local readers and remote requests it carries."""

    def __init__(self, term: int, read_index: int, readers: list[_Reader], remote: list[tuple[Any, int]]) -> None:
        self.term = term
        self.read_index = read_index
        self.readers = readers
        self.remote = remote
        self.first_seq = 0
        self.pinged_at = 0.0
        self.acks: set[Any] = set()
        self.confirmed = False


class ReadIndex:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._incoming: collections.deque[_Reader] = collections.deque()  # from any thread
        self._waiting: list[_Reader] = []
        self._remote: list[tuple[Any, int]] = []  # followers' requests (node, id) for the next round
        self._round: _Round | None = None
        self._seq = itertools.count(1)
        self.noop_index = float("inf")  # the leader's first entry of its term; set when it becomes leader
        self._request: dict[str, Any] | None = None  # a follower's request in flight to the leader
        self._answered: list[tuple[int, list[_Reader]]] = []  # follower: confirmed, waiting to apply the index
        self.handlers = {"hraftd_ping": self._on_ping, "hraftd_pong": self._on_pong, "hraftd_read": self._on_read,
                         "hraftd_read_answer": self._on_answer}

    def request(self, done: Callable[[Exception | None], None], deadline: float) -> None:
        """From any thread: ``done(None)`` on the tick thread once local reads reflect every write acknowledged
        before this call, or ``done(error)``."""
        self._incoming.append(_Reader(done, deadline))

    def became_leader(self, noop_index: int) -> None:
        self.noop_index = noop_index

    def stepped_down(self) -> None:
        self.noop_index = float("inf")

    def settled_alone(self) -> bool:
        """From any thread: whether this node's state already reflects every acknowledged write, with no round.
        True on a leader that is the only voter (no other node can be elected, so its leadership needs no
        confirmation), once it has committed its term's first entry and applied its commit index."""
        engine = self.engine
        return (engine.is_leader and not engine.voters and engine.commit_index >= self.noop_index
                and engine.applied_index >= engine.commit_index)

    def tick(self) -> None:
        """On the tick thread, every iteration."""
        while self._incoming:
            self._waiting.append(self._incoming.popleft())
        engine, now = self.engine, time.monotonic()
        if engine.is_leader:
            self._lead(now)
        else:
            self._follow(now)
        self._expire(now)

    # ----- on the leader -----

    def _lead(self, now: float) -> None:
        engine = self.engine
        if self._request is not None:  # asked as a follower, then became leader: ask ourselves
            self._waiting[:0] = self._request["readers"]
            self._request = None
        round_ = self._round
        if round_ is not None and round_.term != engine.term:
            self._fail_round("the leader changed")
            round_ = None
        if round_ is None and (self._waiting or self._remote) and engine.commit_index >= self.noop_index:
            round_ = self._round = _Round(engine.term, engine.commit_index, self._waiting, self._remote)
            self._waiting, self._remote = [], []
            self._ping(round_, now)
        if round_ is None:
            return
        if not round_.confirmed and now - round_.pinged_at > RETRY_SECONDS:
            self._ping(round_, now)
        self._check(round_)
        if round_.confirmed and engine.applied_index >= round_.read_index:
            for reader in round_.readers:
                reader.finish(None)
            self._round = None

    def _ping(self, round_: _Round, now: float) -> None:
        seq = next(self._seq)
        round_.first_seq = round_.first_seq or seq
        round_.pinged_at = now
        for voter in self.engine.voters:
            self.engine.send(voter, {"type": "hraftd_ping", "term": round_.term, "seq": seq})

    def _check(self, round_: _Round) -> None:
        if round_.confirmed:
            return
        voters = self.engine.voters
        round_.confirmed = len(round_.acks & voters) + 1 > (len(voters) + 1) / 2
        if round_.confirmed:
            for node, request_id in round_.remote:
                self.engine.send(node, {"type": "hraftd_read_answer", "id": request_id, "index": round_.read_index})
            round_.remote = []

    def _fail_round(self, why: str) -> None:
        round_, self._round = self._round, None
        if round_ is None:
            return
        for reader in round_.readers:
            reader.finish(NotApplied(f"could not confirm the read: {why}"))
        for node, request_id in round_.remote:
            self.engine.send(node, {"type": "hraftd_read_answer", "id": request_id, "error": why})

    def _on_pong(self, node: Any, message: dict[str, Any]) -> None:
        round_ = self._round
        seq = message.get("seq")
        if (round_ is not None and message.get("term") == round_.term == self.engine.term
                and isinstance(seq, int) and seq >= round_.first_seq):
            round_.acks.add(node)
            self._check(round_)

    def _on_read(self, node: Any, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        if not isinstance(request_id, int):
            return
        if self.engine.is_leader:
            self._remote.append((node, request_id))
        else:
            self.engine.send(node, {"type": "hraftd_read_answer", "id": request_id, "error": "not the leader"})

    # ----- on a follower -----

    def _on_ping(self, node: Any, message: dict[str, Any]) -> None:
        term = message.get("term")
        # Answering says: "I have not moved to a later term", which is all the leader's round needs.
        if isinstance(term, int) and term >= self.engine.term:
            self.engine.send(node, {"type": "hraftd_pong", "term": term, "seq": message.get("seq")})

    def _follow(self, now: float) -> None:
        if self._round is not None:
            self._fail_round("this node is no longer the leader")
        for node, request_id in self._remote:
            self.engine.send(node, {"type": "hraftd_read_answer", "id": request_id, "error": "not the leader"})
        self._remote = []
        request, leader = self._request, self.engine.leader
        if request is not None and (request["leader"] != leader or now - request["sent_at"] > RETRY_SECONDS):
            self._waiting[:0] = request["readers"]  # ask again (the new leader): still after they arrived
            request = self._request = None
        if request is None and self._waiting and leader is not None:
            request_id = next(self._seq)
            self._request = {"id": request_id, "leader": leader, "readers": self._waiting, "sent_at": now}
            self._waiting = []
            self.engine.send(leader, {"type": "hraftd_read", "id": request_id})
        applied = self.engine.applied_index
        still = []
        for index, readers in self._answered:
            if applied >= index:
                for reader in readers:
                    reader.finish(None)
            else:
                still.append((index, readers))
        self._answered = still

    def _on_answer(self, node: Any, message: dict[str, Any]) -> None:
        request = self._request
        if request is None or message.get("id") != request["id"] or node != request["leader"]:
            return
        self._request = None
        index = message.get("index")
        if isinstance(index, int):
            self._answered.append((index, request["readers"]))
        else:
            self._waiting[:0] = request["readers"]  # the leader could not confirm: ask again next time

    # ----- both -----

    def _expire(self, now: float) -> None:
        groups = [self._waiting, *(readers for _, readers in self._answered)]
        if self._round is not None:
            groups.append(self._round.readers)
        if self._request is not None:
            groups.append(self._request["readers"])
        for readers in groups:
            readers[:] = [reader for reader in readers if not self._expired(reader, now)]

    @staticmethod
    def _expired(reader: _Reader, now: float) -> bool:
        if not reader.finished and reader.deadline <= now:
            reader.finish(NotApplied("could not confirm leadership with a quorum in time; no leader or no quorum"))
        return reader.finished

    def fail_all(self, error: Exception) -> None:
        """The node stops: every reader gets ``error``."""
        readers = list(self._incoming) + self._waiting
        if self._round is not None:
            readers += self._round.readers
        if self._request is not None:
            readers += self._request["readers"]
        for _, waiting in self._answered:
            readers += waiting
        for reader in readers:
            reader.finish(error)
