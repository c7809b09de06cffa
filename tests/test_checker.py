"""The linearizability checker, on hand-built histories whose answer is known."""

import itertools
import random

import pytest
from linearizability import ABSENT, CAS, DELETE, FAIL, OK, READ, UNKNOWN, WRITE, Op, check


def w(process, value, invoke, complete, outcome=OK, key="x"):
    return Op(process, key, WRITE, value, invoke, complete, outcome)


def r(process, value, invoke, complete, outcome=OK, key="x"):
    return Op(process, key, READ, value, invoke, complete, outcome)


def d(process, invoke, complete, outcome=OK, existed=None, key="x"):
    return Op(process, key, DELETE, None, invoke, complete, outcome, existed=existed)


def cas(process, expected, value, invoke, complete, outcome=OK, succeeded=None, key="x"):
    succeeded = (True if succeeded is None else succeeded) if outcome == OK else None
    return Op(process, key, CAS, value, invoke, complete, outcome, expected=expected, succeeded=succeeded)


def assert_linearizable(history):
    result = check(history)
    assert result.ok, result.explain()


def assert_violation(history, key="x"):
    result = check(history)
    assert not result.ok
    assert [v.key for v in result.violations] == [key], result.explain()
    assert result.violations[0].culprits
    return result


# ----- linearizable -----

def test_an_empty_history_and_sequential_ops_are_linearizable():
    assert_linearizable([])
    assert_linearizable([r(0, ABSENT, 0, 1), w(0, 1, 2, 3), r(0, 1, 4, 5), w(0, 2, 6, 7), r(1, 2, 8, 9)])


@pytest.mark.parametrize("last", [1, 2])
def test_concurrent_writes_may_take_effect_in_either_order(last):
    first = 3 - last
    assert_linearizable([w(0, 1, 0, 10), w(1, 2, 1, 9), r(2, first, 2, 3), r(2, last, 11, 12)])


def test_a_read_concurrent_with_a_write_sees_either_value():
    assert_linearizable([w(0, 1, 0, 1), w(0, 2, 2, 6), r(1, 1, 3, 4), r(2, 2, 3, 5), r(1, 2, 7, 8)])


def test_an_unknown_write_may_take_effect_long_after_it_was_sent():
    # The write got a 504 at t=2 but was applied at about t=20: reads before see the old value, after the new one.
    assert_linearizable([w(0, 1, 0, 1), w(1, 2, 1, 2, UNKNOWN), r(2, 1, 10, 11), r(2, 1, 15, 16), r(2, 2, 20, 21)])


def test_an_unknown_write_may_never_take_effect():
    assert_linearizable([w(0, 1, 0, 1), w(1, 2, 1, 2, UNKNOWN), r(2, 1, 10, 11), r(2, 1, 100, 101)])


def test_failed_writes_and_failed_reads_are_ignored():
    assert_linearizable([w(0, 1, 0, 1), w(1, 2, 2, 3, FAIL), r(2, 1, 4, 5), r(2, 99, 4, 5, FAIL)])


def test_a_delete_then_a_read_sees_the_key_absent():
    assert_linearizable([w(0, 1, 0, 1), d(1, 2, 3, existed=True), r(2, ABSENT, 4, 5), d(1, 6, 7, existed=False),
                         w(0, 2, 8, 9), r(2, 2, 10, 11)])


def test_an_unknown_delete_may_explain_an_absent_read():
    assert_linearizable([w(0, 1, 0, 1), d(1, 2, 3, UNKNOWN), r(2, 1, 4, 5), r(2, ABSENT, 6, 7)])


def test_keys_are_independent():
    assert_linearizable([w(0, 1, 0, 1, key="a"), w(0, 1, 0, 1, key="b"), r(1, 1, 2, 3, key="a"),
                         r(1, ABSENT, 0.5, 0.6, key="b")])


def test_a_random_sequential_history_with_many_unknowns_is_linearizable_and_fast():
    rng = random.Random(7)
    history, value, state, now = [], 0, ABSENT, 0.0
    for step in range(3000):
        process, roll = step % 8, rng.random()
        if roll < 0.45:
            history.append(r(process, state, now, now + 0.5))
        elif roll < 0.85:
            value += 1
            outcome = UNKNOWN if rng.random() < 0.1 else OK
            applied = outcome == OK or rng.random() < 0.5
            state = value if applied else state
            history.append(w(process, value, now, now + 0.5, outcome))
        else:
            outcome = UNKNOWN if rng.random() < 0.1 else OK
            applied = outcome == OK or rng.random() < 0.5
            history.append(d(process, now, now + 0.5, outcome, existed=state is not ABSENT if outcome == OK else None))
            state = ABSENT if applied else state
        now += 1.0
    result = check(history, max_seconds=20)
    assert result.ok, result.explain()
    assert result.seconds < 10


def test_compare_and_set_writes_only_when_the_register_holds_the_expected_value():
    assert_linearizable([cas(0, ABSENT, 1, 0, 1), cas(1, ABSENT, 2, 2, 3, succeeded=False), r(2, 1, 4, 5),
                         cas(0, 1, 3, 6, 7), cas(1, 1, 4, 8, 9, succeeded=False), r(2, 3, 10, 11)])


def test_of_two_concurrent_compare_and_sets_of_one_value_one_wins():
    assert_linearizable([w(0, 1, 0, 1), cas(1, 1, 2, 2, 10), cas(2, 1, 3, 2, 10, succeeded=False), r(3, 2, 11, 12)])


def test_an_unknown_compare_and_set_may_or_may_not_have_written():
    assert_linearizable([w(0, 1, 0, 1), cas(1, 1, 2, 2, 3, UNKNOWN), r(2, 1, 4, 5), r(2, 2, 6, 7)])
    assert_linearizable([w(0, 1, 0, 1), cas(1, 1, 2, 2, 3, UNKNOWN), r(2, 1, 4, 5), r(2, 1, 60, 61)])


# ----- not linearizable -----

def test_a_stale_read_after_a_later_write_completed_is_flagged():
    result = assert_violation([w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, 1, 4, 5)])
    assert "read -> 1" in result.explain() and "write 2" in result.explain()


def test_a_lost_acknowledged_write_is_flagged():
    # Acknowledged write of 2, then a read long after sees the older value 1 again.
    assert_violation([w(0, 1, 0, 1), w(1, 2, 2, 3), r(2, 2, 4, 5), r(2, 1, 60, 61)])


def test_a_read_of_a_value_never_written_is_flagged():
    result = assert_violation([w(0, 1, 0, 1), r(1, 42, 2, 3)])
    assert "no operation wrote" in result.explain()


def test_a_read_of_a_value_written_only_by_a_failed_write_is_flagged():
    assert_violation([w(0, 1, 0, 1, FAIL), r(1, 1, 2, 3)])


def test_a_read_after_a_completed_delete_with_no_rewrite_is_flagged():
    assert_violation([w(0, 1, 0, 1), d(1, 2, 3), r(2, 1, 4, 5)])


def test_a_read_from_the_future_is_flagged():
    result = assert_violation([r(1, 1, 0, 1), w(0, 1, 2, 3)])
    assert "before anyone began writing it" in result.explain()


def test_a_delete_answer_that_contradicts_the_state_is_flagged():
    assert_violation([w(0, 1, 0, 1), d(1, 2, 3, existed=False)])


def test_an_absent_read_between_acknowledged_writes_is_flagged():
    assert_violation([w(0, 1, 0, 1), r(1, ABSENT, 2, 3), w(0, 2, 4, 5)])


def test_values_that_flip_back_are_flagged():
    # Two concurrent writes may land in either order, but readers cannot see both orders.
    assert_violation([w(0, 1, 0, 10), w(1, 2, 0, 10), r(2, 1, 1, 2), r(2, 2, 3, 4), r(3, 1, 5, 6)])


def test_only_the_bad_key_is_reported():
    result = assert_violation([w(0, 1, 0, 1, key="good"), r(1, 1, 2, 3, key="good"),
                               w(0, 1, 0, 1, key="bad"), w(0, 2, 2, 3, key="bad"), r(1, 1, 4, 5, key="bad")],
                              key="bad")
    assert result.keys["good"].linearizable is True


def test_a_stale_read_is_found_among_many_concurrent_operations():
    rng = random.Random(3)
    history, now = [], 0.0
    for value in range(1, 400):
        history.append(w(value % 6, value, now, now + rng.uniform(0.5, 3)))
        history.append(r(value % 6 + 6, value, now + 3.5, now + 4))
        now += 1.0
    history.append(r(99, 5, now + 10, now + 11))  # long after 399 was acknowledged and read
    result = assert_violation(history)
    assert result.seconds < 10


def test_a_violation_after_a_long_concurrent_history_with_many_unknowns_is_found_fast():
    # Operations overlap about five deep and a third of the writes and deletes have unknown outcomes: without
    # its reductions the search would try every subset of the unknown ones before giving its verdict.
    rng = random.Random(5)
    history, value, state, now = [], 0, ABSENT, 0.0
    for step in range(1500):
        roll, unknown = rng.random(), rng.random() < 0.3
        outcome = UNKNOWN if unknown else OK
        applied = not unknown or rng.random() < 0.5
        if roll < 0.4:
            history.append(r(step % 8, state, now, now + 0.3))
        elif roll < 0.8:
            value += 1
            history.append(w(step % 8, value, now, now + 0.3, outcome))
            state = value if applied else state
        else:
            history.append(d(step % 8, now, now + 0.3, outcome))
            state = ABSENT if applied else state
        now += 0.1
    assert check(history).ok
    first = next(op for op in history if op.kind == WRITE and op.outcome == OK)
    history.append(r(99, first.value, now + 10, now + 11))
    result = assert_violation(history)
    assert result.seconds < 10


def test_two_compare_and_sets_of_one_value_that_both_succeed_are_flagged():
    assert_violation([w(0, 1, 0, 1), cas(1, 1, 2, 2, 10), cas(2, 1, 3, 2, 10)])


def test_a_compare_and_set_that_wrote_but_answered_refused_is_flagged():
    # What a retry without its idempotency key answers when the first attempt was applied: refused, yet written.
    result = assert_violation([w(0, 1, 0, 1), cas(1, 1, 2, 2, 3, succeeded=False), r(2, 2, 4, 5)])
    assert "no operation wrote" in result.explain()


def test_a_compare_and_set_refused_while_the_register_held_its_value_is_flagged():
    assert_violation([w(0, 1, 0, 1), cas(1, 1, 2, 2, 3, succeeded=False), r(2, 1, 4, 5)])


def test_a_compare_and_set_that_succeeded_against_another_value_is_flagged():
    assert_violation([w(0, 1, 0, 1), w(0, 2, 2, 3), cas(1, 1, 3, 4, 5), r(2, 3, 6, 7)])


def test_writing_a_value_twice_is_refused():
    with pytest.raises(ValueError, match="unique"):
        check([w(0, 1, 0, 1), w(1, 1, 2, 3)])


# ----- against brute force -----

def brute_force_linearizable(history):
    """Try every order of every admissible subset: the definition, for tiny histories."""
    ops = [op for op in history if op.outcome != FAIL and not (op.kind == READ and op.outcome != OK)]
    certain = [op for op in ops if op.outcome == OK]
    maybe = [op for op in ops if op.outcome == UNKNOWN]

    def end(op):
        return float("inf") if op.outcome == UNKNOWN else op.complete

    def legal(order):
        state = ABSENT
        for position, op in enumerate(order):
            if any(end(later) < op.invoke for later in order[position + 1:]):
                return False  # a later op in the order finished before this one began
            if op.kind == READ and op.value != state:
                return False
            if op.kind == DELETE and op.existed is not None and op.existed != (state is not ABSENT):
                return False
            if op.kind == CAS:
                holds = state == op.expected
                if op.outcome == OK and holds != op.succeeded:
                    return False
                state = op.value if holds else state
            state = op.value if op.kind == WRITE else ABSENT if op.kind == DELETE else state
        return True

    for size in range(len(maybe) + 1):
        for chosen in itertools.combinations(maybe, size):
            if any(legal(order) for order in itertools.permutations(certain + list(chosen))):
                return True
    return False


def random_tiny_history(rng, size):
    history, written = [], []
    for number in range(size):
        invoke = rng.randrange(12)
        complete = invoke + rng.randrange(1, 6)
        roll = rng.random()
        outcome = rng.choice([OK, OK, OK, UNKNOWN, FAIL])
        if roll < 0.3:
            written.append(number + 1)
            history.append(w(number % 3, number + 1, invoke, complete, outcome))
        elif roll < 0.45:
            expected = rng.choice([*written, ABSENT]) if written else ABSENT
            written.append(number + 1)
            history.append(cas(number % 3, expected, number + 1, invoke, complete, outcome, rng.choice([True, False])))
        elif roll < 0.6:
            existed = rng.choice([None, True, False]) if outcome == OK else None
            history.append(d(number % 3, invoke, complete, outcome, existed))
        else:
            value = rng.choice([*written, ABSENT, ABSENT]) if written else ABSENT
            history.append(r(number % 3, value, invoke, complete, rng.choice([OK, OK, OK, FAIL])))
    return history


def test_the_checker_agrees_with_brute_force_on_random_tiny_histories():
    rng = random.Random(11)
    verdicts = set()
    for _ in range(2500):
        history = random_tiny_history(rng, rng.randrange(2, 7))
        expected = brute_force_linearizable(history)
        assert check(history).ok == expected, "\n".join(op.describe() for op in history)
        verdicts.add(expected)
    assert verdicts == {True, False}
