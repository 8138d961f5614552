"""Timer cost against the number of connected clients: ``Gateway.poll_timeout()``,
``Gateway.handle_timeout(now)`` with one client's timer due, and ``Gateway.handle_datagram`` on an
established session, with 1, 100, 1,000 and 10,000 connected clients; each figure is compared with the
same figure of a
1-client gateway measured in alternating rounds (both see the same load on a shared machine).

Every client is connected the way a real one is, with every timer of the gateway running while they are
added (nothing is switched off): the gateway's node gets the connection (``upsert_connection``, the
client's host candidate), the client side is a controlling :class:`IceAgent` and an initiating
:class:`WireGuardPeer` of its own, on its own address; ICE checks and the WireGuard handshake go through
``Gateway.handle_datagram``, then one UDP packet to a DNS resource's proxy IP makes a NAT session. Clients
are added 10 ms apart (the gateway accepts 100 handshakes a second before it asks for cookies,
``HANDSHAKE_RATE_LIMIT``), and the gateway's timers are served on the way (``run_until``); the client side
answers the gateway's consent checks. The measured datagrams come from the harness's own client (a full
client node). ``python -m bench bench_scale``; the last line is the ``scale:`` summary (target: each ratio
<= 2).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import statistics
import time
import tracemalloc
import uuid
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

from gateway_core.addr import SocketAddr
from gateway_core.clock import NANOS_PER_SEC, Instant, millis, secs
from gateway_core.commands import Transmit
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import DecodeError
from gateway_core.gateway_types import DomainResolved, ResolveDomain
from gateway_core.ice import candidate as cand
from gateway_core.ice.agent import IceAgent
from gateway_core.node.connection import ConnState
from gateway_core.policy.p2p_control import build_assigned_ips
from gateway_core.policy.peers import ResolveRequest
from gateway_core.policy.resources import CidrResource, DnsResource
from gateway_core.wire import stun
from gateway_core.wire.ipbuild import build_udp_packet
from gateway_core.wireguard import WireGuardPeer, crypto
from tests.unit.gateway_harness import CL_TUN4, DNS_ID, EPOCH, GW, GW_PRIV, Harness, dns_resource

CLIENT_COUNTS = (1, 100, 1_000, 10_000)
SPACING = millis(10) + 7_001
"""Between two clients joining: the gateway takes 100 handshakes a second without cookies. Not exactly
10 ms: with a divisor of a second, every hundredth client would tick its one-second timers at the same
nanosecond as the others of its phase, and "one client's timer due" would serve a hundred at 10,000."""
POLL_CALLS = 200
"""``poll_timeout()`` calls per round (it is pure: the same answer each time)."""
POLL_ROUNDS = 20
"""Rounds of ``POLL_CALLS``; the minimum is reported (many short rounds find the machine's quiet moments:
it is shared, and a round of either gateway can be slowed tenfold by other processes)."""
TIMEOUTS = 200
"""Connection timers served per count (each ``handle_timeout`` call timed alone; median reported)."""
BATCH = 100
ROUNDS = 21
"""``handle_datagram``: rounds of ``BATCH`` datagrams; the minimum per datagram is reported."""
MEMORY_CLIENTS = 200
"""Clients added under ``tracemalloc`` for the memory figure."""
MEMORY_TARGET_KIB = 8
CONNECTION_TIMERS = frozenset({"ice", "wg timers", "idle", "candidate timeout", "disconnect timeout"})
"""The reasons of a connection's own deadlines (``Connection.poll_timeout``): the timed ones."""
PROXY = ip_address("100.96.0.1")
REAL = ip_address("10.0.0.7")
DOMAIN = "app.example.com"


class FakeClient:
    """One connected client: an ICE agent and a WireGuard initiator on their own address."""

    def __init__(self, h: ScaleHarness, i: int) -> None:
        self.h = h
        self.i = i
        self.cid = uuid.UUID(int=(1 << 120) + i)
        self.addr = SocketAddr(IPv4Address(int(IPv4Address("198.18.0.0")) + i), 40_000)
        self.v4 = IPv4Address(int(IPv4Address("100.65.0.0")) + i)
        self.v6 = IPv6Address(int(IPv6Address("fd00:2021:1111::1:0:0")) + i)
        priv = hashlib.sha256(i.to_bytes(4, "big")).digest()
        self.pub = crypto.public_key(priv)
        gw_creds = (f"g{i:07d}", "gateway-password-22chr")
        cl_creds = (f"c{i:07d}", "client-password-22chrs")
        ent = SeededEntropy(1_000_000 + i)
        self.agent = IceAgent(*cl_creds, *gw_creds, ent.fork("ice"), controlling=True)
        self.agent.add_local_candidate(cand.host(self.addr))
        self.agent.add_remote_candidate(cand.host(GW))
        self.wg = WireGuardPeer(
            static_private=priv,
            peer_public=crypto.public_key(GW_PRIV),
            psk=None,
            global_index=i & 0xFFFFFF,
            entropy=ent.fork("wg"),
            now=h.now,
            wall_unix_ns=EPOCH * NANOS_PER_SEC + h.now,
        )
        self.gw_creds, self.cl_creds = gw_creds, cl_creds

    def receive(self, src: SocketAddr, payload: bytes) -> None:
        now = self.h.now
        if payload[4:8] == b"\x21\x12\xa4\x42":  # the STUN magic cookie
            try:
                msg = stun.decode(payload)
            except DecodeError:
                return
            if self.agent.accepts(msg):
                self.agent.handle_stun(now, src, self.addr, msg)
            self.flush()
            return
        if payload[:1] == b"\x02":
            self.wg.handle_handshake(now, payload)
        else:
            self.wg.decapsulate(now, payload, src.ip)
        self.flush()

    def flush(self) -> None:
        now = self.h.now
        while (t := self.agent.poll_transmit()) is not None:
            self.h.deliver(self.addr, Transmit(self.addr, t.dst, t.payload))
        while (d := self.wg.poll_transmit()) is not None:
            self.h.deliver(self.addr, Transmit(self.addr, GW, d))
        del now

    def send_ip(self, packet: bytes) -> None:
        d = self.wg.encapsulate(self.h.now, packet)
        if d is not None:
            self.h.deliver(self.addr, Transmit(self.addr, GW, d))
        self.flush()


class ScaleHarness(Harness):
    """The unit-test harness plus any number of :class:`FakeClient` on their own addresses."""

    def __init__(self) -> None:
        self.extra: dict[SocketAddr, FakeClient] = {}
        super().__init__()

    def deliver(self, src: SocketAddr, t: Transmit) -> None:
        fc = self.extra.get(t.dst)
        if fc is not None:
            fc.receive(src, t.payload)
            return
        super().deliver(src, t)


def setup() -> ScaleHarness:
    h = ScaleHarness()
    h.setup(dns_resource())
    proxies = [ip_address(f"100.96.0.{i}") for i in range(1, 5)]
    h.send(build_assigned_ips(DNS_ID, DOMAIN, proxies))  # type: ignore[arg-type]
    req = next(c for c in h.commands if isinstance(c, ResolveDomain))
    h.gw.handle_input(h.now, DomainResolved(req.request_id, (REAL,)))
    h.pump()
    return h


def add_client(h: ScaleHarness, i: int) -> FakeClient:
    """Connect client ``i`` (ICE, WireGuard, a CIDR and a DNS resource, one NAT session), timers running."""
    h.run_until(h.now + SPACING)
    gw = h.gw
    fc = FakeClient(h, i)
    h.extra[fc.addr] = fc
    cidr = CidrResource(
        uuid.UUID(int=(2 << 120) + i), "r", IPv4Network((0xAC100000 + ((i % 4096) << 4), 28)), ()
    )
    dns = DnsResource(DNS_ID, "dns", "*.example.com", ())
    gw.peers.allow_access(fc.cid, fc.v4, fc.v6, cidr, None, None)
    gw.peers.allow_access(fc.cid, fc.v4, fc.v6, dns, None, None)
    proxies = tuple(ip_address(f"100.96.0.{k}") for k in range(1, 5))
    gw.peers.domain_resolved(ResolveRequest(fc.cid, DNS_ID, DOMAIN, proxies), (REAL,))
    node = gw.node
    assert node.upsert_connection(str(fc.cid), fc.pub, None, fc.gw_creds, fc.cl_creds, h.now)
    node.add_remote_candidate(str(fc.cid), cand.host(fc.addr).to_sdp(), h.now)
    h.pump()
    for _ in range(50):
        fc.agent.handle_timeout(h.now)
        fc.flush()
        h.pump()
        conn = node.connections[str(fc.cid)]
        if conn.state is ConnState.CONNECTED:
            break
        h.run_until(h.now + millis(1))
    else:
        raise AssertionError(f"client {i} did not connect")
    fc.wg.initiate(h.now)
    fc.flush()
    h.pump()
    before = len(h.tun)
    fc.send_ip(build_udp_packet(fc.v4, PROXY, 5401, 53, b"q"))  # type: ignore[arg-type]
    h.pump()
    assert len(h.tun) == before + 1, f"client {i}: the first packet did not pass"
    return fc


def _per_call(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


class Probe:
    """The three measurements on one harness, a round at a time (so two harnesses can alternate)."""

    def __init__(self, h: ScaleHarness) -> None:
        self.h = h
        self.poll: list[float] = []
        self.served: list[float] = []
        self.datagram: list[float] = []
        pkt = build_udp_packet(CL_TUN4, PROXY, 5401, 53, bytes(100))
        conn = h.client.connections["gateway"]
        assert conn.peer_socket is not None
        self.src = conn.peer_socket.source
        self.stream = []
        for _ in range(50):  # (after a long build the harness's client may be re-keying: let it finish)
            t = h.client.encapsulate("gateway", pkt, h.now)
            if t is not None:
                break
            h.pump()
            h.run_until(h.now + millis(100))
            h.pump()
        for _ in range(BATCH * ROUNDS):
            t = h.client.encapsulate("gateway", pkt, h.now)
            assert t is not None
            self.stream.append(t.payload)
        self.sent_at = h.now
        assert h.gw.handle_datagram(h.now, GW, self.src, self.stream[0]) is not None, "the packet must pass"
        self.pos = 1

    def poll_round(self) -> None:
        self.poll.append(_per_call(self.h.gw.poll_timeout, POLL_CALLS))

    def timeout_round(self, n: int) -> None:
        """Serve deadlines until ``n`` of them were one connection's timers (ICE, WireGuard, idle), timing
        those: the same kind of work on both gateways (the others, portal and relay timers, are served
        untimed)."""
        h, gw = self.h, self.h.gw
        timed = 0
        for _ in range(100 * n):
            if timed == n:
                break
            d = gw.poll_timeout()
            assert d is not None
            h.now = Instant(max(h.now, d.at))
            t0 = time.perf_counter()
            gw.handle_timeout(h.now)
            took = time.perf_counter() - t0
            if d.reason in CONNECTION_TIMERS:
                self.served.append(took)
                timed += 1
            h.pump()
            h.client.handle_timeout(h.now)
            h.pump()
        assert timed == n, f"only {timed} connection timers served"

    def datagram_round(self) -> None:
        gw, src, now = self.h.gw, self.src, self.h.now
        batch = self.stream[self.pos : self.pos + BATCH]
        self.pos += BATCH
        passed = 0
        t0 = time.perf_counter()
        for dgram in batch:
            if gw.handle_datagram(now, GW, src, dgram) is not None:
                passed += 1
        self.datagram.append((time.perf_counter() - t0) / BATCH)
        assert passed == len(batch), f"only {passed} of {len(batch)} datagrams passed"
        self.h.pump()

    def result(self) -> tuple[float, float, float]:
        """(poll_timeout, handle_timeout with one timer due, handle_datagram) in microseconds."""
        return min(self.poll) * 1e6, statistics.median(self.served) * 1e6, min(self.datagram) * 1e6


def measure(
    h: ScaleHarness, ref: ScaleHarness
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The figures of ``h`` and of the 1-client reference ``ref``, measured in alternating rounds (the
    machine is shared: both see the same load)."""
    big, one = Probe(h), Probe(ref)
    for _ in range(POLL_ROUNDS):
        for p in (big, one):
            p.poll_round()
    # Datagrams before the timers: serving 200 deadlines moves a 1-client gateway's clock by minutes (its
    # deadlines are far apart), past the life of the session the datagrams were sealed for.
    for _ in range(ROUNDS - 1):
        for p in (big, one):
            p.datagram_round()
    for _ in range(10):
        for p in (big, one):
            p.timeout_round(TIMEOUTS // 10)
    return big.result(), one.result()


def memory_per_client() -> float:
    """Bytes the gateway's core allocates per connected client that then goes idle: ``MEMORY_CLIENTS``
    clients added to a gateway that already has some, counting only allocations made by ``gateway_core``
    code, after 25 s without traffic (idle), once the simulated clients themselves are gone."""
    h = setup()
    for i in range(1, 21):
        add_client(h, i)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(21, 21 + MEMORY_CLIENTS):
        add_client(h, i)
    h.run_until(h.now + secs(25))
    h.extra.clear()  # the simulated clients' own state (their agents and tunnels are gateway_core classes)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    only = [tracemalloc.Filter(True, "*/gateway_core/*")]
    grown = sum(
        s.size_diff for s in after.filter_traces(only).compare_to(before.filter_traces(only), "filename")
    )
    idle = sum(1 for c in h.gw.node.connections.values() if c.state is ConnState.IDLE)
    assert idle >= MEMORY_CLIENTS, f"only {idle} idle connections"
    return grown / MEMORY_CLIENTS


def main() -> None:
    # Past 4,096 clients behind one relay its channel numbers run out (RFC 8656: 0x4000-0x4FFF; the relayed
    # candidate pairs then stay unbound, the direct pairs carry the traffic): one warning per try.
    logging.getLogger("gateway_core.turn").setLevel(logging.ERROR)
    h = setup()
    ref = setup()
    have = 1
    results: dict[int, tuple[float, float, float]] = {}
    print(
        "connected clients (ICE + WireGuard + NAT session each, every timer running); "
        f"poll_timeout: min of {POLL_ROUNDS} x {POLL_CALLS} calls; handle_timeout: median of {TIMEOUTS} "
        f"connection timers served; handle_datagram: min of {ROUNDS - 1} x {BATCH} (128-byte packets through "
        "the NAT); each against a 1-client gateway measured in alternating rounds"
    )
    for n in CLIENT_COUNTS:
        t0 = time.perf_counter()
        while have < n:  # the harness's own client is one of them
            add_client(h, have)
            have += 1
        built = time.perf_counter() - t0
        live = sum(1 for c in h.gw.node.connections.values() if c.state is not ConnState.FAILED)
        assert live == n, f"{live} live connections, expected {n}"
        (p, t, d), (p1, t1, d1) = measure(h, ref)
        results[n] = (p / p1, t / t1, d / d1)
        print(
            f"{n:6d} clients: poll_timeout {p:8.2f} us ({p / p1:4.2f}x)   handle_timeout {t:8.2f} us "
            f"({t / t1:4.2f}x)   handle_datagram {d:6.2f} us ({d / d1:4.2f}x)   "
            f"[1 client: {p1:.2f} / {t1:.2f} / {d1:.2f} us; built in {built:.1f} s]"
        )
    mem = memory_per_client() / 1024
    print(
        f"memory per idle connected client (gateway_core allocations, {MEMORY_CLIENTS} clients): "
        f"{mem:.1f} KiB (target <= {MEMORY_TARGET_KIB} KiB)"
    )
    top = results[CLIENT_COUNTS[-1]]
    print(
        f"scale: poll_timeout {CLIENT_COUNTS[-1]}/1 = {top[0]:.2f}x, "
        f"handle_timeout {CLIENT_COUNTS[-1]}/1 = {top[1]:.2f}x, "
        f"handle_datagram {CLIENT_COUNTS[-1]}/1 = {top[2]:.2f}x"
    )


if __name__ == "__main__":
    main()
