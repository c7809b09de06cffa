"""Raft's rules where PySyncObj bends them, applied to the messages between the transport and PySyncObj.

- Append-entries truncate a follower's log only on a conflict (same index, different term). PySyncObj deletes
  everything after a matching ``prevLogIdx`` and appends the message's entries, so a resent, shorter batch
  would cut entries the follower already acknowledged. Here a message is trimmed to the entries that are new
  or conflicting before PySyncObj sees it, and one whose entries are all present is answered here.
- The commit index a follower takes from a message never covers entries the message did not vouch for.
- An acknowledgement of log entries leaves only after the entries are synced (``release_acks``).
- Leader stickiness and PreVote: a node that heard from a leader within the minimum election timeout ignores
  vote requests, and a node only starts an election after a majority said it would vote for it, so a node
  that was cut off or restarted cannot depose a healthy leader. A leadership transfer is the exception.
- A member at a higher term answers a lower-term append with its term, and the leader that gets that answer
  steps down (etcd does the same with PreVote and CheckQuorum). PySyncObj drops such appends silently, and
  with stickiness nobody would grant the member's vote requests either: without this answer a member whose
  term ran ahead (it campaigned on a pre-vote from a woken ex-leader, say) would stay a leaderless candidate
  for as long as the leader lives. Pre-vote answers carry the term too, and a node that asked moves up to a
  later one: with no leader, a member ahead in term but behind in log and one behind in term but ahead in
  log would otherwise refuse each other's pre-votes forever.
- Messages are checked for shape before PySyncObj reads them; anything else is dropped.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("hraftd.raft")

_TRANSFER = "hraftd_transfer"  # marks the vote requests of an election that a leadership transfer started
_TRANSFER_WINDOW = 2.0  # seconds after a leader's "timeout now" during which our election skips PreVote


class Engine(Protocol):
    """What the rules need of the Raft node (``engine.Engine`` provides it)."""

    term: int
    is_leader: bool
    leader: Any
    voters: set[Any]
    min_timeout: float
    max_timeout: float
    election_deadline: float

    def entry(self, index: int) -> tuple[bytes, int, int] | None: ...
    def last_log(self) -> tuple[int, int]: ...
    def send(self, node: Any, message: dict[str, Any]) -> None: ...


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entries_ok(entries: Any) -> bool:
    return isinstance(entries, tuple) and all(
        isinstance(e, tuple) and len(e) == 3 and isinstance(e[0], bytes) and _is_int(e[1]) and _is_int(e[2])
        for e in entries)


# The fields PySyncObj reads from each kind of message, and a check of each.
_SHAPES: dict[str, dict[str, Callable[[Any], bool]]] = {
    "append_entries": {"term": _is_int, "commit_index": _is_int},
    "next_node_idx": {"next_node_idx": _is_int, "reset": lambda v: isinstance(v, bool),
                      "success": lambda v: isinstance(v, bool)},
    "request_vote": {"term": _is_int, "last_log_index": _is_int, "last_log_term": _is_int},
    "response_vote": {"term": _is_int},
    "timeout_now": {"term": _is_int},
    "apply_command": {"command": lambda v: isinstance(v, bytes) and len(v) > 0},
    "apply_command_response": {"request_id": _is_int},
}


def well_formed(message: Any) -> bool:
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return False
    shape = _SHAPES.get(message["type"])
    if shape is None or not all(name in message and check(message[name]) for name, check in shape.items()):
        return False
    kind = message["type"]
    if kind == "append_entries":
        if "transmission" in message:
            return False  # we never send entries in pieces: the batch size is above the largest entry
        if "prevLogIdx" in message:
            return (_is_int(message["prevLogIdx"]) and _is_int(message["prevLogTerm"])
                    and _entries_ok(message.get("entries", ())))
        serialized = message.get("serialized")
        return serialized is None or (isinstance(serialized, tuple) and len(serialized) == 3
                                      and isinstance(serialized[0], bytes))
    if kind == "apply_command" and "request_id" in message:
        return _is_int(message["request_id"])
    if kind == "apply_command_response":
        if "error" in message:
            return _is_int(message["error"])
        return _is_int(message.get("log_idx")) and _is_int(message.get("log_term"))
    return True


class RaftRules:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._held_acks: list[tuple[Any, dict[str, Any]]] = []
        self._leader_heard_at = float("-inf")
        self._acks_heard_at: dict[Any, float] = {}
        self._transfer_started = float("-inf")
        self._prevote: dict[str, Any] | None = None
        self._prevote_serial = 0
        self.campaign_allowed = False
        self.handlers: dict[str, Callable[[Any, dict[str, Any]], None]] = {"hraftd_prevote": self._on_prevote}

    # ----- inbound -----

    def inbound(self, node: Any, message: Any, deliver: Callable[[Any], None]) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        handler = self.handlers.get(kind) if isinstance(kind, str) else None
        if handler is not None:
            handler(node, message)
            return
        if kind == "hraftd_newer_term":
            self._on_newer_term(node, message, deliver)
            return
        if kind == "hraftd_prevote_answer":
            self._on_prevote_answer(node, message, deliver)
            return
        if not well_formed(message):
            log.debug("dropped a malformed %r message from %s", kind, node)
            return
        engine = self.engine
        if kind == "append_entries" and message["term"] < engine.term:
            if node in engine.voters:
                engine.send(node, {"type": "hraftd_newer_term", "term": engine.term})
            return
        if kind == "append_entries":
            self._leader_heard_at = time.monotonic()
            if "prevLogIdx" in message:
                self._append(node, message, deliver)
                return
        elif kind == "request_vote" and not message.get(_TRANSFER) and self._leader_is_live():
            return  # a live leader is known: this candidate was cut off or restarted, and must not depose it
        elif kind == "timeout_now" and node == engine.leader:
            self._transfer_started = time.monotonic()
        elif kind == "next_node_idx":
            self._acks_heard_at[node] = time.monotonic()
        deliver(message)

    def _append(self, node: Any, message: dict[str, Any], deliver: Callable[[Any], None]) -> None:
        engine = self.engine
        previous = engine.entry(message["prevLogIdx"])
        if previous is None or previous[2] != message["prevLogTerm"]:
            deliver(message)  # no match at prevLogIdx: PySyncObj asks the leader to step back
            return
        entries = message.get("entries", ())
        start = 0
        for start, (_, index, term) in enumerate(entries):  # noqa: B007
            ours = engine.entry(index)
            if ours is None or ours[2] != term:
                break
        else:
            start = len(entries)
        last = entries[-1][1] if entries else message["prevLogIdx"]
        vouched = dict(message, commit_index=min(message["commit_index"], last))
        if start == len(entries):
            # Every entry is already here (a resent, older batch): nothing to cut, nothing to add.
            vouched.pop("prevLogIdx")
            vouched.pop("prevLogTerm")
            vouched.pop("entries", None)
            deliver(vouched)
            self._held_acks.append((node, {"type": "next_node_idx", "next_node_idx": last + 1, "reset": False,
                                           "success": True}))
            return
        if start:
            vouched["prevLogIdx"], vouched["prevLogTerm"] = entries[start - 1][1], entries[start - 1][2]
            vouched["entries"] = entries[start:]
        deliver(vouched)

    def _on_newer_term(self, node: Any, message: dict[str, Any], deliver: Callable[[Any], None]) -> None:
        term = message.get("term")
        if not _is_int(term) or term <= self.engine.term or node not in self.engine.voters:
            return
        log.info("member %s is at term %d, past ours (%d): stepping down to let an election settle it",
                 node, term, self.engine.term)
        # PySyncObj adopts a higher term (and becomes a follower) on any vote request; one whose log is
        # older than every log gets no vote.
        deliver({"type": "request_vote", "term": term, "last_log_index": -1, "last_log_term": -1})

    def _leader_is_live(self) -> bool:
        engine = self.engine
        now = time.monotonic()
        if engine.is_leader:
            heard = sum(1 for node in engine.voters if now - self._acks_heard_at.get(node, float("-inf"))
                        < engine.min_timeout)
            return heard + 1 > (len(engine.voters) + 1) / 2
        return engine.leader is not None and now - self._leader_heard_at < engine.min_timeout

    # ----- outbound -----

    def outbound(self, node: Any, message: Any) -> Any:
        kind = message.get("type")
        if kind == "next_node_idx":
            self._held_acks.append((node, message))
            return None
        if kind == "request_vote" and time.monotonic() - self._transfer_started < _TRANSFER_WINDOW:
            message[_TRANSFER] = True
        return message

    def release_acks(self) -> None:
        """The journal has just been synced: send the acknowledgements held since the previous sync."""
        held, self._held_acks = self._held_acks, []
        for node, message in held:
            self.engine.send(node, message)

    def drop_held_acks(self) -> None:
        self._held_acks = []

    # ----- PreVote -----

    def before_tick(self) -> None:
        """Let PySyncObj start an election this tick only if a majority would vote for this node."""
        engine = self.engine
        now = time.monotonic()
        if engine.is_leader or not engine.voters or self.campaign_allowed:
            return
        if now - self._transfer_started < _TRANSFER_WINDOW or engine.election_deadline > now:
            return
        spread = engine.max_timeout - engine.min_timeout
        engine.election_deadline = now + engine.min_timeout + spread * random.random()
        self._prevote_serial += 1
        last_index, last_term = engine.last_log()
        self._prevote = {"serial": self._prevote_serial, "term": engine.term + 1, "granted": {None}}
        for voter in engine.voters:
            engine.send(voter, {"type": "hraftd_prevote", "serial": self._prevote_serial, "term": engine.term + 1,
                                "last_log_index": last_index, "last_log_term": last_term})
        self._check_prevote()

    def after_tick(self) -> None:
        if self.campaign_allowed and self.engine.election_deadline > time.monotonic():
            self.campaign_allowed = False  # PySyncObj has started the election (and set a new deadline)

    def _on_prevote(self, node: Any, message: dict[str, Any]) -> None:
        engine = self.engine
        term, last_index, last_term = message.get("term"), message.get("last_log_index"), message.get("last_log_term")
        if not (_is_int(term) and _is_int(last_index) and _is_int(last_term)):
            return
        our_index, our_term = engine.last_log()
        up_to_date = last_term > our_term or (last_term == our_term and last_index >= our_index)
        granted = term > engine.term and up_to_date and not self._leader_is_live()
        engine.send(node, {"type": "hraftd_prevote_answer", "serial": message.get("serial"), "granted": granted,
                           "term": engine.term})

    def _on_prevote_answer(self, node: Any, message: dict[str, Any], deliver: Callable[[Any], None]) -> None:
        if _is_int(message.get("term")) and message["term"] > self.engine.term:
            self._on_newer_term(node, message, deliver)  # catch up first: the next pre-vote asks past its term
            return
        prevote = self._prevote
        if (prevote is None or message.get("serial") != prevote["serial"] or message.get("granted") is not True
                or node not in self.engine.voters):
            return
        prevote["granted"].add(node)
        self._check_prevote()

    def _check_prevote(self) -> None:
        prevote, engine = self._prevote, self.engine
        if prevote is None or prevote["term"] != engine.term + 1:
            return
        if len(prevote["granted"]) > (len(engine.voters) + 1) / 2:
            self._prevote = None
            self.campaign_allowed = True
            engine.election_deadline = 0.0
