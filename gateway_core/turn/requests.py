"""The allocation's ALLOCATE and REFRESH layouts: snownet's for the Firezone relay, RFC 8656's for standard
servers (coturn), decisions 0020 and 0171.

Stateless builders mixed into :class:`gateway_core.turn.allocation.Allocation` (kept apart to keep that
module small); the state they read (requested family, the server's kind, the refused dual allocation)
lives in the allocation.
"""

from __future__ import annotations

from gateway_core.turn.auth import LongTermAuth
from gateway_core.wire import stun
from gateway_core.wire import turn as tw
from gateway_core.wire.stun import Attr, Class, Method, StunMessage


class Requests:
    """Request builders of :class:`~gateway_core.turn.allocation.Allocation`."""

    auth: LongTermAuth
    software: str | None
    requested_family: int | None
    _single_family: bool

    def _tid(self) -> bytes:
        raise NotImplementedError

    def _dual(self) -> bool:
        """Ask for IPv4 plus IPv6 (snownet), unless told one family or the server refused two (440)."""
        return self.requested_family is None and not self._single_family

    def _allocate_request(self) -> StunMessage:
        """ALLOCATE: REQUESTED-TRANSPORT UDP, ADDITIONAL-ADDRESS-FAMILY IPv6 (snownet); standard servers get
        that attribute at coturn's pre-4.8 codepoint as well (coturn 4.6 ignores RFC 8656's)."""
        dual = self._dual()
        return tw.allocate(
            self._tid(),
            software=self.software,
            requested_family=self.requested_family,
            additional_family=stun.FAMILY_IPV6 if dual else None,
            draft_codepoint=dual and self.auth.standard_server,
        )

    def _refresh_request(self, lifetime: int | None = None) -> StunMessage:
        """REFRESH as snownet sends it; standard servers refuse REQUESTED-TRANSPORT in it (420)."""
        m = StunMessage(Method.REFRESH, Class.REQUEST, self._tid())
        if not self.auth.standard_server:
            m.add(Attr.REQUESTED_TRANSPORT, tw.encode_requested_transport())
            if self._dual():
                m.add(Attr.ADDITIONAL_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))
        if self.software is not None:
            m.add_text(Attr.SOFTWARE, self.software)
        if lifetime is not None:
            m.add_u32(Attr.LIFETIME, lifetime)
        return m
