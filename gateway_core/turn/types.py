"""Values the TURN allocation exchanges with its owner: relay sockets, events, phases and free reasons."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway_core.addr import SocketAddr
from gateway_core.ice.candidate import Candidate
from gateway_core.wire.stun import StunMessage


@dataclass(frozen=True, slots=True)
class RelaySocket:
    """The relay's addresses: IPv4, IPv6 or both (snownet ``RelaySocket``)."""

    v4: SocketAddr | None = None
    v6: SocketAddr | None = None

    def matches(self, addr: SocketAddr) -> bool:
        return addr == self.v4 or addr == self.v6

    def addrs(self) -> list[SocketAddr]:
        return [a for a in (self.v4, self.v6) if a is not None]


class FreeReason(StrEnum):
    PROTOCOL_FAILURE = "protocol_failure"
    NO_RESPONSE = "no_response"
    AUTHENTICATION_ERROR = "authentication_error"


class Phase(StrEnum):
    PROBING = "probing"
    """No active socket yet: BINDING probes in flight."""
    ALLOCATING = "allocating"
    """Active socket known, ALLOCATE/REFRESH in flight, no allocation."""
    ALLOCATED = "allocated"
    SUSPENDED = "suspended"
    """No allocation and nothing in flight; waits for :meth:`Allocation.refresh`."""
    DEAD = "dead"
    """:meth:`Allocation.can_be_freed` says so."""


TRANSITIONS: frozenset[tuple[Phase, Phase, str]] = frozenset(
    {
        (Phase.PROBING, Phase.ALLOCATING, "binding answered"),
        (Phase.PROBING, Phase.DEAD, "no answer"),
        (Phase.ALLOCATING, Phase.ALLOCATED, "allocate success"),
        (Phase.ALLOCATING, Phase.SUSPENDED, "allocate failed"),
        (Phase.ALLOCATING, Phase.DEAD, "auth failure or timeout"),
        (Phase.ALLOCATED, Phase.ALLOCATING, "allocation mismatch"),
        (Phase.ALLOCATED, Phase.SUSPENDED, "expired or relay lost"),
        (Phase.ALLOCATED, Phase.DEAD, "relay lost or auth failure"),
        (Phase.SUSPENDED, Phase.PROBING, "refresh"),
        (Phase.SUSPENDED, Phase.ALLOCATING, "re-allocate"),
        (Phase.SUSPENDED, Phase.DEAD, "relay lost"),
        (Phase.PROBING, Phase.SUSPENDED, "probe lost"),
        (Phase.ALLOCATING, Phase.PROBING, "refresh"),
        (Phase.ALLOCATED, Phase.PROBING, "relay lost, re-probing"),
        (Phase.DEAD, Phase.PROBING, "relay re-announced"),
    }
)
"""Allowed phase changes and why; rendered as a diagram in ``docs/design/turn-allocation.md``."""


def transition_diagram() -> str:
    """Mermaid state diagram of :data:`TRANSITIONS` (``docs/design/turn-allocation.md`` embeds it)."""
    order = list(Phase)
    lines = ["stateDiagram-v2", "    [*] --> probing"]
    for a, b, why in sorted(TRANSITIONS, key=lambda t: (order.index(t[0]), order.index(t[1]))):
        lines.append(f"    {a.value} --> {b.value}: {why}")
    lines.append("    dead --> [*]: freed by the node")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CandidateEvent:
    """A local candidate appeared (``new``) or must be withdrawn."""

    new: bool
    candidate: Candidate


@dataclass(slots=True)
class PendingRequest:
    """A request in flight: its unauthenticated template and its retransmission schedule (ns)."""

    dst: SocketAddr
    template: StunMessage
    start: int
    next_at: int
    interval: int
    max_elapsed: int
    sent_nonce: bool = False
    plain: bool = False
    stale: bool = False
    """Signed with the :class:`StaleCredentials` (the delete of an allocation made with them)."""
    sends: int = 0
    """How many times this request went out: an answer to a retransmission may answer an earlier send's
    effect (an ALLOCATE that succeeded on the server while its response was lost)."""


@dataclass(slots=True)
class StaleCredentials:
    """Credentials of an earlier allocation that may still exist on the same 5-tuple (decision 0020).

    The relay's credentials rotated (a portal restart): RFC 8656 ties an allocation to its 5-tuple and a
    standard server (coturn) only lets the allocation's own username refresh or delete it.
    """

    username: str
    password: str
    nonce: str
