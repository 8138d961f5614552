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
``assigned_ips`` (the dev client's machine for that is :mod:`devpeers.client_nat`: the gateway never runs
it). The gateway never retries: it answers each ``assigned_ips`` once (after resolving), see
:mod:`gateway_core.policy.dns_nat`.

Codecs raise :class:`DecodeError` only. JSON decoding follows serde's rules as far as they matter:
fields in any order, unknown fields ignored, duplicate fields and trailing garbage rejected.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import ip_address
from typing import Any

from gateway_core.addr import IPAddress
from gateway_core.errors import DecodeError, UsageError
from gateway_core.policy.resources import decode_uuid

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
        text = payload.decode()
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
    # ``ip_address`` itself refuses surrounding whitespace, but accepts a scope (``%eth0``) and any
    # Unicode digit: the reference's parser takes neither.
    if not isinstance(value, str) or "%" in value or not value.isascii():
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
    """serde_json's compact form. Every string in these payloads is ASCII (names are checked as ASCII on
    decode, addresses and ids are ASCII), so JSON's ASCII escaping never applies."""
    return json.dumps(obj, separators=(",", ":")).encode()


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
