"""Sending probes and checking them: one packet from a client, what it must produce, and the check.

Theory of operation: a :class:`Probe` is one packet a client sends (ICMP echo, UDP, TCP request; through
the client's routing, or ``raw`` straight into its tunnel, possibly with a spoofed source) with the
model's :class:`~sim.reference.Prediction` and the host behind the gateway where its arrivals are
counted. :class:`Prober` sends probes (now, or scheduled at a later time for trains across a change),
and after the world ran checks them: every record the client got must belong to one of the probes and
each probe's records and arrivals must match one of its alternatives (:mod:`sim.stateful.expect`);
other clients get nothing; no other host behind the gateway gets anything.

An arrival is a probe's only when it is that probe's packet (:meth:`Probe.owns_arrival`): from the
probing client's tunnel address (the spoofed source of a spoofed probe), with the probe's protocol,
destination, ports (ICMP echo: identifier and sequence number). Through the DNS-resource NAT the
destination is the resolved address (the step checks which) and the NAT may rewrite the source port or
echo identifier of a flow whose value is taken, so there the rest must match and a rewritten arrival goes
to the client's one probe to the DNS resource's host. Every client numbers its probes on its own, so two
clients' probes can carry the same sequence number or port: the source address tells them apart.

In lossy worlds an arrival no probe of the step owns is a packet of an earlier probe (of any client)
that its client held while a lost WireGuard handshake or NAT set-up was retried and sent when it got
through: it counts for no probe of this step, and the security check after the step
(:meth:`~sim.stateful.invariants.Invariants.security`) judges it like every arrival, by its own source
and the time it arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from devpeers.client_types import (
    DnsAnswer,
    DomainStatusReceived,
    EchoReply,
    GoodbyeReceived,
    IcmpErrorReceived,
    Received,
    TcpReceived,
    UdpReceived,
)
from gateway_core.addr import IPAddress
from gateway_core.clock import Duration, Instant, millis
from gateway_core.wire.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    build_icmp_echo,
    build_tcp_packet,
    build_udp_packet,
)
from sim.hosts.resources import Arrival
from sim.reference import Prediction
from sim.stateful.expect import describe, matches
from sim.stateful.scene import InvariantError, Scene

PROBE_SETTLE: Duration = millis(1500)
"""Replies of one probe arrive well within this (a relayed round trip on the slowest links is ~0.4 s;
a DNS-resource probe adds the NAT set-up's round trip)."""
HOSTS = ("web", "webdns", "app", "inet")
"""The hosts behind the gateway whose arrivals are checked."""
_L4 = {"udp": PROTO_UDP, "tcp": PROTO_TCP}
"""A UDP or TCP probe's IP protocol number."""


@dataclass(slots=True)
class Probe:
    """One packet: who, what, where to, what the model predicts, where its arrivals count."""

    c: int
    proto: str
    dst: IPAddress
    port: int
    pred: Prediction
    host: str | None
    raw: bool = False
    src: IPAddress | None = None
    """For a raw probe: the source address (a spoofed one), default the client's tunnel address."""
    seq: int = 0
    sport: int = 0
    """The source port (UDP/TCP); left 0, :meth:`Prober.prepare` draws the next one, else it is kept (a
    packet of the same flow as an earlier probe)."""
    sources: tuple[IPAddress, ...] = ()
    """The source addresses its packet can have (:meth:`Prober.prepare`): the client's tunnel addresses,
    or the spoofed one."""
    ident: int = 0
    """For ICMP: the client's echo identifier."""
    mangle: Callable[[bytes], bytes] | None = None
    """For a raw probe: what to do to the packet's bytes before sending (a malformed variant)."""
    payload: bytes = b""
    what: str = ""
    sent_at: int = -1
    records: list[Received] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)

    def owns(self, r: Received) -> bool:
        """Whether client record ``r`` answers this probe."""
        if isinstance(r, EchoReply):
            return self.proto == "icmp" and r.seq == self.seq
        if isinstance(r, IcmpErrorReceived):
            if self.proto == "icmp":
                return r.inner_seq == self.seq and r.inner_dst == self.dst
            return r.inner_sport == self.sport and r.inner_dst == self.dst
        if isinstance(r, UdpReceived | TcpReceived):
            return self.proto in ("udp", "tcp") and r.dport == self.sport
        return False

    def owns_arrival(self, a: Arrival) -> bool:
        """Whether ``a`` is this probe's packet (see the module docstring): its source, protocol,
        destination, ports or echo identifier and sequence number; through the DNS-resource NAT (host
        ``app``) the destination is the resolved address and the source port or identifier may be
        rewritten."""
        if a.src not in self.sources:
            return False
        nat = self.host == "app"
        if not nat and a.dst != self.dst:
            return False
        if a.proto in (PROTO_ICMP, PROTO_ICMPV6):
            return self.proto == "icmp" and a.dport == self.seq and (nat or a.sport == self.ident)
        return a.proto == _L4.get(self.proto) and a.sport == self.sport and a.dport == self.port


class Prober:
    """Sends probes and checks them (see the module docstring)."""

    def __init__(self, scene: Scene) -> None:
        self.s = scene
        self._seq = [0] * scene.spec.clients
        self._sport = [20000] * scene.spec.clients
        self.earlier: list[Probe] = []
        """Probes checked already (lossy worlds: a packet the client buffered for a DNS-resource NAT whose
        set-up message was lost leaves when a later one gets through, and is answered then)."""

    def next_sport(self, c: int) -> int:
        self._sport[c] = 20000 + (self._sport[c] + 1 - 20000) % 19000
        return self._sport[c]

    def next_seq(self, c: int) -> int:
        self._seq[c] = self._seq[c] % 0xFFFF + 1
        return self._seq[c]

    def prepare(self, p: Probe) -> Probe:
        p.payload = f"p{p.c}-{self.s.steps_done}-{self._seq[p.c]}-{self._sport[p.c]}".encode()
        if p.proto == "icmp":
            p.seq = self.next_seq(p.c)
        elif not p.sport:
            p.sport = self.next_sport(p.c)
        cl = self.s.client(p.c)
        p.sources = (p.src,) if p.src is not None else (cl.tunnel_v4, cl.tunnel_v6)
        p.ident = cl.echo_ident
        p.what = f"client-{p.c} {'raw ' if p.raw else ''}{p.proto} to {p.dst}:{p.port}"
        if p.src is not None:
            p.what += f" from {p.src}"
        return p

    def send(self, p: Probe) -> None:
        """Send ``p`` now."""
        s = self.s
        p.sent_at = s.world.now
        gid = s.gw.gateway_id()
        if p.raw:
            cl = s.client(p.c)
            src = p.src if p.src is not None else (cl.tunnel_v4 if p.dst.version == 4 else cl.tunnel_v6)
            if p.proto == "icmp":
                packet = build_icmp_echo(src, p.dst, cl.echo_ident, p.seq, p.payload)
            elif p.proto == "tcp":
                packet = build_tcp_packet(src, p.dst, p.sport, p.port, p.payload, flags=TCP_ACK)
            else:
                packet = build_udp_packet(src, p.dst, p.sport, p.port, p.payload)
            if p.mangle is not None:
                packet = p.mangle(packet)
            s.gw.drive(p.c, lambda cc, t: cc.send_raw(t, gid, packet))
        elif p.proto == "icmp":
            s.gw.drive(p.c, lambda cc, t: cc.send_icmp(t, p.dst, p.seq, p.payload))
        elif p.proto == "udp":
            s.gw.drive(p.c, lambda cc, t: cc.send_udp(t, p.dst, p.port, p.payload, sport=p.sport))
        else:
            s.gw.drive(p.c, lambda cc, t: cc.send_tcp_request(t, p.dst, p.port, p.payload, sport=p.sport))

    def send_at(self, at: Instant, p: Probe) -> None:
        self.s.world.at(at, lambda: self.send(p))

    def collect(
        self, probes: Sequence[Probe], got: list[list[Received]], new: dict[str, list[Arrival]]
    ) -> None:
        """Attribute what the clients received and what reached the hosts to ``probes`` (raises on
        anything nobody asked for)."""
        by_client: dict[int, list[Probe]] = {}
        for p in probes:
            by_client.setdefault(p.c, []).append(p)
        for c, recs in enumerate(got):
            mine = by_client.get(c, [])
            for r in recs:
                if isinstance(r, DomainStatusReceived | GoodbyeReceived | DnsAnswer):
                    continue
                owner = next((p for p in mine if p.owns(r)), None)
                if owner is None and self.late_record(c, r):
                    continue
                if owner is None:
                    raise InvariantError(f"client-{c} received what nobody asked for: {r}")
                owner.records.append(r)
        for host in HOSTS:
            for a in new.get(host, []):
                owner = next((p for p in probes if p.host == host and p.owns_arrival(a)), None)
                if owner is None and host == "app" and not self.s.model.lossy:
                    # The NAT rewrote the flow's port (its value was taken): the client's one probe there.
                    owner = next((p for p in probes if p.host == "app" and a.src in p.sources), None)
                if owner is None and self.s.model.lossy:
                    continue  # a late packet of an earlier probe of any client (module docstring)
                if owner is None:
                    raise InvariantError(f"{host} received a packet no probe explains: {a}")
                owner.arrivals.append(a)
        self.earlier.extend(probes)
        del self.earlier[:-200]

    def late_flush(self, host: str, a: Arrival) -> bool:
        """Lossy worlds: ``a`` at ``host`` is a packet of an earlier probe that its client held while a lost
        WireGuard handshake or NAT set-up was retried, sent when it got through (the security check judges
        it like every arrival)."""
        if not self.s.model.lossy:
            return False
        return any(p.host == host and p.owns_arrival(a) for p in self.earlier)

    def late_record(self, c: int, r: Received) -> bool:
        """Lossy worlds: client ``c`` received ``r``, the late answer of one of its earlier probes."""
        return self.s.model.lossy and any(p.c == c and p.owns(r) for p in self.earlier)

    def without_late_records(self, got: list[list[Received]]) -> list[list[Received]]:
        """Each client's records (``Invariants.since``) without the late answers of its earlier probes."""
        return [[r for r in rs if not self.late_record(c, r)] for c, rs in enumerate(got)]

    def without_late_arrivals(self, arrivals: dict[str, list[Arrival]]) -> dict[str, list[Arrival]]:
        """Each host's arrivals (``Invariants.arrivals_since``) without late packets of earlier probes."""
        return {h: [a for a in new if not self.late_flush(h, a)] for h, new in arrivals.items()}

    def check(self, p: Probe) -> None:
        """``p``'s records and arrivals match one of its alternatives (raises otherwise)."""
        n = len(p.arrivals)
        lossy = self.s.model.lossy
        for alt in p.pred.alternatives:
            if not (alt.arrivals == n or (lossy and n <= alt.arrivals)):
                continue
            if matches(alt.outcome, p.proto, p.dst, p.seq, p.sport, p.payload, p.records, lossy):
                if alt.outcome.value == "prohibited":
                    self.s.coverage["event:icmp_prohibited"] += 1
                return
        want = " or ".join(f"{a.outcome.value} ({a.arrivals} at {p.host})" for a in p.pred.alternatives)
        raise InvariantError(
            f"{p.what} (seq {p.seq}, sport {p.sport}): expected {want}, got {describe(p.records)} and "
            f"{n} arrivals {p.arrivals}"
        )
