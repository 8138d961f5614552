"""The simulated network: addresses, routes, link profiles, partitions and the fate of each packet.

Theory of operation: hosts attach with their addresses and an access link (:class:`LinkProfile`). An
address maps to exactly one host (exact match, like Firezone's ``RoutingTable``); prefix routes
(:meth:`Network.add_route`) send whole subnets to a host, e.g. the tunnel range behind a gateway's TUN
device; an exact address always wins over a prefix, then the longest prefix wins. A detached host leaves
its addresses *stale*, and so does a host that moves (:meth:`Network.readdress`): packets to them are
dropped, never delivered to a newcomer.

The path between two hosts is the series of the sender's and the receiver's access links (latencies and
jitters add, loss and duplication combine as independent events) unless a pair has an explicit profile
(:meth:`Network.set_path`). :meth:`Network.fate` decides what happens to one packet: lost, or delivered
after one delay (or two, when duplicated). Every random draw comes from the one seeded stream the network
was given, in a fixed order per packet (loss, jitter, duplication, duplicate's jitter), so the same seed
and the same traffic give the same fates.

A partition blocks the pair in both directions until healed; the world checks it when a packet is sent
and again when it arrives (a packet in flight when the link is cut is lost).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import ip_address

from gateway_core.addr import IPAddress, IPNetwork
from gateway_core.clock import Duration, millis
from gateway_core.entropy import Entropy
from gateway_core.errors import UsageError

PPM = 1_000_000
"""Probabilities are integer parts per million: no float reaches a draw or a trace."""


class NetDrop(StrEnum):
    """Why the simulated network (not a component) dropped a packet; values appear in traces."""

    LOSS = "loss"
    PARTITION = "partition"
    UNROUTABLE = "unroutable"
    STALE = "stale"
    NO_SOURCE_ADDRESS = "no_source_address"
    NOT_OWN_ADDRESS = "not_own_address"
    NO_SOCKET = "no_socket"
    NO_HANDLER = "no_handler"
    HOST_DOWN = "host_down"
    MALFORMED_IP = "malformed_ip"
    NAT_FILTERED = "nat_filtered"
    """A datagram for a NAT's public address without a live mapping open to its sender."""


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """One-way behaviour of a link: fixed latency, uniform extra jitter, loss and duplication."""

    latency: Duration = millis(10)
    """Fixed one-way delay (Firezone's simulated hosts draw 10-249 ms; 10 ms is its minimum)."""
    jitter: Duration = 0
    """Extra delay drawn uniformly from ``[0, jitter]`` per packet (may reorder packets)."""
    loss_ppm: int = 0
    """Probability of losing a packet, in parts per million."""
    duplicate_ppm: int = 0
    """Probability of delivering a packet twice, in parts per million."""

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0:
            raise UsageError("latency and jitter must be non-negative")
        if not (0 <= self.loss_ppm <= PPM and 0 <= self.duplicate_ppm <= PPM):
            raise UsageError("loss and duplication are parts per million in [0, 1_000_000]")

    def then(self, other: LinkProfile) -> LinkProfile:
        """This link followed by ``other``: delays add, losses and duplications are independent."""
        return LinkProfile(
            latency=self.latency + other.latency,
            jitter=self.jitter + other.jitter,
            loss_ppm=PPM - (PPM - self.loss_ppm) * (PPM - other.loss_ppm) // PPM,
            duplicate_ppm=PPM - (PPM - self.duplicate_ppm) * (PPM - other.duplicate_ppm) // PPM,
        )


PERFECT = LinkProfile(latency=0)
"""A zero-delay lossless link (for unit tests; the world's livelock bound still applies)."""


class Network:
    """Routing table, link profiles, partitions and per-packet fate; see the module docstring."""

    __slots__ = (
        "_addresses",
        "_combined",
        "_entropy",
        "_links",
        "_partitions",
        "_paths",
        "_routes",
        "_stale",
    )

    def __init__(self, entropy: Entropy) -> None:
        self._entropy = entropy
        self._addresses: dict[IPAddress, str] = {}
        self._stale: set[IPAddress] = set()
        self._routes: list[tuple[IPNetwork, str]] = []
        self._links: dict[str, LinkProfile] = {}
        self._paths: dict[tuple[str, str], LinkProfile] = {}
        self._combined: dict[tuple[str, str], LinkProfile] = {}
        """Memo of :meth:`path` per ordered pair (a profile per packet was a measurable share of the
        simulator's own time); cleared whenever a link or an explicit path changes."""
        self._partitions: set[tuple[str, str]] = set()

    # --- topology ---

    def attach(self, name: str, addresses: list[IPAddress], link: LinkProfile) -> None:
        """Register host ``name`` with its addresses and access link."""
        if name in self._links:
            raise UsageError(f"host {name!r} is already attached")
        for a in addresses:
            if a in self._addresses or a in self._stale:
                raise UsageError(f"address {a} is already in use (or stale)")
        for a in addresses:
            self._addresses[a] = name
        self._links[name] = link
        self._combined.clear()

    def detach(self, name: str) -> None:
        """Remove host ``name``; its addresses become stale (never reused) and its routes go."""
        self._links.pop(name)
        self._combined.clear()
        for a in [a for a, n in self._addresses.items() if n == name]:
            del self._addresses[a]
            self._stale.add(a)
        self._routes = [(net, n) for net, n in self._routes if n != name]

    def readdress(self, name: str, addresses: list[IPAddress]) -> None:
        """Host ``name`` moves to ``addresses``: its old own addresses become stale (as on :meth:`detach`),
        while its access link, the prefix routes towards it and its partitions stay (the same machine)."""
        if name not in self._links:
            raise UsageError(f"unknown host {name!r}")
        old = {a for a, n in self._addresses.items() if n == name}
        for a in addresses:
            if a not in old and (a in self._addresses or a in self._stale):
                raise UsageError(f"address {a} is already in use (or stale)")
        for a in old.difference(addresses):
            del self._addresses[a]
            self._stale.add(a)
        for a in addresses:
            self._addresses[a] = name

    def add_route(self, network: IPNetwork, name: str) -> None:
        """Deliver packets for ``network`` to host ``name`` (exact addresses still win)."""
        if name not in self._links:
            raise UsageError(f"unknown host {name!r}")
        self._routes.append((network, name))
        # Longest prefix first; the sort is stable, so equal prefixes keep the order they were added in.
        self._routes.sort(key=lambda r: -r[0].prefixlen)

    def route(self, ip: IPAddress) -> str | NetDrop:
        """The host that receives packets for ``ip``, or why none does."""
        name = self._addresses.get(ip)
        if name is not None:
            return name
        if ip in self._stale:
            return NetDrop.STALE
        for net, n in self._routes:
            if ip.version == net.version and ip in net:
                return n
        return NetDrop.UNROUTABLE

    def owner(self, ip: IPAddress) -> str | None:
        """The host that owns ``ip`` as one of its own addresses (prefix routes do not count)."""
        return self._addresses.get(ip)

    # --- links and partitions ---

    def set_path(self, a: str, b: str, profile: LinkProfile | None) -> None:
        """Use ``profile`` for the path between ``a`` and ``b`` (both directions); ``None`` clears it."""
        key = (a, b) if a <= b else (b, a)
        self._combined.clear()
        if profile is None:
            self._paths.pop(key, None)
        else:
            self._paths[key] = profile

    def path(self, src: str, dst: str) -> LinkProfile:
        """The profile a packet from ``src`` to ``dst`` experiences."""
        found = self._combined.get((src, dst))
        if found is not None:
            return found
        key = (src, dst) if src <= dst else (dst, src)
        explicit = self._paths.get(key)
        profile = explicit if explicit is not None else self._links[src].then(self._links[dst])
        self._combined[(src, dst)] = profile
        return profile

    def partition(self, group_a: list[str], group_b: list[str]) -> None:
        """Cut every path between a host of ``group_a`` and a host of ``group_b``."""
        for a in group_a:
            for b in group_b:
                if a != b:
                    self._partitions.add((a, b) if a <= b else (b, a))

    def heal(self, group_a: list[str] | None = None, group_b: list[str] | None = None) -> None:
        """Heal the cuts between the two groups, or every cut when no group is given."""
        if group_a is None or group_b is None:
            self._partitions.clear()
            return
        for a in group_a:
            for b in group_b:
                self._partitions.discard((a, b) if a <= b else (b, a))

    def is_partitioned(self, a: str, b: str) -> bool:
        return ((a, b) if a <= b else (b, a)) in self._partitions

    def partitions(self) -> list[tuple[str, str]]:
        """The current cuts, sorted."""
        return sorted(self._partitions)

    # --- fate of one packet ---

    def fate(self, src: str, dst: str) -> list[Duration]:
        """Delays after which copies of one packet from ``src`` arrive at ``dst``: ``[]`` means lost.

        Draws, in this order and only when the profile makes them matter: loss, jitter, duplication, the
        duplicate's jitter.
        """
        p = self.path(src, dst)
        e = self._entropy
        if p.loss_ppm and e.randbelow(PPM) < p.loss_ppm:
            return []
        first = p.latency + (e.randbelow(p.jitter + 1) if p.jitter else 0)
        if p.duplicate_ppm and e.randbelow(PPM) < p.duplicate_ppm:
            second = p.latency + (e.randbelow(p.jitter + 1) if p.jitter else 0)
            return [first, second]
        return [first]

    def draw_jitter(self, profile: LinkProfile) -> Duration:
        """One jitter draw for ``profile`` (0 without a draw when it has no jitter)."""
        return self._entropy.randbelow(profile.jitter + 1) if profile.jitter else 0


def ip_endpoints(packet: bytes) -> tuple[IPAddress, IPAddress, int] | None:
    """``(src, dst, protocol)`` of a raw IPv4/IPv6 packet, or ``None`` if its header is cut short.

    Just enough to route a packet; full parsing is ``gateway_core.wire.ip``'s job.
    """
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return ip_address(packet[12:16]), ip_address(packet[16:20]), packet[9]
    if version == 6 and len(packet) >= 40:
        return ip_address(packet[8:24]), ip_address(packet[24:40]), packet[6]
    return None


def udp_in_ip(packet: bytes) -> tuple[int, int, bytes] | None:
    """``(sport, dport, payload)`` of a plain UDP packet (no fragment or extension header), or ``None``."""
    ends = ip_endpoints(packet)
    if ends is None or ends[2] != 17:
        return None
    if packet[0] >> 4 == 4:
        if int.from_bytes(packet[6:8], "big") & 0x3FFF:  # MF flag or a fragment offset
            return None
        start = (packet[0] & 0x0F) * 4
        end = min(len(packet), int.from_bytes(packet[2:4], "big"))
    else:
        start = 40
        end = min(len(packet), 40 + int.from_bytes(packet[4:6], "big"))
    if start < 20 or end - start < 8:
        return None
    udp_len = int.from_bytes(packet[start + 4 : start + 6], "big")
    if udp_len < 8 or start + udp_len > end:
        return None
    sport = int.from_bytes(packet[start : start + 2], "big")
    dport = int.from_bytes(packet[start + 2 : start + 4], "big")
    return sport, dport, bytes(packet[start + 8 : start + udp_len])
