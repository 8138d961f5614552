"""Property: whatever the network does to WireGuard messages (deliver, drop, duplicate, reorder) and
however time passes, no plaintext is ever delivered twice, nothing raises, and the timer contract holds."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_core.clock import millis

from .wireguard_link import Link, check_contract, ipv4_udp

DELIVERED: list[int] = []
"""Plaintexts delivered per example (lets a reader check the property is not vacuous)."""

# (kind, from_a, index, milliseconds); sends and deliveries dominate so that most examples carry data.
op = st.tuples(
    st.sampled_from(["send"] * 3 + ["deliver"] * 5 + ["dup", "drop", "advance"]),
    st.booleans(),
    st.integers(0, 63),
    st.one_of(st.integers(0, 2_000), st.integers(0, 200_000)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 3), connected=st.booleans(), ops=st.lists(op, min_size=5, max_size=80))
def test_network_chaos_never_duplicates_plaintext(
    seed: int, connected: bool, ops: list[tuple[object, ...]]
) -> None:
    link = Link.make(seed=seed)
    if connected:  # start from an established tunnel half of the time
        link.send_a(ipv4_udp(b"0"))
        link.received_b.clear()
    # Both directions are held in flight lists; the test decides what happens to each datagram.
    flight: dict[bool, list[bytes]] = {True: [], False: []}
    seen: dict[bool, list[bytes]] = {True: [], False: []}
    sent: dict[bool, set[bytes]] = {True: set(), False: set()}
    counter = 0

    def collect() -> None:
        for from_a, peer in ((True, link.a), (False, link.b)):
            while (d := peer.poll_transmit()) is not None:
                flight[from_a].append(d)

    def deliver(from_a: bool, d: bytes) -> None:
        dst = link.b if from_a else link.a
        pt = dst.decapsulate(link.now, d)
        if pt is not None:
            seen[from_a].append(pt)
        collect()

    for o in ops:
        kind = o[0]
        if kind == "send":
            from_a = bool(o[1])
            counter += 1
            pkt = ipv4_udp(b"%d" % counter)
            sent[from_a].add(pkt)
            out = (link.a if from_a else link.b).encapsulate(link.now, pkt)
            if out is not None:
                flight[from_a].append(out)
            collect()
        elif kind == "advance":
            assert isinstance(o[3], int)
            link.now = type(link.now)(link.now + millis(o[3]))
            for p in (link.a, link.b):
                p.handle_timeout(link.now)
                check_contract(p, link.now)
            collect()
        else:
            from_a = bool(o[1])
            if not flight[from_a]:
                from_a = not from_a
            q = flight[from_a]
            if not q:
                continue
            assert isinstance(o[2], int)
            i = o[2] % len(q)
            if kind == "deliver":
                deliver(from_a, q.pop(i))
            elif kind == "dup":
                deliver(from_a, q[i])
            else:
                q.pop(i)

    DELIVERED.append(len(seen[True]) + len(seen[False]))
    for from_a in (True, False):
        assert len(seen[from_a]) == len(set(seen[from_a])), "a plaintext was delivered twice"
        assert set(seen[from_a]) <= sent[from_a]


def test_property_is_not_vacuous() -> None:
    """Run after the property: a good share of examples delivered plaintexts."""
    if not DELIVERED:
        test_network_chaos_never_duplicates_plaintext()
    assert sum(1 for n in DELIVERED if n > 0) >= len(DELIVERED) // 5


def test_long_seeded_chaos_run() -> None:
    """A longer deterministic run than hypothesis makes: many rekeys, loss, duplicates and reordering."""
    import random

    rng = random.Random(1234)
    ops: list[tuple[object, ...]] = []
    for _ in range(4000):
        r = rng.random()
        if r < 0.3:
            ops.append(("send", rng.random() < 0.6, 0, 0))
        elif r < 0.75:
            ops.append(("deliver", rng.random() < 0.5, rng.randrange(64), 0))
        elif r < 0.82:
            ops.append(("dup", rng.random() < 0.5, rng.randrange(64), 0))
        elif r < 0.88:
            ops.append(("drop", rng.random() < 0.5, rng.randrange(64), 0))
        else:
            ops.append(("advance", False, 0, rng.randrange(0, 3_000)))
    DELIVERED.clear()
    test_network_chaos_never_duplicates_plaintext.hypothesis.inner_test(seed=1, connected=True, ops=ops)  # type: ignore[attr-defined]
    assert DELIVERED[0] > 500
