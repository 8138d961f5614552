"""The reference model of the gateway world: what must happen, independent of how the gateway does it.

Theory of operation
-------------------
The stateful test (``tests/sim/test_stateful.py``, driven by :mod:`sim.stateful`) keeps one
:class:`ReferenceModel` next to the simulated world. The model never looks at packets or at the gateway's
state. It holds only what the *portal* decided and what the *clients* were told:

- which client holds which authorisation (``web``: the CIDR resource, ``app``: the DNS resource,
  ``inet``: the Internet resource), since when, until when (a revocation, or an expiry in wall-clock Unix
  seconds), as a history of periods;
- the CIDR resource's address and filters, as a history of changes; which resources the portal moved to
  another site (no gateway of ours serves them);
- which resources each client routes (it keeps routing a revoked resource unless told to forget it), and
  whether its proxy-IP NAT for the DNS resource was confirmed (what the dev client does with it);
- whether the gateway's upstream DNS server is reachable, the zones the DNS servers serve;
- the bounds of the network (:class:`Bounds`: one-way delays between client, gateway, portal and
  resources, from the world's link profiles) and the gateway's documented expiry sweep period (1 s,
  Firezone's ``EXPIRE_RESOURCES_INTERVAL``).

From that it predicts, for one application packet or DNS query, what the client must receive (exactly
once) and how many packets must reach the destination host, written from the product's rules (what the
portal's messages mean and what Firezone's gateway does with a packet), not from the gateway's code:

======================================  =================================================================
client state for the destination       outcome
======================================  =================================================================
no route at the client                  nothing leaves the client: nothing
no live authorisation at all            the gateway dropped the client (goodbye): nothing
Internet resource live (not a proxy IP) the destination answers (echo reply, UDP echo, SYN/ACK + data;
                                        port unreachable / RST for a closed port); no filter applies
CIDR resource live, filter allows       the destination answers, as above
live, filter blocks / not authorised    ICMP "administratively prohibited" from the gateway
DNS proxy IP without a live auth        nothing (the client waits for a NAT that is refused) or ICMP
                                        prohibited (its NAT was confirmed before: it sends at once)
the gateway's own tunnel address        the gateway's host answers (echo; port unreachable)
another client's tunnel address         ICMP prohibited; spoofed source: nothing (the gateway's ICMP
                                        error goes to the spoofed address, which the client drops)
======================================  =================================================================

DNS: A/AAAA for a DNS-resource name are answered by the client itself (4 proxy IPs); SRV/TXT for a name
of a DNS resource the client routes are forwarded by the gateway to the upstream and the upstream's
answer comes back unchanged (NXDOMAIN for an unknown name), SERVFAIL when the upstream is unreachable,
REFUSED for a name outside the client's live DNS resources. Other names go to the client's DNS server:
through the tunnel when a resource routes its address (an ordinary packet to that resource), else the
client's own resolver (NXDOMAIN here: the simulated client has none).

Time and uncertainty
--------------------
A change the portal makes at ``t`` reaches the gateway at ``t + pg`` with ``pg`` within
``[Bounds.pg_min, Bounds.pg_max]``; an authorisation expiring at ``E`` is removed by the first sweep at or
after ``E``, so it lets packets pass up to ``E`` for sure and never from ``E + SWEEP``. A probe's packets
pass the gateway within known delays of when it was sent, so :meth:`ReferenceModel.predict_packet` gives
the exact outcome when every pass lies on one side of every change, and otherwise the *alternatives*
(each an outcome with its arrival count): before the change, after it, or the request before and the
reply after. A change that leaves a client without authorisations also sends it a goodbye, on which the
client forgets the connection: an answer that passed the gateway before the change but reaches the client
after the goodbye is lost there, so the answer's arrival at the client is one more moment to place
(:meth:`ReferenceModel.predict_across`). The security check (:meth:`ReferenceModel.may_reach`) accepts an
arrival at a resource only if, at some moment the packet can have passed the gateway (its arrival minus
the gateway-resource delay bounds), an authorisation covering it was in force at the gateway with filters
that allow it, with exactly these bounds and no other slack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from gateway_core.addr import IPAddress
from sim.reference_types import (
    NS,
    PROXY_IPS_PER_FAMILY,
    PROXY_V4,
    PROXY_V6,
    SWEEP,
    Alternative,
    Auth,
    Bounds,
    DnsPrediction,
    HostSpec,
    Outcome,
    Prediction,
    ResourceSpec,
    _unique,
    filter_allows,
    is_proxy,
    name_in_pattern,
)


@dataclass(slots=True)
class ReferenceModel:
    """See the module docstring. Times are world ns (``now``) and Unix ns (``unix``)."""

    clients: int
    resources: dict[str, ResourceSpec]
    hosts: dict[str, HostSpec]
    zone: dict[str, dict[str, list[str]]]
    epoch_unix_ns: int
    bounds: Bounds
    filters: tuple[str, ...] = ()
    auths: dict[tuple[int, str], list[Auth]] = field(default_factory=dict)
    routes: set[tuple[int, str]] = field(default_factory=set)
    filter_history: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    address_history: list[tuple[int, str]] = field(default_factory=list)
    upstream_ok: bool = True
    moved: set[str] = field(default_factory=set)
    """Resources the portal moved to a site without a gateway of ours."""
    nat: dict[tuple[int, str], str] = field(default_factory=dict)
    """Each client's proxy-IP NAT request for each name of the DNS resource, as the dev client holds it
    (its ``DomainNatRequest`` per (gateway, name)): ``none`` (none made, or started over), ``pending``
    (asked, packets held), ``nobuffer`` (asked again after a confirmation: packets go at once),
    ``confirmed`` (the gateway answered Active), ``failed`` (it answered otherwise), ``unknown`` (an
    answer may have been lost)."""
    lossy: bool = False
    """Packets may be lost on the clients' links: any expected answer may be missing."""

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
        if resource == "app":
            self.nat_reset(client)

    def revoke(self, now: int, client: int, resource: str, forget: bool) -> None:
        """``reject_access``; with ``forget`` the client also stops routing the resource."""
        self._close(client, resource, now)
        if forget:
            self.routes.discard((client, resource))

    def told(self, now: int, client: int, resource: str) -> None:
        """The gateway, away from the portal when it revoked, hears of it at ``now`` (its ``init``)."""
        hist = self.auths.get((client, resource), [])
        if hist and hist[-1].end is not None and hist[-1].told is None:
            hist[-1].told = now

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

    def set_address(self, now: int, address: str) -> None:
        web = self.resources["web"]
        if not self.address_history:
            self.address_history.append((0, web.address))
        self.resources["web"] = ResourceSpec("web", "cidr", address)
        self.address_history.append((now, address))

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

    def expiries(self) -> list[int]:
        """World times of the expiries of current authorisations."""
        return sorted(
            cur.expires_at * NS - self.epoch_unix_ns
            for c in range(self.clients)
            for r in self.resources
            if (cur := self.current(c, r)) is not None and cur.expires_at is not None
        )

    def quiet(self, now: int, horizon: int) -> bool:
        """No expiry of a current authorisation can take effect within ``[now - SWEEP - gr_max, now +
        horizon]``: a probe sent now, settled within ``horizon``, is predicted exactly."""
        lo = now - SWEEP - self.bounds.gr_max
        return not any(lo <= e <= now + horizon for e in self.expiries())

    def next_expiry(self, now: int) -> int | None:
        """World time of the first expiry of a current authorisation not behind us (None if none)."""
        times = [e for e in self.expiries() if e >= now - SWEEP - self.bounds.gr_max]
        return min(times) if times else None

    # --- predictions: packets -----------------------------------------------------------------------------

    def web_network(self) -> IPv4Network | IPv6Network:
        return ip_network(self.resources["web"].address)

    def client_route(self, client: int, dst: IPAddress) -> str | None:
        """The resource the client sends ``dst`` through (what the dev client's resource table does)."""
        if is_proxy(dst):
            return "app" if (client, "app") in self.routes else None
        net = self.web_network()
        if (client, "web") in self.routes and dst.version == net.version and dst in net:
            return "web"
        if (client, "inet") in self.routes:
            return "inet"
        return None

    def host_of(self, dst: IPAddress) -> HostSpec | None:
        for h in self.hosts.values():
            if dst in h.addresses:
                return h
        return None

    def _answer(self, host: HostSpec | None, proto: str, port: int) -> Alternative:
        """What ``host`` answers to a packet that reached it (``None``: no host there, nothing)."""
        if host is None:
            return Alternative(Outcome.NOTHING, 0)
        if proto == "udp" and port not in host.open_udp:
            return Alternative(Outcome.PORT_UNREACHABLE, 1)
        if proto == "tcp" and port not in host.open_tcp:
            return Alternative(Outcome.RESET, 1)
        return Alternative(Outcome.REPLY, 2 if proto == "tcp" else 1)

    def gateway_allows(self, client: int, dst: IPAddress, proto: str, port: int, at: int) -> str | None:
        """The resource under which the gateway (state as of ``at``, all changes known) lets the packet
        pass, or None."""
        if self.live(client, "inet", at) and "inet" not in self.moved and not is_proxy(dst):
            return "inet"
        if is_proxy(dst):
            return "app" if self.live(client, "app", at) and "app" not in self.moved else None
        net = self.web_network()
        live = self.live(client, "web", at) and "web" not in self.moved
        if live and dst.version == net.version and dst in net:
            return "web" if filter_allows(self.filters, proto, port) else None
        return None

    def predict_packet(
        self, client: int, dst: IPAddress, proto: str, port: int, now: int, name: str = "app.corp.test"
    ) -> Prediction:
        """One probe from ``client`` to ``dst`` (``proto`` icmp/udp/tcp; ``port``: destination, 0 for ICMP;
        ``name``: the DNS-resource name a proxy IP stands for), sent now while no change is in flight (the
        harness makes sure)."""
        pred = self._predict(client, dst, proto, port, now, name)
        return pred.lossy() if self.lossy else pred

    def _predict(
        self, client: int, dst: IPAddress, proto: str, port: int, now: int, name: str = "app.corp.test"
    ) -> Prediction:
        route = self.client_route(client, dst)
        if route is None or not self.has_peer(client, now):
            return Prediction.exact(Outcome.NOTHING, 0)
        allowed = self.gateway_allows(client, dst, proto, port, now)
        if allowed == "app" and not self.resolved(name, 4) + self.resolved(name, 6):
            allowed = None  # the name resolves to nothing: the gateway refuses the NAT (Inactive)
        if allowed is None:
            if route == "app":
                state = self.nat.get((client, name), "none")
                if state == "unknown":
                    return Prediction((Alternative(Outcome.NOTHING, 0), Alternative(Outcome.PROHIBITED, 0)))
                if state in ("none", "pending"):
                    return Prediction.exact(Outcome.NOTHING, 0)  # held until a status that refuses it
            return Prediction.exact(Outcome.PROHIBITED, 0)
        if allowed == "app" and not self.resolved(name, dst.version):
            # No real address of the proxy IP's family: the gateway answers "unreachable" (no NAT64).
            return Prediction.exact(Outcome.UNREACHABLE, 0)
        host = self.hosts["app"] if allowed == "app" else self.host_of(dst)
        a = self._answer(host, proto, port)
        return Prediction.exact(a.outcome, a.arrivals)

    def resolved(self, name: str, version: int) -> tuple[IPAddress, ...]:
        """The addresses of one family the upstream resolves ``name`` to (what the gateway maps to)."""
        entry = self.zone.get(name, {})
        return tuple(ip_address(a) for a in entry.get("A" if version == 4 else "AAAA", ()))

    # --- the client's proxy-IP NAT request (what the dev client does) ---------------------------------------

    def nat_reset(self, client: int) -> None:
        """The client starts its NAT requests over (a new flow of the DNS resource, a reset, a restart)."""
        for key in [k for k in self.nat if k[0] == client]:
            del self.nat[key]

    def nat_query(self, client: int, name: str) -> None:
        """The client answered A/AAAA for ``name`` (of the DNS resource) itself: a request it holds is
        asked again (``recreate`` then ``update``: after a confirmation without holding packets, after a
        failure holding them); the answer comes with :meth:`nat_settle`."""
        state = self.nat.get((client, name), "none")
        if state == "confirmed":
            self.nat[(client, name)] = "nobuffer"
        elif state == "failed":
            self.nat[(client, name)] = "pending"

    def nat_probe(self, client: int, name: str) -> None:
        """A packet to a proxy IP of ``name``: without a request, the client makes one (holding it)."""
        if self.nat.get((client, name), "none") == "none":
            self.nat[(client, name)] = "pending"

    def nat_settle(self, client: int, name: str, now: int) -> None:
        """The gateway answered the request (when the client had a connection to send it on)."""
        key = (client, name)
        self.nat[key] = self._nat_answer(client, self.nat.get(key, "none"), now, name)

    def _nat_answer(self, client: int, state: str, now: int, name: str = "app.corp.test") -> str:
        if state in ("none", "confirmed", "failed", "unknown"):
            return state
        if not self.has_peer(client, now):
            return state  # the request waits for a connection (and is dropped with it)
        if self.lossy:
            return "unknown"
        live = self.live(client, "app", now) and "app" not in self.moved
        return "confirmed" if live and self.resolved(name, 4) + self.resolved(name, 6) else "failed"

    def predict_raw(self, client: int, dst: IPAddress, proto: str, port: int, now: int) -> Prediction:
        """A packet put straight into the tunnel (no routing at the client): the gateway decides alone."""
        if not self.has_peer(client, now):
            pred = Prediction.exact(Outcome.NOTHING, 0)
        elif self.gateway_allows(client, dst, proto, port, now) is None:
            pred = Prediction.exact(Outcome.PROHIBITED, 0)
        else:
            a = self._answer(self.host_of(dst), proto, port)
            pred = Prediction.exact(a.outcome, a.arrivals)
        return pred.lossy() if self.lossy else pred

    def predict_gateway_address(self, client: int, proto: str, port: int, now: int) -> Prediction:
        """A probe to the gateway's own tunnel address: its host answers (no filter applies)."""
        if not self.has_peer(client, now):
            return Prediction.exact(Outcome.NOTHING, 0)
        if proto == "udp":
            pred = Prediction.exact(Outcome.PORT_UNREACHABLE, 0)
        else:
            pred = Prediction.exact(Outcome.REPLY, 0)
        return pred.lossy() if self.lossy else pred

    def predict_prohibited_or_nothing(self, client: int, now: int) -> Prediction:
        """A packet the gateway refuses whatever the resources (another client's address): ICMP
        prohibited while the gateway keeps the client, else nothing."""
        outcome = Outcome.PROHIBITED if self.has_peer(client, now) else Outcome.NOTHING
        pred = Prediction.exact(outcome, 0)
        return pred.lossy() if self.lossy else pred

    def predict_across(
        self,
        sent: int,
        before: Prediction,
        after: Prediction,
        change_lo: int,
        change_hi: int,
        goodbye: bool = False,
    ) -> Prediction:
        """A probe sent at ``sent`` while the gateway changes its mind somewhere in ``[change_lo,
        change_hi)`` (a revocation or new filters reaching it, an expiry swept): ``before`` if the request
        and the answer pass the gateway before ``change_lo``, ``after`` if the request passes from
        ``change_hi`` on, else either of them or the request passing and the answer lost. ``before``
        and ``after`` are exact predictions (without loss) for the state before and after the change.

        ``goodbye``: the change leaves the client without authorisations, so the gateway closes its
        connection with a goodbye when it makes the change, and the client forgets the connection when
        the goodbye arrives; an answer still on its way to the client then finds no connection there.
        The goodbye may overtake an answer sent before it (jitter), so ``before`` also needs the answer to
        reach the client before the goodbye can (its latest arrival before ``change_lo + cg_min``)."""
        b = self.bounds
        answered = sent + b.cg_max + 2 * b.gr_max  # the answer has passed the gateway by then
        if answered < change_lo and (not goodbye or answered + b.cg_max < change_lo + b.cg_min):
            pred = before
        elif sent + b.cg_min >= change_hi:
            pred = after
        else:
            alts = [*before.alternatives, *after.alternatives]
            alts += [Alternative(Outcome.NOTHING, a.arrivals) for a in before.alternatives if a.arrivals]
            pred = Prediction(_unique(tuple(alts)))
        return pred.lossy() if self.lossy else pred

    # --- predictions: DNS ---------------------------------------------------------------------------------

    def dns_resources(self, name: str) -> list[str]:
        return [r for r, s in self.resources.items() if s.kind == "dns" and name_in_pattern(name, s.address)]

    def predict_dns(self, client: int, name: str, rtype: str, via_gateway: bool, now: int) -> DnsPrediction:
        """One DNS query from ``client`` (``via_gateway``: sent to the gateway whatever the name)."""
        dns = self.dns_resources(name)
        routed = [r for r in dns if (client, r) in self.routes]
        if not via_gateway:
            if not routed:
                return DnsPrediction("NXDOMAIN", (), "local", False)
            if rtype in ("A", "AAAA"):
                return DnsPrediction("NOERROR", (), "local", False)
        if not self.has_peer(client, now):
            return DnsPrediction("none", (), "gateway", False)
        if not any(self.live(client, r, now) and r not in self.moved for r in dns):
            return DnsPrediction("REFUSED", (), "gateway", False)
        if not self.upstream_ok:
            return DnsPrediction("SERVFAIL", (), "gateway", False)
        entry = self.zone.get(name)
        if entry is None:
            return DnsPrediction("NXDOMAIN", (), "gateway", True)
        return DnsPrediction("NOERROR", tuple(sorted(entry.get(rtype, ()))), "gateway", True)

    def predict_dns_server(
        self, client: int, server: IPAddress, name: str, rtype: str, now: int
    ) -> tuple[DnsPrediction, Prediction]:
        """A query for a name outside the DNS resources, to the client's DNS server ``server``: through
        the tunnel when a resource routes the server's address (then it is an ordinary UDP packet to port
        53 of that resource, second value), else answered by the client's own resolver."""
        route = self.client_route(client, server)
        if route is None:
            return DnsPrediction("NXDOMAIN", (), "local", False), Prediction.exact(Outcome.NOTHING, 0)
        pred = self._predict(client, server, "udp", 53, now)
        entry = self.zone.get(name)
        records = tuple(sorted(entry.get(rtype, ()))) if entry is not None else ()
        rcode = "NOERROR" if entry is not None else "NXDOMAIN"
        answer = DnsPrediction(rcode, records, "tunnel", False, via=route)
        return answer, (pred.lossy() if self.lossy else pred)

    # --- security -----------------------------------------------------------------------------------------

    def may_reach(self, client: int, dst: IPAddress, proto: str, port: int, at: int) -> bool:
        """Security: may a packet of ``client`` to ``dst`` (a host behind the gateway; for the DNS resource
        its real address) arrive there at world time ``at``?

        It passed the gateway within ``[at - gr_max, at - gr_min]``; some authorisation must have been in
        force at the gateway then: granted (the grant reaches the gateway ``pg_min`` after the portal's
        decision at the earliest), not yet revoked (the revocation reaches it ``pg_max`` after the decision
        at the latest, or when it was told on rejoin), not yet swept (``expiry + SWEEP``), covering
        ``dst`` with filters that allowed the packet (a filter or address change takes effect within the
        same portal-hop window)."""
        b = self.bounds
        p_lo, p_hi = at - b.gr_max, at - b.gr_min
        for resource in ("inet", "web", "app"):
            for a in self.auths.get((client, resource), []):
                lo = max(p_lo, a.start + b.pg_min)
                hi = p_hi
                told = a.told_at
                if told is not None:
                    hi = min(hi, told + b.pg_max)
                if a.expires_at is not None:
                    hi = min(hi, a.expires_at * NS - self.epoch_unix_ns + SWEEP - 1)
                if lo > hi:
                    continue
                if self._covers(resource, dst, proto, port, lo, hi):
                    return True
        return False

    def _covers(self, resource: str, dst: IPAddress, proto: str, port: int, lo: int, hi: int) -> bool:
        if resource == "inet":
            return not is_proxy(dst)
        if resource == "app":
            return dst in self.hosts["app"].addresses
        for t_from, t_to, address, filters in self._web_windows():
            if t_to < lo or t_from > hi:
                continue
            net = ip_network(address)
            if dst.version == net.version and dst in net and filter_allows(filters, proto, port):
                return True
        return False

    def _web_windows(self) -> list[tuple[int, int, str, tuple[str, ...]]]:
        """``(from, to, address, filters)``: when each combination of the CIDR resource's address and
        filters may have been in force at the gateway (changes take effect within the portal hop)."""
        b = self.bounds
        changes: list[tuple[int, str, object]] = [(t, "filters", f) for t, f in self.filter_history[1:]]
        changes += [(t, "address", a) for t, a in self.address_history[1:]]
        changes.sort(key=lambda c: c[0])
        filters = self.filter_history[0][1] if self.filter_history else self.filters
        address = self.address_history[0][1] if self.address_history else self.resources["web"].address
        out: list[tuple[int, int, str, tuple[str, ...]]] = []
        start = -(1 << 62)
        for t, what, value in changes:
            out.append((start, t + b.pg_max, address, filters))
            if what == "filters":
                assert isinstance(value, tuple)
                filters = value
            else:
                assert isinstance(value, str)
                address = value
            start = t + b.pg_min
        out.append((start, 1 << 62, address, filters))
        return out


__all__ = [
    "NS",
    "PROXY_IPS_PER_FAMILY",
    "PROXY_V4",
    "PROXY_V6",
    "SWEEP",
    "Alternative",
    "Auth",
    "Bounds",
    "DnsPrediction",
    "HostSpec",
    "Outcome",
    "Prediction",
    "ReferenceModel",
    "ResourceSpec",
    "filter_allows",
    "is_proxy",
    "name_in_pattern",
]
