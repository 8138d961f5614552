"""The ``nat_edge`` step of the stateful harness: the DNS-resource NAT's sessions at their edges.

Theory of operation. A ``nat_edge`` step runs one case of :data:`CASES` (``step.a``; ``step.b`` picks the IP
family where a case has both): packets a client puts straight into its tunnel (``send_raw``: any flag, any
echo identifier) to the proxy IPs of ``app.corp.test`` and ``v4only.corp.test`` (both resolve to the ``app``
host's IPv4 address), and packets the ``app`` host sends on its own (a late segment, a reset, a pushed
datagram, an ICMP error), each exchange checked exactly: which packets reach the host (protocol, source,
destination, ports or echo identifier and sequence), what each client receives, and by how much every
``drop.*`` counter of the gateway goes up. The predictions are Firezone's NAT
(``rust/connlib/tunnel/src/gateway/nat_table.rs`` and ``client_on_gateway.rs`` at 352a83bbb0) and our
decisions, written down case by case, not read from the gateway's code:

- the outside value of a new session is the client's port or echo identifier if no session towards that
  real IP uses it, else the next free one upwards, wrapping from 65535 to 1 (``nat_table.rs``: "the first
  available public port, starting from the port of the to-be-mapped packet"); value 0 is kept as well;
  tables are per client, so two clients never collide;
- a TCP RST in either direction passes translated and ends its session; later packets of it from the
  resource are dropped as ``nat_session_expired``, and so are ICMP errors quoting it (the reference's
  ``expired`` set); a later packet of the client opens a new session, which gets the same outside port;
- a session lives 120 s (UDP, ICMP) or 2 h (TCP) after its last packet in either direction (decision
  0042), then ends like a reset; its tombstone lasts 120 s (decision 0043), after which a late packet is
  judged like any packet without a session: the client's filters refuse the real address
  (``not_authorized``);
- a proxy IP the restarted client gives to another name forgets its translation and its sessions without
  tombstones (decision 0178): a late packet of such a session is refused by the filters, not as expired;
  a repeated set-up of the same name keeps the sessions;
- a name whose address changes (the gateway's resolver answers the ``web`` host's address) moves its
  proxy IPs on the client's next set-up, except one with open sessions, which keeps its real address
  until its sessions are gone (``setup_nat`` in ``client_on_gateway.rs``);
- the table holds at most 8,192 sessions per client (decision 0043): the next new session is dropped as
  ``nat_table_full`` (nothing reaches the host, nothing comes back) while existing ones keep working; when
  they have timed out the new session fits, and all 8,192 ended sessions leave tombstones, the oldest
  included.

The 8,192 sessions of the bound case are opened by handing their packets to the client's policy object
(``ClientPolicy.outbound``, what the gateway does with a decrypted packet) at the world's current time: the
same code path without 8,191 encryptions; everything else goes through the simulated world. The step has
weight 0 (never drawn): :func:`nat_program` walks every case (``make test``, ``make mutation``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devpeers.client import DevClient
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
from gateway_core.clock import Duration, Instant, secs
from gateway_core.policy.client import FORWARD
from gateway_core.wire.icmp import build_icmp_error
from gateway_core.wire.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_PSH,
    TCP_RST,
    build_icmp_echo,
    build_tcp_packet,
    build_udp_packet,
)
from sim.gateway_world import APP_V4, APP_V6, WEB_V4
from sim.stateful.probes import PROBE_SETTLE, Probe
from sim.stateful.program import Program, Step, StepKind, WorldSpec
from sim.stateful.scene import Handler, InvariantError, Scene

if TYPE_CHECKING:
    from sim.stateful.invariants import Invariants
    from sim.stateful.traffic import Traffic

APP, V4ONLY = "app.corp.test", "v4only.corp.test"
"""Two names of the DNS resource with the same IPv4 address (``APP_V4``); ``app`` also has ``APP_V6``."""
ECHO, WEB = 7, 80
"""The ``app`` host's UDP echo port and open TCP port."""
UDP_TTL, TCP_TTL, TOMBSTONE_TTL = secs(120), secs(7200), secs(120)
"""Firezone's session lifetimes (``nat_table.rs``) and our tombstone's (decision 0043), as the model
states them."""
MARGIN = secs(5)
"""How far beyond (or before) a lifetime the step acts: the gateway sweeps at its deadline, the packets'
own times differ by a few milliseconds of link latency."""
BOUND = 8192
"""Sessions per client (decision 0043)."""

Rec = tuple[object, ...]
"""A client record as compared: ``("echo", src, ident, seq)``, ``("udp", src, sport, dport, payload)``,
``("tcp", src, sport, dport, flags, payload)``, ``("icmp", src, type, code, inner_dst, inner_sport)``."""
Arr = tuple[int, IPAddress, IPAddress, int, int]
"""An arrival at the ``app`` host: protocol, source, destination, source port or echo identifier,
destination port or echo sequence number."""


def _rec(r: Received) -> Rec | None:
    if isinstance(r, EchoReply):
        return ("echo", r.src, r.ident, r.seq)
    if isinstance(r, UdpReceived):
        return ("udp", r.src, r.sport, r.dport, r.payload)
    if isinstance(r, TcpReceived):
        return ("tcp", r.src, r.sport, r.dport, r.flags, r.payload)
    if isinstance(r, IcmpErrorReceived):
        return ("icmp", r.src, r.icmp_type, r.code, r.inner_dst, r.inner_sport)
    return None


@dataclass(slots=True)
class Expect:
    """What one exchange must produce: arrivals at ``app``, records per client, drop counters' increase."""

    arrivals: list[Arr] = field(default_factory=list)
    records: dict[int, list[Rec]] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    web: list[Arr] = field(default_factory=list)
    """Arrivals at the ``web`` host (a name re-resolved to its address)."""


class NatEdges:
    """See the module docstring."""

    def __init__(self, scene: Scene, invariants: Invariants, traffic: Traffic) -> None:
        self.s = scene
        self.inv = invariants
        self.traffic = traffic
        self._ready: set[tuple[int, str, int]] = set()
        self._kept: dict[str, int] = {}
        """Ports a case leaves to a later one (the flows open across the client restart)."""

    def handlers(self) -> dict[StepKind, Handler]:
        return {StepKind.NAT_EDGE: self._do_nat_edge}

    def _do_nat_edge(self, step: Step, c: int) -> None:
        s = self.s
        if s.model.lossy or (c, "app") not in s.model.routes or not s.model.has_peer(c, s.world.now):
            s.coverage["nat_edge_skipped"] += 1  # exact predictions need a client with the resource
            return
        name, case = CASES[step.a % len(CASES)]
        case(self, c, 6 if step.b % 2 else 4)
        s.coverage[f"event:nat_edge_{name}"] += 1

    # --- helpers ---------------------------------------------------------------------------------------

    def proxies(self, c: int, name: str, version: int) -> tuple[IPAddress, ...]:
        """The client's proxy IPs of ``name`` in ``version`` (4 of them), the name's NAT set up and
        checked by one UDP probe the first time."""
        s = self.s
        cl = s.client(c)
        key = (c, name, version)
        if key not in self._ready:
            before = len(cl.received)
            rtype = "AAAA" if version == 6 else "A"
            s.gw.drive(c, lambda cc, t: cc.query_dns(t, name, rtype))
            answers = [r for r in cl.received[before:] if isinstance(r, DnsAnswer)]
            if len(answers) != 1 or answers[0].rcode != "NOERROR":
                raise InvariantError(f"local {rtype} answer for {name}: {answers}")
            s.model.nat_query(c, name)
            dst = self._pick(cl.proxy_ips(name), version)[0]
            now = s.world.now
            pred = s.model.predict_packet(c, dst, "udp", ECHO, now, name)
            s.model.nat_probe(c, name)
            self.traffic.run(Probe(c, "udp", dst, ECHO, pred, "app"))
            s.model.nat_settle(c, name, now)
            self._ready.add(key)
        return self._pick(cl.proxy_ips(name), version)

    @staticmethod
    def _pick(ips: tuple[IPAddress, ...], version: int) -> tuple[IPAddress, ...]:
        return tuple(ip for ip in ips if ip.version == version)

    def tun(self, c: int, version: int) -> IPAddress:
        cl = self.s.client(c)
        return cl.tunnel_v6 if version == 6 else cl.tunnel_v4

    def exchange(
        self,
        what: str,
        expect: Expect,
        sends: dict[int, list[bytes]] | None = None,
        app: list[bytes] | None = None,
    ) -> None:
        """Clients send ``sends[c]`` into their tunnels (in order, at once), the ``app`` host sends ``app``;
        after :data:`PROBE_SETTLE` everything that happened must be ``expect``, exactly."""
        s = self.s
        gid = s.gw.gateway_id()
        mark = self.inv.mark()
        before = s.gw.gateway.stats()
        for c, packets in (sends or {}).items():

            def send(cc: DevClient, t: Instant, ps: list[bytes] = packets) -> None:
                for p in ps:
                    cc.send_raw(t, gid, p)

            s.gw.drive(c, send)
        host = s.world.hosts["app"]
        for p in app or []:
            s.world.send_ip(host, p)
        s.world.run_for(PROBE_SETTLE)
        after = s.gw.gateway.stats()
        drops = {
            k: after.get(k, 0) - before.get(k, 0)
            for k in set(after) | set(before)
            if k.startswith("drop.") and after.get(k, 0) != before.get(k, 0)
        }
        new = self.inv.arrivals_since(mark)
        got_arr = Counter((a.proto, a.src, a.dst, a.sport, a.dport) for a in new.get("app", []))
        got_web = Counter((a.proto, a.src, a.dst, a.sport, a.dport) for a in new.get("web", []))
        others = {h: a for h, a in new.items() if h not in ("app", "web") and a}
        if got_web != Counter(expect.web):
            others["web"] = new["web"]
        got_rec: dict[int, Counter[Rec]] = {}
        for i, recs in enumerate(self.inv.since(mark)):
            mine = [
                _rec(r) for r in recs if not isinstance(r, DnsAnswer | DomainStatusReceived | GoodbyeReceived)
            ]
            if mine:
                got_rec[i] = Counter(r for r in mine if r is not None)
        want_rec = {i: Counter(r) for i, r in expect.records.items() if r}
        want_drops = {f"drop.{k}": v for k, v in expect.drops.items()}
        if got_arr != Counter(expect.arrivals) or got_rec != want_rec or drops != want_drops or others:
            raise InvariantError(
                f"NAT edge, {what}: expected arrivals {expect.arrivals}, records {expect.records}, drops "
                f"{want_drops}; got arrivals {sorted(got_arr.elements(), key=repr)}, records "
                f"{ {i: sorted(r.elements(), key=repr) for i, r in got_rec.items()} }, drops {drops}"
                f"{f', at other hosts {others}' if others else ''}"
            )
        s.coverage["event:nat_edge_exchange"] += 1

    def run(self, d: Duration) -> None:
        self.s.world.run_for(d)

    def setup_again(self, c: int, name: str) -> None:
        """The client resolves ``name`` again (its A answer re-sends ``assigned_ips``); settled."""
        s = self.s
        now = s.world.now
        s.gw.drive(c, lambda cc, t: cc.query_dns(t, name, "A"))
        s.model.nat_query(c, name)
        self.run(PROBE_SETTLE)
        s.model.nat_settle(c, name, now)

    # --- packets ---------------------------------------------------------------------------------------

    def echo(self, c: int, dst: IPAddress, ident: int, seq: int, payload: bytes = b"nat-edge") -> bytes:
        return build_icmp_echo(self.tun(c, dst.version), dst, ident, seq, payload)

    def echo_reply(self, c: int, real: IPAddress, ident: int, seq: int) -> bytes:
        return build_icmp_echo(real, self.tun(c, real.version), ident, seq, b"nat-edge", reply=True)

    def udp(self, c: int, dst: IPAddress, sport: int, payload: bytes) -> bytes:
        return build_udp_packet(self.tun(c, dst.version), dst, sport, ECHO, payload)

    def udp_from_app(self, c: int, real: IPAddress, dport: int, payload: bytes) -> bytes:
        return build_udp_packet(real, self.tun(c, real.version), ECHO, dport, payload)

    def tcp(self, c: int, dst: IPAddress, sport: int, flags: int, payload: bytes = b"") -> bytes:
        # A reset carries a window of 0; other segments the builder's 65535.
        window = 0 if flags & TCP_RST else 65535
        return build_tcp_packet(
            self.tun(c, dst.version), dst, sport, WEB, payload, flags=flags, window=window
        )

    def tcp_from_app(self, c: int, real: IPAddress, dport: int, flags: int, payload: bytes = b"") -> bytes:
        window = 0 if flags & TCP_RST else 65535
        return build_tcp_packet(
            real, self.tun(c, real.version), WEB, dport, payload, flags=flags, window=window
        )

    def error_from_app(self, quoted: bytes) -> bytes:
        """Host unreachable from the real address, quoting ``quoted`` (a packet as the gateway forwarded
        it: from the client's tunnel address to the real address)."""
        return build_icmp_error(quoted, 1, 3)

    def tcp_flow(self, c: int, dst: IPAddress) -> int:
        """A TCP request to ``dst``:80 through the client's routing, checked against the model; its port."""
        s = self.s
        pred = s.model.predict_packet(c, dst, "tcp", WEB, s.world.now, APP)
        return self.traffic.run(Probe(c, "tcp", dst, WEB, pred, "app")).sport


def _icmp(version: int) -> int:
    return PROTO_ICMPV6 if version == 6 else PROTO_ICMP


def _real(version: int) -> IPAddress:
    return APP_V6 if version == 6 else APP_V4


ACK_DATA = TCP_ACK | TCP_PSH


def case_echo_identifiers(e: NatEdges, c: int, v: int) -> None:
    """Echo identifiers kept through the NAT (bytes of the identifier, the value 0); two requests of one
    session in flight at once; a duplicate reply; an echo and a UDP datagram without payload; an ICMP
    error quoting a live echo session (re-addressed to the client, from the proxy IP)."""
    p = e.proxies(c, APP, v)[0]
    real, tun, icmp = _real(v), e.tun(c, v), _icmp(v)
    for ident, seq in ((0x1234, 0x5601), (0, 0x5602)):
        e.exchange(
            f"echo id {ident:#x} to {p}",
            Expect([(icmp, tun, real, ident, seq)], {c: [("echo", p, ident, seq)]}),
            {c: [e.echo(c, p, ident, seq)]},
        )
    e.exchange(
        "two echo requests of one session at once",
        Expect(
            [(icmp, tun, real, 0x1234, 0x5603), (icmp, tun, real, 0x1234, 0x5604)],
            {c: [("echo", p, 0x1234, 0x5603), ("echo", p, 0x1234, 0x5604)]},
        ),
        {c: [e.echo(c, p, 0x1234, 0x5603), e.echo(c, p, 0x1234, 0x5604)]},
    )
    e.exchange(
        "a duplicate echo reply",
        Expect([], {c: [("echo", p, 0x1234, 0x5604)]}),
        app=[e.echo_reply(c, real, 0x1234, 0x5604)],
    )
    e.exchange(
        "an echo request and a UDP datagram without payload (8-byte headers)",
        Expect(
            [(icmp, tun, real, 0x1234, 0x5606), (PROTO_UDP, tun, real, 30000, ECHO)],
            {c: [("echo", p, 0x1234, 0x5606), ("udp", p, ECHO, 30000, b"")]},
        ),
        {c: [e.echo(c, p, 0x1234, 0x5606, b""), e.udp(c, p, 30000, b"")]},
    )
    quoted = build_icmp_echo(tun, real, 0x1234, 0x5605, b"nat-edge")
    e.exchange(
        "an ICMP error quoting a live echo session",
        Expect([], {c: [("icmp", p, 3 if v == 4 else 1, 1 if v == 4 else 3, p, 0x1234)]}),
        app=[e.error_from_app(quoted)],
    )


def case_echo_collisions(e: NatEdges, c: int, v: int) -> None:
    """One echo identifier to proxy IPs of two names with the same real address: the first session keeps
    it, the next take the next free values; another client's identical identifier is its own."""
    pa = e.proxies(c, APP, 4)
    pb = e.proxies(c, V4ONLY, 4)
    other = (c + 1) % e.s.spec.clients
    tun = e.tun(c, 4)
    x = 0x2345
    for i, dst in enumerate((pa[0], pb[0], pa[1])):
        e.exchange(
            f"echo id {x:#x} to {dst}, colliding {i} times",
            Expect([(PROTO_ICMP, tun, APP_V4, x + i, 0x100 + i)], {c: [("echo", dst, x, 0x100 + i)]}),
            {c: [e.echo(c, dst, x, 0x100 + i)]},
        )
    if other != c and (other, "app") in e.s.model.routes:
        q = e.proxies(other, APP, 4)[0]
        e.exchange(
            f"client-{other}: echo id {x:#x} to {q}",
            Expect([(PROTO_ICMP, e.tun(other, 4), APP_V4, x, 0x110)], {other: [("echo", q, x, 0x110)]}),
            {other: [e.echo(other, q, x, 0x110)]},
        )


def case_wrap(e: NatEdges, c: int, v: int) -> None:
    """Outside values at the top of the range: 65535 kept, then wrapped to 1, 2; 65534 kept, then every
    value above and 1, 2 taken: 3. The same for a UDP port (its own key space)."""
    pa = e.proxies(c, APP, 4)
    pb = e.proxies(c, V4ONLY, 4)
    tun = e.tun(c, 4)
    plan = (
        (pa[2], 65535, 65535),
        (pb[1], 65535, 1),
        (pa[3], 65535, 2),
        (pb[2], 65534, 65534),
        (pb[3], 65534, 3),
    )
    for i, (dst, ident, out) in enumerate(plan):
        e.exchange(
            f"echo id {ident} to {dst}: outside {out}",
            Expect([(PROTO_ICMP, tun, APP_V4, out, 0x200 + i)], {c: [("echo", dst, ident, 0x200 + i)]}),
            {c: [e.echo(c, dst, ident, 0x200 + i)]},
        )
    for dst, out in ((pa[2], 65535), (pb[1], 1)):
        e.exchange(
            f"UDP from port 65535 to {dst}: outside {out}",
            Expect([(PROTO_UDP, tun, APP_V4, out, ECHO)], {c: [("udp", dst, ECHO, 65535, b"wrap")]}),
            {c: [e.udp(c, dst, 65535, b"wrap")]},
        )


def case_rst_from_client(e: NatEdges, c: int, v: int) -> None:
    """The client resets a TCP session: the reset passes, later packets of the resource for it are dropped
    as expired (a segment, an ICMP error quoting it, a reset); the client's next segment opens it again
    on the same port."""
    p = e.proxies(c, APP, v)[1]
    real, tun = _real(v), e.tun(c, v)
    sport = e.tcp_flow(c, p)
    e.exchange(
        "the client's reset",
        Expect([(PROTO_TCP, tun, real, sport, WEB)]),
        {c: [e.tcp(c, p, sport, TCP_RST | TCP_ACK)]},
    )
    for what, pkt in (
        ("a late segment", e.tcp_from_app(c, real, sport, ACK_DATA, b"late")),
        (
            "an ICMP error quoting it",
            e.error_from_app(build_tcp_packet(tun, real, sport, WEB, flags=TCP_ACK)),
        ),
        ("a late reset", e.tcp_from_app(c, real, sport, TCP_RST | TCP_ACK)),
    ):
        e.exchange(f"{what} after the client's reset", Expect(drops={"nat_session_expired": 1}), app=[pkt])
    e.exchange(
        "the client's next segment of the flow",
        Expect([(PROTO_TCP, tun, real, sport, WEB)], {c: [("tcp", p, WEB, sport, TCP_ACK, b"re:again")]}),
        {c: [e.tcp(c, p, sport, ACK_DATA, b"again")]},
    )


def case_rst_from_resource(e: NatEdges, c: int, v: int) -> None:
    """The resource resets a TCP session: the reset reaches the client translated, a later segment of the
    resource is dropped as expired, the client's next segment opens the session again on its port. Then
    segments of a live session (whose window has the reset bit's value in its high byte) and a UDP flow
    whose payload has that bit where a TCP header's flags would be: nothing ends them."""
    p = e.proxies(c, APP, v)[2]
    real, tun = _real(v), e.tun(c, v)
    sport = e.tcp_flow(c, p)
    e.exchange(
        "the resource's reset",
        Expect([], {c: [("tcp", p, WEB, sport, TCP_RST | TCP_ACK, b"")]}),
        app=[e.tcp_from_app(c, real, sport, TCP_RST | TCP_ACK)],
    )
    e.exchange(
        "a late segment after the resource's reset",
        Expect(drops={"nat_session_expired": 1}),
        app=[e.tcp_from_app(c, real, sport, ACK_DATA, b"late")],
    )
    e.exchange(
        "the client's next segment of the flow",
        Expect([(PROTO_TCP, tun, real, sport, WEB)], {c: [("tcp", p, WEB, sport, TCP_ACK, b"re:more")]}),
        {c: [e.tcp(c, p, sport, ACK_DATA, b"more")]},
    )
    e.exchange(
        "two more segments of the resource on the live session",
        Expect(
            [], {c: [("tcp", p, WEB, sport, ACK_DATA, b"push1"), ("tcp", p, WEB, sport, ACK_DATA, b"push2")]}
        ),
        app=[
            e.tcp_from_app(c, real, sport, ACK_DATA, b"push1"),
            e.tcp_from_app(c, real, sport, ACK_DATA, b"push2"),
        ],
    )
    flag = b"nat-e\x04dge"  # byte 13 of the UDP header onwards: 0x04 where TCP keeps RST
    for i in range(2):
        e.exchange(
            f"UDP datagram {i} whose payload looks like a reset",
            Expect([(PROTO_UDP, tun, real, 31000, ECHO)], {c: [("udp", p, ECHO, 31000, flag)]}),
            {c: [e.udp(c, p, 31000, flag)]},
        )


def case_expiry(e: NatEdges, c: int, v: int) -> None:
    """Sessions that time out: a UDP session refreshed by a packet of the client (answered by an ICMP
    error, which refreshes nothing) and then by the resource's packets alone (decision 0042),
    then idle past 120 s (expired: the resource's packet and an ICMP error quoting the session's echo
    twin are dropped as expired), then past the tombstone's 120 s (refused by the filters); the client's
    next datagram opens it again. A TCP session lives 2 h: alive at 130 s, expired after 2 h idle, while
    one refreshed at 130 s is still alive."""
    p = e.proxies(c, APP, v)[3]
    real, tun, icmp = _real(v), e.tun(c, v), _icmp(v)
    sport, ident = 32000, 0x3456
    e.exchange(
        "a UDP flow",
        Expect([(PROTO_UDP, tun, real, sport, ECHO)], {c: [("udp", p, ECHO, sport, b"go")]}),
        {c: [e.udp(c, p, sport, b"go")]},
    )
    e.run(UDP_TTL // 2)
    closed = build_udp_packet(tun, p, sport, 9, b"closed")
    e.exchange(
        "the client's datagram to a closed port of the session (an ICMP error answers)",
        Expect(
            [(PROTO_UDP, tun, real, sport, 9)],
            {c: [("icmp", p, 3 if v == 4 else 1, 3 if v == 4 else 4, p, sport)]},
        ),
        {c: [closed]},
    )
    e.run(UDP_TTL // 2 + MARGIN)  # past 120 s after the resource's echo, 2 s after the client's packet
    e.exchange(
        "the resource pushes",
        Expect([], {c: [("udp", p, ECHO, sport, b"push1")]}),
        app=[e.udp_from_app(c, real, sport, b"push1")],
    )
    e.run(UDP_TTL - UDP_TTL // 2)  # past 120 s after the client's last packet
    e.exchange(
        "the resource pushes again; an echo session starts",
        Expect(
            [(icmp, tun, real, ident, 1)], {c: [("udp", p, ECHO, sport, b"push2"), ("echo", p, ident, 1)]}
        ),
        {c: [e.echo(c, p, ident, 1)]},
        app=[e.udp_from_app(c, real, sport, b"push2")],
    )
    e.run(UDP_TTL + MARGIN)
    quoted = build_icmp_echo(tun, real, ident, 2, b"nat-edge")
    e.exchange(
        "the resource's datagram and an ICMP error quoting the echo, both sessions timed out",
        Expect(drops={"nat_session_expired": 2}),
        app=[e.udp_from_app(c, real, sport, b"late"), e.error_from_app(quoted)],
    )
    e.run(TOMBSTONE_TTL + MARGIN)
    e.exchange(
        "the resource's datagram after the tombstone",
        Expect(drops={"not_authorized": 1}),
        app=[e.udp_from_app(c, real, sport, b"later")],
    )
    e.exchange(
        "the client's next datagram",
        Expect([(PROTO_UDP, tun, real, sport, ECHO)], {c: [("udp", p, ECHO, sport, b"again")]}),
        {c: [e.udp(c, p, sport, b"again")]},
    )
    if v == 6:
        return  # (2 h of virtual time once is enough)
    kept = e.tcp_flow(c, p)
    idle = e.tcp_flow(c, p)
    e.run(UDP_TTL + MARGIN)
    e.exchange(
        "a TCP session past 120 s",
        Expect([], {c: [("tcp", p, WEB, kept, ACK_DATA, b"keep")]}),
        app=[e.tcp_from_app(c, real, kept, ACK_DATA, b"keep")],
    )
    e.run(TCP_TTL - UDP_TTL)
    e.exchange(
        "TCP sessions 2 h after their last packets and 2 h minus 120 s",
        Expect([], {c: [("tcp", p, WEB, kept, ACK_DATA, b"alive")]}, {"nat_session_expired": 1}),
        app=[
            e.tcp_from_app(c, real, idle, ACK_DATA, b"gone"),
            e.tcp_from_app(c, real, kept, ACK_DATA, b"alive"),
        ],
    )


def case_renumber_before(e: NatEdges, c: int, v: int) -> None:
    """Before a client restart: flows open to the first proxy IPs of ``app.corp.test`` (a UDP flow, and a
    TCP flow reset by the client and opened again); a repeated set-up of the same name keeps them."""
    pa = e.proxies(c, APP, 4)
    e.proxies(c, V4ONLY, 4)
    tun = e.tun(c, 4)
    udp, tcp = 33000, 33001
    e.exchange(
        "flows before the restart",
        Expect(
            [(PROTO_UDP, tun, APP_V4, udp, ECHO), (PROTO_TCP, tun, APP_V4, tcp, WEB)],
            {c: [("udp", pa[0], ECHO, udp, b"open"), ("tcp", pa[1], WEB, tcp, TCP_ACK, b"re:open")]},
        ),
        {c: [e.udp(c, pa[0], udp, b"open"), e.tcp(c, pa[1], tcp, ACK_DATA, b"open")]},
    )
    e.exchange(
        "the client resets the TCP flow",
        Expect([(PROTO_TCP, tun, APP_V4, tcp, WEB)]),
        {c: [e.tcp(c, pa[1], tcp, TCP_RST | TCP_ACK)]},
    )
    e.exchange(
        "and opens it again",
        Expect([(PROTO_TCP, tun, APP_V4, tcp, WEB)], {c: [("tcp", pa[1], WEB, tcp, TCP_ACK, b"re:reopen")]}),
        {c: [e.tcp(c, pa[1], tcp, ACK_DATA, b"reopen")]},
    )
    e.setup_again(c, APP)  # the client sets the same name up again
    e.exchange(
        "the resource answers after the same name's set-up again",
        Expect([], {c: [("udp", pa[0], ECHO, udp, b"still")]}),
        app=[e.udp_from_app(c, APP_V4, udp, b"still")],
    )
    e._kept = {"udp": udp, "tcp": tcp}


def case_renumber_after(e: NatEdges, c: int, v: int) -> None:
    """After the client restarted: it resolves ``v4only.corp.test`` first, which now gets the proxy IPs
    ``app.corp.test`` had; the gateway forgets their translations and sessions, without tombstones
    (decision 0178): the resource's late packets of the old flows are refused by the filters (the TCP
    flow's tombstone of its earlier reset went when it was opened again), and the same ports to the
    re-numbered proxy IPs open new sessions (outside ports kept). ``app.corp.test`` then takes the proxy
    IPs ``v4only.corp.test`` had: its UDP flow from the same port collides with the one just opened and
    goes out from the next port."""
    if not e._kept:
        e.s.coverage["nat_edge_skipped"] += 1
        return
    e._ready = {k for k in e._ready if k[0] != c}
    pb = e.proxies(c, V4ONLY, 4)
    tun = e.tun(c, 4)
    udp, tcp = e._kept["udp"], e._kept["tcp"]
    e.exchange(
        "the resource's late packets of the forgotten sessions",
        Expect(drops={"not_authorized": 2}),
        app=[e.udp_from_app(c, APP_V4, udp, b"stale"), e.tcp_from_app(c, APP_V4, tcp, ACK_DATA, b"stale")],
    )
    e.exchange(
        "the same ports to the re-numbered proxy IPs",
        Expect(
            [(PROTO_UDP, tun, APP_V4, udp, ECHO), (PROTO_TCP, tun, APP_V4, tcp, WEB)],
            {c: [("udp", pb[0], ECHO, udp, b"new"), ("tcp", pb[1], WEB, tcp, TCP_ACK, b"re:new")]},
        ),
        {c: [e.udp(c, pb[0], udp, b"new"), e.tcp(c, pb[1], tcp, ACK_DATA, b"new")]},
    )
    pa = e.proxies(c, APP, 4)
    e.exchange(
        "the other name on the proxy IPs it takes over",
        Expect([(PROTO_UDP, tun, APP_V4, udp + 1, ECHO)], {c: [("udp", pa[0], ECHO, udp, b"app")]}),
        {c: [e.udp(c, pa[0], udp, b"app")]},
    )
    e._kept = {}


def case_reresolved(e: NatEdges, c: int, v: int) -> None:
    """A name whose address changes (the gateway's resolver now answers the ``web`` host's address): on
    the client's next set-up, the proxy IP with open sessions keeps its real address for new flows too,
    the others take the new one (``setup_nat`` in Firezone's ``client_on_gateway.rs``); once that proxy
    IP's sessions have timed out, the next set-up moves it as well."""
    s = e.s
    pa = e.proxies(c, APP, 4)
    tun = e.tun(c, 4)
    resolver = s.gw.gateway_host.resolver
    if resolver is None or not s.model.live(c, "web", s.world.now):
        s.coverage["nat_edge_skipped"] += 1  # the web host may only be reached holding its resource
        return
    old = resolver.table[APP]
    resolver.table[APP] = (WEB_V4, APP_V6)
    try:
        e.exchange(
            "a flow on the first proxy IP, which keeps it open",
            Expect([(PROTO_UDP, tun, APP_V4, 34000, ECHO)], {c: [("udp", pa[0], ECHO, 34000, b"open")]}),
            {c: [e.udp(c, pa[0], 34000, b"open")]},
        )
        e.setup_again(c, APP)
        e.exchange(
            "after the set-up with the new address",
            Expect(
                [(PROTO_UDP, tun, APP_V4, 34001, ECHO)],
                {c: [("udp", pa[0], ECHO, 34001, b"kept"), ("udp", pa[1], ECHO, 34002, b"moved")]},
                web=[(PROTO_UDP, tun, WEB_V4, 34002, ECHO)],
            ),
            {c: [e.udp(c, pa[0], 34001, b"kept"), e.udp(c, pa[1], 34002, b"moved")]},
        )
        e.run(UDP_TTL + MARGIN)
        e.setup_again(c, APP)
        e.exchange(
            "after the first proxy IP's sessions timed out and another set-up",
            Expect(
                [], {c: [("udp", pa[0], ECHO, 34003, b"now")]}, web=[(PROTO_UDP, tun, WEB_V4, 34003, ECHO)]
            ),
            {c: [e.udp(c, pa[0], 34003, b"now")]},
        )
    finally:
        resolver.table[APP] = old


def case_bound(e: NatEdges, c: int, v: int) -> None:
    """The table's bound: 8,191 UDP sessions opened through the client's policy object, one more through
    the world (the 8,192nd); the next new session is dropped as ``nat_table_full`` while an existing one
    keeps working; after 120 s idle every session has timed out, the oldest one's tombstone is still
    there (8,192 tombstones fit), and new sessions fit again."""
    s = e.s
    p = e.proxies(c, APP, 4)[0]
    tun = e.tun(c, 4)
    policy = s.gw.gateway.peers.client_by_ip(tun)
    if policy is None or len(policy.nat.table):
        # Every earlier session of this client is hours old: timed out, its tombstone gone.
        raise InvariantError(f"client-{c} before the bound: {policy and policy.nat.table.sessions()}")
    first = 40000 - BOUND  # ports 31808-39999: no probe or other case of this client uses them
    last = first + BOUND - 1

    def fill(now: Instant) -> None:
        for port in range(first, last):
            buf = bytearray(e.udp(c, p, port, b"fill"))
            decision = policy.outbound(buf, now)
            if decision[0] is not FORWARD or decision[1] is not buf:
                raise InvariantError(f"filling the NAT table: port {port} refused: {decision}")

    s.world.drive(s.gw.gateway_host, fill)
    e.exchange(
        "the 8,192nd session",
        Expect([(PROTO_UDP, tun, APP_V4, last, ECHO)], {c: [("udp", p, ECHO, last, b"full")]}),
        {c: [e.udp(c, p, last, b"full")]},
    )
    e.exchange(
        "one session more",
        Expect(drops={"nat_table_full": 1}),
        {c: [e.udp(c, p, last + 1, b"over")]},
    )
    e.exchange(
        "an existing session at the bound",
        Expect([(PROTO_UDP, tun, APP_V4, first, ECHO)], {c: [("udp", p, ECHO, first, b"old")]}),
        {c: [e.udp(c, p, first, b"old")]},
    )
    e.run(UDP_TTL + MARGIN)
    # The sessions end in the order they began, but the first one's packet above kept it 3 s longer:
    # the oldest tombstone is the second one's.
    e.exchange(
        "the resource's packet of the oldest ended session",
        Expect(drops={"nat_session_expired": 1}),
        app=[e.udp_from_app(c, APP_V4, first + 1, b"late")],
    )
    e.exchange(
        "a new session after the timeout",
        Expect([(PROTO_UDP, tun, APP_V4, last + 1, ECHO)], {c: [("udp", p, ECHO, last + 1, b"fits")]}),
        {c: [e.udp(c, p, last + 1, b"fits")]},
    )


CASES: tuple[tuple[str, Callable[[NatEdges, int, int], None]], ...] = (
    ("echo_identifiers", case_echo_identifiers),
    ("echo_collisions", case_echo_collisions),
    ("wrap", case_wrap),
    ("rst_from_client", case_rst_from_client),
    ("rst_from_resource", case_rst_from_resource),
    ("expiry", case_expiry),
    ("renumber_before", case_renumber_before),
    ("renumber_after", case_renumber_after),
    ("reresolved", case_reresolved),
    ("bound", case_bound),
)
"""The ``nat_edge`` cases (``step.a`` picks one), each a function of the step's part, the client and the
IP family."""


def nat_program() -> Program:
    """Two clients holding the DNS resource (the first also the CIDR resource, for the re-resolved name);
    every case (IPv4 and IPv6 where the case has both), the client restart between the two halves of the
    re-numbering, the bound last."""
    idx = {name: i for i, (name, _) in enumerate(CASES)}
    grants = [Step(StepKind.GRANT, 0, 1), Step(StepKind.GRANT, 1, 1), Step(StepKind.GRANT, 0, 0)]
    steps = [Step(StepKind.NAT_EDGE, 0, idx["echo_identifiers"], b) for b in (0, 1)]
    steps += [Step(StepKind.NAT_EDGE, 0, idx["echo_collisions"]), Step(StepKind.NAT_EDGE, 0, idx["wrap"])]
    for name in ("rst_from_client", "rst_from_resource", "expiry"):
        steps += [Step(StepKind.NAT_EDGE, 0, idx[name], b) for b in (0, 1)]
    steps += [
        Step(StepKind.NAT_EDGE, 0, idx["renumber_before"]),
        Step(StepKind.RESTART_CLIENT, 0),
        Step(StepKind.NAT_EDGE, 0, idx["renumber_after"]),
        Step(StepKind.NAT_EDGE, 0, idx["reresolved"]),
        Step(StepKind.NAT_EDGE, 1, idx["bound"]),
    ]
    return Program(WorldSpec(13, 2, 1), grants + steps)
