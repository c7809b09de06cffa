"""A linearizability checker for histories of per-key registers (read, write, delete, compare-and-set),
Knossos/Porcupine style.

Each key is an independent register, so each key is checked on its own (P-compositionality). For one key the
search is Wing & Gong's, with Lowe's just-in-time linearization and a cache of (linearized ops, register state)
as in Porcupine: walk the history's call and return events in time order, linearize a pending call when the
register allows it, backtrack when an operation returns without having been linearized.

Outcomes: ``ok`` operations took effect between their invocation and their completion. ``fail`` operations
certainly took no effect and are dropped, as are reads that did not answer. ``unknown`` writes and deletes (504,
timeouts, lost connections after sending) may take effect at any point after their invocation, or never: they
complete at infinity. A compare-and-set writes its value if the register holds its expected value (``ABSENT``:
if the key is absent); an acknowledged one says whether it did, an unknown one may have done either. Writes and
compare-and-sets must write values unique per key, which keeps the search small; so do two
reductions for the unknown operations that may come arbitrarily late (see ``_Search``). ``check`` returns a
``CheckResult`` whose ``explain()`` names, for each bad key, the operation that has no valid place in any order,
the write whose value it returned, and the acknowledged operations that should have hidden that value.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

READ, WRITE, DELETE, CAS = "read", "write", "delete", "cas"
OK, FAIL, UNKNOWN = "ok", "fail", "unknown"


class _Absent:
    """The value of a key that does not exist."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<absent>"

    def __reduce__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()
_UNREAD = ("unread",)  # the register state "some value that no read returned"


@dataclass
class Op:
    """One client operation on one key.

    ``value`` is the value written, or the value read (``ABSENT`` for a missing key); unused for a delete.
    ``existed`` is what an acknowledged delete answered (``{"deleted": true}``), or None if not known.
    ``expected`` is the value a compare-and-set compares with; ``succeeded`` what an acknowledged one answered.
    ``complete`` is the monotonic time the answer came; it is ignored (infinity) for unknown outcomes.
    """

    process: Any
    key: str
    kind: str
    value: Any = None
    invoke: float = 0.0
    complete: float = math.inf
    outcome: str = OK
    existed: bool | None = None
    node: str | None = None
    expected: Any = None
    succeeded: bool | None = None
    id: int = -1

    def describe(self, origin: float = 0.0) -> str:
        end = "?" if self.outcome == UNKNOWN or math.isinf(self.complete) else f"{self.complete - origin:.3f}"
        if self.kind == READ:
            what = f"read -> {self.value!r}"
        elif self.kind == WRITE:
            what = f"write {self.value!r}"
        elif self.kind == CAS:
            what = f"cas {self.expected!r} -> {self.value!r}" + ("" if self.succeeded is None else
                                                                 f": {'done' if self.succeeded else 'refused'}")
        else:
            what = "delete" + ("" if self.existed is None else f" -> deleted={self.existed}")
        where = f" via {self.node}" if self.node else ""
        return (f"#{self.id} process {self.process}{where}: {what} [{self.invoke - origin:.3f}, {end}] "
                f"{self.outcome}")


@dataclass
class KeyResult:
    key: str
    linearizable: bool | None  # None: the search gave up (too slow); nothing proven
    ops: int  # operations checked (after dropping failed ones)
    explanation: str = ""
    culprits: list[Op] = field(default_factory=list)  # the few operations that show the violation


@dataclass
class CheckResult:
    keys: dict[str, KeyResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(result.linearizable for result in self.keys.values())

    @property
    def violations(self) -> list[KeyResult]:
        return [result for result in self.keys.values() if result.linearizable is False]

    @property
    def inconclusive(self) -> list[KeyResult]:
        return [result for result in self.keys.values() if result.linearizable is None]

    def explain(self) -> str:
        if self.ok:
            ops = sum(result.ops for result in self.keys.values())
            return f"linearizable: {len(self.keys)} keys, {ops} operations checked in {self.seconds:.2f}s"
        parts = [result.explanation for result in self.violations + self.inconclusive]
        return "NOT linearizable:\n" + "\n\n".join(parts)

    def __str__(self) -> str:
        return self.explain()


def check(history: Iterable[Op], *, initial: Any = ABSENT, max_seconds: float = 60.0) -> CheckResult:
    """Check every key of ``history`` independently; each key starts at ``initial`` (absent by default)."""
    started = time.monotonic()
    by_key: dict[str, list[Op]] = defaultdict(list)
    for number, op in enumerate(history):
        if op.id < 0:
            op.id = number
        by_key[op.key].append(op)
    results = {key: check_key(key, ops, initial=initial, max_seconds=max_seconds) for key, ops in by_key.items()}
    return CheckResult(results, time.monotonic() - started)


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a JSON value (the register state is a cache key)."""
    if value is ABSENT or isinstance(value, (str, int, float, bool, type(None))):
        return value
    return ("json", json.dumps(value, sort_keys=True))


def _prepare(ops: list[Op]) -> tuple[list[Op], dict[Hashable, Op], list[Op]]:
    """Drop what cannot matter; returns (ops to check, write of each value, reads of unwritten values)."""
    writes: dict[Hashable, Op] = {}
    for op in ops:
        if _may_write(op):
            frozen = _freeze(op.value)
            if frozen in writes:
                raise ValueError(f"key {op.key!r}: value {op.value!r} is written twice; the checker needs unique "
                                 "values per key")
            writes[frozen] = op
    kept, impossible = [], []
    for op in ops:
        if op.outcome == FAIL or (op.kind == READ and op.outcome != OK):
            continue
        if op.kind == READ and op.value is not ABSENT and _freeze(op.value) not in writes:
            impossible.append(op)
        kept.append(op)
    return kept, writes, impossible


def _may_write(op: Op) -> bool:
    """A write or a compare-and-set that may have written its value."""
    return op.outcome != FAIL and (op.kind == WRITE or (op.kind == CAS and op.succeeded is not False))


def check_key(key: str, ops: list[Op], *, initial: Any = ABSENT, max_seconds: float = 60.0) -> KeyResult:
    ops, writes, impossible = _prepare(ops)
    origin = min((op.invoke for op in ops), default=0.0)
    if impossible:
        op = impossible[0]
        return KeyResult(key, False, len(ops),
                         f"key {key!r}: a read returned a value that no operation wrote (or only one that "
                         f"failed, with no effect):\n  {op.describe(origin)}",
                         [op])
    for op in ops:  # a read that finished before the write of its value began: report it plainly
        if op.kind == READ and op.value is not ABSENT:
            write = writes[_freeze(op.value)]
            if op.complete < write.invoke:
                return KeyResult(key, False, len(ops),
                                 f"key {key!r}: a read returned a value before anyone began writing it:\n"
                                 f"  {op.describe(origin)}\n  {write.describe(origin)}", [op, write])
    search = _Search(ops, _freeze(initial), max_seconds)
    outcome = search.run()
    if outcome is True:
        return KeyResult(key, True, len(ops))
    if outcome is None:
        return KeyResult(key, None, len(ops),
                         f"key {key!r}: INCONCLUSIVE, the search gave up after {max_seconds}s "
                         f"({search.steps} steps, {len(ops)} operations)")
    culprits, text = _explain(key, ops, writes, search, origin)
    return KeyResult(key, False, len(ops), text, culprits)


class _Search:
    """Porcupine's algorithm over a doubly linked list of call/return events of one key.

    Two kinds of operations are interchangeable and never late, because they may take effect at any time after
    they were sent: deletes of unknown outcome, and writes of unknown outcome whose value no read returned. They
    are not events of the list but tokens. A linearization needs one only right before an operation that it
    enables (an absent read or a ``deleted=false`` delete after a value; a ``deleted=true`` delete while the key
    is absent): anywhere else it can be left out or moved there. And of one kind, the earliest sent is as good
    as any. So an operation that the current value forbids may take the oldest token, sent before now, that
    makes it allowed. The cache keeps, per (linearized operations, value), the Pareto-smallest pairs of tokens
    used: a configuration that used more tokens, all else equal, can do nothing more. On a key with
    compare-and-sets there are no tokens: every operation is an event.
    """

    def __init__(self, ops: list[Op], initial: Hashable, max_seconds: float) -> None:
        self.ops = ops
        self.initial = initial
        self.max_seconds = max_seconds
        self.steps = 0
        # Deepest dead end: (number linearized, op that returned unlinearized, state, last linearized ops)
        self.best: tuple[int, Op | None, Hashable, list[Op]] = (-1, None, initial, [])

    def run(self) -> bool | None:
        ops = self.ops
        kinds = [op.kind for op in ops]
        # Values no read returned (and no compare-and-set expected) are all alike to the register: one state
        # stands for all of them.
        read_values = {_freeze(op.value) for op in ops if op.kind == READ}
        read_values |= {_freeze(op.expected) for op in ops if op.kind == CAS}
        values = [_freeze(op.value) if op.kind not in (WRITE, CAS) or _freeze(op.value) in read_values else _UNREAD
                  for op in ops]
        expected = [_freeze(op.expected) if op.kind == CAS else None for op in ops]
        succeeded = [op.succeeded for op in ops]
        existed = [op.existed for op in ops]
        infinite = [op.outcome == UNKNOWN for op in ops]
        # Tokens: invocation times of unknown writes of unread values (0) and of unknown deletes (1), in order.
        # Not with compare-and-sets: a token could enable one in two ways (an unread value, or absent), which
        # this search does not branch on; their unknown writes and deletes stay events, as the others do.
        tokens = CAS not in kinds
        token_times: list[list[float]] = [[], []]
        events = []
        for index, op in enumerate(ops):
            if tokens and infinite[index] and (kinds[index] == DELETE or values[index] is _UNREAD):
                token_times[kinds[index] == DELETE].append(op.invoke)
                continue
            end = math.inf if infinite[index] else op.complete
            events.append((op.invoke, 0, index))  # a call sorts before a return at the same instant: concurrent
            events.append((end, 1, index))
        for times in token_times:
            times.sort()
        events.sort()
        if not events:
            return True
        # Nodes 1..len(events) are events, node 0 is the head. For a call node, match[] is its return node.
        size = len(events) + 1
        nxt = [0] * size
        prv = [0] * size
        is_call = [False] * size
        op_of = [0] * size
        when = [0.0] * size
        match = [0] * size
        call_node = [0] * len(ops)
        for position, (moment, kind, index) in enumerate(events, start=1):
            is_call[position] = kind == 0
            op_of[position] = index
            when[position] = moment
            if kind == 0:
                call_node[index] = position
            else:
                match[call_node[index]] = position
        for position in range(size):
            nxt[position] = position + 1 if position + 1 < size else -1
            prv[position] = position - 1

        def lift(node: int) -> None:
            ret = match[node]
            nxt[prv[node]] = nxt[node]
            if nxt[node] != -1:
                prv[nxt[node]] = prv[node]
            nxt[prv[ret]] = nxt[ret]
            if nxt[ret] != -1:
                prv[nxt[ret]] = prv[ret]

        def unlift(node: int) -> None:
            ret = match[node]
            nxt[prv[ret]] = ret
            if nxt[ret] != -1:
                prv[nxt[ret]] = ret
            nxt[prv[node]] = node
            if nxt[node] != -1:
                prv[nxt[node]] = node

        def token_available(token: int, node: int) -> bool:
            """Was the next unused token of this kind sent before the first pending return after ``node``?"""
            if used[token] >= len(token_times[token]):
                return False
            while node != -1 and is_call[node]:
                node = nxt[node]
            return node == -1 or token_times[token][used[token]] <= when[node]  # a tie counts as concurrent

        deadline = time.monotonic() + self.max_seconds
        state = self.initial
        linearized = 0
        used = [0, 0]
        seen: dict[tuple[int, Hashable], list[tuple[int, int]]] = {}
        stack: list[tuple[int, Hashable, int]] = []  # (call node, state before, token used or -1)
        entry = nxt[0]
        steps = 0
        while nxt[0] != -1:
            steps += 1
            if steps & 0xFFF == 0 and time.monotonic() > deadline:
                self.steps = steps
                return None
            index = op_of[entry]
            if is_call[entry]:
                kind = kinds[index]
                token = -1
                if kind == READ:
                    new_state = state
                    allowed = values[index] == state
                    if not allowed and values[index] is ABSENT and token_available(1, entry):
                        allowed, token, new_state = True, 1, ABSENT
                elif kind == WRITE:
                    new_state, allowed = values[index], True
                elif kind == CAS:
                    holds = state == expected[index]
                    if succeeded[index] is None:  # unknown: it wrote if and only if its compare held
                        new_state, allowed = (values[index] if holds else state), True
                    else:
                        new_state, allowed = (values[index] if holds else state), holds == succeeded[index]
                else:
                    new_state, allowed = ABSENT, True
                    if existed[index] is not None and existed[index] != (state is not ABSENT):
                        allowed = False
                        wanted = 0 if existed[index] else 1
                        if token_available(wanted, entry):
                            allowed, token = True, wanted
                if allowed:
                    bits = linearized | (1 << index)
                    writes_used, deletes_used = used[0] + (token == 0), used[1] + (token == 1)
                    frontier = seen.setdefault((bits, new_state), [])
                    if not any(w <= writes_used and d <= deletes_used for w, d in frontier):
                        frontier[:] = [(w, d) for w, d in frontier if not (writes_used <= w and deletes_used <= d)]
                        frontier.append((writes_used, deletes_used))
                        stack.append((entry, state, token))
                        state, linearized = new_state, bits
                        if token >= 0:
                            used[token] += 1
                        lift(entry)
                        entry = nxt[0]
                        continue
                entry = nxt[entry]
            else:
                if infinite[index]:
                    # Every op with a finite return is linearized; unknown ops left over never took effect.
                    self.steps = steps
                    return True
                if len(stack) > self.best[0]:
                    tail = [ops[op_of[node]] for node, _, _ in stack[-6:]]
                    self.best = (len(stack), ops[index], state, tail)
                if not stack:
                    self.steps = steps
                    return False
                entry, state, token = stack.pop()
                linearized &= ~(1 << op_of[entry])
                if token >= 0:
                    used[token] -= 1
                unlift(entry)
                entry = nxt[entry]
        self.steps = steps
        return True


def _explain(key: str, ops: list[Op], writes: dict[Hashable, Op], search: _Search,
             origin: float) -> tuple[list[Op], str]:
    depth, stuck, state, tail = search.best
    assert stuck is not None
    held = "a value that no read returned" if state is _UNREAD else repr(state)
    lines = [f"key {key!r}: no linearization of its {len(ops)} operations exists. The longest linearizable prefix "
             f"has {depth} operations; after it the register holds {held}, and this operation returned "
             "without any valid place in the order:",
             f"  {stuck.describe(origin)}"]
    culprits = [stuck]

    def certainly_before(first: Op, second: Op) -> bool:
        return first.outcome == OK and first.complete < second.invoke

    if stuck.kind == READ:
        source = writes.get(_freeze(stuck.value)) if stuck.value is not ABSENT else None
        if source is not None:
            lines.append("It read the value of:")
            lines.append(f"  {source.describe(origin)}")
            culprits.append(source)
            overwrites = [op for op in ops if op.kind in (WRITE, DELETE, CAS) and op is not source
                          and certainly_before(source, op) and certainly_before(op, stuck)]
            if overwrites:
                lines.append("but these acknowledged operations came after that write and before the read began:")
        else:
            overwrites = [op for op in ops if _may_write(op) and certainly_before(op, stuck)]
            if overwrites:
                lines.append("These acknowledged writes completed before the read began:")
        for op in overwrites[-3:]:
            lines.append(f"  {op.describe(origin)}")
            culprits.append(op)
    shown = {id(op) for op in culprits}
    concurrent = sorted((op for op in ops if id(op) not in shown and op.kind != READ and op.invoke < stuck.complete
                         and (op.outcome == UNKNOWN or op.complete > stuck.invoke)), key=lambda op: op.invoke)
    if concurrent:
        lines.append(f"Writes and deletes concurrent with it ({len(concurrent)}, the 5 sent last):")
        lines.extend(f"  {op.describe(origin)}" for op in concurrent[-5:])
    if tail:
        lines.append("The end of the longest linearizable prefix:")
        lines.extend(f"  {op.describe(origin)}" for op in tail)
    return culprits, "\n".join(lines)
