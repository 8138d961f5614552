"""ICE agent (controlled) against a controlling agent over an in-memory link; str0m's schedule and rules."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.entropy import SeededEntropy
from gateway_core.ice import candidate as c
from gateway_core.ice.agent import STATE_TRANSITIONS, IceAgent, IceState, IceStateChanged, NominatedSend
from gateway_core.ice.pair import IDLE_TIMING
from gateway_core.wire import stun
from gateway_core.wire.stun import Attr, Class, Method, StunMessage

GW = SocketAddr(IPv4Address("10.0.0.1"), 52625)
GW6 = SocketAddr(IPv6Address("fd00::1"), 52625)
CL = SocketAddr(IPv4Address("10.0.0.2"), 40000)
CL_NAT = SocketAddr(IPv4Address("198.51.100.2"), 61000)


def agents(seed: int = 1) -> tuple[IceAgent, IceAgent]:
    gw = IceAgent(
        "gwuf", "gateway-password-22chr", "cluf", "client-password-22chrs", SeededEntropy(seed, b"g")
    )
    cl = IceAgent(
        "cluf",
        "client-password-22chrs",
        "gwuf",
        "gateway-password-22chr",
        SeededEntropy(seed, b"c"),
        controlling=True,
    )
    return gw, cl


class Link:
    """Delivers transmits between the two agents; ``nat`` rewrites the client's source address."""

    def __init__(self, gw: IceAgent, cl: IceAgent, nat: SocketAddr | None = None) -> None:
        self.gw, self.cl, self.nat = gw, cl, nat
        self.now = Instant(0)
        self.blocked = False
        self.log: list[tuple[int, str, StunMessage]] = []
        self.gw_events: list[object] = []

    def step(self) -> None:
        for _ in range(1000):
            moved = False
            for name, a, b in (("gw", self.gw, self.cl), ("cl", self.cl, self.gw)):
                while (t := a.poll_transmit()) is not None:
                    moved = True
                    assert t.src is not None
                    m = stun.decode(t.payload)
                    self.log.append((self.now, name, m))
                    if self.blocked:
                        continue
                    src = self.nat if (name == "cl" and self.nat) else t.src
                    dst = CL if (name == "gw" and self.nat and t.dst == self.nat) else t.dst
                    if b.accepts(m):
                        b.handle_stun(self.now, src, dst, m)
            while (e := self.gw.poll_event()) is not None:
                self.gw_events.append(e)
            while self.cl.poll_event() is not None:
                pass
            if not moved:
                return

    def run_until(self, t: int) -> None:
        for _ in range(100_000):
            ds = [d.at for d in (self.gw.poll_timeout(), self.cl.poll_timeout()) if d is not None]
            if not ds or min(ds) > t:
                break
            self.now = Instant(max(self.now, min(ds)))
            self.gw.handle_timeout(self.now)
            self.cl.handle_timeout(self.now)
            self.step()
        self.now = Instant(t)

    def checks(self, who: str) -> list[tuple[int, StunMessage]]:
        return [(at, m) for at, n, m in self.log if n == who and m.cls == Class.REQUEST]


def host_to_host() -> tuple[IceAgent, IceAgent, Link]:
    """The two agents with one host candidate each, known to the other, on a :class:`Link`."""
    gw, cl = agents()
    gw.add_local_candidate(c.host(GW))
    cl.add_local_candidate(c.host(CL))
    gw.add_remote_candidate(c.host(CL))
    cl.add_remote_candidate(c.host(GW))
    return gw, cl, Link(gw, cl)


def test_host_pair_connects_and_nominates() -> None:
    gw, cl = agents()
    local = gw.add_local_candidate(c.host(GW))
    assert local is not None and local.ufrag == "gwuf" and local.priority == 2130706175
    cl.add_local_candidate(c.host(CL))
    gw.add_remote_candidate(c.parse(c.host(CL).with_local_preference(65534, "cluf").to_sdp()))
    cl.add_remote_candidate(c.parse(local.to_sdp()))
    link = Link(gw, cl)
    link.run_until(secs(2))
    sends = [e for e in link.gw_events if isinstance(e, NominatedSend)]
    assert sends == [NominatedSend(GW, CL)]
    states = [e.state for e in link.gw_events if isinstance(e, IceStateChanged)]
    assert states[:2] == [IceState.CHECKING, IceState.COMPLETED]
    assert all(p in STATE_TRANSITIONS for p in zip([IceState.NEW, *states], states, strict=False))
    first = link.checks("gw")[0][1]
    assert [t for t, _ in first.attributes] == [
        Attr.USERNAME,
        Attr.ICE_CONTROLLED,
        Attr.PRIORITY,
        Attr.MESSAGE_INTEGRITY,
        Attr.FINGERPRINT,
    ]
    assert first.text(Attr.USERNAME) == "cluf:gwuf"
    assert first.u32(Attr.PRIORITY) == c.compute_priority(c.Kind.PRFLX, 65534)
    assert first.verify_integrity(b"client-password-22chrs") and first.verify_fingerprint()
    assert any(m.has(Attr.USE_CANDIDATE) for _, m in link.checks("cl"))
    responses = [m for _, n, m in link.log if n == "gw" and m.cls == Class.SUCCESS]
    assert [t for t, _ in responses[0].attributes] == [
        Attr.XOR_MAPPED_ADDRESS,
        Attr.MESSAGE_INTEGRITY,
        Attr.FINGERPRINT,
    ]
    assert gw.stats.counters["ice.unexpected_transition"] == 0


def test_answered_pair_check_schedule() -> None:
    _, _, link = host_to_host()
    link.run_until(secs(8))
    times = [t for t, _ in link.checks("gw")]
    # 0, then at once the nomination check triggered by the client's USE-CANDIDATE (attempt 2), then
    # last + resend_delay(k) with k recorded attempts: 0.5 s, 1 s, then the 1.5 s cap, forever.
    assert times == [0, 0, millis(500), millis(1500), millis(3000), millis(4500), millis(6000), millis(7500)]


def test_unanswered_pair_schedule_and_failure() -> None:
    gw, cl = agents()
    gw.add_local_candidate(c.host(GW))
    gw.add_remote_candidate(c.host(CL))
    link = Link(gw, cl)
    link.blocked = True
    link.run_until(secs(20))
    times = [t for t, _ in link.checks("gw")]
    expected = [0, millis(250), millis(750), millis(1750), millis(3250)]
    expected += [millis(3250) + millis(1500) * k for k in range(1, 8)]
    assert times == expected and len(times) == 12
    assert gw.pairs == []
    assert gw.state is IceState.DISCONNECTED
    changes = [(e.state) for e in link.gw_events if isinstance(e, IceStateChanged)]
    assert changes == [IceState.CHECKING, IceState.DISCONNECTED]


def test_idle_timing() -> None:
    gw, cl = agents()
    gw.add_local_candidate(c.host(GW))
    gw.add_remote_candidate(c.host(CL))
    gw.set_timing(IDLE_TIMING, Instant(0))
    link = Link(gw, cl)
    link.blocked = True
    link.run_until(secs(200))
    times = [t for t, _ in link.checks("gw")]
    assert times == [0, secs(25), secs(50), secs(75)]
    assert gw.pairs == []  # removed at 100 s


def test_peer_reflexive_remote_and_local() -> None:
    gw, cl = agents()
    gw.add_local_candidate(c.host(GW))
    cl.add_local_candidate(c.host(CL))
    cl.add_remote_candidate(c.host(GW))
    # The gateway knows no remote candidate: the client's NATed check creates a remote prflx.
    link = Link(gw, cl, nat=CL_NAT)
    link.run_until(secs(2))
    prflx = [r for r in gw.remote_candidates() if r.kind is c.Kind.PRFLX]
    assert [(r.addr, r.foundation) for r in prflx] == [(CL_NAT, "tmp_prflx")]
    assert NominatedSend(GW, CL_NAT) in link.gw_events
    # The real candidate replaces the placeholder in place.
    assert gw.add_remote_candidate(c.server_reflexive(CL_NAT, CL))
    assert [r.kind for r in gw.remote_candidates()] == [c.Kind.SRFLX]


def test_local_prflx_from_mapped_address() -> None:
    gw, _, link = host_to_host()
    link.run_until(millis(10))
    # Answer one of the gateway's checks with an unexpected mapped address (gateway behind NAT).
    gw_nat = SocketAddr(IPv4Address("203.0.113.5"), 1234)
    link.run_until(millis(300))
    tid = link.checks("gw")[-1][1].transaction_id
    r = StunMessage(Method.BINDING, Class.SUCCESS, tid).add_xor_address(Attr.XOR_MAPPED_ADDRESS, gw_nat)
    m = stun.decode(r.encode(b"client-password-22chrs", fingerprint=True))
    assert gw.accepts(m)
    gw.handle_stun(link.now, CL, GW, m)
    assert [(e.c.kind, e.c.addr, e.c.base) for e in gw.local][-1] == (c.Kind.PRFLX, gw_nat, GW)


def test_accepts_rules() -> None:
    gw, _ = agents()
    gw.add_local_candidate(c.host(GW))
    gw.add_remote_candidate(c.host(CL))

    def req(user: str, key: bytes, cls: Class = Class.REQUEST) -> StunMessage:
        m = (
            StunMessage(Method.BINDING, cls, bytes(12))
            .add_text(Attr.USERNAME, user)
            .add_u32(Attr.PRIORITY, 1)
        )
        return stun.decode(m.encode(key))

    assert gw.accepts(req("gwuf:cluf", b"gateway-password-22chr"))
    assert not gw.accepts(req("gwuf:cluf", b"wrong"))
    assert not gw.accepts(req("cluf:gwuf", b"gateway-password-22chr"))
    assert not gw.accepts(req("gwuf:", b"gateway-password-22chr"))
    assert not gw.accepts(req("gwuf:cluf", b"gateway-password-22chr", Class.INDICATION))
    unknown = StunMessage(Method.BINDING, Class.SUCCESS, bytes(12)).encode(b"client-password-22chrs")
    assert not gw.accepts(stun.decode(unknown))  # not one of our transactions


def test_invalidate_and_readd() -> None:
    gw, _ = agents()
    h = gw.add_local_candidate(c.host(GW))
    assert h is not None
    assert gw.add_local_candidate(c.host(GW)) is None  # redundant
    remote = c.host(CL)
    gw.add_remote_candidate(remote)
    assert len(gw.pairs) == 1
    assert gw.invalidate_candidate(c.parse(remote.to_sdp()))
    assert gw.pairs == [] and gw.remote_candidates() == []
    assert not gw.invalidate_candidate(remote)
    assert gw.invalidate_candidate(h)
    assert gw.add_local_candidate(c.host(GW)) == h  # a discarded one comes back with its old priority
    gw.add_remote_candidate(remote)
    assert len(gw.pairs) == 1


def test_pairs_only_within_family_and_relay_priority() -> None:
    gw, _ = agents()
    gw.add_local_candidate(c.host(GW))
    gw.add_local_candidate(c.host(GW6))
    r4 = gw.add_local_candidate(c.relayed(SocketAddr(IPv4Address("203.0.113.1"), 50000), GW))
    r6 = gw.add_local_candidate(c.relayed(SocketAddr(IPv6Address("2001:db8::1"), 50000), GW))
    assert r4 is not None and r4.priority == 37748479
    assert r6 is not None and r6.priority == 37492735
    gw.add_remote_candidate(c.host(CL))
    assert len(gw.pairs) == 2
    assert {gw.local[p.local].c.addr.ip.version for p in gw.pairs} == {4}
    assert gw.add_remote_candidate(c.host(CL).with_local_preference(65534, "other")) is False
