"""Closing a connection whose goodbye waits for a WireGuard session (decision 0172).

Found by the stateful test (``relay_only_dual_stack_move_site_no_goodbye``): the gateway closed a new
connection whose responder session the client had not confirmed yet (its keepalive was on the way), so
the tunnel queued the goodbye behind a Handshake Initiation and the connection was forgotten at once, as
snownet's ``close_connection`` does; the client's response found nothing and the goodbye never left. The
node now keeps such a connection as *closing* (``gateway_core/node/closing.py``) until the goodbye has
left, the handshake gives up, or a new connection with the same id replaces it; a closing connection
delivers nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.commands import Transmit
from gateway_core.errors import DropReason
from gateway_core.node.closing import CLOSE_GIVE_UP
from gateway_core.node.events import ConnectionClosed
from gateway_core.wireguard import WireGuardPeer, crypto
from tests.unit.test_node import CL, GW, World, ip_packet

GOODBYE = ip_packet(b"goodbye")
CL_CREDS = ("cluf", "client-password-22chrs")
GW_CREDS = ("gwuf", "gateway-password-22chr")


def wg_type(t: Transmit) -> int | None:
    """The WireGuard message type of a datagram on the direct path, or ``None`` (STUN)."""
    p = t.payload
    return p[0] if len(p) >= 32 and 1 <= p[0] <= 4 and p[1:4] == bytes(3) else None


class HoldWorld(World):
    """The node test world with a hand on the wire: datagrams ``hold`` selects are kept in ``held``."""

    def __init__(self) -> None:
        self.hold: Callable[[SocketAddr, Transmit], bool] = lambda src, t: False
        self.held: list[tuple[SocketAddr, Transmit]] = []
        super().__init__()

    def deliver(self, src: SocketAddr, t: Transmit) -> None:
        if self.hold(src, t):
            self.held.append((src, t))
            return
        super().deliver(src, t)

    def gw_out(self) -> list[Transmit]:
        out = []
        while (c := self.gw.poll_command()) is not None:
            assert isinstance(c, Transmit)
            out.append(c)
        return out

    def goodbyes(self) -> int:
        return self.delivered.count(("cl", GOODBYE))


def unconfirmed() -> HoldWorld:
    """Connected, but the client's keepalive confirming the gateway's responder session is held: the
    gateway has no session it may send on (the finding's state when the resource moved)."""
    w = HoldWorld()
    w.hold = lambda src, t: src == CL and wg_type(t) == 4
    w.connect()
    w.run_until(secs(2))
    tunnel = w.gw.connections["cl"].tunnel
    assert isinstance(tunnel, WireGuardPeer)
    assert tunnel.stats.snapshot().get("handshakes_as_responder") == 1
    assert tunnel.current_session is None
    assert [wg_type(t) for _, t in w.held] == [4]  # the keepalive
    return w


def test_a_sendable_session_sends_the_goodbye_and_keeps_nothing() -> None:
    w = HoldWorld()
    w.connect()
    w.run_until(secs(2))
    w.gw.close_connection("cl", GOODBYE, w.now)
    out = w.gw_out()
    assert [wg_type(t) for t in out] == [4]
    assert w.gw.connections == {} and w.gw.closing == {}
    assert w.gw.stats.snapshot().get("node.goodbye_waits") is None
    w.deliver(GW, out[0])
    assert w.goodbyes() == 1


def test_the_goodbye_waits_for_the_handshake_it_started() -> None:
    w = unconfirmed()
    w.held.clear()  # the keepalive is lost
    w.hold = lambda src, t: False
    w.gw.close_connection("cl", GOODBYE, w.now)
    assert "cl" not in w.gw.connections and "cl" in w.gw.closing
    assert ConnectionClosed("cl") in [w.gw.poll_event() for _ in range(10)]
    assert w.gw.encapsulate("cl", ip_packet(b"late"), w.now) is None  # nothing goes in any more
    w.pump()  # initiation -> response -> the goodbye
    assert w.goodbyes() == 1
    assert w.gw.closing == {}
    assert w.gw.stats.snapshot().get("node.goodbye_sent_late") == 1


def test_the_late_keepalive_lets_the_goodbye_out() -> None:
    """The finding's order: the client's keepalive, sent before the close, confirms the session after it."""
    w = unconfirmed()
    (_, keepalive), *_ = w.held
    w.hold = lambda src, t: False
    w.gw.close_connection("cl", GOODBYE, w.now)
    assert [wg_type(t) for t in w.gw_out()] == [1]  # the initiation, not delivered
    assert w.gw.handle_datagram(w.now, GW, CL, keepalive.payload) is None
    out = w.gw_out()
    assert [wg_type(t) for t in out] == [4]
    w.deliver(GW, out[0])
    assert w.goodbyes() == 1 and w.gw.closing == {}


def test_a_closing_connection_delivers_nothing_and_drops_what_waited() -> None:
    w = unconfirmed()
    w.held.clear()
    data = w.cl.encapsulate("gw", ip_packet(b"from the client"), w.now)  # on the client's session
    assert data is not None and wg_type(data) == 4
    w.gw.encapsulate("cl", ip_packet(b"queued before the close"), w.now)  # waits for a session
    w.gw_out()  # (its initiation is lost)
    w.gw.close_connection("cl", GOODBYE, w.now)
    drops = w.gw.stats.drops
    assert drops[DropReason.CONNECTION_CLOSING] == 1  # the packet that waited
    assert w.gw.handle_datagram(w.now, GW, CL, data.payload) is None  # confirms the session, delivers nothing
    assert drops[DropReason.CONNECTION_CLOSING] == 2
    w.hold = lambda src, t: False
    for t in w.gw_out():
        w.deliver(GW, t)
    assert [who for who, _ in w.delivered] == ["cl"] and w.goodbyes() == 1  # the goodbye alone


def test_an_initiation_is_not_answered_by_a_closing_connection() -> None:
    w = unconfirmed()
    w.gw.close_connection("cl", GOODBYE, w.now)
    w.gw_out()
    tunnel = w.cl.connections["gw"].tunnel
    assert isinstance(tunnel, WireGuardPeer)
    tunnel.initiate(w.now)
    init = tunnel.poll_transmit()
    assert init is not None and init[0] == 1
    before = w.gw.stats.drops[DropReason.WG_UNKNOWN_INDEX]
    assert w.gw.handle_datagram(w.now, GW, CL, init) is None
    assert w.gw.stats.drops[DropReason.WG_UNKNOWN_INDEX] == before + 1
    assert w.gw_out() == [] and "cl" in w.gw.closing


def test_an_unanswered_goodbye_is_given_up_with_the_handshake() -> None:
    w = unconfirmed()
    w.hold = lambda src, t: True  # from now on nothing arrives anywhere
    t0 = w.now
    w.gw.close_connection("cl", GOODBYE, t0)
    total = w.gw.tunnel_stats().snapshot()["initiations_sent"]
    d = w.gw.poll_timeout()
    assert d is not None and d == w.gw.poll_timeout_recomputed()
    w.run_until(t0 + CLOSE_GIVE_UP - secs(1))
    assert "cl" in w.gw.closing
    w.run_until(t0 + CLOSE_GIVE_UP)
    assert w.gw.closing == {}
    assert w.gw.stats.snapshot().get("node.goodbye_given_up") == 1
    inits = [t for src, t in w.held if src == GW and wg_type(t) == 1]
    assert len(inits) == 3  # at the close, ~5 s and ~10 s later (REKEY_TIMEOUT), then WireGuard gives up
    after = w.gw.tunnel_stats().snapshot()["initiations_sent"]
    assert after == total + 2  # the closing tunnel's counters were kept, then retired
    assert w.goodbyes() == 0


def test_a_new_connection_replaces_the_closing_one() -> None:
    w = unconfirmed()
    w.hold = lambda src, t: src == GW  # the initiation is held
    w.gw.close_connection("cl", GOODBYE, w.now)
    w.pump()
    old = w.gw.closing["cl"]
    cl_pub = crypto.public_key(w.cl_priv)
    assert w.gw.upsert_connection("cl", cl_pub, bytes(32), GW_CREDS, CL_CREDS, w.now)  # the same client
    assert w.gw.closing == {} and w.gw.connections["cl"] is not old
    assert w.gw.connections["cl"].index != old.index
    assert w.gw.stats.snapshot().get("node.goodbye_superseded") == 1
    # The old initiation reaches the client, whose response names the forgotten index: dropped, no goodbye.
    w.hold = lambda src, t: False
    (_, init), *_ = [(s, t) for s, t in w.held if wg_type(t) == 1]
    w.deliver(GW, init)
    w.pump()
    assert w.goodbyes() == 0
    # The client makes its connection again: the new one works, and no goodbye ever comes.
    w.cl.remove_connection("gw")
    assert w.cl.upsert_connection("gw", crypto.public_key(w.gw_priv), bytes(32), CL_CREDS, GW_CREDS, w.now)
    w.pump()
    w.run_until(w.now + secs(3))
    t = w.cl.encapsulate("gw", ip_packet(b"again"), w.now)
    assert t is not None
    w.deliver(CL, t)
    assert w.delivered[-1] == ("gw", ip_packet(b"again"))
    w.run_until(w.now + CLOSE_GIVE_UP + secs(5))
    assert w.goodbyes() == 0


def test_remove_connection_forgets_a_closing_one() -> None:
    w = unconfirmed()
    w.gw.close_connection("cl", GOODBYE, w.now)
    assert "cl" in w.gw.closing
    w.gw.remove_connection("cl")
    assert w.gw.closing == {} and w.gw.poll_timeout() == w.gw.poll_timeout_recomputed()


def test_a_closing_index_is_not_given_to_a_new_connection() -> None:
    w = unconfirmed()
    w.gw.close_connection("cl", GOODBYE, w.now)
    taken = w.gw.closing["cl"].index
    real = w.gw._entropy
    picks = iter([taken, taken ^ 1])

    class Scripted:
        def randbelow(self, n: int) -> int:
            return next(picks) if n == 1 << 24 else real.randbelow(n)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    w.gw._entropy = Scripted()  # type: ignore[assignment]
    other = crypto.public_key(bytes(range(3, 35)))
    assert w.gw.upsert_connection("other", other, None, ("ouf", "o" * 22), ("ocl", "p" * 22), w.now)
    assert w.gw.connections["other"].index == taken ^ 1
    assert w.gw.closing["cl"].index == taken


def test_time_runs_on_for_a_closing_connection() -> None:
    """Its deadline is the tunnel's (the retransmission) and is kept exactly (R4/R5)."""
    w = unconfirmed()
    w.hold = lambda src, t: True
    w.gw.close_connection("cl", GOODBYE, w.now)
    d = w.gw.poll_timeout()
    assert d is not None and d.at > w.now and d == w.gw.poll_timeout_recomputed()
    w.run_until(Instant(w.now + secs(6)))  # past the first retransmission (asserts R5 at every step)
    assert "cl" in w.gw.closing
    assert w.gw.poll_timeout() == w.gw.poll_timeout_recomputed()
