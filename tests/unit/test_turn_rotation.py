"""Rotated relay credentials on the same 5-tuple (decision 0020, "Rotated credentials").

After a portal restart the gateway gets new credentials for the same relay and allocates again from the
same local address while its old allocation is still alive. Against the coturn-like mode of
``devpeers.relay`` (437 before authentication, 441 for another username, 1 s release after a delete) and
the Firezone-like mode.
"""

from __future__ import annotations

import pytest

from devpeers.relay import DevRelay
from gateway_core.clock import secs
from gateway_core.entropy import SeededEntropy
from gateway_core.node.node import RelayConfig
from gateway_core.turn.allocation import Allocation, FreeReason, Phase, RelaySocket
from gateway_core.turn.credentials import coturn_rest_password, firezone_password, firezone_username
from gateway_core.turn.types import StaleCredentials
from gateway_core.wire.stun import Attr, Method
from tests.unit.test_node import RELAY, World, _relay_ips
from tests.unit.test_turn_allocation import CLIENT4, EXPIRY, PEER, RELAY4, SECRET, Harness


def _rotate(h: Harness, flavour: str, *, stale: StaleCredentials | None) -> Allocation:
    user = firezone_username(EXPIRY + 1, "rotated")
    pw = (
        coturn_rest_password(SECRET, user)
        if flavour == "coturn"
        else firezone_password(EXPIRY + 1, SECRET, "rotated")
    )
    h.sent.clear()
    h.alloc = Allocation(RelaySocket(RELAY4), user, pw, "firezone", h.now, SeededEntropy(9), stale=stale)
    h.pump()
    return h.alloc


def _relays_data(h: Harness) -> bool:
    h.alloc.bind_channel(PEER, h.now)
    h.pump()
    t = h.alloc.encapsulate(PEER, b"after-rotation", h.now)
    assert t is not None
    h.deliver(h.server.handle(h.now, t.dst, CLIENT4, t.payload))
    ours = h.alloc.relayed_address(4)
    return any(p.payload == b"after-rotation" and p.src == ours and p.dst == PEER for p in h.to_peers)


def test_coturn_rotation_deletes_with_old_credentials_then_allocates() -> None:
    h = Harness("coturn")
    h.pump()
    old_user, old_relayed = h.alloc.username, h.alloc.relayed_address(4)
    b = _rotate(h, "coturn", stale=h.alloc.handover())
    (delete,) = [m for _, m in h.requests(Method.REFRESH)]
    assert delete.u32(Attr.LIFETIME) == 0 and delete.text(Attr.USERNAME) == old_user
    # coturn keeps the 5-tuple for a second after the delete: the ALLOCATE is deferred, not re-deleted.
    h.advance_to(h.now + secs(3))
    assert b.phase is Phase.ALLOCATED
    assert b.relayed_address(4) not in (None, old_relayed)
    assert h.server.allocations[CLIENT4].username == b.username
    assert len(h.requests(Method.REFRESH)) == 1 and b.stats.counters["turn.error_441"] == 0
    assert _relays_data(h)


def test_coturn_rotation_without_old_credentials_is_bounded() -> None:
    """The bug without the handover: our own credentials cannot delete the old allocation (coturn's 441
    is unsigned and ignored), so the delete is abandoned after 8 s; no endless 437 loop either."""
    h = Harness("coturn")
    h.pump()
    b = _rotate(h, "coturn", stale=None)
    h.advance_to(h.now + secs(30))
    assert not b.has_allocation() and b.can_be_freed() is FreeReason.NO_RESPONSE
    assert b.stats.counters["turn.error_437"] == 1 and len(h.requests(Method.ALLOCATE)) == 1
    assert {m.text(Attr.USERNAME) for _, m in h.requests(Method.REFRESH)} == {b.username}


def test_firezone_rotation_deletes_with_old_credentials_then_allocates() -> None:
    h = Harness("firezone")
    h.pump()
    old_user = h.alloc.username
    b = _rotate(h, "firezone", stale=h.alloc.handover())
    assert b.phase is Phase.ALLOCATED
    # snownet's flow up to the 437 (signed), then the delete is signed with the old credentials.
    assert [m.text(Attr.USERNAME) for _, m in h.requests(Method.REFRESH)] == [old_user]
    assert len(h.requests(Method.ALLOCATE)) == 3 and b.stats.counters["turn.error_437"] == 1
    assert _relays_data(h)


def test_refused_old_credentials_fall_back_to_ours() -> None:
    """Old credentials the relay refuses (401 with a nonce): the delete is retried with ours (Firezone)."""
    h = Harness("firezone")
    h.pump()
    bad = StaleCredentials(h.alloc.username, "not-the-password", "no-such-nonce")
    b = _rotate(h, "firezone", stale=bad)
    assert b.phase is Phase.ALLOCATED
    users = [m.text(Attr.USERNAME) for _, m in h.requests(Method.REFRESH)]
    assert users[0] == bad.username and users[-1] == b.username


@pytest.mark.parametrize("also_removed", [False, True])
def test_node_rotation_on_coturn_keeps_the_relay(also_removed: bool) -> None:
    """``Node.update_relays`` with new credentials for the same relay id and address: a portal restart's
    ``init``, or a ``relays_presence`` that lists the id as disconnected and connected at once."""
    w = World()
    srv = DevRelay([RELAY], _relay_ips(RELAY), SECRET, SeededEntropy(10), flavour="coturn")
    w.servers = {RELAY: srv}

    def creds(salt: str) -> RelayConfig:
        user = firezone_username(EXPIRY, salt)
        return RelayConfig("relay0", RelaySocket(RELAY), user, coturn_rest_password(SECRET, user))

    w.gw.update_relays([], [creds("a")], w.now)
    w.pump()
    w.run_until(w.now + secs(2))
    first = w.gw.allocations["relay0"]
    assert first.phase is Phase.ALLOCATED
    w.gw.update_relays(["relay0"] if also_removed else [], [creds("b")], w.now)
    w.pump()
    w.run_until(w.now + secs(5))
    second = w.gw.allocations["relay0"]
    assert second is not first and second.phase is Phase.ALLOCATED
    assert srv.allocations[w.gw_addr].username == second.username
