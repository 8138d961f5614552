"""A classic libpcap writer, so a simulated run opens in Wireshark / tshark.

Format: the classic pcap file (not pcapng) with the nanosecond-resolution magic ``0xa1b23c4d`` (virtual time
is integer nanoseconds, so nothing is rounded) and link type ``LINKTYPE_RAW`` (101): every record is one
bare IPv4 or IPv6 packet, no link-layer header. Timestamps are the world's wall clock (a fixed epoch plus
virtual time), so the same seed writes the same bytes. Little-endian, as libpcap writes on x86.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

PCAP_MAGIC_NS = 0xA1B23C4D
"""Magic number of a pcap file whose record timestamps carry nanoseconds (libpcap >= 1.5, Wireshark)."""
PCAP_VERSION = (2, 4)
"""The only classic pcap version in use."""
LINKTYPE_RAW = 101
"""Raw IP, the version read from the first nibble (tcpdump.org link-layer header types)."""
DEFAULT_SNAPLEN = 262_144
"""libpcap's default snapshot length; larger than any UDP datagram so nothing is cut."""

_FILE_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
_NS = 1_000_000_000


class PcapWriter:
    """Writes packets to ``stream`` (opened in binary mode) as a classic pcap file."""

    __slots__ = ("count", "snaplen", "stream")

    def __init__(self, stream: BinaryIO, snaplen: int = DEFAULT_SNAPLEN) -> None:
        self.stream = stream
        self.snaplen = snaplen
        self.count = 0
        stream.write(_FILE_HEADER.pack(PCAP_MAGIC_NS, *PCAP_VERSION, 0, 0, snaplen, LINKTYPE_RAW))

    def write(self, unix_ns: int, packet: bytes) -> None:
        """One raw IP packet captured at ``unix_ns`` (nanoseconds since the Unix epoch)."""
        data = packet[: self.snaplen]
        self.stream.write(_RECORD_HEADER.pack(unix_ns // _NS, unix_ns % _NS, len(data), len(packet)))
        self.stream.write(data)
        self.count += 1


def read_pcap(data: bytes) -> list[tuple[int, bytes]]:
    """``(unix_ns, packet)`` records of a file written by :class:`PcapWriter` (for tests and tools)."""
    magic, major, minor, _tz, _sig, _snap, linktype = _FILE_HEADER.unpack_from(data)
    if magic != PCAP_MAGIC_NS or (major, minor) != PCAP_VERSION or linktype != LINKTYPE_RAW:
        raise ValueError("not a nanosecond raw-IP pcap file")
    out: list[tuple[int, bytes]] = []
    off = _FILE_HEADER.size
    while off < len(data):
        sec, nsec, incl, _orig = _RECORD_HEADER.unpack_from(data, off)
        off += _RECORD_HEADER.size
        out.append((sec * _NS + nsec, data[off : off + incl]))
        off += incl
    return out
