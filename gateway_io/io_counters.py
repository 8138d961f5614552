"""Packets and bytes through the driver's devices, by direction and IP family (the metrics' raw counts).

The reference counts in its IO layer too (``system.network.packets``, ``rust/connlib/tunnel/src/io.rs`` and
``lib.rs``): packets read from and written to the TUN device by IP version, datagrams received and sent on
the UDP sockets. Here the devices count what they move themselves, where the sizes are at hand anyway:
the driver hands each device that has ``count_into`` (:class:`gateway_io.tun.TunDevice`,
:class:`gateway_io.udp.UdpSocket`) its counters when it starts, and the device adds to them per system
call (a UDP receive or a ``UDP_SEGMENT`` run, a TUN frame read) or per batch written to the TUN. Passes of
the driver's own over every batch to size it cost 10-20 % of its time per packet (measured with
``bench_driver``). For devices without ``count_into`` (test fakes) the driver adds whole batches itself.
:mod:`gateway_io.metrics` reads the totals when it collects.

Index 0 of every list is IPv4, index 1 IPv6. Bytes are whole IP packets on the TUN and UDP payloads on the
sockets (the datagram as the kernel hands it over, without IP and UDP headers).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter

V4, V6 = 0, 1
_FIRST = itemgetter(0)


class IoCounters:
    """Monotonic totals; written only by the driver's loop, read by the metrics collection."""

    __slots__ = (
        "tun_rx_bytes",
        "tun_rx_packets",
        "tun_tx_bytes",
        "tun_tx_packets",
        "udp_rx_bytes",
        "udp_rx_packets",
        "udp_tx_bytes",
        "udp_tx_packets",
    )

    def __init__(self) -> None:
        self.tun_rx_packets = [0, 0]
        self.tun_rx_bytes = [0, 0]
        self.tun_tx_packets = [0, 0]
        self.tun_tx_bytes = [0, 0]
        self.udp_rx_packets = [0, 0]
        self.udp_rx_bytes = [0, 0]
        self.udp_tx_packets = [0, 0]
        self.udp_tx_bytes = [0, 0]

    def tun_read(self, packets: Sequence[bytes]) -> None:
        """A batch read from the TUN device (see :meth:`_add`)."""
        if packets:
            self._add(self.tun_rx_packets, self.tun_rx_bytes, packets)

    def tun_written_batch(self, packets: Sequence[bytes]) -> None:
        """A batch written to the TUN device (see :meth:`_add`)."""
        if packets:
            self._add(self.tun_tx_packets, self.tun_tx_bytes, packets)

    @staticmethod
    def _add(count: list[int], size: list[int], packets: Sequence[bytes]) -> None:
        """Add a batch of IP packets to ``count`` and ``size`` by family. IPv6 is told by the first byte
        (0x60 and above: the version nibble 6; anything above is not IP and dropped by the core, counted
        here as IPv6). A batch of IPv4 only (the highest first byte below 0x60, found in C) is counted
        without a per-packet loop; a mixed one by a comprehension (measured faster than
        ``bytes(map(itemgetter(0), ...)).translate(...)``)."""
        total = sum(map(len, packets))
        try:
            top = max(map(_FIRST, packets))
        except IndexError:  # an empty packet: the careful way
            top = 0x60
        if top < 0x60:
            count[V4] += len(packets)
            size[V4] += total
            return
        v6 = [p for p in packets if p and p[0] >= 0x60]
        n6 = len(v6)
        b6 = sum(map(len, v6))
        count[V4] += len(packets) - n6
        size[V4] += total - b6
        count[V6] += n6
        size[V6] += b6

    def tun_written(self, packet: bytes) -> None:
        fam = V6 if packet and packet[0] >= 0x60 else V4
        self.tun_tx_packets[fam] += 1
        self.tun_tx_bytes[fam] += len(packet)

    def udp_received(self, fam: int, datagrams: Sequence[tuple[object, object, bytes, int]]) -> None:
        """A batch from one socket of family ``fam`` (``(local, remote, payload, ecn)`` tuples)."""
        self.udp_rx_packets[fam] += len(datagrams)
        self.udp_rx_bytes[fam] += sum(len(d[2]) for d in datagrams)

    def udp_sent(self, fam: int, payload: bytes) -> None:
        self.udp_tx_packets[fam] += 1
        self.udp_tx_bytes[fam] += len(payload)
