"""Echo hosts: an echo server and a pinger, both pure sans-IO components.

Theory of operation:

- :class:`EchoServer` has no timers. A UDP datagram on any of its sockets is sent back to where it came
  from (``Transmit``); a raw IP packet (what a TUN or a LAN delivers) that is an ICMP/ICMPv6 echo request
  or a UDP datagram for one of its addresses is answered with the mirrored packet (``WriteTun``).
  Anything malformed is dropped and counted; nothing raises.
- :class:`Pinger` wakes every ``interval`` (deadline ``"ping interval"``) until it has sent ``count``
  rounds; each round sends one probe to every target: a UDP datagram or an ICMP echo request whose
  payload carries a magic, the target index, the round number and the send time. Replies are matched
  back by (target, round), giving per-target sent / received / duplicate counts and round-trip times.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Duration, Instant
from gateway_core.commands import Command, Transmit, WriteTun
from gateway_core.contract import Deadline
from gateway_core.errors import DecodeError, DropReason, UsageError
from gateway_core.stats import Stats
from gateway_core.wire.ip import (
    ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    build_icmp_echo,
    build_udp_packet,
    l4_checksum_ok,
    parse_icmp,
    parse_ip,
    parse_udp,
)

ECHO_PORT = 7
"""The UDP echo service port (RFC 862)."""

PROBE_MAGIC = b"FZP1"
"""Marks the pinger's probes so a stray datagram is never mistaken for a reply."""
_PROBE = struct.Struct("!4sHIQ")  # magic, target index, round, send time (ns)


class _Clocked:
    """Shared ``now`` bookkeeping: time never goes backwards (R2) and the command queue (R3)."""

    def __init__(self) -> None:
        self.stats = Stats()
        self._out: deque[Command] = deque()
        self._now: Instant | None = None

    def _advance(self, now: Instant) -> None:
        if self._now is not None and now < self._now:
            raise UsageError(f"time went backwards: {now} < {self._now}")
        self._now = now

    def poll_command(self) -> Command | None:
        return self._out.popleft() if self._out else None


class EchoServer(_Clocked):
    """Answers UDP echo and ICMP echo; see the module docstring."""

    def __init__(self, addresses: list[IPAddress]) -> None:
        super().__init__()
        self.addresses = frozenset(addresses)

    def handle_timeout(self, now: Instant) -> None:
        self._advance(now)

    def poll_timeout(self) -> Deadline | None:
        return None

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        """A datagram on a socket: send it back."""
        self._advance(now)
        self.stats.incr("udp_echoed")
        self._out.append(Transmit(local, remote, payload))

    def handle_tun_packet(self, now: Instant, packet: bytes) -> None:
        """A raw IP packet: answer echo requests and UDP, drop the rest."""
        self._advance(now)
        try:
            ip = parse_ip(packet)
            if ip.fragment:
                self.stats.drop(DropReason.FRAGMENT)
                return
            if not l4_checksum_ok(packet):
                self.stats.drop(DropReason.BAD_CHECKSUM)
                return
            if ip.dst not in self.addresses:
                self.stats.drop(DropReason.UNROUTABLE)
                return
            if ip.proto in (PROTO_ICMP, PROTO_ICMPV6):
                icmp = parse_icmp(ip.payload)
                if icmp.icmp_type in (ICMPV4_ECHO_REQUEST, ICMPV6_ECHO_REQUEST) and icmp.code == 0:
                    reply = build_icmp_echo(ip.dst, ip.src, icmp.ident, icmp.seq, icmp.payload, reply=True)
                    self.stats.incr("icmp_echoed")
                    self._out.append(WriteTun(reply))
                else:
                    self.stats.incr("icmp_ignored")
            elif ip.proto == PROTO_UDP:
                udp = parse_udp(ip.payload)
                self.stats.incr("udp_echoed")
                self._out.append(
                    WriteTun(build_udp_packet(ip.dst, ip.src, udp.dport, udp.sport, udp.payload))
                )
            else:
                self.stats.incr("ignored")
        except DecodeError:
            self.stats.drop(DropReason.MALFORMED_IP)


@dataclass(frozen=True, slots=True)
class PingTarget:
    """What a :class:`Pinger` probes: ``udp`` (to ``ip``:``port``) or ``icmp`` (echo to ``ip``)."""

    kind: str
    ip: IPAddress
    port: int = ECHO_PORT
    label: str = ""

    def describe(self) -> str:
        if self.label:
            return self.label
        return f"udp {SocketAddr(self.ip, self.port)}" if self.kind == "udp" else f"icmp {self.ip}"


@dataclass(slots=True)
class TargetStats:
    """Per-target results of a :class:`Pinger`."""

    sent: int = 0
    received: int = 0
    duplicates: int = 0
    rtts: list[Duration] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - self.received


class Pinger(_Clocked):
    """Sends probes every ``interval`` and matches replies; see the module docstring."""

    def __init__(
        self,
        *,
        targets: list[PingTarget],
        interval: Duration,
        count: int,
        start: Instant,
        ident: int,
        ipv4: IPv4Address | None = None,
        ipv6: IPv6Address | None = None,
    ) -> None:
        super().__init__()
        if interval <= 0 or count < 0 or not 0 <= ident <= 0xFFFF:
            raise UsageError("interval must be positive, count non-negative, ident a u16")
        self.targets = list(targets)
        self.interval = interval
        self.count = count
        self.ident = ident
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self.results = [TargetStats() for _ in self.targets]
        self._round = 0
        self._next: Instant | None = start if count > 0 else None
        self._seen: set[tuple[int, int]] = set()

    def poll_timeout(self) -> Deadline | None:
        return None if self._next is None else Deadline(self._next, "ping interval")

    def handle_timeout(self, now: Instant) -> None:
        self._advance(now)
        while self._next is not None and self._next <= now:
            self._send_round(now)
            self._round += 1
            self._next = Instant(self._next + self.interval) if self._round < self.count else None

    def _send_round(self, now: Instant) -> None:
        for idx, target in enumerate(self.targets):
            payload = _PROBE.pack(PROBE_MAGIC, idx, self._round, now)
            if target.kind == "udp":
                self._out.append(Transmit(None, SocketAddr(target.ip, target.port), payload))
            else:
                src = self.ipv4 if target.ip.version == 4 else self.ipv6
                if src is None:
                    self.stats.incr("no_source_address")
                    continue
                seq = self._round & 0xFFFF
                self._out.append(WriteTun(build_icmp_echo(src, target.ip, self.ident, seq, payload)))
            self.results[idx].sent += 1

    def _reply(self, now: Instant, kind: str, payload: bytes) -> None:
        if len(payload) != _PROBE.size:
            self.stats.drop(DropReason.MALFORMED_L4)
            return
        magic, idx, rnd, sent = _PROBE.unpack(payload)
        if magic != PROBE_MAGIC or idx >= len(self.targets) or self.targets[idx].kind != kind or sent > now:
            self.stats.incr("unexpected")
            return
        res = self.results[idx]
        if (idx, rnd) in self._seen:
            res.duplicates += 1
            return
        self._seen.add((idx, rnd))
        res.received += 1
        res.rtts.append(now - sent)

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        """A UDP echo reply."""
        self._advance(now)
        self._reply(now, "udp", payload)

    def handle_tun_packet(self, now: Instant, packet: bytes) -> None:
        """An ICMP echo reply (anything else is counted and dropped)."""
        self._advance(now)
        try:
            ip = parse_ip(packet)
            if ip.proto not in (PROTO_ICMP, PROTO_ICMPV6):
                self.stats.incr("unexpected")
                return
            icmp = parse_icmp(ip.payload)
        except DecodeError:
            self.stats.drop(DropReason.MALFORMED_IP)
            return
        if icmp.icmp_type not in (ICMPV4_ECHO_REPLY, ICMPV6_ECHO_REPLY) or icmp.ident != self.ident:
            self.stats.incr("unexpected")
            return
        self._reply(now, "icmp", icmp.payload)
