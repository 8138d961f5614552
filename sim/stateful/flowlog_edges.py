"""The ``flow_log_edge`` step of the stateful harness: a gateway with flow logs on, its records checked.

Theory of operation. With flow logs on (Firezone: ``RUST_LOG`` with ``flow_logs=trace``; here
``GatewayConfig.flow_logs``, decision 0160) the gateway follows every TCP and UDP flow a client sends to a
resource and, once a flow is complete, emits one record with the fields of Firezone's ``flow_logs::tcp`` /
``flow_logs::udp`` events (``rust/connlib/tunnel/src/gateway.rs``, ``gateway/flow_tracker.rs``): the
client and its properties from ``authorize_flow``, the resource's id, name and address, the inner
addresses and ports, the domain (DNS resources only), the WireGuard datagrams' addresses, the packet and
byte counts each way and the wall-clock times of its first and last packets and of its end. A flow is
complete when idle for two minutes, after FIN both ways or an RST, or when its client is removed.

A step on client ``c`` with ``a`` even (``c`` holds the CIDR resource ``web`` only): the gateway restarts
with flow logs on (the clients connect again), the portal renames the resource and ``c`` is authorised
again (the gateway keeps the name it had: a re-authorisation replaces filters and expiry only,
``ResourceOnGateway::update`` in ``rust/connlib/tunnel/src/gateway/client_on_gateway.rs``), ``c`` sends
one UDP datagram to the web host's echo port and one TCP segment to its web port, then the portal revokes
``web``: the gateway removes the client and completes both flows. Exactly two records must come out, with
the fields above predicted from what was sent (a UDP datagram and its echo: one packet and the payload's
bytes each way; TCP: as many packets as reached the host), the outer addresses of the connection's path,
the times within the world's link delays of the probes and the end when the revocation arrived.

With ``a`` odd (``c`` holds ``web`` and the DNS resource ``app``), one UDP datagram goes through the DNS
resource's NAT to a proxy IP of :data:`NAME` and the flow is left idle: its record (the resource's pattern
as address, the real address, the domain) ends exactly
:data:`~gateway_core.policy.flows.FLOW_TIMEOUT` and one nanosecond after its last packet (the timeout is
"idle for more than two minutes"). The gateway goes back to flow logs off (restarted again) at the end of
the step.

The step has weight 0 (never drawn); :func:`flowlog_program` walks it (``make test``, ``make mutation``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from devpeers.client_types import DnsAnswer
from devportal.portal import DevPortal
from gateway_core.node.connection import PathKind
from gateway_core.policy.flows import FLOW_TIMEOUT, CompletedFlow, OuterContext
from gateway_core.portal.model import CidrResource, DnsResource
from gateway_core.wire.ip import PROTO_TCP, PROTO_UDP
from sim.gateway_world import APP_V4, CIDR_RESOURCE, DNS_RESOURCE, WEB_V4
from sim.hosts.resources import Arrival
from sim.stateful.access import Access
from sim.stateful.probes import Probe
from sim.stateful.program import Program, Step, StepKind, WorldSpec
from sim.stateful.scene import CONTROL_SETTLE, Handler, InvariantError, Scene

if TYPE_CHECKING:
    from sim.stateful.traffic import Traffic

RENAMED = "web, renamed"
"""The resource's name at the portal when the client is authorised again (the gateway keeps the first)."""
NAME = "app.corp.test"
"""The DNS-resource name of the NAT flow (its proxy IP stands for the app host's IPv4 address)."""
ECHO, WEB = 7, 80
"""The hosts' UDP echo port and open TCP port."""
CLIENT_VERSION = "1.4.0"
"""The client version the simulated portal puts in ``authorize_flow`` (a client property of the record)."""


class FlowLogEdges:
    """See the module docstring."""

    def __init__(self, scene: Scene, access: Access, traffic: Traffic) -> None:
        self.s = scene
        self.access = access
        self.traffic = traffic

    def handlers(self) -> dict[StepKind, Handler]:
        return {StepKind.FLOW_LOG_EDGE: self._do_flow_log_edge}

    def _restart(self, flow_logs: bool) -> None:
        s = self.s
        gw = s.gw
        gw.restart_gateway(replace(gw.gateway.config, flow_logs=flow_logs))
        if not gw.start():
            raise InvariantError("the restarted gateway did not rejoin the portal")
        gid = gw.gateway_id()
        for i in range(s.spec.clients):
            self.access.forget_nat_of(i, gid)
        self.access.reconnect_all(force=True)

    def _outer(self, c: int) -> OuterContext:
        """The WireGuard datagrams' addresses of ``c``'s connection: the client's (remote) and the
        gateway's (local)."""
        s = self.s
        conn = s.gw.gateway.node.connections.get(str(s.gw.client_ids[c]))
        ps = None if conn is None else conn.peer_socket
        if ps is None or ps.kind is not PathKind.PEER_TO_PEER:
            raise InvariantError(f"flow log: client-{c} has no direct path to the gateway: {ps}")
        return OuterContext(ps.dest.ip, ps.source.ip, ps.dest.port, ps.source.port)

    def _records(self) -> list[CompletedFlow]:
        out = []
        while (r := self.s.gw.gateway.poll_flow()) is not None:
            out.append(r)
        return out

    def _do_flow_log_edge(self, step: Step, c: int) -> None:
        s = self.s
        m = s.model
        live = [r for r in ("web", "app", "inet") if m.live(c, r, s.world.now)]
        want = ["web", "app"] if step.a % 2 else ["web"]
        if live != want or s.spec.clients != 1 or m.lossy:
            s.coverage["flow_log_edge_skipped"] += 1
            return
        self._restart(True)
        if step.a % 2:
            self._dns_flow_idles(c)
        else:
            self._cidr_flows_revoked(c)
        # Back to the world's configuration.
        self._restart(False)

    def _cidr_flows_revoked(self, c: int) -> None:
        """A UDP and a TCP flow to the web host, completed by the revocation of the resource."""
        s = self.s
        m = s.model
        portal = s.gw.portal.config.resource(CIDR_RESOURCE)
        assert isinstance(portal, CidrResource)
        self._rename(RENAMED)
        self.access.grant(c, "web")
        s.world.run_for(CONTROL_SETTLE)
        self._rename(portal.name)
        outer = self._outer(c)
        probes = []
        for proto, port in (("udp", ECHO), ("tcp", WEB)):
            pred = m.predict_packet(c, WEB_V4, proto, port, s.world.now)
            probes.append(self.traffic.run(Probe(c, proto, WEB_V4, port, pred, "web")))
        revoked = s.world.now
        m.revoke(revoked, c, "web", False)
        s.gw.signalling.revoke(s.gw.client_ids[c], CIDR_RESOURCE)
        s.world.run_for(CONTROL_SETTLE)
        records = self._records()
        if sorted(r.protocol for r in records) != ["tcp", "udp"]:
            raise InvariantError(f"flow log: expected one UDP and one TCP record, got {records}")
        b = m.bounds
        end = (m.unix(revoked + b.pg_min), m.unix(revoked + b.pg_max))  # when the revocation arrived
        for p in probes:
            rec = next(r for r in records if r.protocol == p.proto)
            fields = {
                "resource_id": CIDR_RESOURCE,
                "resource_name": portal.name,
                "resource_address": str(m.web_network()),
                "inner_dst_ip": WEB_V4,
                "inner_domain": None,
            }
            self._check(c, p, rec, fields, s.gw.web.received, outer, end)
        stats = s.gw.gateway.stats()
        if stats.get("gateway.flows_active", 0) != 0:
            raise InvariantError(f"flow log: flows still active after the client went: {stats}")
        s.coverage["event:flow_log_record"] += len(records)

    def _dns_flow_idles(self, c: int) -> None:
        """A UDP flow through the DNS resource's NAT to a proxy IP of :data:`NAME`, completed when idle
        for :data:`FLOW_TIMEOUT`: its record ends one nanosecond after that much time without a packet."""
        s = self.s
        m = s.model
        portal = s.gw.portal.config.resource(DNS_RESOURCE)
        assert isinstance(portal, DnsResource)
        outer = self._outer(c)
        client = s.client(c)
        before = len(client.received)
        s.gw.drive(c, lambda cc, t: cc.query_dns(t, NAME, "A"))
        answers = [r for r in client.received[before:] if isinstance(r, DnsAnswer)]
        if len(answers) != 1 or answers[0].rcode != "NOERROR":
            raise InvariantError(f"flow log: local A answer for {NAME}: {answers}")
        m.nat_query(c, NAME)
        dst = client.proxy_ips(NAME)[0]
        now = s.world.now
        pred = m.predict_packet(c, dst, "udp", ECHO, now, NAME)
        m.nat_probe(c, NAME)
        p = self.traffic.run(Probe(c, "udp", dst, ECHO, pred, "app"))
        m.nat_settle(c, NAME, now)
        s.world.run_for(FLOW_TIMEOUT + CONTROL_SETTLE)
        records = self._records()
        if [r.protocol for r in records] != ["udp"]:
            raise InvariantError(f"flow log: expected one UDP record, got {records}")
        r = records[0]
        fields = {
            "resource_id": DNS_RESOURCE,
            "resource_name": portal.name,
            "resource_address": portal.address,
            "inner_dst_ip": APP_V4,
            "inner_domain": NAME,
        }
        idle_end = r.last_packet + FLOW_TIMEOUT + 1
        self._check(c, p, r, fields, s.gw.app.received, outer, (idle_end, idle_end))
        s.coverage["event:flow_log_record"] += len(records)

    def _check(
        self,
        c: int,
        p: Probe,
        r: CompletedFlow,
        fields: dict[str, object],
        arrivals: list[Arrival],
        outer: OuterContext,
        end: tuple[int, int],
    ) -> None:
        """``r`` is the record of probe ``p``'s flow: ``fields`` and what the probe tells (its addresses,
        ports, packets and bytes, times within a link delay of its arrival at the host), ending within
        ``end`` (wall clock)."""
        s = self.s
        m = s.model
        b = m.bounds
        cl = s.client(c)
        proto = PROTO_UDP if p.proto == "udp" else PROTO_TCP
        at_host = [a for a in arrivals if a.proto == proto and a.sport == p.sport and a.src == cl.tunnel_v4]
        if not at_host:
            raise InvariantError(f"flow log: {p.what} never reached the host")
        first = at_host[0].at
        unix = m.unix
        want = fields | {
            "client_id": s.gw.client_ids[c],
            "client.version": CLIENT_VERSION,
            "inner_src_ip": cl.tunnel_v4,
            "inner_src_port": p.sport,
            "inner_dst_port": p.port,
            "tx_packets": len(at_host),
            "outer": outer,
        }
        got = {
            "resource_id": r.resource_id,
            "resource_name": r.resource_name,
            "resource_address": r.resource_address,
            "inner_dst_ip": r.inner_dst_ip,
            "inner_domain": r.inner_domain,
            "client_id": r.client_id,
            "client.version": r.client.version,
            "inner_src_ip": r.inner_src_ip,
            "inner_src_port": r.inner_src_port,
            "inner_dst_port": r.inner_dst_port,
            "tx_packets": r.tx_packets,
            "outer": r.outer,
        }
        last_ok = True
        if p.proto == "udp":  # one datagram and its echo (the last packet, passing the gateway back)
            n = len(p.payload)
            want |= {"rx_packets": 1, "tx_bytes": n, "rx_bytes": n}
            got |= {"rx_packets": r.rx_packets, "tx_bytes": r.tx_bytes, "rx_bytes": r.rx_bytes}
            last_ok = unix(first + b.gr_min) <= r.last_packet <= unix(first + b.gr_max)
        # The first packet passed the gateway one gateway-to-resource delay before it reached the host.
        start_ok = unix(first - b.gr_max) <= r.start <= unix(first - b.gr_min)
        times_ok = r.start <= r.last_packet <= r.end and end[0] <= r.end <= end[1]
        if got != want or not start_ok or not times_ok or not last_ok or r.rx_packets < 1:
            raise InvariantError(
                f"flow log of {p.what}: expected {want}, start within the link delay of {first} and an end "
                f"in {end}; got {r}"
            )

    def _rename(self, name: str) -> None:
        """The portal renames the CIDR resource (no ``resource_updated``: the next grant carries it)."""

        def rename(p: DevPortal) -> None:
            cfg = p.config
            resources = tuple(
                replace(x, name=name) if x.id == CIDR_RESOURCE and isinstance(x, CidrResource) else x
                for x in cfg.resources
            )
            p.config = replace(cfg, resources=resources)

        self.s.gw.signalling.act(rename)


def flowlog_program() -> Program:
    """One client holding the CIDR resource, whose flows are logged (twice: the second after a grant), then
    the CIDR and the DNS resource, a NAT flow left to idle."""
    grant = Step(StepKind.GRANT, 0, 0)
    cidr, dns = Step(StepKind.FLOW_LOG_EDGE, 0, 0), Step(StepKind.FLOW_LOG_EDGE, 0, 1)
    return Program(WorldSpec(11, 1, 1), [grant, cidr, grant, cidr, grant, Step(StepKind.GRANT, 0, 1), dns])
