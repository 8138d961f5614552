"""The dev client's TCP probe: the smallest TCP that crosses a NAT honestly.

Theory of operation
-------------------
:meth:`TcpProbes.open` builds a SYN and remembers the request to send; when the SYN/ACK of that flow
arrives (:meth:`TcpProbes.on_segment`), the probe answers with one ACK segment carrying the request, and
the flow is forgotten; a RST forgets it too. The resource's data segment is the response (the client
records every segment it receives). No retransmission, no window, no teardown: enough to check that a
gateway forwards and translates a TCP flow both ways. The initial sequence number is derived from the
ports, so a run is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway_core.addr import IPAddress
from gateway_core.wire.ip import TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN, TcpHeader, build_tcp_packet


@dataclass(slots=True)
class _Pending:
    payload: bytes
    isn: int


class TcpProbes:
    """The open probes by (destination, destination port, source port); see the module docstring."""

    def __init__(self) -> None:
        self._pending: dict[tuple[IPAddress, int, int], _Pending] = {}

    def open(self, src: IPAddress, dst: IPAddress, dport: int, sport: int, payload: bytes) -> bytes:
        """A SYN from ``src``:``sport`` to ``dst``:``dport``; ``payload`` follows on the SYN/ACK."""
        isn = (sport << 16) | (dport & 0xFFFF)
        self._pending[(dst, dport, sport)] = _Pending(payload, isn)
        return build_tcp_packet(src, dst, sport, dport, seq=isn, flags=TCP_SYN)

    def on_segment(self, local: IPAddress, src: IPAddress, tcp: TcpHeader) -> bytes | None:
        """A segment from ``src`` to the client's ``local`` address: the request segment to send if it is
        the SYN/ACK of an open probe, else None."""
        key = (src, tcp.sport, tcp.dport)
        pending = self._pending.get(key)
        if pending is None:
            return None
        if tcp.flags & TCP_RST:
            del self._pending[key]
            return None
        if not (tcp.flags & TCP_SYN and tcp.flags & TCP_ACK):
            return None
        del self._pending[key]
        return build_tcp_packet(
            local,
            src,
            tcp.dport,
            tcp.sport,
            pending.payload,
            seq=(pending.isn + 1) & 0xFFFFFFFF,
            ack=(tcp.seq + 1) & 0xFFFFFFFF,
            flags=TCP_ACK | TCP_PSH,
        )
