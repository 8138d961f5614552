"""A lost ALLOCATE success: the server made the allocation, the client never heard of it.

Every (re)send of a signed request has a fresh transaction id (as in snownet), so neither relay can tell
the retransmission from a new request: it answers 437 (our 5-tuple holds an allocation), and that
allocation is our own. The client deletes it with its own credentials and allocates again, whatever
mismatches it recovered from before and however soon after a delete of its own (found by the stateful
test in a lossy world: a client behind a symmetric NAT lost its relay for good after a rotation).
"""

from __future__ import annotations

import pytest

from gateway_core.clock import Instant, secs
from gateway_core.commands import Transmit
from gateway_core.turn.allocation import Phase
from gateway_core.turn.types import StaleCredentials
from gateway_core.wire import stun
from gateway_core.wire.stun import Attr, Class, Method
from tests.unit.test_turn_allocation import CLIENT4, CLIENT6, Harness
from tests.unit.test_turn_rotation import _relays_data, _rotate


class LosesAllocateSuccess(Harness):
    """The link loses the next ``lose`` ALLOCATE success responses (everything else arrives at once)."""

    def __init__(self, flavour: str) -> None:
        super().__init__(flavour)
        self.lose = 0
        self.lost_at: list[int] = []

    def deliver(self, out: list[Transmit]) -> None:
        kept = []
        for r in out:
            if self.lose and r.dst in (CLIENT4, CLIENT6) and r.payload[0] < 4:
                m = stun.decode(r.payload)
                if m.method == Method.ALLOCATE and m.cls == Class.SUCCESS:
                    self.lose -= 1
                    self.lost_at.append(self.now)
                    continue
            kept.append(r)
        super().deliver(kept)


def _deletes(h: Harness) -> list[str | None]:
    return [m.text(Attr.USERNAME) for _, m in h.requests(Method.REFRESH) if m.u32(Attr.LIFETIME) == 0]


@pytest.mark.parametrize("flavour", ["firezone", "coturn"])
def test_first_allocate_success_lost(flavour: str) -> None:
    h = LosesAllocateSuccess(flavour)
    h.lose = 1
    h.pump()
    assert h.lost_at and not h.alloc.has_allocation()
    h.advance_to(Instant(h.lost_at[0] + secs(4)))
    assert h.alloc.phase is Phase.ALLOCATED
    assert _deletes(h) == [h.alloc.username]
    assert h.server.allocations[CLIENT4].relayed[0] == h.alloc.relayed_address(4)
    assert _relays_data(h)


def test_lost_success_after_both_mismatch_recoveries_firezone() -> None:
    """The stateful test's case: rotated credentials the relay refuses (the first delete fails), our own
    delete succeeds, and the success of the ALLOCATE that follows is lost. Before the fix the retransmission's
    437 was taken for a delete still being carried out (deferred for 5 s), then the two recoveries were
    spent and the relay was given up ("cannot delete it")."""
    h = LosesAllocateSuccess("firezone")
    h.pump()
    bad = StaleCredentials(h.alloc.username, "not-the-password", "no-such-nonce")
    h.lose = 1
    b = _rotate(h, "firezone", stale=bad)
    assert len(h.lost_at) == 1 and not b.has_allocation()
    # The retransmission 1 s later gets 437; one delete with our credentials, one ALLOCATE, done.
    h.advance_to(Instant(h.lost_at[0] + secs(1)))
    assert b.phase is Phase.ALLOCATED
    # The old credentials' delete (challenged once, then refused), ours, and ours again for the lost one.
    assert _deletes(h) == [bad.username, bad.username, b.username, b.username]
    assert h.server.allocations[CLIENT4].username == b.username
    assert _relays_data(h)


def test_lost_success_after_the_rotation_delete_coturn() -> None:
    """coturn: the delete with the old credentials succeeds, the ALLOCATE is deferred while coturn releases
    the 5-tuple, and its success is lost. The retransmission's 437 is our own allocation: deleted with our
    credentials at once (coturn lets its owner do so), not deferred until 5 s after the first delete."""
    h = LosesAllocateSuccess("coturn")
    h.pump()
    old = h.alloc.handover()
    assert old is not None
    h.lose = 1
    b = _rotate(h, "coturn", stale=old)
    h.advance_to(h.now + secs(2))
    assert len(h.lost_at) == 1
    # 1 s to the retransmission, 1 s for coturn to release the 5-tuple after our delete.
    h.advance_to(Instant(h.lost_at[0] + secs(2)))
    assert b.phase is Phase.ALLOCATED
    assert _deletes(h) == [old.username, b.username]
    assert b.stats.counters["turn.error_441"] == 0
    assert h.server.allocations[CLIENT4].username == b.username
    assert _relays_data(h)
