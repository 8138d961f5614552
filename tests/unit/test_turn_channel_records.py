"""TURN channel records are forgotten once reusable (gateway_core/turn/channels.py): an allocation holds
the records of the last 15 minutes' binds and of channels in use, not one per peer address ever bound."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.turn.channels import CHANNEL_LIFETIME, CHANNEL_REBIND_QUARANTINE, Channels
from gateway_core.wire.turn import CHANNEL_MIN

REUSABLE = CHANNEL_LIFETIME + CHANNEL_REBIND_QUARANTINE


def _peer(i: int) -> SocketAddr:
    return SocketAddr(IPv4Address(0x0A000000 + i), 5000)


def test_an_idle_record_is_forgotten_at_the_next_bind_after_15_minutes() -> None:
    ch = Channels()
    n = ch.new_channel(_peer(0), Instant(0))
    assert n == CHANNEL_MIN and ch.set_confirmed(n, Instant(secs(1)))
    ch.new_channel(_peer(1), Instant(secs(1) + REUSABLE - 1))
    assert len(ch) == 2 and ch.peer_of(n) == _peer(0)  # not yet reusable: kept
    ch.new_channel(_peer(2), Instant(secs(1) + REUSABLE))
    assert ch.peer_of(n) is None and len(ch) == 2


def test_a_record_that_received_data_is_kept_until_idle_after_its_refresh() -> None:
    ch = Channels()
    n = ch.new_channel(_peer(0), Instant(0))
    assert n is not None and ch.set_confirmed(n, Instant(0))
    assert ch.receive(n, Instant(secs(30))) == _peer(0)
    ch.new_channel(_peer(1), Instant(REUSABLE + secs(1)))
    assert ch.peer_of(n) == _peer(0)  # in use: snownet refreshes it, the record must stay
    ch.set_confirmed(n, Instant(REUSABLE + secs(2)))  # the refresh; no data after it
    ch.new_channel(_peer(2), Instant(2 * REUSABLE + secs(1)))
    assert ch.peer_of(n) == _peer(0)  # 15 min after the refresh minus a second
    ch.new_channel(_peer(3), Instant(2 * REUSABLE + secs(2)))
    assert ch.peer_of(n) is None


def test_roaming_peers_leave_a_bounded_table() -> None:
    """A new peer address every 10 s for 10 hours (3,600 binds): the table never holds more than the
    records of the last 15 minutes (91), where keeping every record would reach the 3,600."""
    ch = Channels()
    most = 0
    for i in range(3600):
        now = Instant(i * secs(10))
        n = ch.new_channel(_peer(i), now)
        assert n is not None and ch.set_confirmed(n, now)
        most = max(most, len(ch))
    assert most <= REUSABLE // secs(10) + 1


class _KeepsEverything(Channels):
    """snownet's table: records stay until their number comes round again."""

    __slots__ = ()

    def _forget_reusable(self, now: Instant) -> None:
        pass


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 400), st.sampled_from(["bind", "confirm", "data"])),
        max_size=60,
    )
)
def test_forgetting_changes_no_answer(ops: list[tuple[int, int, str]]) -> None:
    """The same operations on a table that forgets and on one that never does (forgetting switched off)
    give the same channel numbers and the same peers for received data, at every step."""
    forgets, keeps = Channels(), _KeepsEverything()
    now = 0
    for peer, dt, op in ops:
        now += dt * secs(10)
        t = Instant(now)
        if op == "bind":
            assert forgets.new_channel(_peer(peer), t) == keeps.new_channel(_peer(peer), t)
        else:
            n = keeps.inflight(_peer(peer), t) or keeps.connected(_peer(peer), t)
            if n is None:
                continue
            if op == "confirm":
                assert forgets.set_confirmed(n, t) == keeps.set_confirmed(n, t)
            else:
                assert forgets.receive(n, t) == keeps.receive(n, t)
        for p in range(6):
            assert forgets.connected(_peer(p), t) == keeps.connected(_peer(p), t)
            assert forgets.bound_to(_peer(p), t) == keeps.bound_to(_peer(p), t)
    assert len(forgets) <= len(keeps)
