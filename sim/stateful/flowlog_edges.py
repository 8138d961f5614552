"""The ``flow_log_edge`` step of the stateful harness: a gateway with flow logs on, its records checked.

Theory of operation. With flow logs on (Firezone: ``RUST_LOG`` with ``flow_logs=trace``; here
``GatewayConfig.flow_logs``, decision 0160) the gateway follows every TCP and UDP flow a client sends to a
resource and, once a flow is complete, emits one record with the fields of Firezone's ``flow_logs::tcp`` /
``flow_logs::udp`` events (``rust/connlib/tunnel/src/gateway.rs``, ``gateway/flow_tracker.rs``): the
client and its properties from ``authorize_flow``, the resource's id, name and address, the inner
addresses and ports, the domain (DNS resources only), the WireGuard datagrams' addresses, the packet and
byte counts each way and the wall-clock times of its first and last packets and of its end. A flow is
complete when idle for two minutes, after FIN both ways or an RST, or when its client is removed.

A step on client ``c`` (holding the CIDR resource ``web`` only): the gateway restarts with flow logs on
(the clients connect again), the portal renames the resource and ``c`` is authorised again (the gateway
keeps the name it had: a re-authorisation replaces filters and expiry only, ``ResourceOnGateway::update``
in ``rust/connlib/tunnel/src/gateway/client_on_gateway.rs``), ``c`` sends one UDP datagram to the web
host's echo port and one TCP segment to its web port, then the portal revokes ``web``: the gateway removes
the client and completes both flows. Exactly two records must come out, with the fields above predicted
from what was sent (a UDP datagram and its echo: one packet and the payload's bytes each way; TCP: as many
packets as reached the host) and the times within the world's link delays of the probes. The gateway
goes back to flow logs off (restarted again) at the end of the step.

The step has weight 0 (never drawn); :func:`flowlog_program` walks it (``make test``, ``make mutation``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from devportal.portal import DevPortal
from gateway_core.node.connection import PathKind
from gateway_core.policy.flows import CompletedFlow, OuterContext
from gateway_core.portal.model import CidrResource
from gateway_core.wire.ip import PROTO_TCP, PROTO_UDP
from sim.gateway_world import CIDR_RESOURCE, WEB_V4
from sim.stateful.access import Access
from sim.stateful.probes import Probe
from sim.stateful.program import Program, Step, StepKind, WorldSpec
from sim.stateful.scene import CONTROL_SETTLE, Handler, InvariantError, Scene

if TYPE_CHECKING:
    from sim.stateful.traffic import Traffic

RENAMED = "web, renamed"
"""The resource's name at the portal when the client is authorised again (the gateway keeps the first)."""
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

    def _do_flow_log_edge(self, step: Step, c: int) -> None:
        s = self.s
        m = s.model
        live = [r for r in ("web", "app", "inet") if m.live(c, r, s.world.now)]
        if live != ["web"] or s.spec.clients != 1 or m.lossy:
            s.coverage["flow_log_edge_skipped"] += 1
            return
        self._restart(True)
        portal = s.gw.portal.config.resource(CIDR_RESOURCE)
        assert isinstance(portal, CidrResource)
        self._rename(RENAMED)
        self.access.grant(c, "web")
        s.world.run_for(CONTROL_SETTLE)
        self._rename(portal.name)
        m = s.model
        dst = WEB_V4
        conn = s.gw.gateway.node.connections.get(str(s.gw.client_ids[c]))
        ps = None if conn is None else conn.peer_socket
        if ps is None or ps.kind is not PathKind.PEER_TO_PEER:
            raise InvariantError(f"flow log: client-{c} has no direct path to the gateway: {ps}")
        # The WireGuard datagrams' addresses: the client's (remote) and the gateway's (local).
        outer = OuterContext(ps.dest.ip, ps.source.ip, ps.dest.port, ps.source.port)
        probes = []
        for proto, port in (("udp", 7), ("tcp", 80)):
            pred = m.predict_packet(c, dst, proto, port, s.world.now)
            probes.append(self.traffic.run(Probe(c, proto, dst, port, pred, "web")))
        revoked = s.world.now
        m.revoke(revoked, c, "web", False)
        s.gw.signalling.revoke(s.gw.client_ids[c], CIDR_RESOURCE)
        s.world.run_for(CONTROL_SETTLE)
        records = []
        while (r := s.gw.gateway.poll_flow()) is not None:
            records.append(r)
        if [r.protocol for r in records] != ["udp", "tcp"] and [r.protocol for r in records] != [
            "tcp",
            "udp",
        ]:
            raise InvariantError(f"flow log: expected one UDP and one TCP record, got {records}")
        for p in probes:
            rec = next(r for r in records if r.protocol == p.proto)
            self._check(c, p, rec, portal.name, revoked, outer)
        stats = s.gw.gateway.stats()
        if stats.get("gateway.flows_active", 0) != 0:
            raise InvariantError(f"flow log: flows still active after the client went: {stats}")
        s.coverage["event:flow_log_record"] += len(records)
        # Back to the world's configuration (the client holds nothing now: nothing to reconnect).
        self._restart(False)

    def _check(
        self, c: int, p: Probe, r: CompletedFlow, name: str, revoked: int, outer: OuterContext
    ) -> None:
        s = self.s
        m = s.model
        b = m.bounds
        cl = s.client(c)
        proto = PROTO_UDP if p.proto == "udp" else PROTO_TCP
        at_host = [
            a for a in s.gw.web.received if a.proto == proto and a.sport == p.sport and a.src == cl.tunnel_v4
        ]
        if not at_host:
            raise InvariantError(f"flow log: {p.what} never reached the host")
        first = at_host[0].at
        unix = m.unix
        want = {
            "client_id": s.gw.client_ids[c],
            "client.version": CLIENT_VERSION,
            "resource_id": CIDR_RESOURCE,
            "resource_name": name,
            "resource_address": str(m.web_network()),
            "inner_src_ip": cl.tunnel_v4,
            "inner_dst_ip": p.dst,
            "inner_src_port": p.sport,
            "inner_dst_port": p.port,
            "inner_domain": None,
            "tx_packets": len(at_host),
            "outer": outer,
        }
        got = {
            "client_id": r.client_id,
            "client.version": r.client.version,
            "resource_id": r.resource_id,
            "resource_name": r.resource_name,
            "resource_address": r.resource_address,
            "inner_src_ip": r.inner_src_ip,
            "inner_dst_ip": r.inner_dst_ip,
            "inner_src_port": r.inner_src_port,
            "inner_dst_port": r.inner_dst_port,
            "inner_domain": r.inner_domain,
            "tx_packets": r.tx_packets,
            "outer": r.outer,
        }
        last_ok = True
        if p.proto == "udp":  # one datagram and its echo (the last packet, passing the gateway back)
            n = len(p.payload)
            want |= {"rx_packets": 1, "tx_bytes": n, "rx_bytes": n}
            got |= {"rx_packets": r.rx_packets, "tx_bytes": r.tx_bytes, "rx_bytes": r.rx_bytes}
            last_ok = unix(first + b.gr_min) <= r.last_packet <= unix(first + b.gr_max)
        # The first packet passed the gateway one gateway-to-resource delay before it reached the host;
        # the flow ended when the revocation reached the gateway.
        start_ok = unix(first - b.gr_max) <= r.start <= unix(first - b.gr_min)
        times_ok = r.start <= r.last_packet <= r.end and unix(revoked + b.pg_min) <= r.end <= unix(
            revoked + b.pg_max
        )
        if got != want or not start_ok or not times_ok or not last_ok or r.rx_packets < 1:
            raise InvariantError(
                f"flow log of {p.what}: expected {want}, start within the link delay of {first} and an end "
                f"when the revocation at {revoked} arrived; got {r}"
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
    """One client holding the CIDR resource, whose flows are logged (twice: the second after a grant)."""
    grant = Step(StepKind.GRANT, 0, 0)
    return Program(
        WorldSpec(11, 1, 1), [grant, Step(StepKind.FLOW_LOG_EDGE, 0), grant, Step(StepKind.FLOW_LOG_EDGE, 0)]
    )
