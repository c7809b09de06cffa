"""A compare-and-set and transaction workload for the fault-injection harness (``jepsen.py``).

Client threads go through ``hraftd.client.Client``, so every write is retried through failovers with one
idempotency key, as a program would run it. Two things are checked after the faults are healed:

- Registers ``r0``..: linearizable reads, and compare-and-sets by value through ``POST /txn`` (compare the value
  read, set a new unique one), recorded with the answer (done or refused) and checked by
  ``linearizability.check`` as CAS registers. A retried compare-and-set applied twice, or answered "refused"
  although its first attempt was applied, has no linearization.
- A ledger: each transaction reads ``ledger/count`` = n and, if it is still n, sets it to n + 1 and writes its
  own id at ``ledger/entry/<n + 1>``, in one transaction. At the end the entries must be exactly 1..count, no
  id twice, every acknowledged transaction's id at its place (none lost), and no id of a transaction
  answered "refused" or "unavailable" (none applied behind its client's back).
- Watches: watcher threads follow every change through ``Client.watch`` from the revision before the load,
  failing over with it and starting a new watch from ``Watch.revision`` when one gives up. What each saw
  must be a prefix of the committed history (the events the healed cluster tells from that revision, which
  must include the write of every ledger entry): in order, with no gap, no event twice and none that was not
  committed.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests
from jepsen import JepsenCluster, Nemesis, Recorder, converge, final_reads
from linearizability import ABSENT, CAS, FAIL, OK, READ, UNKNOWN, CheckResult, Op, check

from hraftd.client import Client, ClientError, Compacted, OutcomeUnknown, Unavailable

LEDGER_COUNT = "ledger/count"
LEDGER_ENTRIES = "ledger/entry/"
_values = itertools.count(1)
# Between two operations of a client: the test process shares 2 cores with 3 nodes, and the nemesis's status
# probes (1 s timeouts) must still be answered while clients fail over at full speed.
_PAUSE = 0.005


@dataclass
class LedgerTxn:
    """One append: it read ``count`` and tried to write its id at ``count + 1``."""

    id: str
    count: int
    outcome: str  # OK, FAIL or UNKNOWN
    succeeded: bool | None = None


@dataclass
class CasReport:
    history: list[Op]
    ledger: list[LedgerTxn]
    result: CheckResult
    ledger_problems: list[str]
    faults: list[Any]
    nemesis_errors: list[str] = field(default_factory=list)
    streams: list[list[tuple[Any, ...]]] = field(default_factory=list)
    watch_problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kinds = {kind: sum(op.kind == kind and op.outcome == OK for op in self.history) for kind in (READ, CAS)}
        refused = sum(op.kind == CAS and op.succeeded is False for op in self.history)
        unknown = sum(op.outcome == UNKNOWN for op in self.history)
        appended = sum(txn.succeeded is True for txn in self.ledger)
        lines = [f"{len(self.history)} register ops: {kinds[READ]} reads, {kinds[CAS]} compare-and-sets ({refused} "
                 f"refused), {unknown} unknown; {len(self.ledger)} ledger transactions, {appended} appended, "
                 f"{sum(txn.outcome == UNKNOWN for txn in self.ledger)} unknown",
                 f"faults: {[fault.name for fault in self.faults]}",
                 f"checker: {self.result.explain()}",
                 f"watches: {[len(stream) for stream in self.streams]} events seen; "
                 f"{'; '.join(self.watch_problems[:3]) or 'each a gap-free prefix of the committed history'}",
                 f"ledger: {'; '.join(self.ledger_problems[:5]) or 'every transaction applied once or not at all'}"
                 + (f" (and {len(self.ledger_problems) - 5} more)" if len(self.ledger_problems) > 5 else "")]
        return "\n".join(lines)


def _outcome(error: BaseException) -> str:
    return UNKNOWN if isinstance(error, OutcomeUnknown) else FAIL


class CasClients:
    """``count`` threads, each with a ``Client`` of every node, doing reads, compare-and-sets and appends."""

    def __init__(self, cluster: JepsenCluster, recorder: Recorder, ledger: list[LedgerTxn], registers: list[str],
                 count: int, seed: int, deadline: float) -> None:
        self.addresses = [node.http_addr for node in cluster.nodes]
        self.recorder, self.ledger, self.registers, self.deadline = recorder, ledger, registers, deadline
        self.stop = threading.Event()
        self.lock = threading.Lock()
        rng = random.Random(seed)
        self.threads = [threading.Thread(target=self._loop, args=(i, random.Random(rng.random())),
                                         name=f"cas-client-{i}", daemon=True) for i in range(count)]

    def start(self) -> CasClients:
        for thread in self.threads:
            thread.start()
        return self

    def _loop(self, process: int, rng: random.Random) -> None:
        addresses = self.addresses[:]
        rng.shuffle(addresses)  # not all on the same node first
        with Client(addresses, timeout=2.5, deadline=self.deadline) as kv:
            while not self.stop.wait(_PAUSE):
                if rng.random() < 0.25:
                    self._append(kv)
                else:
                    key = rng.choice(self.registers)
                    seen = self._read(kv, process, key)
                    if seen is not None and rng.random() < 0.7:
                        self._cas(kv, process, key, seen)

    def _read(self, kv: Client, process: int, key: str) -> Any:
        invoke = time.monotonic()
        try:
            item = kv.item(key)
        except ClientError:
            self.recorder.add(Op(process, key, READ, None, invoke, time.monotonic(), FAIL))
            return None
        value = ABSENT if item is None else item["value"]
        self.recorder.add(Op(process, key, READ, value, invoke, time.monotonic(), OK))
        return value

    def _cas(self, kv: Client, process: int, key: str, expected: Any) -> None:
        value = next(_values)
        compare = ({"key": key, "target": "version", "op": "=", "value": 0} if expected is ABSENT else
                   {"key": key, "target": "value", "op": "=", "value": expected})
        invoke = time.monotonic()
        try:
            succeeded: bool | None = kv.txn([compare], [{"set": {key: value}}])["succeeded"]
            outcome = OK
        except (Unavailable, OutcomeUnknown) as error:
            succeeded, outcome = None, _outcome(error)
        self.recorder.add(Op(process, key, CAS, value, invoke, time.monotonic(), outcome, expected=expected,
                             succeeded=succeeded))

    def _append(self, kv: Client) -> None:
        try:
            count = kv.get(LEDGER_COUNT, 0)
        except ClientError:
            return
        txn_id = uuid.uuid4().hex[:12]
        compare = ({"key": LEDGER_COUNT, "target": "version", "op": "=", "value": 0} if count == 0 else
                   {"key": LEDGER_COUNT, "target": "value", "op": "=", "value": count})
        try:
            answer = kv.txn([compare], [{"set": {LEDGER_COUNT: count + 1,
                                                 f"{LEDGER_ENTRIES}{count + 1:06d}": txn_id}}])
            txn = LedgerTxn(txn_id, count, OK, answer["succeeded"])
        except (Unavailable, OutcomeUnknown) as error:
            txn = LedgerTxn(txn_id, count, _outcome(error))
        with self.lock:
            self.ledger.append(txn)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.deadline + 30)
            assert not thread.is_alive(), f"{thread.name} did not stop"


class Watchers:
    """``count`` threads following every change from revision ``since`` through ``Client.watch``."""

    def __init__(self, addresses: list[str], since: int, count: int, deadline: float) -> None:
        self.addresses, self.since, self.deadline = addresses, since, deadline
        self.streams: list[list[tuple[Any, ...]]] = [[] for _ in range(count)]
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), name=f"watcher-{i}", daemon=True)
                        for i in range(count)]
        for thread in self.threads:
            thread.start()

    def _loop(self, number: int) -> None:
        addresses = self.addresses[number:] + self.addresses[:number]  # each starts on another node
        seen, since = self.streams[number], self.since
        with Client(addresses, timeout=2.5, deadline=self.deadline) as kv:
            while not self.stop.is_set():
                watch = kv.watch(since=since, timeout=1)
                try:
                    for event in watch:
                        seen.append((event["type"], event["key"], event.get("value"), event["mod_revision"]))
                        if self.stop.is_set():
                            return
                except Unavailable:  # no node answered for the client's deadline: watch again from where it was
                    since = watch.revision if watch.revision is not None else since
                except Compacted as error:
                    self.errors.append(f"watcher {number}: {error}")
                    return

    def finish(self, wake: Client) -> None:
        """Stop, once every watcher has been handed one more change (the watch iterators wait for one)."""
        self.stop.set()
        wake.set("watch/stop", True)
        for thread in self.threads:
            thread.join(self.deadline + 30)
            assert not thread.is_alive(), f"{thread.name} did not stop"


def committed_history(url: str, since: int) -> list[tuple[Any, ...]]:
    """Every event after ``since`` that the node at ``url`` tells, as (type, key, value, mod_revision)."""
    history: list[tuple[Any, ...]] = []
    while True:
        answer = requests.get(f"{url}/watch", params={"since": since, "timeout": 0}, timeout=30)
        assert answer.status_code == 200, answer.text
        events = answer.json()["events"]
        if not events:
            return history
        history.extend((e["type"], e["key"], e.get("value"), e["mod_revision"]) for e in events)
        since = answer.json()["revision"]


def check_streams(streams: list[list[tuple[Any, ...]]], history: list[tuple[Any, ...]]) -> list[str]:
    """What is wrong with each watcher's stream, which must be a prefix of the committed history."""
    problems = []
    for number, stream in enumerate(streams):
        if stream == history[:len(stream)]:
            continue
        at = next((i for i, (seen, told) in enumerate(zip(stream, history, strict=False)) if seen != told),
                  len(history))  # none differs: the stream is longer than the history
        problems.append(f"watcher {number} saw {stream[at] if at < len(stream) else 'more'} at position {at} "
                        f"where the committed history has {history[at] if at < len(history) else 'nothing'}")
    return problems


def check_ledger(ledger: list[LedgerTxn], count: int, entries: dict[str, str]) -> list[str]:
    """What is wrong with the final ledger, given what each transaction's client was told."""
    problems = []
    expected_keys = [f"{LEDGER_ENTRIES}{n:06d}" for n in range(1, count + 1)]
    if sorted(entries) != expected_keys:
        problems.append(f"the entries are not exactly 1..{count}: {sorted(set(entries) ^ set(expected_keys))[:5]}")
    place = {txn_id: key for key, txn_id in entries.items()}
    if len(place) != len(entries):
        problems.append("an id appears twice: a transaction was applied twice")
    for txn in ledger:
        where = place.get(txn.id)
        if txn.outcome == OK and txn.succeeded:
            if where != f"{LEDGER_ENTRIES}{txn.count + 1:06d}":
                problems.append(f"acknowledged transaction {txn.id} (after {txn.count}) is at {where}: lost")
        elif txn.outcome == UNKNOWN:
            if where is not None and where != f"{LEDGER_ENTRIES}{txn.count + 1:06d}":
                problems.append(f"transaction {txn.id} of unknown outcome is at {where}, not after {txn.count}")
        elif where is not None:
            told = "refused" if txn.outcome == OK else "unavailable"
            problems.append(f"transaction {txn.id} was answered {told} but applied at {where}")
    return problems


def run(cluster: JepsenCluster, *, seconds: float, faults: list[str], registers: list[str] | None = None,
        clients: int = 6, quiet: tuple[float, float] = (1.5, 1.5), hold: tuple[float, float] = (3.0, 3.0),
        seed: int | None = None, deadline: float = 5.0) -> CasReport:
    """Load the cluster for ``seconds`` while injecting ``faults``, heal, then check registers and ledger."""
    registers = registers or ["r0", "r1", "r2"]
    seed = random.randrange(1 << 30) if seed is None else seed
    recorder, ledger = Recorder(), []
    addresses = [node.http_addr for node in cluster.nodes]
    with Client(addresses) as kv:
        start = kv.page("", limit=1).revision
    watchers = Watchers(addresses, start, 2, deadline)
    load = CasClients(cluster, recorder, ledger, registers, clients, seed, deadline).start()
    nemesis = Nemesis(cluster, faults, quiet=quiet, hold=hold, seed=seed).start()
    try:
        time.sleep(seconds)  # the length of the run, not a synchronization
    finally:
        nemesis.stop.set()
        load.finish()
        nemesis.finish()
    cluster.wait_healthy()
    final_reads(cluster, recorder, registers)
    converge(cluster, [*registers, LEDGER_COUNT])
    with Client(addresses) as kv:
        count = kv.get(LEDGER_COUNT, 0)
        entries = {entry.key: entry.value for entry in kv.range(LEDGER_ENTRIES)}
        watchers.finish(kv)
    history = committed_history(cluster.nodes[0].url, start)
    told = {(kind, key, value) for kind, key, value, _ in history}
    untold = [f"the history has no event for {key} = {value}" for key, value in entries.items()
              if ("set", key, value) not in told]  # the history itself must miss no committed write
    return CasReport(recorder.ops, ledger, check(recorder.ops), check_ledger(ledger, count, entries), nemesis.log,
                     nemesis.errors, watchers.streams,
                     watchers.errors + untold + check_streams(watchers.streams, history))
