"""The gateway facade under a fuzzed sequence of network inputs (``gateway_core/gateway.py``).

Every input starts from the same prepared gateway (:mod:`fuzz.gateway_template`: joined, one client
connected with three authorised resources, a DNS-resource NAT in place; copied per input with
:mod:`fuzz.snapshot`) and is read with a ``FuzzedDataProvider`` as up to :data:`MAX_OPS` operations:

- a datagram: raw bytes from one of several sources (the client, the relay, its relayed address,
  strangers), or a recorded datagram (STUN with valid integrity, WireGuard) with some bytes changed;
- a packet from the client through the tunnel (correctly encrypted on the client's session): raw bytes,
  or a packet built from chosen parts (family, source, destination among every resource, proxy IP and
  tunnel address, protocol, ports, payload), or a p2p control packet with a fuzzed JSON payload;
- a packet on the TUN: raw bytes, or a reply built from chosen parts (a resource answering the client,
  ICMP errors quoting a packet of the client);
- a portal frame: raw text or binary, or a valid frame of one of the portal's events with one JSON
  value replaced;
- a DNS query to the gateway's DNS server, an answer to a pending resolution or DNS forward;
- time passing (each deadline served in order).

After every call the driving contract is checked with the simulator's checker (``sim/contract.py``):
no exception escapes a call that carries network bytes (R6; the facade documents no other); after the
commands are drained ``poll_timeout`` is pure, never before ``now`` (R4), and a served deadline is gone
(R5, with the busy-loop bound). A packet returned for the TUN must pass ``validate``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from atheris import FuzzedDataProvider

from fuzz.gateway_template import (
    DATAGRAM_SOURCES,
    IDS,
    INNER_DESTINATIONS,
    INNER_SOURCES,
    PORTS,
    TUN_DESTINATIONS,
    TUN_SOURCES,
    build_template,
)
from fuzz.snapshot import fresh
from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.commands import Transmit
from gateway_core.contract import Deadline
from gateway_core.dns.forwarding import DnsQueryReceived, DnsUpstreamResponse, ForwardDnsQuery
from gateway_core.dns.servers import DnsTransport
from gateway_core.gateway import Gateway
from gateway_core.gateway_types import DomainResolved, DomainResolveFailed, ResolveDomain
from gateway_core.inputs import Input
from gateway_core.policy.p2p_control import MAX_PAYLOAD, build_control_packet
from gateway_core.portal import phoenix
from gateway_core.portal.channel import ConnectPortal, PortalConnected, PortalFrameReceived, SendPortalFrame
from gateway_core.wire.icmp import build_icmp_prohibited, build_icmp_unreachable
from gateway_core.wire.ip import validate
from gateway_core.wire.ipbuild import build_icmp_echo, build_tcp_packet, build_udp_packet
from sim.contract import ContractChecker
from tests.unit.gateway_harness import GW, GW_TUN4

MAX_OPS = 16
"""Operations per input: long enough for grant-then-traffic-then-revoke sequences, short enough that
an input runs in a few milliseconds."""
MAX_WAKEUPS = 400
"""Deadlines served per time step before the target calls it a livelock (the 1 s sweep over 200 s)."""
STEPS = (0, millis(1), millis(200), secs(1), secs(5), secs(11), secs(31), secs(130), secs(200))
"""Time advances: none, within a timer, the 1 s sweep, DNS timeout (5 s), keepalive (10 s), portal
heartbeat (30 s), rekey (120 s), session expiry (180 s)."""
DNS_SERVER = SocketAddr(GW_TUN4, 53535)
MAX_TEXT = 2000

TEMPLATE = build_template()


class Run:
    """One input's gateway, its clock and what it asked for."""

    def __init__(self) -> None:
        self.gw: Gateway = fresh(TEMPLATE.gateway)
        self.now = TEMPLATE.now
        self.counter = TEMPLATE.first_counter
        self.conn = TEMPLATE.conn
        """The portal connection in use (a reconnection opens a new one)."""
        self.checker = ContractChecker("gateway", self.gw, purity_every=1)
        self.checker.last_now = self.now
        self.resolutions: list[int] = []
        self.forwards: list[int] = []
        self.ops: list[int] = []
        """The operations performed, in order (the seed generator checks its seeds with it)."""

    # --- driving ---------------------------------------------------------------------------------

    def network(self, call: Callable[[], Any]) -> Any:
        result = self.checker.network_input(self.now, call)
        self.drain()
        self.checker.settle(self.now, None)
        return result

    def drain(self) -> None:
        gw = self.gw
        for _ in range(10_000):
            c = gw.poll_command()
            if c is None:
                return
            if isinstance(c, ConnectPortal):
                self.conn = c.conn
                self._deliver(PortalConnected(c.conn))
            elif isinstance(c, SendPortalFrame):
                f = phoenix.decode_frame(c.text)
                if f.event in (phoenix.PHX_JOIN, phoenix.HEARTBEAT):
                    reply = phoenix.encode_frame(
                        f.topic, phoenix.PHX_REPLY, {"status": "ok", "response": {}}, f.ref
                    )
                    self._deliver(PortalFrameReceived(self.conn, reply))
            elif isinstance(c, ResolveDomain):
                self.resolutions.append(c.request_id)
            elif isinstance(c, ForwardDnsQuery):
                self.forwards.append(c.query_id)
        raise AssertionError("the gateway kept producing commands")

    def _deliver(self, inp: Input) -> None:
        """The portal's answer to what the gateway just sent (checked as network input, R6)."""
        self.checker.network_input(self.now, lambda: self.gw.handle_input(self.now, inp))

    def advance(self, step: int) -> None:
        end = Instant(self.now + step)
        gw = self.gw
        for _ in range(MAX_WAKEUPS):
            d: Deadline | None = gw.poll_timeout()
            if d is None or d.at > end:
                break
            self.now = Instant(max(self.now, d.at))
            self.checker.check_now(self.now)
            gw.handle_timeout(self.now)
            self.drain()
            self.checker.settle(self.now, d)
        else:
            raise AssertionError(f"more than {MAX_WAKEUPS} deadlines within {step} ns")
        self.now = end

    # --- inputs ----------------------------------------------------------------------------------

    def datagram(self, src: SocketAddr, payload: bytes) -> None:
        out = self.network(lambda: self.gw.handle_datagram(self.now, GW, src, payload))
        if out is not None:
            assert validate(out) is None, f"wrote an invalid packet to the TUN: {out.hex()}"

    def tunnel(self, packet: bytes) -> None:
        self.counter += 1
        self.datagram(DATAGRAM_SOURCES[0], TEMPLATE.seal(self.counter, packet))

    def tun(self, packet: bytes) -> None:
        t = self.network(lambda: self.gw.handle_tun_packet(self.now, packet))
        assert t is None or isinstance(t, Transmit)

    def input(self, inp: Input) -> None:
        self.network(lambda: self.gw.handle_input(self.now, inp))

    def portal(self, data: str | bytes) -> None:
        self.network(lambda: self.gw.handle_input(self.now, PortalFrameReceived(self.conn, data)))


# --- building inputs ----------------------------------------------------------------------------------


def _pick(fdp: FuzzedDataProvider, items: tuple[Any, ...] | list[Any]) -> Any:
    return items[fdp.ConsumeIntInRange(0, len(items) - 1)]


def _port(fdp: FuzzedDataProvider) -> int:
    return int(_pick(fdp, PORTS)) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 0xFFFF)


def _same_family(fdp: FuzzedDataProvider, src: IPAddress, choices: tuple[IPAddress, ...]) -> IPAddress:
    fitting = tuple(a for a in choices if a.version == src.version)
    return _pick(fdp, fitting) if fitting else src


def _l4_packet(fdp: FuzzedDataProvider, src: IPAddress, dst: IPAddress) -> bytes:
    proto = fdp.ConsumeIntInRange(0, 3)
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    if proto == 0:
        return build_udp_packet(src, dst, _port(fdp), _port(fdp), payload)
    if proto == 1:
        return build_tcp_packet(
            src, dst, _port(fdp), _port(fdp), payload, flags=fdp.ConsumeIntInRange(0, 0x3F)
        )
    if proto == 2:
        return build_icmp_echo(
            src, dst, _port(fdp), fdp.ConsumeIntInRange(0, 0xFFFF), payload, fdp.ConsumeBool()
        )
    inner = build_udp_packet(dst, src, _port(fdp), _port(fdp), payload)  # an error quoting a packet to src
    return build_icmp_prohibited(inner) if fdp.ConsumeBool() else build_icmp_unreachable(inner)


def _inner_packet(fdp: FuzzedDataProvider) -> bytes:
    src = _pick(fdp, INNER_SOURCES)
    return _l4_packet(fdp, src, _same_family(fdp, src, INNER_DESTINATIONS))


def _control_packet(fdp: FuzzedDataProvider) -> bytes:
    event = fdp.ConsumeIntInRange(0, 3)
    if fdp.ConsumeBool():
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, MAX_PAYLOAD))
    else:
        ips = ["100.96.0.1", "100.96.0.2", "100.96.0.3", "100.96.0.4"]
        doc: dict[str, Any] = {"resource": IDS[2], "domain": "app.example.com", "proxy_ips": ips}
        _mutate(fdp, doc)
        payload = json.dumps(doc, separators=(",", ":")).encode()
    return build_control_packet(event, payload[:MAX_PAYLOAD])


def _tun_packet(fdp: FuzzedDataProvider) -> bytes:
    src = _pick(fdp, TUN_SOURCES)
    return _l4_packet(fdp, src, _same_family(fdp, src, TUN_DESTINATIONS))


def _json_value(fdp: FuzzedDataProvider) -> Any:
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind == 0:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if kind == 1:
        return fdp.ConsumeIntInRange(-(2**63), 2**64)
    if kind == 2:
        return None
    if kind == 3:
        return fdp.ConsumeBool()
    if kind == 4:
        return []
    if kind == 5:
        return {}
    if kind == 6:
        return _pick(fdp, IDS)
    return fdp.ConsumeRegularFloat()  # finite: NaN and infinities are not JSON


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(fdp: FuzzedDataProvider, doc: dict[str, Any]) -> None:
    """Replace (or delete) one value somewhere in ``doc``, in place."""
    paths = _paths(doc)[1:]
    if not paths or fdp.ConsumeBool():
        return
    path = _pick(fdp, paths)
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and fdp.ConsumeIntInRange(0, 3) == 0:
        del parent[path[-1]]
    else:
        parent[path[-1]] = _json_value(fdp)


def _portal_frame(fdp: FuzzedDataProvider) -> str:
    event, payload = _pick(fdp, TEMPLATE.portal_payloads)
    doc = {"payload": copy.deepcopy(payload)}
    _mutate(fdp, doc)
    return phoenix.encode_frame("gateway", event, doc.get("payload"), None)


# --- the target -------------------------------------------------------------------------------------


def test_one_input(data: bytes) -> None:
    execute(data)


OPS = 11
OP_DATAGRAM, OP_RECORDED, OP_TUNNEL_RAW, OP_TUNNEL, OP_CONTROL, OP_TUN_RAW, OP_TUN = range(7)
OP_PORTAL_RAW, OP_PORTAL, OP_DNS_QUERY, OP_ANSWER, OP_TIME = range(7, 12)


def execute(data: bytes) -> Run:
    """Run ``data`` as operations (see the module docstring); the run, for its ``ops`` and gateway."""
    fdp = FuzzedDataProvider(data)
    run = Run()
    for _ in range(MAX_OPS):
        if fdp.remaining_bytes() == 0:
            break
        op = fdp.ConsumeIntInRange(0, OPS)
        run.ops.append(op)
        if op == 0:
            run.datagram(_pick(fdp, DATAGRAM_SOURCES), fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1500)))
        elif op == 1:
            src, payload = _pick(fdp, TEMPLATE.received)
            buf = bytearray(payload)
            for _ in range(fdp.ConsumeIntInRange(0, 3)):
                if buf:
                    buf[fdp.ConsumeIntInRange(0, len(buf) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
            run.datagram(src, bytes(buf))
        elif op == 2:
            run.tunnel(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1400)))
        elif op == 3:
            run.tunnel(_inner_packet(fdp))
        elif op == 4:
            run.tunnel(_control_packet(fdp))
        elif op == 5:
            run.tun(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1400)))
        elif op == 6:
            run.tun(_tun_packet(fdp))
        elif op == 7:
            raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, MAX_TEXT))
            run.portal(raw.decode("utf-8", "replace") if fdp.ConsumeBool() else raw)  # text or binary frame
        elif op == 8:
            run.portal(_portal_frame(fdp))
        elif op == 9:
            message = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
            transport = DnsTransport.TCP if fdp.ConsumeBool() else DnsTransport.UDP
            remote = SocketAddr(_pick(fdp, INNER_SOURCES), _port(fdp))
            query = DnsQueryReceived(DNS_SERVER, remote, transport, message)
            run.input(query)
        elif op == 10:
            if run.resolutions:
                rid = run.resolutions.pop(0)
                addrs = tuple(
                    _pick(fdp, (*TUN_SOURCES, *INNER_DESTINATIONS))
                    for _ in range(fdp.ConsumeIntInRange(0, 3))
                )
                answer = DomainResolved(rid, addrs) if fdp.ConsumeBool() else DomainResolveFailed(rid, "fuzz")
                run.input(answer)
            elif run.forwards:
                response = DnsUpstreamResponse(
                    run.forwards.pop(0), fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
                )
                run.input(response)
        else:
            run.advance(_pick(fdp, STEPS))
    return run
