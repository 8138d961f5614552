"""The ``flow_edge`` step of the stateful harness: the packets of one flow, through the gateway's flow cache.

Theory of operation. Once a packet of a TCP or UDP flow has gone the gateway's full way, the decision is
kept (``gateway_core/policy/flowcache.py``) and the flow's next packets are forwarded from the cache, in
both directions, *before* the validation of the full way: the cache must refuse every packet the full way
would treat otherwise. A ``flow_edge`` step makes one client send, to the CIDR resource's web host or
through the DNS-resource NAT to a proxy IP of ``app.corp.test`` (``a``; the family of the proxy IP from
``b``), and checks each packet against the model like any probe:

1. two datagrams of one UDP flow to the echo port (the second one and its answer go through the cache);
2. the :data:`UDP_CASES`, malformed packets of that flow sent raw into the tunnel: each must be dropped,
   nothing forwarded or answered, and counted under the reason the full way's validation gives
   (``drop.<reason>`` goes up by one);
3. a third datagram of the flow (still answered), then a TCP request from the same source port to the same
   address and port: the same addresses and ports as the cached flow, another protocol;
4. a TCP request to the open web port, then the :data:`TCP_CASES`, malformed segments of that flow.

Predictions come from the model (:meth:`ReferenceModel.predict_packet`), the drops from the validation
rules (``gateway_core.wire.ip.validate``, as Firezone's ``IpPacket::new``), not from the cache's code. The
step has weight 0 (never drawn: the drawn programs stay as they were); :func:`flow_program` walks it
(``make test``, ``make mutation``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from devpeers.client_types import DnsAnswer
from gateway_core.addr import IPAddress
from gateway_core.wire.ip import MAX_IP_SIZE
from sim.reference import Outcome, Prediction
from sim.stateful.probes import Probe
from sim.stateful.program import Program, Step, StepKind, WorldSpec
from sim.stateful.scene import Handler, InvariantError, Scene

if TYPE_CHECKING:
    from sim.stateful.traffic import Traffic

NAME = "app.corp.test"
"""The DNS-resource name the NAT flows go to (addresses of both families)."""
ECHO, WEB = 7, 80
"""The hosts' UDP echo port and open TCP port."""


def _v4(packet: bytes) -> bool:
    return packet[0] >> 4 == 4


def _l4(packet: bytes) -> int:
    return 20 if _v4(packet) else 40


def _udp_length(length: Callable[[int], int]) -> Callable[[bytes], bytes]:
    """The UDP length field set to ``length(the datagram's real length)``."""

    def mangle(p: bytes) -> bytes:
        b = bytearray(p)
        off = _l4(p)
        b[off + 4 : off + 6] = struct.pack("!H", length(len(p) - off))
        return bytes(b)

    return mangle


def _ip_length(extra: int) -> Callable[[bytes], bytes]:
    """The IP header claims ``extra`` bytes more than the packet has."""

    def mangle(p: bytes) -> bytes:
        b = bytearray(p)
        if _v4(p):
            b[2:4] = struct.pack("!H", len(p) + extra)
        else:
            b[4:6] = struct.pack("!H", len(p) - 40 + extra)
        return bytes(b)

    return mangle


def _fragment(field: int) -> Callable[[bytes], bytes]:
    """IPv4 flags and fragment offset (an IPv6 packet is left alone: the case is skipped there)."""

    def mangle(p: bytes) -> bytes:
        b = bytearray(p)
        b[6:8] = struct.pack("!H", field)
        return bytes(b)

    return mangle


def _too_large(p: bytes) -> bytes:
    """The same flow's datagram padded to one byte over the gateway's 1280-byte limit (lengths kept
    consistent)."""
    off = _l4(p)
    pad = MAX_IP_SIZE + 1 - len(p)
    b = bytearray(p + bytes(pad))
    b[off + 4 : off + 6] = struct.pack("!H", len(b) - off)
    if _v4(p):
        b[2:4] = struct.pack("!H", len(b))
    else:
        b[4:6] = struct.pack("!H", len(b) - 40)
    return bytes(b)


def _data_offset(words: int) -> Callable[[bytes], bytes]:
    def mangle(p: bytes) -> bytes:
        b = bytearray(p)
        off = _l4(p)
        b[off + 12] = (words << 4) | (b[off + 12] & 0x0F)
        return bytes(b)

    return mangle


@dataclass(frozen=True, slots=True)
class FlowCase:
    """A malformed packet of a cached flow and the drop reason its validation gives."""

    what: str
    mangle: Callable[[bytes], bytes]
    reason: str
    v4_only: bool = False


UDP_CASES = (
    FlowCase("UDP length one byte beyond the datagram", _udp_length(lambda n: n + 1), "malformed_l4"),
    FlowCase("UDP length below its header", _udp_length(lambda n: 7), "malformed_l4"),
    FlowCase("IP length beyond the packet", _ip_length(4), "malformed_ip"),
    FlowCase("IPv4 more-fragments flag", _fragment(0x2000), "fragment", v4_only=True),
    FlowCase("IPv4 fragment offset", _fragment(0x0001), "fragment", v4_only=True),
    FlowCase("one byte over 1280", _too_large, "ip_too_large"),
)
TCP_CASES = (
    FlowCase("TCP data offset of 4 words", _data_offset(4), "malformed_l4"),
    FlowCase("TCP data offset beyond the segment", _data_offset(15), "malformed_l4"),
)


class FlowEdges:
    """See the module docstring."""

    def __init__(self, scene: Scene, traffic: Traffic) -> None:
        self.s = scene
        self.traffic = traffic

    def handlers(self) -> dict[StepKind, Handler]:
        return {StepKind.FLOW_EDGE: self._do_flow_edge}

    def _do_flow_edge(self, step: Step, c: int) -> None:
        s = self.s
        nat = bool(step.a % 2)
        if nat:
            if (c, "app") not in s.model.routes:
                s.coverage["flow_edge_skipped"] += 1
                return
            dst = self._proxy_ip(c, bool(step.b % 2))
        else:
            dst = self.traffic.web_target(0)
        if not s.model.has_peer(c, s.world.now):
            s.coverage["flow_edge_skipped"] += 1
            return
        first = self._probe(c, "udp", dst, ECHO, nat)
        self._probe(c, "udp", dst, ECHO, nat, first.sport)
        for case in UDP_CASES:
            if not (case.v4_only and dst.version == 6):
                self._malformed(c, "udp", dst, ECHO, first.sport, case)
        self._probe(c, "udp", dst, ECHO, nat, first.sport)
        self._probe(c, "tcp", dst, ECHO, nat, first.sport)
        web = self._probe(c, "tcp", dst, WEB, nat)
        for case in TCP_CASES:
            self._malformed(c, "tcp", dst, WEB, web.sport, case)

    def _proxy_ip(self, c: int, v6: bool) -> IPAddress:
        s = self.s
        client = s.client(c)
        before = len(client.received)
        rtype = "AAAA" if v6 else "A"
        s.gw.drive(c, lambda cc, t: cc.query_dns(t, NAME, rtype))
        answers = [r for r in client.received[before:] if isinstance(r, DnsAnswer)]
        if len(answers) != 1 or answers[0].rcode != "NOERROR":
            raise InvariantError(f"local {rtype} answer for {NAME}: {answers}")
        s.model.nat_query(c, NAME)
        proxies = client.proxy_ips(NAME)
        return proxies[4] if v6 else proxies[0]

    def _probe(self, c: int, proto: str, dst: IPAddress, port: int, nat: bool, sport: int = 0) -> Probe:
        """One packet of the flow (``sport``: the flow's source port; 0 for a new flow), checked."""
        s = self.s
        now = s.world.now
        if nat:
            pred = s.model.predict_packet(c, dst, proto, port, now, NAME)
            s.model.nat_probe(c, NAME)
            p = self.traffic.run(Probe(c, proto, dst, port, pred, "app", sport=sport))
            s.model.nat_settle(c, NAME, now)
        else:
            pred = s.model.predict_packet(c, dst, proto, port, now)
            p = self.traffic.run(Probe(c, proto, dst, port, pred, self.traffic.host_for(dst), sport=sport))
        s.coverage["event:flow_packet"] += 1
        return p

    def _malformed(self, c: int, proto: str, dst: IPAddress, port: int, sport: int, case: FlowCase) -> None:
        """A malformed packet of the cached flow: dropped (nothing forwarded, nothing answered), counted."""
        s = self.s
        key = f"drop.{case.reason}"
        before = s.gw.gateway.stats().get(key, 0)
        host = "app" if s.model.client_route(c, dst) == "app" else self.traffic.host_for(dst)
        pred = Prediction.exact(Outcome.NOTHING, 0)
        p = Probe(c, proto, dst, port, pred.lossy() if s.model.lossy else pred, host, raw=True, sport=sport)
        p.mangle = case.mangle
        self.traffic.run(p)
        after = s.gw.gateway.stats().get(key, 0)
        if not s.model.lossy and after != before + 1:
            raise InvariantError(f"{p.what} ({case.what}): {key} {before} -> {after}, expected one more")
        s.coverage["event:flow_edge"] += 1


def flow_program() -> Program:
    """One client with the CIDR and the DNS resource; a flow to the web host, and through the NAT in each
    family."""
    grants = [Step(StepKind.GRANT, 0, 0), Step(StepKind.GRANT, 0, 1)]
    flows = [
        Step(StepKind.FLOW_EDGE, 0, 0, 0),
        Step(StepKind.FLOW_EDGE, 0, 1, 0),
        Step(StepKind.FLOW_EDGE, 0, 1, 1),
    ]
    return Program(WorldSpec(8, 1, 1), grants + flows)
