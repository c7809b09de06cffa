"""Raft's rules on messages, in front of PySyncObj: what reaches it, and what is answered on its behalf."""

from __future__ import annotations

import time

import pytest

from hraftd.raft.rules import RaftRules, well_formed


class FakeEngine:
    def __init__(self, log_terms: list[int], term: int = 3) -> None:
        self.log = [(b"\x00c.", index, t) for index, t in enumerate(log_terms, 1)]
        self.term = term
        self.is_leader = False
        self.leader = "leader"
        self.voters = {"leader", "other"}
        self.min_timeout, self.max_timeout = 0.4, 1.4
        self.election_deadline = time.monotonic() + 10
        self.sent: list[tuple[str, dict]] = []

    def entry(self, index):
        return self.log[index - 1] if 1 <= index <= len(self.log) else None

    def last_log(self):
        return self.log[-1][1], self.log[-1][2]

    def send(self, node, message):
        self.sent.append((node, message))


def append(prev: int, prev_term: int, entries: list[tuple[int, int]], commit: int = 100, term: int = 3) -> dict:
    return {"type": "append_entries", "term": term, "commit_index": commit, "prevLogIdx": prev,
            "prevLogTerm": prev_term, "entries": tuple((b"\x00c.", index, t) for index, t in entries)}


def run(rules: RaftRules, message: dict, node: str = "leader") -> list[dict]:
    delivered: list[dict] = []
    rules.inbound(node, message, delivered.append)
    return delivered


def test_a_resent_shorter_batch_keeps_the_followers_tail_and_is_acknowledged_after_the_sync():
    engine = FakeEngine([1] * 10)
    rules = RaftRules(engine)
    [delivered] = run(rules, append(5, 1, [(6, 1), (7, 1)], commit=100))
    assert "prevLogIdx" not in delivered and "entries" not in delivered  # PySyncObj cannot cut anything
    assert delivered["commit_index"] == 7  # the message vouches for entries up to 7 only
    assert engine.sent == []  # the acknowledgement waits for the sync
    rules.release_acks()
    assert engine.sent == [("leader", {"type": "next_node_idx", "next_node_idx": 8, "reset": False,
                                       "success": True})]


def test_a_conflict_cuts_from_the_first_conflicting_entry_only():
    engine = FakeEngine([1] * 10)
    [delivered] = run(RaftRules(engine), append(5, 1, [(6, 1), (7, 2), (8, 2)]))
    assert (delivered["prevLogIdx"], delivered["prevLogTerm"]) == (6, 1)
    assert [entry[1:] for entry in delivered["entries"]] == [(7, 2), (8, 2)]
    assert delivered["commit_index"] == 8


def test_new_entries_after_known_ones_are_appended_after_the_last_known_one():
    engine = FakeEngine([1] * 5)
    [delivered] = run(RaftRules(engine), append(3, 1, [(4, 1), (5, 1), (6, 1)], commit=4))
    assert (delivered["prevLogIdx"], delivered["prevLogTerm"]) == (5, 1)
    assert [entry[1] for entry in delivered["entries"]] == [6]
    assert delivered["commit_index"] == 4


def test_a_message_that_does_not_match_at_prev_reaches_pysyncobj_unchanged():
    engine = FakeEngine([1] * 5)
    message = append(5, 2, [(6, 2)])
    assert run(RaftRules(engine), message) == [message]


def test_a_heartbeat_behind_the_followers_log_cuts_nothing():
    engine = FakeEngine([1] * 10)
    [delivered] = run(RaftRules(engine), append(4, 1, [], commit=9))
    assert "prevLogIdx" not in delivered and delivered["commit_index"] == 4


def test_vote_requests_are_ignored_while_a_live_leader_is_heard_unless_a_transfer_asked_for_them():
    engine = FakeEngine([1] * 3)
    rules = RaftRules(engine)
    run(rules, append(3, 1, []))  # the leader was just heard
    vote = {"type": "request_vote", "term": 4, "last_log_index": 9, "last_log_term": 3}
    assert run(rules, vote, node="other") == []
    assert run(rules, dict(vote, hraftd_transfer=True), node="other") != []
    rules._leader_heard_at -= 1.0  # the leader has been silent for longer than the minimum election timeout
    assert run(rules, vote, node="other") == [vote]


@pytest.mark.parametrize("message", [
    {"type": "append_entries", "term": "3", "commit_index": 1},
    {"type": "append_entries", "term": 3, "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 1,
     "entries": ((b"c", "2", 1),)},
    {"type": "append_entries", "term": 3, "commit_index": 1, "transmission": "start", "data": b""},
    {"type": "next_node_idx", "next_node_idx": 4, "reset": 0, "success": True},
    {"type": "request_vote", "term": 1},
    {"type": "apply_command", "command": ""},
    {"type": "nonsense"},
    ["add", "a:1"],
    "readonly",
])
def test_malformed_or_unknown_messages_never_reach_pysyncobj(message):
    assert not well_formed(message)
    assert run(RaftRules(FakeEngine([1])), message) == []


def test_prevote_holds_the_election_back_until_a_majority_would_vote():
    engine = FakeEngine([1] * 3)
    engine.leader = None
    engine.election_deadline = time.monotonic() - 0.01  # PySyncObj would campaign on this tick
    rules = RaftRules(engine)
    rules.before_tick()
    assert engine.election_deadline > time.monotonic()  # held back
    asked = [message for _, message in engine.sent if message["type"] == "hraftd_prevote"]
    assert len(asked) == 2 and asked[0]["term"] == 4
    run(rules, {"type": "hraftd_prevote_answer", "serial": asked[0]["serial"], "granted": False}, node="other")
    assert not rules.campaign_allowed
    run(rules, {"type": "hraftd_prevote_answer", "serial": asked[0]["serial"], "granted": True}, node="other")
    assert rules.campaign_allowed and engine.election_deadline == 0.0


@pytest.mark.parametrize(("last", "term", "leader_heard", "granted"), [
    ((3, 1), 4, False, True),
    ((2, 1), 4, False, False),  # the candidate's log is behind ours
    ((3, 1), 3, False, False),  # no later term than ours
    ((3, 1), 4, True, False),  # we hear a live leader
])
def test_prevote_answers(last, term, leader_heard, granted):
    engine = FakeEngine([1] * 3)
    rules = RaftRules(engine)
    if leader_heard:
        run(rules, append(3, 1, []))
    run(rules, {"type": "hraftd_prevote", "serial": 7, "term": term, "last_log_index": last[0],
                "last_log_term": last[1]}, node="other")
    assert engine.sent[-1] == ("other", {"type": "hraftd_prevote_answer", "serial": 7, "granted": granted,
                                         "term": 3})


def test_a_pre_vote_refused_by_a_member_at_a_later_term_moves_the_asker_up_to_that_term():
    engine = FakeEngine([1] * 3, term=3)
    engine.leader = None
    engine.election_deadline = time.monotonic() - 0.01
    rules = RaftRules(engine)
    rules.before_tick()
    serial = engine.sent[-1][1]["serial"]
    answer = {"type": "hraftd_prevote_answer", "serial": serial, "granted": False, "term": 9}
    assert run(rules, answer, node="stranger") == []  # only a member's term counts
    # behind in term, ahead in log: it takes the later term, so its next pre-vote (for 10) can be granted
    assert run(rules, answer, node="other") == [{"type": "request_vote", "term": 9, "last_log_index": -1,
                                                 "last_log_term": -1}]
    assert run(rules, dict(answer, term=3), node="other") == [] and not rules.campaign_allowed


def test_a_member_ahead_answers_a_lower_term_append_with_its_term_and_takes_nothing_from_it():
    engine = FakeEngine([1] * 3, term=5)
    rules = RaftRules(engine)
    assert run(rules, append(3, 1, [(4, 3)], term=3)) == []
    assert engine.sent == [("leader", {"type": "hraftd_newer_term", "term": 5})]
    assert run(rules, append(3, 1, [], term=3), node="stranger") == []
    assert len(engine.sent) == 1  # only members are answered


@pytest.mark.parametrize(("node", "term", "steps_down"), [
    ("other", 6, True),
    ("other", 5, False),  # not past our term
    ("stranger", 9, False),  # not a member
    ("other", "9", False),
])
def test_a_newer_term_from_a_member_makes_the_node_step_down_without_giving_a_vote(node, term, steps_down):
    engine = FakeEngine([1] * 3, term=5)
    engine.is_leader = True
    delivered = run(RaftRules(engine), {"type": "hraftd_newer_term", "term": term}, node=node)
    # PySyncObj adopts the term of any vote request and steps down; a log older than any gets no vote
    assert delivered == ([{"type": "request_vote", "term": term, "last_log_index": -1, "last_log_term": -1}]
                         if steps_down else [])
