"""The reference model of the gateway world: what must happen, independent of how the gateway does it.

Theory of operation
-------------------
The stateful test (``tests/sim/test_stateful.py``, driven by :mod:`sim.stateful`) keeps one
:class:`ReferenceModel` next to the simulated world. The model never looks at packets or at the gateway's
state. It holds only what the *portal* decided and what the *clients* were told:

- which client holds which authorisation, until when (wall-clock Unix seconds, ``None`` = no expiry);
- the filters the portal currently has for the CIDR resource;
- which resources each client routes (it keeps routing a revoked resource unless told to forget it);
- whether the gateway's upstream DNS server is reachable;
- the DNS zone the upstream serves (configuration of the world, not logic of the gateway).

From that it predicts, for one application flow or DNS query, what the client must receive (exactly once)
and how many packets must reach the resource, written as a small table from the product's rules (what
the portal's messages mean and what Firezone's gateway does with a packet), not from the gateway's code:

======================================  =================================================================
client state for the resource           outcome
======================================  =================================================================
live authorisation, filter allows       the resource answers (echo reply, UDP echo, TCP SYN/ACK + data);
                                        a closed port answers port unreachable (UDP) or RST (TCP); the
                                        packet reaches it
live authorisation, filter blocks       ICMP "administratively prohibited" from the gateway; nothing
                                        reaches the resource
no live authorisation, other ones live  ICMP prohibited from the gateway; nothing reaches the resource
no live authorisation at all            the gateway dropped the client (goodbye): nothing at all
======================================  =================================================================

DNS: A/AAAA for a DNS-resource name are answered by the client itself (4 proxy IPs); SRV/TXT for a name
of a DNS resource the client holds are forwarded by the gateway to the upstream and the upstream's answer
comes back unchanged (NXDOMAIN for an unknown name); an upstream that does not answer gives SERVFAIL; a
name outside the client's DNS resources is REFUSED without asking the upstream.

Time: an authorisation is live while ``expires_at`` is later than the wall clock. Around an expiry the
gateway's 1 s sweep and the network make the outcome uncertain: :meth:`ReferenceModel.certain` says when a
prediction can be made; the harness only sends probes when it can. The security check
(:meth:`ReferenceModel.may_reach`) accepts an arrival at a resource only inside a live authorisation,
stretched by :data:`SWEEP_SLACK` after an expiry and :data:`PORTAL_SLACK` after a revocation (the time the
removal takes to reach the gateway), and only if the filters allowed it (old or new filters within
:data:`PORTAL_SLACK` of a change).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

NS = 1_000_000_000
SWEEP_SLACK = 1_500_000_000
"""An expired authorisation may still pass packets until the gateway's 1 s expiry sweep has run (plus
a network hop): 1.5 s."""
PORTAL_SLACK = 200_000_000
"""A revocation or a filter change reaches the gateway one portal hop later (~20 ms here); 200 ms."""
UNCERTAIN_BEFORE = 1_000_000_000
UNCERTAIN_AFTER = 2_500_000_000
"""Probes are not predicted from 1 s before an expiry to 2.5 s after it (sweep + replies in flight)."""
PROXY_IPS_PER_FAMILY = 4
"""What the client answers for a DNS resource's A or AAAA (Firezone's client: 4 per family)."""


class Outcome(StrEnum):
    REPLY = "reply"
    PORT_UNREACHABLE = "port_unreachable"
    RESET = "reset"
    PROHIBITED = "prohibited"
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class Prediction:
    """What one probe must produce: ``outcome`` at the client (exactly once), ``arrivals`` at the resource."""

    outcome: Outcome
    arrivals: int


@dataclass(frozen=True, slots=True)
class DnsPrediction:
    """A DNS answer (``rcode`` and sorted record texts), or ``rcode`` ``none`` when nothing may come back;
    ``upstream``: whether the query must reach the upstream server (once)."""

    rcode: str
    records: tuple[str, ...]
    source: str
    upstream: bool


@dataclass(slots=True)
class Auth:
    """One authorisation as the portal granted it: ``start``/``end`` in world ns, ``expires_at`` Unix s."""

    start: int
    expires_at: int | None
    end: int | None = None


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """A resource of the world as the model knows it: ``kind`` ``cidr`` or ``dns``."""

    name: str
    kind: str
    address: str
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


@dataclass(slots=True)
class ReferenceModel:
    """See the module docstring. Times are world ns (``now``) and Unix ns (``unix``)."""

    clients: int
    resources: dict[str, ResourceSpec]
    zone: dict[str, dict[str, list[str]]]
    epoch_unix_ns: int
    filters: tuple[str, ...] = ()
    auths: dict[tuple[int, str], list[Auth]] = field(default_factory=dict)
    routes: set[tuple[int, str]] = field(default_factory=set)
    filter_history: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    upstream_ok: bool = True

    # --- portal decisions ---------------------------------------------------------------------------------

    def unix(self, now: int) -> int:
        return self.epoch_unix_ns + now

    def current(self, client: int, resource: str) -> Auth | None:
        hist = self.auths.get((client, resource))
        return hist[-1] if hist and hist[-1].end is None else None

    def grant(self, now: int, client: int, resource: str) -> None:
        """``authorize_flow``: a fresh authorisation without expiry (the policy sets none); a new period
        of the authorisation history (a re-authorisation replaces the expiry)."""
        self._close(client, resource, now)
        self.auths.setdefault((client, resource), []).append(Auth(now, None))
        self.routes.add((client, resource))

    def revoke(self, now: int, client: int, resource: str, forget: bool) -> None:
        """``reject_access``; with ``forget`` the client also stops routing the resource."""
        self._close(client, resource, now)
        if forget:
            self.routes.discard((client, resource))

    def update_expiry(self, now: int, client: int, resource: str, expires_at: int) -> None:
        cur = self.current(client, resource)
        if cur is not None and self._live_at(cur, self.unix(now)):
            # A new period starts: earlier traffic stays judged by the expiry in force at its time.
            cur.end = now
            self.auths[(client, resource)].append(Auth(now, expires_at))

    def set_filters(self, now: int, filters: tuple[str, ...]) -> None:
        if not self.filter_history:
            self.filter_history.append((0, self.filters))
        self.filters = filters
        self.filter_history.append((now, filters))

    def _close(self, client: int, resource: str, now: int) -> None:
        cur = self.current(client, resource)
        if cur is not None:
            cur.end = now

    # --- state at a time ----------------------------------------------------------------------------------

    @staticmethod
    def _live_at(a: Auth, unix: int) -> bool:
        return a.expires_at is None or a.expires_at * NS > unix

    def live(self, client: int, resource: str, now: int) -> bool:
        cur = self.current(client, resource)
        return cur is not None and self._live_at(cur, self.unix(now))

    def has_peer(self, client: int, now: int) -> bool:
        """The gateway keeps a client while it holds at least one live authorisation."""
        return any(self.live(client, r, now) for r in self.resources)

    def certain(self, now: int) -> bool:
        """No expiry of a current authorisation lies close to ``now`` (see the module docstring)."""
        unix = self.unix(now)
        for c in range(self.clients):
            for r in self.resources:
                cur = self.current(c, r)
                if cur is not None and cur.expires_at is not None:
                    at = cur.expires_at * NS
                    if at - UNCERTAIN_BEFORE <= unix <= at + UNCERTAIN_AFTER:
                        return False
        return True

    def next_expiry(self, now: int) -> int | None:
        """World time of the next expiry of a current authorisation after ``now`` (None if none)."""
        unix = self.unix(now)
        times = [
            cur.expires_at * NS - self.epoch_unix_ns
            for c in range(self.clients)
            for r in self.resources
            if (cur := self.current(c, r)) is not None
            and cur.expires_at is not None
            and cur.expires_at * NS > unix - UNCERTAIN_AFTER
        ]
        return min(times) if times else None

    # --- predictions --------------------------------------------------------------------------------------

    def predict_packet(self, client: int, resource: str, proto: str, port: int, now: int) -> Prediction:
        """One probe (``proto`` ``icmp``/``udp``/``tcp``; ``port`` the destination port, 0 for ICMP)."""
        spec = self.resources[resource]
        if (client, resource) not in self.routes or not self.has_peer(client, now):
            return Prediction(Outcome.NOTHING, 0)
        if not self.live(client, resource, now):
            return Prediction(Outcome.PROHIBITED, 0)
        if spec.kind == "cidr" and not filter_allows(self.filters, proto, port):
            return Prediction(Outcome.PROHIBITED, 0)
        if proto == "udp" and port not in spec.open_udp:
            return Prediction(Outcome.PORT_UNREACHABLE, 1)
        if proto == "tcp" and port not in spec.open_tcp:
            return Prediction(Outcome.RESET, 1)
        return Prediction(Outcome.REPLY, 2 if proto == "tcp" else 1)

    def predict_dns(self, client: int, name: str, rtype: str, via_gateway: bool, now: int) -> DnsPrediction:
        """One DNS query from ``client`` (``via_gateway``: sent to the gateway whatever the name)."""
        dns = [r for r, s in self.resources.items() if s.kind == "dns" and name_in_pattern(name, s.address)]
        routed = [r for r in dns if (client, r) in self.routes]
        if not via_gateway:
            if not routed:
                return DnsPrediction("NXDOMAIN", (), "local", False)
            if rtype in ("A", "AAAA"):
                return DnsPrediction("NOERROR", (), "local", False)
        if not self.has_peer(client, now):
            return DnsPrediction("none", (), "gateway", False)
        if not any(self.live(client, r, now) for r in dns):
            return DnsPrediction("REFUSED", (), "gateway", False)
        if not self.upstream_ok:
            return DnsPrediction("SERVFAIL", (), "gateway", False)
        entry = self.zone.get(name)
        if entry is None:
            return DnsPrediction("NXDOMAIN", (), "gateway", True)
        return DnsPrediction("NOERROR", tuple(sorted(entry.get(rtype, ()))), "gateway", True)

    def may_reach(
        self, client: int, resource: str, proto: str, port: int, at: int, *, filtered: bool = True
    ) -> bool:
        """Security: may a packet of ``client`` reach ``resource`` at world time ``at``?"""
        ok = False
        for a in self.auths.get((client, resource), []):
            if at < a.start:
                continue
            if a.end is not None and at > a.end + PORTAL_SLACK:
                continue
            if a.expires_at is not None and self.unix(at) > a.expires_at * NS + SWEEP_SLACK:
                continue
            ok = True
        if not ok or not filtered or self.resources[resource].kind != "cidr":
            return ok
        return any(filter_allows(f, proto, port) for f in self._filters_around(at))

    def _filters_around(self, at: int) -> list[tuple[str, ...]]:
        hist = self.filter_history or [(0, self.filters)]
        out = []
        for i, (t, f) in enumerate(hist):
            nxt = hist[i + 1][0] if i + 1 < len(hist) else None
            if t - PORTAL_SLACK <= at and (nxt is None or at <= nxt + PORTAL_SLACK):
                out.append(f)
        return out
