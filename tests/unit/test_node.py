"""The node: a gateway (controlled) and a client-side node (controlling) with real WireGuard tunnels,
a Firezone-like relay (``devpeers.relay``) and an in-memory network; direct and relay-only paths."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from devpeers.relay import DevRelay
from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.commands import Transmit
from gateway_core.entropy import SeededEntropy
from gateway_core.ice import candidate as cand
from gateway_core.node.connection import ConnState, PathKind
from gateway_core.node.events import (
    ConnectionClosed,
    ConnectionEstablished,
    InvalidateIceCandidate,
    NewIceCandidate,
)
from gateway_core.node.node import Node, RelayConfig
from gateway_core.turn.allocation import RelaySocket
from gateway_core.turn.credentials import firezone_password, firezone_username
from gateway_core.wireguard import WireGuardPeer, crypto
from gateway_core.wireguard.noise import InitiatorIdentifier
from gateway_core.wireguard.ratelimit import RateLimiter

GW = SocketAddr(IPv4Address("192.0.2.1"), 52625)
CL = SocketAddr(IPv4Address("198.51.100.7"), 52626)
RELAY = SocketAddr(IPv4Address("203.0.113.1"), 3478)
RELAY2 = SocketAddr(IPv4Address("203.0.113.2"), 3478)
GW6 = SocketAddr(IPv6Address("2001:db8:a::1"), 52625)
CL6 = SocketAddr(IPv6Address("2001:db8:b::7"), 52626)
RELAY6 = SocketAddr(IPv6Address("2001:db8:c::1"), 3478)
SECRET = "s"
EXPIRY = 1_900_000_000


def ip_packet(payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), bytes(4))
    return head + udp


def make_node(seed: int, priv: bytes, controlling: bool) -> Node:
    ent = SeededEntropy(seed)
    rl = RateLimiter(crypto.public_key(priv), ent.fork("rl"), Instant(0))

    def tunnel(cid: str, remote: bytes, psk: bytes | None, index: int, now: Instant) -> WireGuardPeer:
        return WireGuardPeer(
            static_private=priv,
            peer_public=remote,
            psk=psk,
            global_index=index,
            entropy=ent.fork(f"wg-{cid}"),
            now=now,
            wall_unix_ns=1_700_000_000 * 10**9 + now,
            rate_limiter=rl,
        )

    return Node(ent, Instant(0), tunnel, InitiatorIdentifier(priv), controlling=controlling, rate_limiter=rl)


def _relay_ips(listen: SocketAddr) -> list[SocketAddr]:
    """A v4 relay relays on its own IP; the v6 one is dual-stack (IPv6 and 203.0.113.1)."""
    extra = [SocketAddr(RELAY.ip, 0)] if listen.ip.version == 6 else []
    return [SocketAddr(listen.ip, 0), *extra]


class World:
    def __init__(
        self,
        relays: tuple[SocketAddr, ...] = (RELAY,),
        *,
        v6: bool = False,
        unreachable: tuple[SocketAddr, ...] = (),
    ) -> None:
        if v6:
            relays = (RELAY6,)
        self.gw_addr, self.cl_addr = (GW6, CL6) if v6 else (GW, CL)
        self.now = Instant(0)
        self.gw_priv, self.cl_priv = bytes(range(1, 33)), bytes(range(2, 34))
        self.gw = make_node(1, self.gw_priv, False)
        self.cl = make_node(2, self.cl_priv, True)
        self.servers = {
            r: DevRelay([r], _relay_ips(r), SECRET, SeededEntropy(10 + i)) for i, r in enumerate(relays)
        }
        self.block_direct = False
        self.unreachable = set(unreachable)
        """Relays whose datagrams are dropped both ways (a relay the node cannot reach, for now)."""
        self.delivered: list[tuple[str, bytes]] = []
        self.gw_events: list[object] = []
        self.cl_events: list[object] = []
        self.nodes = {self.gw_addr: self.gw, self.cl_addr: self.cl}
        user = firezone_username(EXPIRY, "salt")
        pw = firezone_password(EXPIRY, SECRET, "salt")
        cfgs = [
            RelayConfig(f"relay{i}", RelaySocket(v6=r) if r.ip.version == 6 else RelaySocket(r), user, pw)
            for i, r in enumerate(relays)
        ]
        self.gw.update_relays([], cfgs, self.now)
        self.cl.update_relays([], cfgs, self.now)
        self.pump()

    def server_for(self, addr: SocketAddr) -> DevRelay | None:
        for r, s in self.servers.items():
            if addr == r or addr in s._by_relayed:
                return s
        return None

    def deliver(self, src: SocketAddr, t: Transmit) -> None:
        srv = self.server_for(t.dst)
        if t.dst in self.unreachable or src in self.unreachable:
            return
        if srv is not None:
            for out in srv.handle(self.now, t.dst, src, t.payload):
                assert out.src is not None
                self.deliver(out.src, Transmit(out.src, out.dst, out.payload))
            return
        node = self.nodes.get(t.dst)
        if node is None:
            return
        if self.block_direct and src in self.nodes:
            return
        got = node.handle_datagram(self.now, t.dst, src, t.payload)
        if got is not None:
            self.delivered.append((("gw" if node is self.gw else "cl"), got[1]))

    def pump(self) -> None:
        for _ in range(10_000):
            moved = False
            for addr, node in self.nodes.items():
                while (c := node.poll_command()) is not None:
                    assert isinstance(c, Transmit)
                    moved = True
                    self.deliver(addr, c)
            for node, sink, other, cid in (
                (self.gw, self.gw_events, self.cl, "gw"),
                (self.cl, self.cl_events, self.gw, "cl"),
            ):
                while (e := node.poll_event()) is not None:
                    moved = True
                    sink.append(e)
                    if isinstance(e, NewIceCandidate):
                        other.add_remote_candidate(cid, e.candidate, self.now)
                    elif isinstance(e, InvalidateIceCandidate):
                        other.remove_remote_candidate(cid, e.candidate, self.now)
            if not moved:
                return
        raise AssertionError("livelock")

    def run_until(self, t: int) -> None:
        for _ in range(100_000):
            ds = [d for n in self.nodes.values() if (d := n.poll_timeout()) is not None]
            if not ds or min(d.at for d in ds) > t:
                break
            due = min(d.at for d in ds)
            assert due >= self.now
            self.now = Instant(due)
            for n in self.nodes.values():
                n.handle_timeout(self.now)
                after = n.poll_timeout()
                assert after is None or after.at > self.now  # R5: nothing due is left
            self.pump()
        self.now = Instant(max(self.now, t))

    def connect(self) -> None:
        gw_pub, cl_pub = crypto.public_key(self.gw_priv), crypto.public_key(self.cl_priv)
        psk = bytes(32)
        gw_creds, cl_creds = ("gwuf", "gateway-password-22chr"), ("cluf", "client-password-22chrs")
        assert self.gw.upsert_connection("cl", cl_pub, psk, gw_creds, cl_creds, self.now)
        assert self.cl.upsert_connection("gw", gw_pub, psk, cl_creds, gw_creds, self.now)
        self.pump()


def test_direct_path_and_data() -> None:
    w = World()
    w.connect()
    w.run_until(secs(3))
    gconn = w.gw.connections["cl"]
    assert gconn.state is ConnState.CONNECTED
    assert gconn.peer_socket is not None and gconn.peer_socket.kind is PathKind.PEER_TO_PEER
    assert (gconn.peer_socket.source, gconn.peer_socket.dest) == (GW, CL)
    assert ConnectionEstablished("cl") in w.gw_events
    kinds = sorted(e.candidate.split(" ")[7] for e in w.gw_events if isinstance(e, NewIceCandidate))
    assert kinds == ["host", "relay", "srflx"]
    t = w.cl.encapsulate("gw", ip_packet(b"hello gateway"), w.now)
    assert t is not None
    w.deliver(CL, t)
    w.pump()
    assert w.delivered[-1] == ("gw", ip_packet(b"hello gateway"))
    back = w.gw.encapsulate("cl", ip_packet(b"hello client"), w.now)
    assert back is not None and back.dst == CL and back.src == GW
    w.deliver(GW, back)
    assert w.delivered[-1] == ("cl", ip_packet(b"hello client"))
    assert gconn.unexpected_transitions == 0
    # The client's data messages name the gateway's session index (the IO layer's budget exempts them).
    assert w.gw.session_indices() == {gconn.index}
    assert int.from_bytes(t.payload[4:8], "little") >> 8 == gconn.index
    w.gw.remove_connection("cl")
    assert w.gw.session_indices() == frozenset()


def test_relay_only_path() -> None:
    w = World()
    w.block_direct = True
    w.connect()
    w.run_until(secs(5))
    gconn = w.gw.connections["cl"]
    assert gconn.state is ConnState.CONNECTED
    assert gconn.peer_socket is not None and gconn.peer_socket.kind in (
        PathKind.RELAY_TO_RELAY,
        PathKind.RELAY_TO_PEER,
        PathKind.PEER_TO_RELAY,
    )
    t = w.cl.encapsulate("gw", ip_packet(b"via relay"), w.now)
    for _ in range(3):
        if t is not None:
            break
        w.run_until(w.now + millis(100))  # the first send may only start a channel bind
        t = w.cl.encapsulate("gw", ip_packet(b"via relay"), w.now)
    assert t is not None
    w.deliver(CL, t)
    w.pump()
    assert w.delivered[-1] == ("gw", ip_packet(b"via relay"))


def test_idle_and_back() -> None:
    w = World()
    w.connect()
    w.run_until(secs(3))
    gconn = w.gw.connections["cl"]
    w.run_until(secs(30))
    # Relay pairs are still possible next to the nominated host pair, so the agent is Connected (not
    # Completed) and 20 s without packets make the connection idle (snownet's ``ConnectionState``).
    assert gconn.state is ConnState.IDLE
    assert [(at, new) for at, _, new in gconn.history] == [
        (0, ConnState.CONNECTED),
        (secs(20), ConnState.IDLE),
    ]
    t = w.cl.encapsulate("gw", ip_packet(b"wake"), w.now)
    assert t is not None
    w.deliver(CL, t)
    assert gconn.state is ConnState.CONNECTED
    assert w.delivered[-1] == ("gw", ip_packet(b"wake"))


def test_no_candidates_fails_after_10s() -> None:
    w = World()
    gw_creds, cl_creds = ("gwuf", "gateway-password-22chr"), ("cluf", "client-password-22chrs")
    assert w.gw.upsert_connection("cl", crypto.public_key(w.cl_priv), None, gw_creds, cl_creds, w.now)
    w.run_until(secs(11))
    assert "cl" not in w.gw.connections
    assert any(type(e).__name__ == "ConnectionFailed" for e in w.gw_events)


def test_no_relays_means_no_connection() -> None:
    n = make_node(5, bytes(range(3, 35)), False)
    assert not n.upsert_connection("x", bytes(32), None, ("a", "b" * 22), ("c", "d" * 22), Instant(0))


def test_relay_removed_invalidates_relayed_candidates() -> None:
    w = World(relays=(RELAY, RELAY2))
    w.connect()
    w.run_until(secs(3))
    conn = w.gw.connections["cl"]
    old = conn.relay
    assert old is not None
    w.gw.update_relays([old], [], w.now)
    w.pump()
    assert any(isinstance(e, InvalidateIceCandidate) and " typ relay " in e.candidate for e in w.gw_events)
    assert conn.relay is not None and conn.relay != old  # re-homed on the remaining relay


def test_shared_candidates_of_another_relay_reach_every_connection() -> None:
    """A host or server-reflexive candidate is the node's own, whichever relay discovered it: seeding gives
    a new connection those of every allocation, and one discovered later must reach every connection too,
    not only those homed on the relay that found it. Otherwise a connection homed on a relay it cannot
    reach (an IPv6-only client sampling an IPv4 relay) never offers its host candidate, also after it is
    re-homed on the relay that works, which adds only that relay's relayed candidates."""
    w = World(relays=(RELAY, RELAY2), unreachable=(RELAY, RELAY2))
    w.connect()
    conn = w.cl.connections["gw"]
    assert conn.relay is not None
    assert not conn.agent.local_candidates()  # no allocation has answered: nothing to seed
    dead, alive = ("relay0", RELAY2) if conn.relay == "relay0" else ("relay1", RELAY)
    w.unreachable.discard(alive)
    w.run_until(secs(2))  # the live relay's retransmitted binding is answered
    kinds = {c.kind for c in conn.agent.local_candidates()}
    assert cand.Kind.HOST in kinds  # from the relay this connection is not homed on
    assert cand.Kind.RELAY not in kinds  # relayed candidates stay the home relay's
    w.unreachable.clear()  # the home relay answers too, and finds the same host and srflx candidates
    w.run_until(secs(4))
    srflx = [e for e in w.cl_events if isinstance(e, NewIceCandidate) and " typ srflx " in e.candidate]
    assert len(srflx) == 1  # signalled once, though both relays discovered it
    w.cl.update_relays([dead], [], w.now)  # re-homed on the other relay
    w.pump()
    assert conn.relay != dead
    w.run_until(secs(6))
    assert conn.state is ConnState.CONNECTED
    assert conn.peer_socket is not None and conn.peer_socket.kind is PathKind.PEER_TO_PEER


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00", b"\x01\x00\x00\x00", b"\x40\x00\x00\x09ab", b"\xff" * 40, b"\x04\x00\x00\x00" + bytes(40)],
)
def test_garbage_is_dropped(garbage: bytes) -> None:
    w = World()
    w.connect()
    for src in (CL, RELAY, SocketAddr(IPv4Address("1.2.3.4"), 3478)):
        assert w.gw.handle_datagram(w.now, GW, src, garbage) is None


def test_deterministic_by_seed() -> None:
    runs = []
    for _ in range(2):
        w = World()
        w.block_direct = True
        w.connect()
        w.run_until(secs(4))
        runs.append((w.gw_events, w.cl_events, w.gw.connections["cl"].peer_socket))
    assert runs[0] == runs[1]


def test_ipv6_direct_and_relayed() -> None:
    w = World(v6=True)
    w.connect()
    w.run_until(secs(3))
    conn = w.gw.connections["cl"]
    assert conn.peer_socket is not None and conn.peer_socket.kind is PathKind.PEER_TO_PEER
    assert (conn.peer_socket.source, conn.peer_socket.dest) == (GW6, CL6)
    relays = sorted(
        e.candidate for e in w.gw_events if isinstance(e, NewIceCandidate) and " typ relay " in e.candidate
    )
    assert len(relays) == 2  # IPv4 and IPv6 relayed addresses (ADDITIONAL-ADDRESS-FAMILY)
    t = w.cl.encapsulate("gw", ip_packet(b"six"), w.now)
    assert t is not None and t.dst == GW6
    w.deliver(CL6, t)
    assert w.delivered[-1] == ("gw", ip_packet(b"six"))
    w6 = World(v6=True)
    w6.block_direct = True
    w6.connect()
    w6.run_until(secs(5))
    c6 = w6.gw.connections["cl"]
    assert c6.peer_socket is not None and c6.peer_socket.via_relay
    assert c6.peer_socket.dest.ip.version == 6


def test_upsert_reuses_and_optimistic_candidates() -> None:
    w = World()
    w.connect()
    w.run_until(secs(2))
    conn = w.gw.connections["cl"]
    gw_creds, cl_creds = ("gwuf", "gateway-password-22chr"), ("cluf", "client-password-22chrs")
    assert w.gw.upsert_connection("cl", crypto.public_key(w.cl_priv), bytes(32), gw_creds, cl_creds, w.now)
    assert w.gw.connections["cl"] is conn  # same credentials and key: reused
    # A remote srflx next to a remote host candidate yields an optimistic (srflx IP, host port) candidate.
    nat = SocketAddr(IPv4Address("198.51.100.99"), 61000)
    w.gw.add_remote_candidate("cl", cand.server_reflexive(nat, CL).to_sdp(), w.now)
    addrs = {r.addr for r in conn.agent.remote_candidates()}
    assert SocketAddr(nat.ip, CL.port) in addrs
    # A different key replaces the connection.
    assert w.gw.upsert_connection(
        "cl", crypto.public_key(bytes(range(5, 37))), None, gw_creds, cl_creds, w.now
    )
    assert w.gw.connections["cl"] is not conn


def test_close_all_sends_goodbye_and_accept_connection() -> None:
    w = World()
    w.connect()
    w.run_until(secs(2))
    goodbye = ip_packet(b"bye")
    w.gw.close_all(goodbye, w.now)
    assert w.gw.connections == {}
    assert ConnectionClosed("cl") in [w.gw.poll_event() for _ in range(20)]
    t = w.gw.poll_command()
    assert isinstance(t, Transmit) and t.dst == CL
    got = w.cl.handle_datagram(w.now, CL, GW, t.payload)
    assert got == ("gw", goodbye)
    # Legacy offer/answer: random 16/22-character credentials come back as the answer.
    creds = w.gw.accept_connection(
        "cl", crypto.public_key(w.cl_priv), None, ("cluf", "client-password-22chrs"), w.now
    )
    assert creds is not None and (len(creds[0]), len(creds[1])) == (16, 22)
    assert w.gw.connections["cl"].agent.local_ufrag == creds[0]


def test_handshake_limiter_is_reset_while_active() -> None:
    w = World()
    w.connect()
    w.run_until(secs(3))
    rl = w.gw.rate_limiter
    assert isinstance(rl, RateLimiter)
    rl.count = 50
    w.run_until(w.now + secs(2))
    assert rl.count == 0  # a connection is active: reset once per second


def _checks_through_the_relay(batch: bool) -> int:
    """A client node with a live allocation gets the gateway's host and srflx candidate (same address,
    as a gateway without NAT signals them) in one message, or one call each; how many connectivity
    checks leave through the relay at once (ChannelData from the client's relayed candidate)."""
    w = World()
    gw_pub = crypto.public_key(w.gw_priv)
    assert w.cl.upsert_connection("gw", gw_pub, bytes(32), ("cluf", "c" * 22), ("gwuf", "g" * 22), w.now)
    while w.cl.poll_command() is not None:
        pass
    host = cand.host(GW).to_sdp() + " ufrag gwuf"
    srflx = cand.server_reflexive(GW, GW).to_sdp()
    if batch:
        w.cl.add_remote_candidates("gw", (host, srflx), w.now)
    else:
        w.cl.add_remote_candidate("gw", host, w.now)
        w.cl.add_remote_candidate("gw", srflx, w.now)
    out = []
    while (c := w.cl.poll_command()) is not None:
        assert isinstance(c, Transmit)
        out.append(c)
    return sum(1 for t in out if t.dst == RELAY and 0x40 <= t.payload[0] <= 0x4F)


def test_candidates_of_one_message_are_added_before_the_first_checks() -> None:
    # One by one, the relayed candidate's check towards the host candidate finds no channel (its srflx
    # twin, which binds one, is not there yet) and is dropped until its 250 ms retransmission; added as
    # one message, the check rides the channel the srflx candidate started binding (decision 0130).
    assert _checks_through_the_relay(batch=False) == 0
    assert _checks_through_the_relay(batch=True) == 1
