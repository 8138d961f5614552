"""The in-band p2p control protocol between client and gateway (Firezone:
``rust/connlib/ip-packet/src/fz_p2p_control.rs``, ``rust/connlib/tunnel/src/p2p_control.rs``, and the
client side in ``rust/connlib/tunnel/src/client/dns_resource_nat.rs``).

Theory of operation. Control messages travel inside the WireGuard tunnel as complete IPv6 packets that
no real traffic can produce: next header ``0xFF``, source and destination ``::``, hop limit 0. The IPv6
payload is an 8-byte header (event type, 7 reserved zero bytes, not checked on receipt) followed by the
event payload, compact UTF-8 JSON:

- event 0 ``assigned_ips`` (client -> gateway): ``{"resource","domain","proxy_ips"}``;
- event 1 ``domain_status`` (gateway -> client): ``{"resource","domain","status"}``, status ``"Active"``
  or ``"Inactive"`` (any other string decodes as Inactive);
- event 2 ``goodbye`` (both ways): no payload.

The protocol has no request ids and no delivery guarantee; it is idempotent and the *client* repeats
``assigned_ips``: :class:`DomainNatRequest` is that small pure machine (per gateway and domain), used by
the simulated client. It re-sends only when it has traffic (or a new DNS answer) for the domain and at
least :data:`ASSIGNED_IPS_RETRY_INTERVAL` passed since the last send; there is no timer. The gateway
never retries: it answers each ``assigned_ips`` once (after resolving), see
:mod:`gateway_core.policy.nat`.

Codecs raise :class:`DecodeError` only. JSON decoding follows serde's rules as far as they matter:
fields in any order, unknown fields ignored, duplicate fields and trailing garbage rejected.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from ipaddress import ip_address
from typing import Any

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant, secs
from gateway_core.errors import DecodeError, UsageError
from gateway_core.policy.resources import decode_uuid
from gateway_core.wire.ip import PROTO_TCP, TCP_ACK, TCP_SYN, l4_info

EVENT_ASSIGNED_IPS = 0
EVENT_DOMAIN_STATUS = 1
EVENT_GOODBYE = 2
"""Event types (``rust/connlib/tunnel/src/p2p_control.rs:15-17``)."""

NEXT_HEADER = 0xFF
"""IP protocol number of control packets: reserved, never real traffic (``fz_p2p_control.rs``)."""
IPV6_HEADER_LEN = 40
CONTROL_HEADER_LEN = 8
"""Event type plus 7 reserved bytes (``fz_p2p_control_slice.rs``)."""
MAX_PACKET = 1280
"""Every packet, control ones included, fits the 1280-byte limit (``MAX_IP_SIZE``)."""
MAX_PAYLOAD = MAX_PACKET - IPV6_HEADER_LEN - CONTROL_HEADER_LEN
"""1232 bytes of JSON at most."""
ASSIGNED_IPS_RETRY_INTERVAL = secs(2)
"""The client re-sends a pending ``assigned_ips`` at most every 2 s (``dns_resource_nat.rs:234-236``)."""
PENDING_BUFFER_PACKETS = 32
"""Packets the client buffers per pending domain (``dns_resource_nat.rs``: capacity 2^5)."""
JSON_MAX_DEPTH = 128
"""serde_json's recursion limit: deeper payloads are a decode error there too."""

_PREFIX = struct.Struct("!IHBB")
_ZERO_ADDRS = bytes(32)


class NatStatus(StrEnum):
    ACTIVE = "Active"
    INACTIVE = "Inactive"


@dataclass(frozen=True, slots=True)
class ControlPacket:
    """A control packet's event type and payload (after the 8-byte control header)."""

    event: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class AssignedIps:
    resource: uuid.UUID
    domain: str
    proxy_ips: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class DomainStatus:
    resource: uuid.UUID
    domain: str
    status: NatStatus


# --------------------------------------------------------------------------------------------------
# Framing.


def is_control_packet(packet: bytes | bytearray | memoryview) -> bool:
    """Whether ``packet`` is a control packet the gateway consumes (before any policy check).

    IPv6, next header 0xFF, source and destination ``::``, and at least 8 payload bytes inside the
    buffer. With fewer payload bytes it is not consumed (and fails the source check like any spoof).
    """
    if len(packet) < IPV6_HEADER_LEN + CONTROL_HEADER_LEN or packet[0] >> 4 != 6 or packet[6] != NEXT_HEADER:
        return False
    plen = (packet[4] << 8) | packet[5]
    return (
        CONTROL_HEADER_LEN <= plen <= len(packet) - IPV6_HEADER_LEN
        and bytes(packet[8:IPV6_HEADER_LEN]) == _ZERO_ADDRS
    )


def parse_control_packet(packet: bytes | bytearray | memoryview) -> ControlPacket:
    """The event and payload of a control packet; bytes beyond the IPv6 payload length are ignored."""
    if not is_control_packet(packet):
        raise DecodeError("not a p2p control packet")
    plen = (packet[4] << 8) | packet[5]
    body = bytes(packet[IPV6_HEADER_LEN : IPV6_HEADER_LEN + plen])
    return ControlPacket(body[0], body[CONTROL_HEADER_LEN:])


def build_control_packet(event: int, payload: bytes = b"") -> bytes:
    """A complete control packet (version 6, traffic class and flow label 0, hop limit 0)."""
    if not 0 <= event <= 0xFF:
        raise UsageError(f"event type out of range: {event}")
    if len(payload) > MAX_PAYLOAD:
        raise UsageError(f"control payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return (
        _PREFIX.pack(0x6000_0000, CONTROL_HEADER_LEN + len(payload), NEXT_HEADER, 0)
        + _ZERO_ADDRS
        + bytes((event, 0, 0, 0, 0, 0, 0, 0))
        + payload
    )


GOODBYE_PACKET = build_control_packet(EVENT_GOODBYE)
"""The 48-byte ``goodbye``."""


# --------------------------------------------------------------------------------------------------
# JSON payloads.


def _no_constants(name: str) -> Any:
    raise DecodeError(f"invalid JSON literal {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DecodeError(f"duplicate field {k!r}")
        out[k] = v
    return out


def _depth_ok(value: Any) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            if d > JSON_MAX_DEPTH:
                return False
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def _object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        text = payload.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except DecodeError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DecodeError(f"{what}: invalid JSON") from None
    if not isinstance(value, dict):
        raise DecodeError(f"{what}: expected a JSON object")
    if not _depth_ok(value):
        raise DecodeError(f"{what}: JSON nested too deeply")
    return value


def _get(o: dict[str, Any], key: str, what: str) -> Any:
    if key not in o:
        raise DecodeError(f"{what}: missing field {key!r}")
    return o[key]


def decode_domain_name(value: Any, what: str = "domain") -> str:
    """A DNS name in presentation form: ASCII, labels of 1-63 bytes, at most 255 bytes on the wire.

    One trailing dot is accepted and removed (names are absolute either way). Escapes are not supported.
    """
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected a string")
    if value == ".":
        return value
    text = value[:-1] if value.endswith(".") else value
    if not text or not text.isascii() or "\\" in text:
        raise DecodeError(f"{what}: not a DNS name: {value!r}")
    labels = text.split(".")
    if any(not 0 < len(label) <= 63 for label in labels) or sum(len(x) + 1 for x in labels) + 1 > 255:
        raise DecodeError(f"{what}: not a DNS name: {value!r}")
    return text


def _ip(value: Any, what: str) -> IPAddress:
    if not isinstance(value, str) or "%" in value or not value.isascii() or value != value.strip():
        raise DecodeError(f"{what}: not an IP address: {value!r}")
    try:
        return ip_address(value)
    except ValueError:
        raise DecodeError(f"{what}: not an IP address: {value!r}") from None


def decode_assigned_ips(payload: bytes) -> AssignedIps:
    o = _object(payload, "assigned_ips")
    ips = _get(o, "proxy_ips", "assigned_ips")
    if not isinstance(ips, list):
        raise DecodeError("assigned_ips.proxy_ips: expected a list")
    return AssignedIps(
        decode_uuid(_get(o, "resource", "assigned_ips"), "assigned_ips.resource"),
        decode_domain_name(_get(o, "domain", "assigned_ips"), "assigned_ips.domain"),
        tuple(_ip(v, f"assigned_ips.proxy_ips[{i}]") for i, v in enumerate(ips)),
    )


def decode_domain_status(payload: bytes) -> DomainStatus:
    o = _object(payload, "domain_status")
    status = _get(o, "status", "domain_status")
    if not isinstance(status, str):
        raise DecodeError("domain_status.status: expected a string")
    return DomainStatus(
        decode_uuid(_get(o, "resource", "domain_status"), "domain_status.resource"),
        decode_domain_name(_get(o, "domain", "domain_status"), "domain_status.domain"),
        NatStatus.ACTIVE if status == NatStatus.ACTIVE.value else NatStatus.INACTIVE,
    )


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_assigned_ips(msg: AssignedIps) -> bytes:
    return _compact(
        {"resource": str(msg.resource), "domain": msg.domain, "proxy_ips": [str(ip) for ip in msg.proxy_ips]}
    )


def encode_domain_status(msg: DomainStatus) -> bytes:
    return _compact({"resource": str(msg.resource), "domain": msg.domain, "status": msg.status.value})


def build_assigned_ips(resource: uuid.UUID, domain: str, proxy_ips: Sequence[IPAddress]) -> bytes:
    """The client's ``assigned_ips`` packet; the client always sends 4 or 8 proxy IPs."""
    if len(proxy_ips) not in (4, 8):
        raise UsageError("expected 4 or 8 proxy IPs")
    payload = encode_assigned_ips(AssignedIps(resource, domain, tuple(proxy_ips)))
    return build_control_packet(EVENT_ASSIGNED_IPS, payload)


def build_domain_status(resource: uuid.UUID, domain: str, status: NatStatus) -> bytes:
    """The gateway's ``domain_status`` packet."""
    return build_control_packet(
        EVENT_DOMAIN_STATUS, encode_domain_status(DomainStatus(resource, domain, status))
    )


# --------------------------------------------------------------------------------------------------
# The gateway's reading of a control packet.


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The peer is leaving: remove it and its connection (no reply)."""


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """An event the gateway does not handle (``domain_status`` or unknown): ignored, debug log."""

    event: int


GatewayControl = AssignedIps | Goodbye | IgnoredEvent


def gateway_read_control(packet: bytes | bytearray | memoryview) -> GatewayControl:
    """What a control packet from a client asks of the gateway; DecodeError if it is malformed.

    A malformed ``assigned_ips`` is dropped without reply (reference: debug log).
    """
    cp = parse_control_packet(packet)
    if cp.event == EVENT_ASSIGNED_IPS:
        return decode_assigned_ips(cp.payload)
    if cp.event == EVENT_GOODBYE:
        return Goodbye()
    return IgnoredEvent(cp.event)


# --------------------------------------------------------------------------------------------------
# The client's per-(gateway, domain) request machine (``rust/connlib/tunnel/src/client/dns_resource_nat.rs``).


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
