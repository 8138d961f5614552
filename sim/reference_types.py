"""The reference model's vocabulary: outcomes, predictions, delay bounds, authorisation periods, specs of
resources and hosts, and the portal's filter and DNS-pattern rules (:mod:`sim.reference` uses them)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network

from gateway_core.addr import IPAddress

NS = 1_000_000_000
SWEEP = NS
"""The gateway sweeps expired authorisations every second (``EXPIRE_RESOURCES_INTERVAL``, Firezone's
``rust/connlib/tunnel/src/gateway.rs``; ``gateway_core.policy.authorizations``): an expired authorisation
is gone at the latest one period after its expiry."""
PROXY_IPS_PER_FAMILY = 4
"""What the client answers for a DNS resource's A or AAAA (Firezone's client: 4 per family)."""
PROXY_V4 = IPv4Network("100.96.0.0/11")
PROXY_V6 = IPv6Network("fd00:2021:1111:8000::/107")
"""The DNS-resource proxy ranges: the Internet resource never covers them."""


class Outcome(StrEnum):
    REPLY = "reply"
    PORT_UNREACHABLE = "port_unreachable"
    UNREACHABLE = "unreachable"
    """The gateway's "no mapping" answer for a proxy IP: ICMPv4 3/0, ICMPv6 1/3."""
    RESET = "reset"
    PROHIBITED = "prohibited"
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class Alternative:
    """One acceptable result of a probe: ``outcome`` at the client, ``arrivals`` at the destination."""

    outcome: Outcome
    arrivals: int


@dataclass(frozen=True, slots=True)
class Prediction:
    """What one probe may produce: exactly one of ``alternatives`` (one when the model is certain)."""

    alternatives: tuple[Alternative, ...]

    @staticmethod
    def exact(outcome: Outcome, arrivals: int) -> Prediction:
        return Prediction((Alternative(outcome, arrivals),))

    @property
    def outcome(self) -> Outcome:
        return self.alternatives[0].outcome

    @property
    def arrivals(self) -> int:
        return self.alternatives[0].arrivals

    @property
    def certain(self) -> bool:
        return len(self.alternatives) == 1

    def lossy(self) -> Prediction:
        """On lossy links a packet may vanish: the request before the destination, or the answer after."""
        extra = [Alternative(Outcome.NOTHING, 0)]
        extra += [Alternative(Outcome.NOTHING, a.arrivals) for a in self.alternatives if a.arrivals]
        return Prediction(_unique((*self.alternatives, *extra)))


def _unique(alts: tuple[Alternative, ...]) -> tuple[Alternative, ...]:
    out: list[Alternative] = []
    for a in alts:
        if a not in out:
            out.append(a)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class DnsPrediction:
    """A DNS answer (``rcode`` and sorted record texts), or ``rcode`` ``none`` when nothing may come back;
    ``upstream``: whether the query must reach the upstream server (once); ``via``: the resource whose
    host answers a query sent through the tunnel to the client's DNS server (else empty)."""

    rcode: str
    records: tuple[str, ...]
    source: str
    upstream: bool
    via: str = ""


@dataclass(frozen=True, slots=True)
class Bounds:
    """One-way delays (ns) of the world's paths, from its link profiles: client-gateway (direct or through a
    relay), gateway-resource hosts, portal-gateway (the WebSocket)."""

    cg_min: int
    cg_max: int
    gr_min: int
    gr_max: int
    pg_min: int
    pg_max: int

    @property
    def round_trip_max(self) -> int:
        """Client -> gateway -> resource -> gateway -> client, at most."""
        return 2 * (self.cg_max + self.gr_max)


@dataclass(slots=True)
class Auth:
    """One authorisation period: ``start``/``end`` (world ns, when the portal decided) and ``expires_at``
    (Unix s). ``end_known``: the moment the portal told the gateway, when later than ``end`` (a revocation
    while the gateway was away from the portal reaches it with the ``init`` of its rejoin)."""

    start: int
    expires_at: int | None
    end: int | None = None
    told: int | None = None

    @property
    def told_at(self) -> int | None:
        return self.told if self.told is not None else self.end


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """A resource of the world as the model knows it: ``kind`` ``cidr``, ``dns`` or ``internet``."""

    name: str
    kind: str
    address: str


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A host behind the gateway: its addresses and open ports (what it answers)."""

    name: str
    addresses: tuple[IPAddress, ...]
    open_udp: tuple[int, ...] = ()
    open_tcp: tuple[int, ...] = ()


def filter_allows(filters: tuple[str, ...], proto: str, port: int) -> bool:
    """Portal filters (``tcp/80``, ``udp/5000-5010``, ``icmp``): empty = everything; else one must match."""
    if not filters:
        return True
    for f in filters:
        kind, _, ports = f.partition("/")
        if kind != proto:
            continue
        if kind == "icmp" or not ports:
            return True
        lo, _, hi = ports.partition("-")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


def name_in_pattern(name: str, pattern: str) -> bool:
    """Firezone DNS-resource patterns: ``**.base`` (base and any depth), ``*.base`` (one label), exact."""
    name = name.lower().rstrip(".")
    if pattern.startswith("**."):
        base = pattern[3:]
        return name == base or name.endswith("." + base)
    if pattern.startswith("*."):
        base = pattern[2:]
        head, dot, rest = name.partition(".")
        return name == base or (bool(dot) and bool(head) and rest == base)
    return name == pattern


def is_proxy(ip: IPAddress) -> bool:
    return ip in PROXY_V4 if ip.version == 4 else ip in PROXY_V6
