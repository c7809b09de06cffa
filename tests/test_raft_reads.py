"""Linearizable reads without log entries (ReadIndex): when a read may be answered, on a leader and a follower."""

from __future__ import annotations

from hraftd.raft.reads import ReadIndex


class FakeEngine:
    def __init__(self, leader: bool = True) -> None:
        self.is_leader = leader
        self.leader = "self" if leader else "the-leader"
        self.term = 5
        self.voters = {"b", "c"}
        self.commit_index = 10
        self.applied_index = 10
        self.sent: list[tuple[str, dict]] = []

    def send(self, node, message):
        self.sent.append((node, message))

    def pings(self) -> list[dict]:
        return [message for _, message in self.sent if message["type"] == "hraftd_ping"]


def reader(results: list, name: str):
    return lambda error: results.append((name, error))


def leader_reads(noop_index: int = 7) -> tuple[ReadIndex, FakeEngine, list]:
    engine = FakeEngine()
    reads = ReadIndex(engine)
    reads.became_leader(noop_index)
    return reads, engine, []


def pong(reads: ReadIndex, node: str, seq: int, term: int = 5) -> None:
    reads.handlers["hraftd_pong"](node, {"type": "hraftd_pong", "term": term, "seq": seq})


def test_a_new_leader_serves_reads_only_once_an_entry_of_its_term_is_committed():
    reads, engine, done = leader_reads(noop_index=12)  # its no-op is at 12; the commit index is still 10
    reads.request(reader(done, "a"), deadline=1e12)
    reads.tick()
    assert engine.pings() == [] and done == []  # its commit index may miss writes of an earlier term
    engine.commit_index = engine.applied_index = 12
    reads.tick()
    pong(reads, "b", engine.pings()[-1]["seq"])
    reads.tick()
    assert done == [("a", None)]


def test_a_confirmed_read_waits_until_the_read_index_is_applied():
    reads, engine, done = leader_reads()
    engine.applied_index = 9  # committed 10, applied only 9
    reads.request(reader(done, "a"), deadline=1e12)
    reads.tick()
    pong(reads, "b", engine.pings()[-1]["seq"])
    reads.tick()
    assert done == []
    engine.applied_index = 10
    reads.tick()
    assert done == [("a", None)]


def test_a_read_arriving_during_a_round_waits_for_the_next_one():
    reads, engine, done = leader_reads()
    reads.request(reader(done, "early"), deadline=1e12)
    reads.tick()
    first = engine.pings()[-1]["seq"]
    reads.request(reader(done, "late"), deadline=1e12)  # arrives after the round's pings left
    reads.tick()
    pong(reads, "b", first)
    reads.tick()
    assert done == [("early", None)]  # the round proved nothing about a read that came after it began
    reads.tick()
    second = engine.pings()[-1]["seq"]
    assert second > first
    pong(reads, "c", first)  # an answer to the earlier round does not confirm the later one
    reads.tick()
    assert done == [("early", None)]
    pong(reads, "b", second)
    reads.tick()
    assert done == [("early", None), ("late", None)]


def test_answers_of_another_term_or_of_strangers_never_count():
    reads, engine, done = leader_reads()
    reads.request(reader(done, "a"), deadline=1e12)
    reads.tick()
    seq = engine.pings()[-1]["seq"]
    pong(reads, "b", seq, term=4)
    pong(reads, "stranger", seq)
    reads.tick()
    assert done == []


def test_a_leader_that_loses_its_term_fails_the_round():
    reads, engine, done = leader_reads()
    reads.request(reader(done, "a"), deadline=1e12)
    reads.tick()
    engine.term = 6
    reads.tick()
    assert len(done) == 1 and done[0][1] is not None


def test_a_follower_asks_the_leader_once_for_its_waiting_readers_then_waits_to_apply_the_index():
    engine = FakeEngine(leader=False)
    reads = ReadIndex(engine)
    done: list = []
    for name in ("a", "b"):
        reads.request(reader(done, name), deadline=1e12)
    reads.tick()
    asked = [message for node, message in engine.sent if message["type"] == "hraftd_read"]
    assert len(asked) == 1 and engine.sent[0][0] == "the-leader"
    reads.handlers["hraftd_read_answer"]("the-leader", {"id": asked[0]["id"], "index": 14})
    reads.tick()
    assert done == []  # the leader's commit index is 14, this node has applied 10
    engine.applied_index = 14
    reads.tick()
    assert sorted(done) == [("a", None), ("b", None)]


def test_a_follower_answers_a_ping_only_when_it_has_not_moved_to_a_later_term():
    engine = FakeEngine(leader=False)
    reads = ReadIndex(engine)
    reads.handlers["hraftd_ping"]("the-leader", {"type": "hraftd_ping", "term": 4, "seq": 1})
    assert engine.sent == []
    reads.handlers["hraftd_ping"]("the-leader", {"type": "hraftd_ping", "term": 5, "seq": 2})
    assert engine.sent == [("the-leader", {"type": "hraftd_pong", "term": 5, "seq": 2})]


def test_a_read_past_its_deadline_fails():
    reads, _, done = leader_reads(noop_index=99)  # never confirmable
    reads.request(reader(done, "a"), deadline=0.0)
    reads.tick()
    assert len(done) == 1 and "in time" in str(done[0][1])


def test_a_leader_alone_answers_without_a_round_once_its_term_is_committed_and_applied():
    reads, engine, _ = leader_reads(noop_index=12)
    engine.voters = set()
    assert not reads.settled_alone()  # its no-op (12) is not committed: its commit index may miss writes
    engine.commit_index = 12
    assert not reads.settled_alone()  # committed, not applied
    engine.applied_index = 12
    assert reads.settled_alone()
    engine.voters = {"b"}  # a member was added: leadership needs a quorum's word again
    assert not reads.settled_alone()
    engine.voters = set()
    reads.stepped_down()
    assert not reads.settled_alone()  # until it commits an entry of its next term
    engine.is_leader = False
    reads.became_leader(13)
    assert not reads.settled_alone()
