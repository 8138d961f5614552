"""Core basics: time, entropy, backoff, statistics."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_core import Backoff, BackoffConfig, DropReason, SeededEntropy, Stats, millis, secs
from gateway_core.clock import Instant, fmt
from gateway_core.entropy import Entropy, randbelow_from_bytes


def test_durations_are_integer_nanoseconds() -> None:
    assert secs(1) == 1_000_000_000
    assert millis(1500) == secs(1) + millis(500)
    assert isinstance(secs(3), int)
    assert fmt(secs(12) + millis(345)) == "12.345s"
    assert fmt(-millis(5)) == "-0.005s"


def test_seeded_entropy_is_reproducible_and_seed_dependent() -> None:
    a, b, c = SeededEntropy(7), SeededEntropy(7), SeededEntropy(8)
    assert a.random_bytes(100) == b.random_bytes(100)
    assert SeededEntropy(7).random_bytes(100) != c.random_bytes(100)
    assert isinstance(a, Entropy)


def test_seeded_entropy_stream_is_independent_of_read_sizes() -> None:
    one = SeededEntropy(b"seed").random_bytes(10_000)
    e = SeededEntropy(b"seed")
    parts = b"".join(e.random_bytes(n) for n in (1, 4095, 1, 3, 5000, 900))
    assert parts == one


def test_forks_are_independent_and_deterministic() -> None:
    base = SeededEntropy(1)
    x = base.fork("wireguard").random_bytes(32)
    y = base.fork("ice").random_bytes(32)
    assert x != y
    assert SeededEntropy(1).fork("wireguard").random_bytes(32) == x
    # Reading from the parent does not shift a fork's stream.
    parent = SeededEntropy(1)
    parent.random_bytes(500)
    assert parent.fork("wireguard").random_bytes(32) == x


@given(st.integers(min_value=1, max_value=2**70), st.integers(min_value=0, max_value=2**32))
def test_randbelow_in_range(n: int, seed: int) -> None:
    v = SeededEntropy(seed).randbelow(n)
    assert 0 <= v < n


def test_randbelow_is_roughly_uniform() -> None:
    e = SeededEntropy(3)
    counts = Counter(e.randbelow(6) for _ in range(6000))
    assert set(counts) == set(range(6))
    assert all(800 < c < 1200 for c in counts.values()), counts


def test_randbelow_rejects_nonpositive() -> None:
    with pytest.raises(ValueError):
        randbelow_from_bytes(SeededEntropy(0), 0)


def test_backoff_grows_with_jitter_within_bounds() -> None:
    cfg = BackoffConfig(
        initial=secs(1), multiplier=(2, 1), randomization=(1, 2), max_interval=secs(8), max_elapsed=None
    )
    b = Backoff(cfg, SeededEntropy(5))
    bases = [secs(1), secs(2), secs(4), secs(8), secs(8), secs(8)]
    for base in bases:
        d = b.next_delay(Instant(0))
        assert d is not None
        assert base // 2 <= d <= base + base // 2
    assert b.attempt == len(bases)
    b.reset()
    d = b.next_delay(Instant(0))
    assert d is not None and d <= secs(1) + secs(1) // 2


def test_backoff_first_immediate_and_gives_up_after_window() -> None:
    cfg = BackoffConfig(first_immediate=True, max_elapsed=secs(60))
    b = Backoff(cfg, SeededEntropy(9))
    now = Instant(0)
    assert b.next_delay(now) == 0
    delays = []
    while True:
        d = b.next_delay(now)
        if d is None:
            break
        delays.append(d)
        now = Instant(now + d)
        assert len(delays) < 1000, "backoff never gave up"
    assert now <= secs(60)
    assert delays and all(d > 0 for d in delays)


def test_backoff_same_seed_same_delays() -> None:
    def run(seed: int) -> list[int | None]:
        b = Backoff(BackoffConfig(max_elapsed=None), SeededEntropy(seed))
        return [b.next_delay(Instant(0)) for _ in range(20)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_stats_counts_and_snapshot() -> None:
    s = Stats()
    s.incr("rx")
    s.incr("rx", 2)
    s.drop(DropReason.MALFORMED_IP)
    s.drop(DropReason.MALFORMED_IP)
    assert s.total_drops == 2
    assert s.snapshot() == {"drop.malformed_ip": 2, "rx": 3}
    other = Stats()
    other.incr("tx", 4)
    other.drop(DropReason.WG_REPLAY)
    total = Stats.combine({"a": s, "b": other})
    assert total.snapshot() == {"a.rx": 3, "b.tx": 4, "drop.malformed_ip": 2, "drop.wg_replay": 1}
