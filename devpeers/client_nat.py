"""The dev client's side of the DNS-resource NAT handshake: when to (re)send ``assigned_ips`` to a gateway
and which packets to hold meanwhile (Firezone: ``rust/connlib/tunnel/src/client/dns_resource_nat.rs``).

Theory of operation. The p2p control protocol (:mod:`gateway_core.policy.p2p_control`) has no request ids
and no delivery guarantee; it is idempotent, and the *client* repeats ``assigned_ips``.
:class:`DomainNatRequest` is that small pure machine, one per (gateway, domain). It re-sends only when it
has traffic (or a new DNS answer) for the domain and at least :data:`ASSIGNED_IPS_RETRY_INTERVAL` passed
since the last send; there is no timer. Packets for the domain wait in a small buffer until the gateway
answers ``Active``. The gateway never runs this code: it lives with the dev client, not in
``gateway_core``.

:func:`firezone_domain_status` writes a ``domain_status`` as Firezone's gateway does, independently of the
gateway's encoder: the dev client counts (``control.not_canonical``) every control packet from a gateway
that differs from it, and the stateful test expects none.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from enum import Enum

from gateway_core.clock import Instant, secs
from gateway_core.errors import DecodeError
from gateway_core.policy.p2p_control import EVENT_DOMAIN_STATUS, DomainStatus, NatStatus
from gateway_core.wire.ip import PROTO_TCP, TCP_ACK, TCP_SYN, l4_info

ASSIGNED_IPS_RETRY_INTERVAL = secs(2)
"""The client re-sends a pending ``assigned_ips`` at most every 2 s (``dns_resource_nat.rs:234-236``)."""
PENDING_BUFFER_PACKETS = 32
"""Packets the client buffers per pending domain (``dns_resource_nat.rs``: capacity 2^5)."""


class RequestState(Enum):
    PENDING = "pending"
    RECREATING = "recreating"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class DomainNatRequest:
    """One (gateway, domain) of a client: when to (re)send ``assigned_ips`` and what to buffer meanwhile.

    Transitions: created ``PENDING`` (send now, buffer); ``Active`` -> ``CONFIRMED`` (flush the buffer);
    anything else -> ``FAILED``; a fresh DNS answer for the domain moves ``CONFIRMED``/``FAILED`` to
    ``RECREATING``, and the next update sends again (``PENDING``), buffering only if it had failed.
    """

    __slots__ = ("_buffer", "packet", "sent_at", "should_buffer", "state")

    def __init__(self, packet: bytes, now: Instant) -> None:
        self.packet = packet
        """The ``assigned_ips`` packet to (re)send."""
        self.state = RequestState.PENDING
        self.sent_at = now
        self.should_buffer = True
        self._buffer: deque[bytes] = deque(maxlen=PENDING_BUFFER_PACKETS)

    def _due(self, now: Instant) -> bool:
        if now - self.sent_at >= ASSIGNED_IPS_RETRY_INTERVAL:
            self.sent_at = now
            return True
        return False

    def _keep(self, packet: bytes) -> None:
        """Buffer a packet as Firezone's ``UniquePacketBuffer::push`` does: byte-identical duplicates are
        skipped, a retransmitted TCP SYN replaces the earlier one, the oldest falls out when full."""
        if packet in self._buffer:
            return
        for i, old in enumerate(self._buffer):
            if _is_syn_retransmit(old, packet):
                self._buffer[i] = packet
                return
        self._buffer.append(packet)

    def update(self, now: Instant, packets: Sequence[bytes] = ()) -> bool:
        """A new DNS answer for the domain; True if ``assigned_ips`` must be sent now."""
        if self.state is RequestState.PENDING:
            self._buffer.extend(packets)  # as the reference's ``extend``: no de-duplication here
            return self._due(now)
        if self.state is RequestState.RECREATING:
            self.state = RequestState.PENDING
            self.sent_at = now
            self._buffer.clear()
            self._buffer.extend(packets)
            return True
        return False

    def recreate(self) -> None:
        """The client resolved the domain again: ask the gateway to resolve it again too."""
        if self.state is RequestState.CONFIRMED:
            self.state, self.should_buffer = RequestState.RECREATING, False
        elif self.state is RequestState.FAILED:
            self.state, self.should_buffer = RequestState.RECREATING, True

    def outgoing(self, now: Instant, packet: bytes) -> tuple[bytes | None, bool]:
        """A packet for the domain: ``(packet to send now or None if buffered, send assigned_ips?)``."""
        if self.state is not RequestState.PENDING:
            return packet, False
        resend = self._due(now)
        if self.should_buffer:
            self._keep(packet)
            return None, resend
        return packet, resend

    def on_status(self, status: NatStatus) -> list[bytes]:
        """A ``domain_status`` arrived; the buffered packets to send now (only when it is Active)."""
        if status is not NatStatus.ACTIVE:
            self.state = RequestState.FAILED
            self._buffer.clear()
            return []
        flushed = list(self._buffer) if self.state is RequestState.PENDING else []
        self.state = RequestState.CONFIRMED
        self._buffer.clear()
        return flushed

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def _is_syn_retransmit(old: bytes, new: bytes) -> bool:
    """Same addresses, both TCP SYN without ACK, same ports and sequence number."""
    try:
        p1, o1, e1 = l4_info(old)
        p2, o2, e2 = l4_info(new)
    except DecodeError:
        return False
    if p1 != PROTO_TCP or p2 != PROTO_TCP or e1 - o1 < 20 or e2 - o2 < 20 or old[0] >> 4 != new[0] >> 4:
        return False
    addrs = slice(12, 20) if old[0] >> 4 == 4 else slice(8, 40)
    syn_only = (old[o1 + 13] & (TCP_SYN | TCP_ACK)) == TCP_SYN and (
        new[o2 + 13] & (TCP_SYN | TCP_ACK)
    ) == TCP_SYN
    return syn_only and old[addrs] == new[addrs] and old[o1 : o1 + 8] == new[o2 : o2 + 8]


def firezone_control(event: int, payload: bytes) -> bytes:
    """A control packet as Firezone's gateway writes it (``rust/connlib/ip-packet/src/make.rs``
    ``fz_p2p_control``: IPv6, traffic class, flow label and hop limit 0, next header 0xFF, source and
    destination ``::``, the event and 7 zero bytes, then the payload). Written here on its own, not with
    the gateway's encoder, so that the tests compare the gateway's packets with an independent one."""
    return (
        b"\x60\x00\x00\x00"
        + (8 + len(payload)).to_bytes(2)
        + b"\xff\x00"
        + bytes(32)
        + bytes((event,))
        + bytes(7)
        + payload
    )


def firezone_domain_status(st: DomainStatus) -> bytes:
    """A ``domain_status`` as Firezone's gateway writes it: serde_json's compact form, fields in the
    struct's order (``rust/connlib/tunnel/src/p2p_control.rs``)."""
    fields = ",".join(
        f"{json.dumps(k)}:{json.dumps(v)}"
        for k, v in (("resource", str(st.resource)), ("domain", st.domain), ("status", st.status.value))
    )
    return firezone_control(EVENT_DOMAIN_STATUS, ("{" + fields + "}").encode())
