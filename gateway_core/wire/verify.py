"""Checksum validation for ``--validate-checksums`` (Firezone: ``ValidateChecksumAdapter`` in
``rust/gateway/src/main.rs``, which checks what the gateway writes to its TUN device).

The checksums checked are the reference's: the IPv4 header checksum, and the TCP and UDP checksums
(over their pseudo-headers, IPv4 and IPv6). ICMP is not checked, as in the reference. One difference:
an IPv4 UDP checksum of zero means "no checksum" (RFC 768) and passes; the reference compares it with
the computed value and warns. In IPv6 a zero UDP checksum is invalid (RFC 8200 §8.1) and fails.

The packet must have passed :func:`gateway_core.wire.ip.validate` (whole, unfragmented, lengths
consistent); anything that still cannot be parsed counts as invalid. Never raises.
"""

from __future__ import annotations

from gateway_core.errors import DecodeError
from gateway_core.wire.checksum import internet_checksum, pseudo_header_sum
from gateway_core.wire.ip import PROTO_TCP, PROTO_UDP, locate_l4, src_dst

__all__ = ["checksums_valid"]


def checksums_valid(packet: bytes | bytearray | memoryview) -> bool:
    """Whether the IPv4 header, TCP and UDP checksums of ``packet`` verify (see the module docstring)."""
    try:
        version, proto, off, end, fragment = locate_l4(packet)
        if fragment:
            return False
        if version == 4 and internet_checksum(packet[: (packet[0] & 0xF) * 4]) != 0:
            return False
        if proto == PROTO_UDP:
            if end - off < 8:
                return False
            if version == 4 and packet[off + 6] == 0 and packet[off + 7] == 0:
                return True
            length = (packet[off + 4] << 8) | packet[off + 5]
            if length < 8 or off + length > end:
                return False
            seg = packet[off : off + length]
        elif proto == PROTO_TCP:
            seg = packet[off:end]
        else:
            return True
        src, dst = src_dst(packet)
        return internet_checksum(seg, pseudo_header_sum(src, dst, proto, len(seg))) == 0
    except DecodeError:
        return False
