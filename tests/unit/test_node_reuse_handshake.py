"""The controlling side's handshake when a connection is reused (snownet's ``initiate_wg_session``).

Found by the stateful test: a client whose goodbye was lost keeps its connection; when the flow comes again
the gateway makes a fresh one while the client reused its own and kept sending on a session the gateway no
longer had. snownet's ``upsert_connection`` starts a new WireGuard session on reuse (not within 20 s of the
last one, not while one is in progress); so does ``Connection.reuse_handshake`` now.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any, cast

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.node.connection import PROACTIVE_HANDSHAKE_GAP, Connection, PathKind, PeerSocket
from gateway_core.stats import Stats


class FakeTunnel:
    """Counts initiations like ``WireGuardPeer`` (none while ``busy``: a handshake in progress)."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.calls: list[Instant] = []
        self.busy = False

    def initiate(self, now: Instant) -> None:
        self.calls.append(now)
        if not self.busy:
            self.stats.incr("initiations_sent")


def conn(tunnel: FakeTunnel) -> Connection:
    c = Connection("gw", cast(Any, object()), cast(Any, tunnel), 1, None, Instant(0))
    a, b = SocketAddr(ip_address("192.0.2.1"), 1), SocketAddr(ip_address("192.0.2.2"), 2)
    c.peer_socket = PeerSocket(PathKind.PEER_TO_PEER, a, b)
    return c


def test_reuse_starts_a_handshake_at_most_every_20_s() -> None:
    t = FakeTunnel()
    c = conn(t)
    assert secs(20) == PROACTIVE_HANDSHAKE_GAP
    assert c.reuse_handshake(Instant(secs(1)))
    assert c.last_proactive_handshake == secs(1)
    assert not c.reuse_handshake(Instant(secs(20)))  # 19 s later: suppressed
    assert t.calls == [secs(1)]
    assert c.reuse_handshake(Instant(secs(21)))
    assert t.calls == [secs(1), secs(21)]


def test_no_handshake_without_a_path_or_while_one_is_in_progress() -> None:
    t = FakeTunnel()
    c = conn(t)
    c.peer_socket = None
    assert not c.reuse_handshake(Instant(secs(1))) and t.calls == []
    c = conn(t)
    t.busy = True
    assert not c.reuse_handshake(Instant(secs(1)))
    assert c.last_proactive_handshake is None  # nothing went out: the next reuse may try again
    t.busy = False
    assert c.reuse_handshake(Instant(secs(2)))


def test_a_nomination_handshake_counts_as_the_last_proactive_one() -> None:
    """The node records the nomination's handshake too (snownet: the same ``initiate_wg_session``)."""
    t = FakeTunnel()
    c = conn(t)
    c.last_proactive_handshake = Instant(secs(5))
    assert not c.reuse_handshake(Instant(secs(10)))
    assert c.reuse_handshake(Instant(secs(25)))
