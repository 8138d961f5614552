"""The ``nat_edge`` step of the stateful harness: the DNS-resource NAT's sessions at their edges.

Theory of operation. A ``nat_edge`` step runs one case of :data:`sim.stateful.nat_edge_cases.CASES`
(``step.a``; ``step.b`` picks the IP family where a case has both): packets a client puts straight into its
tunnel (``send_raw``: any flag, any echo identifier) to the proxy IPs of ``app.corp.test`` and
``v4only.corp.test`` (both resolve to the ``app`` host's IPv4 address), and packets the ``app`` host sends on
its own (a late segment, a reset, a pushed datagram, an ICMP error), each exchange checked exactly: which
packets reach the host (protocol, source, destination, ports or echo identifier and sequence), what each
client receives, and by how much every ``drop.*`` counter of the gateway goes up. The predictions are
Firezone's NAT (``rust/connlib/tunnel/src/gateway/nat_table.rs`` and ``client_on_gateway.rs`` at 352a83bbb0)
and our decisions, written down case by case, not read from the gateway's code:

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
weight 0 (never drawn): :func:`sim.stateful.nat_edge_cases.nat_program` walks every case (``make test``,
``make mutation``); the cases are in :mod:`sim.stateful.nat_edge_cases`, the exchange and its check here.
"""

from __future__ import annotations

from collections import Counter
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
from gateway_core.wire.icmp import build_icmp_error
from gateway_core.wire.ip import (
    TCP_RST,
    build_icmp_echo,
    build_tcp_packet,
    build_udp_packet,
)
from sim.stateful.probes import PROBE_SETTLE, Probe
from sim.stateful.program import Step, StepKind
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
        from sim.stateful.nat_edge_cases import CASES

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
