"""Send one hand-made IPv4/UDP packet from a raw socket (run inside a namespace with ``ip netns exec``).

``python -m tests.system.raw_inject SRC DST SPORT DPORT PAYLOAD [--tos N] [--corrupt]``: the packet is
routed by its destination like any other (into a TUN, over a veth); ``--tos`` sets the whole TOS byte
(ECN bits included), ``--corrupt`` flips bits of the UDP checksum after it was computed. The kernel fills
in the IPv4 header checksum of a raw packet, never the UDP one.
"""

from __future__ import annotations

import argparse
import socket
from ipaddress import IPv4Address

from gateway_core.wire.ip import build_udp_packet
from gateway_core.wire.rewrite import recompute_checksums


def packet(src: str, dst: str, sport: int, dport: int, payload: bytes, tos: int, corrupt: bool) -> bytes:
    buf = bytearray(build_udp_packet(IPv4Address(src), IPv4Address(dst), sport, dport, payload))
    buf[1] = tos
    recompute_checksums(buf)
    if corrupt:
        buf[26] ^= 0x5A  # the UDP checksum (IPv4 header of 20 bytes, checksum at offset 6 of UDP)
    return bytes(buf)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("sport", type=int)
    p.add_argument("dport", type=int)
    p.add_argument("payload")
    p.add_argument("--tos", type=lambda s: int(s, 0), default=0)
    p.add_argument("--corrupt", action="store_true")
    a = p.parse_args()
    data = packet(a.src, a.dst, a.sport, a.dport, a.payload.encode(), a.tos, a.corrupt)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.sendto(data, (a.dst, 0))


if __name__ == "__main__":
    main()
