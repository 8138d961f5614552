"""The controlled side's handshake nudge (decision 0173).

Found by the stateful test in a lossy world: the gateway closed a client's connection and its goodbye was
lost; the flow came back within 20 s, so the gateway made a fresh connection (no WireGuard session) while
the client reused its own, kept its session and started no handshake (snownet's ``initiate_wg_session``
suppresses one within 20 s of the last). ICE worked, no data could: for good while the client was idle, and
until 15 s after its first unanswered packet otherwise. Now the gateway starts a handshake itself when none
was accepted ``HANDSHAKE_NUDGE_AFTER`` after its path was nominated, and confirms the new session with
``NUDGE_KEEPALIVES`` keepalives.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway_core.addr import SocketAddr
from gateway_core.clock import millis, secs
from gateway_core.commands import Transmit
from gateway_core.entropy import SeededEntropy
from gateway_core.node.connection import HANDSHAKE_NUDGE_AFTER, NUDGE_KEEPALIVES, ConnState
from gateway_core.wireguard import WireGuardPeer, crypto
from tests.unit.test_node import CL, GW, World, ip_packet


class Lossy(World):
    """Drops the datagrams ``lose`` says to drop (by source and payload); records WireGuard messages."""

    def __init__(self) -> None:
        self.lose: Callable[[SocketAddr, bytes], bool] = lambda src, payload: False
        self.wg: list[tuple[int, SocketAddr, int]] = []
        super().__init__()

    def deliver(self, src: SocketAddr, t: Transmit) -> None:
        if src in (GW, CL) and t.payload[1:4] == b"\0\0\0" and 1 <= t.payload[0] <= 4:
            self.wg.append((self.now, src, t.payload[0]))
        if self.lose(src, t.payload):
            return
        super().deliver(src, t)


def _tunnels(w: World) -> tuple[WireGuardPeer, WireGuardPeer]:
    g, c = w.gw.connections["cl"].tunnel, w.cl.connections["gw"].tunnel
    assert isinstance(g, WireGuardPeer) and isinstance(c, WireGuardPeer)
    return g, c


def _agree(w: World) -> bool:
    """Each side sends on a session the other holds."""
    g, c = _tunnels(w)
    gs, cs = g.current_session, c.current_session
    g_local = {s.local_index for s in g.sessions if s is not None}
    c_local = {s.local_index for s in c.sessions if s is not None}
    return gs is not None and cs is not None and cs.peer_index in g_local and gs.peer_index in c_local


def _goodbye_lost_then_flow_again(w: Lossy) -> int:
    """Connect, close the gateway's side with a goodbye the network loses, and 2 s later let the flow come
    again at both ends (the client reuses its connection). Returns when the gateway's new path was
    nominated."""
    w.connect()
    w.run_until(secs(3))
    assert _agree(w)
    w.lose = lambda src, payload: src == GW
    w.gw.close_connection("cl", ip_packet(b"goodbye"), w.now)
    w.pump()
    w.lose = lambda src, payload: False
    assert "cl" not in w.gw.connections and "gw" in w.cl.connections
    w.run_until(secs(5))
    w.connect()  # the gateway makes a new connection; the client's upsert is a reuse within 20 s
    start = w.now
    while w.gw.connections["cl"].nominated_at is None:
        w.run_until(w.now + millis(10))
    nominated = w.gw.connections["cl"].nominated_at
    assert nominated is not None and nominated - start <= secs(2)  # the client's next check nominates
    g, _ = _tunnels(w)
    assert g.current_session is None and not _agree(w)
    return nominated


def test_nudge_gives_a_reused_client_connection_a_session_again() -> None:
    w = Lossy()
    nominated = _goodbye_lost_then_flow_again(w)
    w.run_until(nominated + HANDSHAKE_NUDGE_AFTER - millis(1))
    assert not _agree(w) and [m for t, s, m in w.wg if t >= nominated and m == 1] == []
    w.run_until(nominated + HANDSHAKE_NUDGE_AFTER + secs(1) + millis(100))  # the next WireGuard tick
    assert _agree(w)
    inits = [(t, s) for t, s, m in w.wg if t >= nominated and m == 1]
    assert len(inits) == 1 and inits[0][1] == GW
    g, _ = _tunnels(w)
    assert g.stats.counters["handshake_nudges"] == 1 and g.is_initiator
    # Data flows both ways on the new session.
    up = w.cl.encapsulate("gw", ip_packet(b"up"), w.now)
    assert up is not None
    w.deliver(CL, up)
    down = w.gw.encapsulate("cl", ip_packet(b"down"), w.now)
    assert down is not None
    w.deliver(GW, down)
    assert w.delivered[-2:] == [("gw", ip_packet(b"up")), ("cl", ip_packet(b"down"))]


def test_a_lost_confirmation_keepalive_is_covered_by_the_next() -> None:
    """The client answers the nudge as responder and switches only on a packet on the new session: the
    keepalive the gateway's tunnel sends with the handshake is lost; the next WireGuard tick sends
    another, and then one more (``NUDGE_KEEPALIVES`` in all)."""
    w = Lossy()
    nominated = _goodbye_lost_then_flow_again(w)
    lost: list[int] = []

    def first_keepalive(src: SocketAddr, payload: bytes) -> bool:
        if src == GW and payload[0] == 4 and len(payload) == 32 and not lost:
            lost.append(w.now)
            return True
        return False

    w.lose = first_keepalive
    while not lost:
        assert w.now < nominated + HANDSHAKE_NUDGE_AFTER + secs(1)
        w.run_until(w.now + millis(10))
    assert not _agree(w)  # the client answered, but still sends on the session the gateway forgot
    w.run_until(lost[0] + secs(1) + millis(100))
    assert _agree(w)
    w.run_until(w.now + secs(5))
    keepalives = [t for t, s, m in w.wg if s == GW and m == 4 and t >= lost[0]]
    assert len(keepalives) == NUDGE_KEEPALIVES == 3
    assert w.gw.connections["cl"].tunnel.stats.counters["handshake_nudges"] == 1


def test_no_nudge_when_the_client_handshakes() -> None:
    """The usual case: the client's initiation arrives with its nomination; the gateway never starts one."""
    w = Lossy()
    w.connect()
    w.run_until(secs(30))
    gconn = w.gw.connections["cl"]
    assert gconn.state is ConnState.IDLE and gconn.established_signalled
    assert "handshake_nudges" not in gconn.tunnel.stats.counters
    assert [s for t, s, m in w.wg if m == 1] == [CL]


def test_a_client_whose_initiations_are_all_lost() -> None:
    """Every initiation of the client is lost (its first and its retransmissions 5 s apart): the gateway's
    own comes HANDSHAKE_NUDGE_AFTER after its nomination, on its one-second WireGuard tick, and the
    client's answer to it gets through."""
    w = Lossy()
    w.lose = lambda src, payload: src == CL and _is_initiation(payload)
    w.connect()
    w.run_until(secs(1))
    gconn = w.gw.connections["cl"]
    nominated = gconn.nominated_at
    assert nominated is not None and gconn.state is ConnState.CONNECTED
    w.run_until(nominated + HANDSHAKE_NUDGE_AFTER + secs(1) + millis(100))
    assert _agree(w)
    assert [s for t, s, m in w.wg if m == 1 and s == GW] == [GW]
    assert _tunnels(w)[0].handshake.peer_public == crypto.public_key(w.cl_priv)


def _is_initiation(payload: bytes) -> bool:
    return len(payload) == 148 and payload[:4] == b"\x01\0\0\0"


def test_tunnel_keepalive_needs_a_current_session() -> None:
    """``WireGuardPeer.keepalive`` queues nothing and starts no handshake without a current session."""
    w = Lossy()
    w.connect()
    w.run_until(secs(3))
    g, _ = _tunnels(w)
    assert g.current_session is not None
    g.keepalive(w.now)
    out = g.poll_transmit()
    assert out is not None and len(out) == 32 and out[0] == 4
    fresh = WireGuardPeer(
        static_private=w.gw_priv,
        peer_public=crypto.public_key(w.cl_priv),
        psk=None,
        global_index=7,
        entropy=SeededEntropy(3),
        now=w.now,
        wall_unix_ns=1_700_000_000 * 10**9,
    )
    fresh.keepalive(w.now)
    assert fresh.poll_transmit() is None and not fresh.handshake.in_progress
