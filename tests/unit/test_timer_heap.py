"""``gateway_core.contract``: the timer helpers every component uses (decision 0140)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.clock import Instant
from gateway_core.contract import Deadline, TimerHeap, advance, earliest
from gateway_core.errors import UsageError


def test_earliest_breaks_ties_by_reason_whatever_the_order() -> None:
    a, b, c = Deadline(Instant(5), "b"), Deadline(Instant(5), "a"), Deadline(Instant(7), "0")
    assert earliest(a, None, b, c) == b == earliest(c, b, None, a)
    assert earliest() is None and earliest(None, None) is None


def test_advance_raises_when_time_goes_back() -> None:
    assert advance(Instant(5), Instant(5)) == 5
    assert advance(Instant(5), Instant(9)) == 9
    with pytest.raises(UsageError, match="time went backwards"):
        advance(Instant(5), Instant(4))


def test_schedule_only_lowers_and_pop_due_hands_out_due_keys_once() -> None:
    h: TimerHeap[str] = TimerHeap()
    h.schedule("a", 10)
    h.schedule("a", 20)  # later: the earlier kept time stays (it is rechecked when it comes)
    assert h.kept("a") == 10
    h.schedule("a", 5)
    h.schedule("b", 7)
    h.schedule("c", None)  # nothing to keep
    assert h.peek() == 5 and len(h) == 2 and "c" not in h
    assert h.pop_due(6) == ["a"] and h.pop_due(6) == []
    h.discard("b")
    assert h.peek() is None and h.pop_due(100) == []


# (op, key, time): 0 schedule, 1 discard, 2 pop_due, 3 set the child's real deadline (what it would say),
# 4 set the kept time exactly
ops = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 7), st.integers(0, 50)), max_size=80)


@settings(max_examples=300)
@given(ops)
def test_against_a_model(seq: list[tuple[int, int, int]]) -> None:
    """Against a plain dict: pop_due returns exactly the keys kept at or before ``now``; earliest_exact
    equals the minimum of the real deadlines whenever every kept time is a lower bound of them."""
    h: TimerHeap[int] = TimerHeap()
    kept: dict[int, int] = {}
    real: dict[int, int] = {}
    for op, key, t in seq:
        if op == 0:
            h.schedule(key, t)
            kept[key] = min(kept.get(key, t), t)
        elif op == 1:
            h.discard(key)
            kept.pop(key, None)
        elif op == 2:
            due = h.pop_due(t)
            want = sorted((at, k) for k, at in kept.items() if at <= t)
            assert sorted(due) == sorted(k for _, k in want)
            for k in due:
                del kept[k]
        elif op == 3:
            real[key] = t
        else:
            h.set(key, t)
            kept[key] = t
        assert {k: h.kept(k) for k in kept} == kept and len(h) == len(kept)
        assert h.peek() == (min(kept.values()) if kept else None)
        # earliest_exact over the children whose kept time is a lower bound of their real deadline
        sound = {k: real[k] for k in kept if k in real and kept[k] <= real[k]}

        def true(k: int, sound: dict[int, int] = sound) -> Deadline | None:
            return Deadline(Instant(sound[k]), f"k{k}") if k in sound else None

        brute = earliest(*(true(k) for k in kept))
        assert h.earliest_exact(true) == brute
