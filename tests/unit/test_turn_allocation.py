"""TURN allocation machine against the pure Firezone-like (and coturn-like) server of ``devpeers.relay``."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from devpeers.relay import DevRelay
from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.commands import Transmit
from gateway_core.entropy import SeededEntropy
from gateway_core.ice.candidate import Kind
from gateway_core.turn.allocation import Allocation, FreeReason, Phase, RelaySocket
from gateway_core.turn.credentials import (
    coturn_rest_password,
    firezone_password,
    firezone_username,
)
from gateway_core.turn.types import TRANSITIONS, CandidateEvent
from gateway_core.wire import stun
from gateway_core.wire import turn as tw
from gateway_core.wire.stun import Attr, Class, Method

RELAY4 = SocketAddr(IPv4Address("203.0.113.1"), 3478)
RELAY6 = SocketAddr(IPv6Address("2001:db8::1"), 3478)
RELAY_IPS = [SocketAddr(IPv4Address("203.0.113.1"), 0), SocketAddr(IPv6Address("2001:db8::1"), 0)]
CLIENT4 = SocketAddr(IPv4Address("192.0.2.10"), 52625)
CLIENT6 = SocketAddr(IPv6Address("2001:db8:1::10"), 52625)
PEER = SocketAddr(IPv4Address("198.51.100.20"), 40000)
SECRET = "relay-secret"
EXPIRY = 1_900_000_000


def test_firezone_password_vectors() -> None:
    # The Firezone relay's test vectors (rust/relay/server/src/auth.rs).
    assert (
        firezone_password(
            1892160000, "4c98bf59c99b3e467ecd7cf9d6b3e5279645fca59be67bc5bb4af3cf653761ab", "n23JJ2wKKtt30oXi"
        )
        == "00hqldgk5xLeKKOB+xls9mHMVtgqzie9DulfgQwMv68"
    )
    assert (
        firezone_password(1685984278, "1cab293a-4032-46f4-862a-40e5d174b0d2", "uvdgKvS9GXYZ_vmv")
        == "6xUIoZ+QvxKhRasLifwfRkMXl+ETLJUsFkHlXjlHAkg"
    )


class Harness:
    """Runs one allocation against one server over a lossless (or muted) in-memory link."""

    def __init__(self, flavour: str = "firezone", server: RelaySocket | None = None, seed: int = 1) -> None:
        self.now = Instant(0)
        self.server = DevRelay(
            [RELAY4, RELAY6], RELAY_IPS, SECRET, SeededEntropy(seed, b"srv"), flavour=flavour
        )
        user = firezone_username(EXPIRY, "salt")
        pw = (
            coturn_rest_password(SECRET, user)
            if flavour == "coturn"
            else firezone_password(EXPIRY, SECRET, "salt")
        )
        self.alloc = Allocation(
            server or RelaySocket(RELAY4), user, pw, "firezone", self.now, SeededEntropy(seed)
        )
        self.sent: list[tuple[int, Transmit]] = []
        self.to_peers: list[Transmit] = []
        self.events: list[CandidateEvent] = []
        self.muted = False

    def local_for(self, dst: SocketAddr) -> SocketAddr:
        return CLIENT4 if dst.ip.version == 4 else CLIENT6

    def pump(self) -> None:
        for _ in range(100):
            t = self.alloc.poll_transmit()
            if t is None:
                break
            self.sent.append((self.now, t))
            if self.muted:
                continue
            self.deliver(self.server.handle(self.now, t.dst, self.local_for(t.dst), t.payload))
        while (e := self.alloc.poll_event()) is not None:
            self.events.append(e)

    def deliver(self, out: list[Transmit]) -> None:
        for r in out:
            assert r.src is not None
            if r.dst in (CLIENT4, CLIENT6):
                if r.payload[0] < 4:
                    self.alloc.handle_input(r.src, r.dst, stun.decode(r.payload), self.now)
                else:
                    ch, payload = tw.decode_channel_data(r.payload)
                    got = self.alloc.decapsulate(r.src, ch, payload, self.now)
                    if got is not None:
                        self.to_peers.append(Transmit(got[2], got[0], got[1]))
            else:
                self.to_peers.append(r)
        self.pump()

    def advance_to(self, t: int) -> None:
        """Serve every deadline up to ``t``; checks R4/R5 on the way."""
        for _ in range(10_000):
            d = self.alloc.poll_timeout()
            if d is None or d.at > t:
                break
            assert d.at >= self.now
            self.now = d.at
            self.alloc.handle_timeout(self.now)
            after = self.alloc.poll_timeout()
            assert after is None or after.at > self.now or self.alloc.poll_transmit is None
            self.pump()
        self.now = Instant(max(self.now, t))
        self.alloc.handle_timeout(self.now)
        self.pump()

    def requests(self, method: Method) -> list[tuple[int, stun.StunMessage]]:
        out = []
        for at, t in self.sent:
            if t.payload[0] < 4:
                m = stun.decode(t.payload)
                if m.method == method and m.cls == Class.REQUEST:
                    out.append((at, m))
        return out


def test_firezone_flow_allocates_dual_stack() -> None:
    h = Harness()
    h.pump()
    assert h.alloc.phase is Phase.ALLOCATED
    allocs = h.requests(Method.ALLOCATE)
    assert len(allocs) == 2
    first, second = allocs[0][1], allocs[1][1]
    # snownet's first ALLOCATE: signed, with USERNAME and REALM but no NONCE.
    assert (
        first.has(Attr.USERNAME) and first.text(Attr.REALM) == "firezone" and first.integrity_at is not None
    )
    assert not first.has(Attr.NONCE)
    assert first.get(Attr.REQUESTED_TRANSPORT) == b"\x11\x00\x00\x00"
    assert first.get(Attr.ADDITIONAL_ADDRESS_FAMILY) == b"\x02\x00\x00\x00"
    assert second.has(Attr.NONCE) and first.transaction_id != second.transaction_id
    kinds = sorted((e.candidate.kind.value, e.candidate.addr.ip.version) for e in h.events if e.new)
    assert kinds == [("host", 4), ("relay", 4), ("relay", 6), ("srflx", 4)]
    assert h.alloc.relayed_address(4) is not None and h.alloc.relayed_address(6) is not None
    srflx = next(e.candidate for e in h.events if e.candidate.kind is Kind.SRFLX)
    assert srflx.addr == CLIENT4 and srflx.base == CLIENT4
    assert not any(a is b for a, b, _ in TRANSITIONS)
    assert h.alloc.stats.counters["turn.unexpected_transition"] == 0


def test_coturn_flavour_flow() -> None:
    h = Harness("coturn")
    h.pump()
    assert h.alloc.phase is Phase.ALLOCATED
    allocs = [m for _, m in h.requests(Method.ALLOCATE)]
    # signed without nonce -> unsigned 400 -> unauthenticated -> unsigned 401 with nonce -> signed with nonce
    assert [m.integrity_at is not None for m in allocs] == [True, False, True]
    assert allocs[2].has(Attr.NONCE)


def test_retransmission_schedule_and_no_response() -> None:
    h = Harness()
    h.muted = True
    h.pump()
    h.advance_to(secs(20))
    times = [at for at, _ in h.requests(Method.BINDING)]
    assert times == [0, secs(1), millis(2500), millis(4750)]
    assert h.alloc.can_be_freed() is FreeReason.NO_RESPONSE
    assert h.alloc.phase is Phase.DEAD


def test_authenticated_retransmissions_use_fresh_transaction_ids() -> None:
    h = Harness()
    h.pump()
    h.muted = True
    h.alloc.bind_channel(PEER, h.now)
    h.pump()
    h.advance_to(secs(6))
    binds = h.requests(Method.CHANNEL_BIND)
    assert [at for at, _ in binds] == [0, secs(1), millis(2500), millis(4750)]
    assert len({m.transaction_id for _, m in binds}) == 4
    assert all(m.channel_number() == 0x4000 for _, m in binds)
    h.advance_to(secs(9))
    # The request to the active socket's family was abandoned: the relay is considered unreachable.
    assert not h.alloc.has_allocation()
    assert [e.candidate.kind for e in h.events if not e.new] == [Kind.RELAY, Kind.RELAY]
    assert h.alloc.can_be_freed() is FreeReason.NO_RESPONSE


def test_refresh_at_half_lifetime_and_keepalive() -> None:
    h = Harness()
    h.pump()
    h.advance_to(secs(301))
    refreshes = [at for at, _ in h.requests(Method.REFRESH)]
    assert refreshes == [secs(300)]
    keepalives = [at for at, _ in h.requests(Method.BINDING)][1:]
    assert keepalives[:3] == [secs(25), secs(50), secs(75)]
    h.advance_to(secs(3000))
    assert h.alloc.phase is Phase.ALLOCATED
    assert len(h.requests(Method.REFRESH)) == 10


def test_keepalive_lost_invalidates() -> None:
    h = Harness()
    h.pump()
    h.server.drop_all = True
    h.advance_to(secs(40))
    assert not h.alloc.has_allocation()
    assert h.alloc.can_be_freed() is FreeReason.NO_RESPONSE
    assert h.alloc.stats.counters["turn.unexpected_transition"] == 0


def test_dead_credentials() -> None:
    h = Harness()
    h.alloc.auth.password = "wrong"
    h.alloc.auth.key = stun.long_term_key(h.alloc.username, "firezone", "wrong")
    h.pump()
    assert h.alloc.can_be_freed() is FreeReason.AUTHENTICATION_ERROR
    assert len(h.requests(Method.ALLOCATE)) == 2  # no nonce -> 401 -> with nonce -> 401: give up


def test_stale_nonce_is_replaced() -> None:
    h = Harness()
    h.pump()
    h.server._nonces.clear()
    h.alloc.bind_channel(PEER, h.now)
    h.pump()
    binds = [m for _, m in h.requests(Method.CHANNEL_BIND)]
    assert len(binds) == 2 and binds[0].text(Attr.NONCE) != binds[1].text(Attr.NONCE)
    assert h.alloc.channels.connected(PEER, h.now) == 0x4000


def test_allocation_mismatch_deletes_and_reallocates() -> None:
    h = Harness()
    h.pump()
    old = h.alloc.relayed_address(4)
    # A new client-side allocation (e.g. after a restart) meets the server's stale one.
    h.alloc = Allocation(
        RelaySocket(RELAY4), h.alloc.username, h.alloc.password, "firezone", h.now, SeededEntropy(9)
    )
    h.pump()
    assert [m.u32(Attr.LIFETIME) for _, m in h.requests(Method.REFRESH)] == [0]
    assert h.alloc.phase is Phase.ALLOCATED
    assert h.alloc.relayed_address(4) is not None and h.alloc.relayed_address(4) != old


def test_unsigned_success_is_ignored() -> None:
    h = Harness()
    h.muted = True
    h.pump()
    ((_, probe),) = h.requests(Method.BINDING)
    h.server.handle(h.now, RELAY4, CLIENT4, h.sent[0][1].payload)
    r = stun.StunMessage(Method.BINDING, Class.SUCCESS, probe.transaction_id).add_xor_address(
        Attr.XOR_MAPPED_ADDRESS, CLIENT4
    )
    assert h.alloc.handle_input(RELAY4, CLIENT4, stun.decode(r.encode()), h.now)
    h.pump()
    ((_, alloc_req),) = h.requests(Method.ALLOCATE)
    fake = stun.StunMessage(Method.ALLOCATE, Class.SUCCESS, alloc_req.transaction_id).add_u32(
        Attr.LIFETIME, 600
    )
    fake.add_xor_address(Attr.XOR_RELAYED_ADDRESS, PEER)
    assert h.alloc.handle_input(RELAY4, CLIENT4, stun.decode(fake.encode()), h.now)
    assert not h.alloc.has_allocation()
    assert h.alloc.stats.drops  # counted as bad integrity
    assert not h.alloc.handle_input(RELAY6, CLIENT4, stun.decode(fake.encode()), h.now)  # not our relay


def test_channels_data_refresh_and_expiry() -> None:
    h = Harness()
    h.pump()
    assert h.alloc.encapsulate(PEER, b"first", h.now) is None  # no channel yet: bind, drop
    h.pump()
    t = h.alloc.encapsulate(PEER, b"hello", h.now)
    assert t is not None and t.dst == RELAY4 and t.payload == b"\x40\x00\x00\x05hello"
    h.deliver(h.server.handle(h.now, RELAY4, CLIENT4, t.payload))
    relayed = h.alloc.relayed_address(4)
    assert h.to_peers[-1] == Transmit(relayed, PEER, b"hello")
    # Peer answers: the relay wraps it in ChannelData, we unwrap to (peer, payload, our relayed address).
    # (Data at the very instant of the bind would not count as activity, as in snownet.)
    h.now = Instant(h.now + millis(10))
    h.deliver(h.server.handle(h.now, relayed, PEER, b"pong"))
    assert h.to_peers[-1] == Transmit(relayed, PEER, b"pong")
    second_peer = SocketAddr(PEER.ip, 40001)
    h.alloc.bind_channel(second_peer, h.now)
    h.pump()
    assert h.alloc.channels.connected(second_peer, h.now) == 0x4001
    h.advance_to(secs(299))
    assert len(h.requests(Method.CHANNEL_BIND)) == 2
    h.advance_to(secs(301))
    # Only the channel that received data is refreshed at 5 min.
    refreshed = [(at, m.channel_number()) for at, m in h.requests(Method.CHANNEL_BIND)[2:]]
    assert refreshed == [(secs(300), 0x4000)]  # on its own deadline, not the next wake-up
    h.advance_to(secs(601))
    assert h.alloc.channels.connected(second_peer, h.now) is None
    assert h.alloc.channels.connected(PEER, h.now) == 0x4000


def test_ipv6_only_relay() -> None:
    h = Harness(server=RelaySocket(v6=RELAY6))
    h.pump()
    assert h.alloc.active_socket == RELAY6
    assert h.alloc.relayed_address(4) is not None and h.alloc.relayed_address(6) is not None
    relay = next(c for c in h.alloc.relay_candidates() if c.addr.ip.version == 6)
    assert relay.local_if == CLIENT6


def test_dual_relay_first_answer_wins() -> None:
    h = Harness(server=RelaySocket(RELAY4, RELAY6))
    h.pump()
    assert h.alloc.active_socket == RELAY4
    hosts = sorted(str(c.addr) for c in h.alloc.host_and_srflx_candidates() if c.kind is Kind.HOST)
    assert hosts == [str(CLIENT4), str(CLIENT6)]


def test_refresh_when_suspended_reprobes() -> None:
    h = Harness()
    h.server.drop_all = True
    h.pump()
    h.advance_to(secs(10))
    assert h.alloc.can_be_freed() is FreeReason.NO_RESPONSE
    h.server.drop_all = False
    h.alloc.refresh(h.now)
    h.pump()
    assert h.alloc.phase is Phase.ALLOCATED


def test_refresh_when_allocated_is_single_shot() -> None:
    h = Harness()
    h.pump()
    h.server.drop_all = True
    h.alloc.refresh(h.now)
    h.pump()
    h.advance_to(h.now + secs(2))
    assert len(h.requests(Method.REFRESH)) == 1
    assert not h.alloc.has_allocation()


@pytest.mark.parametrize("seed", range(5))
def test_deterministic(seed: int) -> None:
    a, b = Harness(seed=seed), Harness(seed=seed)
    for h in (a, b):
        h.pump()
        h.advance_to(secs(700))
    assert [t.payload for _, t in a.sent] == [t.payload for _, t in b.sent]


def test_coturn_permissions_and_indications() -> None:
    h = Harness("coturn")
    h.pump()
    h.alloc.create_permission([PEER], h.now)
    h.pump()
    t = h.alloc.send_indication(PEER, b"via-send")
    assert t is not None
    h.deliver(h.server.handle(h.now, RELAY4, CLIENT4, t.payload))
    relayed = h.alloc.relayed_address(4)
    assert h.to_peers[-1] == Transmit(relayed, PEER, b"via-send")
    ind = h.server.handle(h.now, relayed, PEER, b"back")
    (r,) = ind
    got = h.alloc.decapsulate_indication(r.src, stun.decode(r.payload))
    assert got == (PEER, b"back", relayed)
    h.advance_to(secs(241))
    assert len(h.requests(Method.CREATE_PERMISSION)) == 2


def test_requested_family_ipv6_only() -> None:
    h = Harness()
    h.alloc = Allocation(
        RelaySocket(RELAY4),
        h.alloc.username,
        h.alloc.password,
        "firezone",
        h.now,
        SeededEntropy(3),
        requested_family=2,
    )
    h.pump()
    first = h.requests(Method.ALLOCATE)[0][1]
    assert first.get(Attr.REQUESTED_ADDRESS_FAMILY) == b"\x02\x00\x00\x00"
    assert not first.has(Attr.ADDITIONAL_ADDRESS_FAMILY)
    assert h.alloc.relayed_address(4) is None and h.alloc.relayed_address(6) is not None


def test_ipv6_peer_channel_through_retransmitted_tids() -> None:
    # Authenticated requests get a fresh transaction id per send: IPv6 XOR-PEER-ADDRESS must follow it.
    h = Harness()
    h.pump()
    peer6 = SocketAddr(IPv6Address("2001:db8:2::20"), 40000)
    assert h.alloc.encapsulate(peer6, b"x", h.now) is None
    h.pump()
    (alloc_,) = h.server.allocations.values()
    assert [p for p, _ in alloc_.channels.values()] == [peer6]
    t = h.alloc.encapsulate(peer6, b"hello6", h.now)
    assert t is not None
    h.deliver(h.server.handle(h.now, RELAY4, CLIENT4, t.payload))
    assert h.to_peers[-1] == Transmit(h.alloc.relayed_address(6), peer6, b"hello6")


def test_channel_numbers_exhausted_then_reused_after_the_quarantine() -> None:
    """4,096 peers take every channel number; the next peer gets none (and the table remembers until when
    no number can be free, so thousands of such tries cost no scan each); 15 min after the last bind of
    an idle channel its number is reused."""
    from gateway_core.turn.channels import CHANNEL_LIFETIME, CHANNEL_REBIND_QUARANTINE, Channels
    from gateway_core.wire.turn import CHANNEL_MAX, CHANNEL_MIN

    ch = Channels()
    peers = [SocketAddr(IPv4Address(0x0A000000 + i), 5000) for i in range(CHANNEL_MAX - CHANNEL_MIN + 2)]
    for i, p in enumerate(peers[:-1]):
        assert ch.new_channel(p, Instant(i)) is not None
    late = peers[-1]
    assert ch.new_channel(late, Instant(secs(60))) is None
    assert ch.new_channel(late, Instant(secs(61))) is None  # the shortcut: same answer, no scan
    free_at = CHANNEL_LIFETIME + CHANNEL_REBIND_QUARANTINE  # the first peer's channel, bound at 0, never used
    assert ch.new_channel(late, Instant(free_at - 1)) is None
    assert ch.new_channel(late, Instant(free_at)) == CHANNEL_MIN
