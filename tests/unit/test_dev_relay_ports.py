"""The dev relay never hands out a relayed port another allocation holds (as Firezone's relay,
``create_new_allocation`` in ``rust/relay/server/src/server.rs``): a port drawn twice is drawn again, and
with every port held an ALLOCATE gets 508 Insufficient Capacity. The stateful test's nightly run found the
collision (``tests/sim/stateful_regressions.json``: ``relay_port_drawn_twice``)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

import devpeers.relay as relay_mod
from devpeers.relay import DevRelay
from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.entropy import SeededEntropy
from gateway_core.turn.allocation import Allocation, RelaySocket
from gateway_core.turn.credentials import firezone_password, firezone_username
from gateway_core.wire import stun
from tests.unit.test_turn_allocation import EXPIRY, RELAY4, RELAY_IPS, SECRET


class ScriptedPorts:
    """Entropy whose port draws (``randbelow(PORT_COUNT)``) come from a script; the rest is seeded."""

    def __init__(self, ports: list[int]) -> None:
        self._inner = SeededEntropy(7, b"srv")
        self._ports = list(ports)
        self.port_draws = 0

    def random_bytes(self, n: int) -> bytes:
        return self._inner.random_bytes(n)

    def randbelow(self, n: int) -> int:
        if n == relay_mod.PORT_COUNT and self._ports:
            self.port_draws += 1
            return self._ports.pop(0)
        return self._inner.randbelow(n)


def _allocate(server: DevRelay, client: SocketAddr, seed: int) -> Allocation:
    """One allocation from ``client`` against ``server`` over a lossless in-memory link."""
    now = Instant(0)
    alloc = Allocation(
        RelaySocket(RELAY4),
        firezone_username(EXPIRY, "salt"),
        firezone_password(EXPIRY, SECRET, "salt"),
        "firezone",
        now,
        SeededEntropy(seed),
    )
    alloc.handle_timeout(now)
    for _ in range(20):
        t = alloc.poll_transmit()
        if t is None:
            break
        for r in server.handle(now, t.dst, client, t.payload):
            assert r.src is not None
            alloc.handle_input(r.src, r.dst, stun.decode(r.payload), now)
    return alloc


def _client(n: int) -> SocketAddr:
    return SocketAddr(IPv4Address(f"192.0.2.{10 + n}"), 52625)


def test_a_port_drawn_twice_is_drawn_again() -> None:
    entropy = ScriptedPorts([5, 5, 9])
    server = DevRelay([RELAY4], RELAY_IPS, SECRET, entropy)
    first = _allocate(server, _client(0), 1).relayed_address(4)
    second = _allocate(server, _client(1), 2).relayed_address(4)
    assert first is not None and second is not None
    assert (first.port, second.port) == (relay_mod.PORT_MIN + 5, relay_mod.PORT_MIN + 9)
    assert entropy.port_draws == 3
    # Each relayed address still leads to its own allocation.
    assert server._by_relayed[first].client == _client(0)
    assert server._by_relayed[second].client == _client(1)


def test_every_port_held_is_insufficient_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_mod, "PORT_COUNT", 2)
    server = DevRelay([RELAY4], RELAY_IPS, SECRET, SeededEntropy(3, b"srv"))
    held = {_allocate(server, _client(n), n).relayed_address(4) for n in range(2)}
    assert None not in held and len(held) == 2
    third = _allocate(server, _client(2), 5)
    assert third.relayed_address(4) is None
    assert len(server.allocations) == 2


def test_an_allocation_nobody_refreshes_is_freed_once_its_lifetime_is_over() -> None:
    """A client that roamed away never refreshes nor deletes its old allocation: as Firezone's relay frees
    it on its timer, the dev relay frees it at the first datagram after its lifetime (600 s)."""
    server = DevRelay([RELAY4], RELAY_IPS, SECRET, SeededEntropy(3, b"srv"))
    gone = _allocate(server, _client(0), 1).relayed_address(4)
    assert gone is not None and _client(0) in server.allocations
    binding = stun.StunMessage(stun.Method.BINDING, stun.Class.REQUEST, bytes(12)).encode()
    life = relay_mod.secs(relay_mod.DEFAULT_LIFETIME)
    server.handle(Instant(life - 1), RELAY4, _client(1), binding)
    assert _client(0) in server.allocations and gone in server.relayed_addresses()
    server.handle(Instant(life), RELAY4, _client(1), binding)
    assert _client(0) not in server.allocations and gone not in server.relayed_addresses()


def test_a_refreshed_allocation_lives_on() -> None:
    server = DevRelay([RELAY4], RELAY_IPS, SECRET, SeededEntropy(3, b"srv"))
    alloc = _allocate(server, _client(0), 1)
    life = relay_mod.secs(relay_mod.DEFAULT_LIFETIME)
    refreshes = 0
    while refreshes == 0:  # run the allocation's timers (keepalives, then its REFRESH) against the server
        deadline = alloc.poll_timeout()
        assert deadline is not None and deadline.at < life  # it refreshes before the lifetime ends
        now = deadline.at
        alloc.handle_timeout(now)
        while (t := alloc.poll_transmit()) is not None:
            refreshes += stun.decode(t.payload).method == stun.Method.REFRESH
            for r in server.handle(now, t.dst, _client(0), t.payload):
                assert r.src is not None
                alloc.handle_input(r.src, r.dst, stun.decode(r.payload), now)
    binding = stun.StunMessage(stun.Method.BINDING, stun.Class.REQUEST, bytes(12)).encode()
    server.handle(Instant(life + 1), RELAY4, _client(1), binding)
    assert _client(0) in server.allocations and alloc.relayed_address(4) in server.relayed_addresses()


def _pump(server: DevRelay, alloc: Allocation, client: SocketAddr, now: Instant) -> None:
    while (t := alloc.poll_transmit()) is not None:
        for r in server.handle(now, t.dst, client, t.payload):
            assert r.src is not None
            alloc.handle_input(r.src, r.dst, stun.decode(r.payload), now)


def test_a_long_lived_allocation_forgets_channels_past_their_quarantine() -> None:
    """Peers come and go on an allocation that lives for hours (the gateway's): a channel past its 10 min
    lifetime and 5 min quarantine, and an expired permission, are dropped at the next bind."""
    server = DevRelay([RELAY4], RELAY_IPS, SECRET, SeededEntropy(3, b"srv"))
    alloc = _allocate(server, _client(0), 1)
    gone, fresh = SocketAddr(IPv4Address("198.51.100.1"), 4000), SocketAddr(IPv4Address("198.51.100.2"), 4000)
    alloc.bind_channel(gone, Instant(0))
    _pump(server, alloc, _client(0), Instant(0))
    held = server.allocations[_client(0)]
    assert [p for p, _ in held.channels.values()] == [gone] and str(gone.ip) in held.permissions
    later = Instant(relay_mod.CHANNEL_LIFETIME + relay_mod.secs(300))
    now = Instant(0)
    while now < later:  # the allocation's own timers (keepalives, REFRESH) keep it alive meanwhile
        deadline = alloc.poll_timeout()
        assert deadline is not None
        now = Instant(min(deadline.at, later))
        alloc.handle_timeout(now)
        _pump(server, alloc, _client(0), now)
    assert server.allocations[_client(0)] is held  # the same allocation, refreshed
    alloc.bind_channel(fresh, later)
    _pump(server, alloc, _client(0), later)
    held = server.allocations[_client(0)]
    assert [p for p, _ in held.channels.values()] == [fresh]
    assert set(held.permissions) == {str(fresh.ip)}
