"""Our ICE agent (controlled) against aioice (controlling) over real loopback UDP sockets.

aioice gathers a host candidate on 127.0.0.1 or ::1 (its host-address discovery skips loopback, so it
is patched to return it), we exchange candidate strings and
credentials in memory, aioice runs its checks and nominates a pair; our agent answers, runs its own
checks, announces the nominated path, and application data passes both ways on that path. The second
test does the same with relayed candidates only: our agent's candidate is a relayed address of our TURN
allocation on a real coturn, aioice's is its own coturn allocation, so every check and every datagram goes
through coturn twice (ChannelData on our side).
"""

from __future__ import annotations

import asyncio
import time
from ipaddress import ip_address

import aioice
import aioice.ice
import pytest

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import DecodeError
from gateway_core.ice import candidate as cand
from gateway_core.ice.agent import IceAgent, IceState, NominatedSend
from gateway_core.turn.allocation import Allocation, Phase, RelaySocket
from gateway_core.wire import stun
from gateway_core.wire import turn as tw
from tests.system.coturn_harness import Coturn, coturn, rest_credentials

__all__ = ["coturn"]  # the fixture, imported for pytest

pytestmark = pytest.mark.system

UFRAG, PWD = "gwuf", "gateway-password-22chr"


class OurSide(asyncio.DatagramProtocol):
    """A minimal driver: one socket, one agent, a timer task; echoes non-STUN datagrams on the chosen path."""

    def __init__(self, agent: IceAgent) -> None:
        self.agent = agent
        self.t0 = time.monotonic_ns()
        self.transport: asyncio.DatagramTransport | None = None
        self.local: SocketAddr | None = None
        self.nominated: list[NominatedSend] = []
        self.app: list[tuple[SocketAddr, bytes]] = []
        self.wake = asyncio.Event()

    def now(self) -> Instant:
        return Instant(time.monotonic_ns() - self.t0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = SocketAddr(ip_address(host), port)

    alloc: Allocation | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.local is not None
        src, dest = SocketAddr(ip_address(addr[0]), addr[1]), self.local
        if self.alloc is not None and self.alloc.server.matches(src):
            got = self._from_relay(src, data)
            self.flush()
            if got is None:
                return
            src, data, dest = got
        try:
            msg = stun.decode(data)
        except DecodeError:
            self.app.append((src, data))
            if self.nominated:
                self.send_on_path(self.nominated[-1], b"echo:" + data)
            return
        if self.agent.accepts(msg):
            self.agent.handle_stun(self.now(), src, dest, msg)
        self.flush()

    def _from_relay(self, src: SocketAddr, data: bytes) -> tuple[SocketAddr, bytes, SocketAddr] | None:
        assert self.alloc is not None and self.local is not None
        kind = tw.classify(data)
        if kind is tw.Kind.CHANNEL_DATA:
            ch, payload = tw.decode_channel_data(data, exact=False)
            return self.alloc.decapsulate(src, ch, payload, self.now())
        msg = stun.decode(data)
        if msg.cls == stun.Class.INDICATION:
            return self.alloc.decapsulate_indication(src, msg)
        self.alloc.handle_input(src, self.local, msg, self.now())
        return None

    def send(self, dst: SocketAddr, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(payload, (str(dst.ip), dst.port))

    def send_on_path(self, nom: NominatedSend, payload: bytes) -> None:
        if self.alloc is not None and self.alloc.has_socket(nom.source):
            t = self.alloc.encapsulate(nom.destination, payload, self.now())
            if t is not None:
                self.send(t.dst, t.payload)
        else:
            self.send(nom.destination, payload)

    def flush(self) -> None:
        if self.alloc is not None:
            while (t := self.alloc.poll_transmit()) is not None:
                self.send(t.dst, t.payload)
            while self.alloc.poll_event() is not None:
                pass
        while (t := self.agent.poll_transmit()) is not None:
            assert t.src is not None
            self.send_on_path(NominatedSend(t.src, t.dst), t.payload)
        while (e := self.agent.poll_event()) is not None:
            if isinstance(e, NominatedSend):
                self.nominated.append(e)
        self.wake.set()

    async def run_timer(self) -> None:
        while True:
            self.agent.handle_timeout(self.now())
            if self.alloc is not None:
                self.alloc.handle_timeout(self.now())
            self.flush()
            self.wake.clear()
            ad = self.agent.poll_timeout()
            ats = [None if ad is None else ad.at]
            if self.alloc is not None and (d := self.alloc.poll_timeout()) is not None:
                ats.append(d.at)
            at = min((a for a in ats if a is not None), default=None)
            delay = 1.0 if at is None else max(0.0, (at - self.now()) / 1e9)
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            except TimeoutError:
                pass


async def _scenario(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [host])
    v6 = ":" in host
    peer = aioice.Connection(ice_controlling=True, components=1, use_ipv4=not v6, use_ipv6=v6)
    await peer.gather_candidates()
    agent = IceAgent(UFRAG, PWD, peer.local_username, peer.local_password, SeededEntropy(7))
    loop = asyncio.get_running_loop()
    transport, ours = await loop.create_datagram_endpoint(lambda: OurSide(agent), local_addr=(host, 0))
    timer = asyncio.create_task(ours.run_timer())
    try:
        assert ours.local is not None
        local = agent.add_local_candidate(cand.host(ours.local))
        assert local is not None
        for pc in peer.local_candidates:
            agent.add_remote_candidate(cand.parse("candidate:" + pc.to_sdp()))
        peer.remote_username, peer.remote_password = UFRAG, PWD
        # aioice's parser wants no "candidate:" prefix and tolerates our raddr/ufrag suffixes.
        await peer.add_remote_candidate(aioice.Candidate.from_sdp(local.to_sdp()[len("candidate:") :]))
        await peer.add_remote_candidate(None)
        await asyncio.wait_for(peer.connect(), timeout=10)
        for _ in range(200):
            if ours.nominated:
                break
            await asyncio.sleep(0.01)
        peer_addr = SocketAddr(ip_address(host), peer.local_candidates[0].port)
        assert ours.nominated[-1] == NominatedSend(ours.local, peer_addr)
        assert agent.state in (IceState.CONNECTED, IceState.COMPLETED)
        # Data in both directions on the selected path.
        await peer.send(b"ping")
        got = await asyncio.wait_for(peer.recv(), timeout=5)
        assert got == b"echo:ping"
        assert ours.app == [(peer_addr, b"ping")]
        checks_before = agent.stats.counters["ice.checks_sent"]
        await asyncio.sleep(1.6)
        # Checks continue (consent/keepalive) and aioice keeps answering them.
        assert agent.stats.counters["ice.checks_sent"] > checks_before
        assert any(p.succeeded for p in agent.pairs)
    finally:
        timer.cancel()
        await peer.close()
        transport.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_ice_agent_against_aioice(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    asyncio.run(asyncio.wait_for(_scenario(monkeypatch, host), timeout=30))


async def _relayed(monkeypatch: pytest.MonkeyPatch, server: Coturn) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    user, password = rest_credentials("aioice")
    peer = aioice.Connection(
        ice_controlling=True,
        components=1,
        use_ipv6=False,
        turn_server=("127.0.0.1", server.port),
        turn_username=user,
        turn_password=password,
        transport_policy=aioice.TransportPolicy.RELAY,
    )
    await peer.gather_candidates()
    (peer_relay,) = [c for c in peer.local_candidates if c.type == "relay"]
    agent = IceAgent(UFRAG, PWD, peer.local_username, peer.local_password, SeededEntropy(8))
    loop = asyncio.get_running_loop()
    transport, ours = await loop.create_datagram_endpoint(lambda: OurSide(agent), local_addr=("127.0.0.1", 0))
    gw_user, gw_password = rest_credentials("gateway")
    ours.alloc = Allocation(
        RelaySocket(server.v4), gw_user, gw_password, "firezone", ours.now(), SeededEntropy(9)
    )
    timer = asyncio.create_task(ours.run_timer())
    try:
        for _ in range(500):
            if ours.alloc.phase is Phase.ALLOCATED:
                break
            await asyncio.sleep(0.01)
        assert ours.alloc.phase is Phase.ALLOCATED
        relays = ours.alloc.relay_candidates()
        assert [c.addr.ip.version for c in relays] == [4, 6]  # both from one ALLOCATE (decision 0171)
        relayed = relays[0]  # aioice's allocation is IPv4
        local = agent.add_local_candidate(relayed)
        assert local is not None and local.priority == 37748479
        remote = cand.parse("candidate:" + peer_relay.to_sdp())
        assert remote.kind is cand.Kind.RELAY
        agent.add_remote_candidate(remote)
        ours.alloc.bind_channel(remote.addr, ours.now())  # as snownet does for non-host candidates
        ours.flush()
        peer.remote_username, peer.remote_password = UFRAG, PWD
        await peer.add_remote_candidate(aioice.Candidate.from_sdp(local.to_sdp()[len("candidate:") :]))
        await peer.add_remote_candidate(None)
        await asyncio.wait_for(peer.connect(), timeout=15)
        for _ in range(300):
            if ours.nominated:
                break
            await asyncio.sleep(0.01)
        assert ours.nominated[-1] == NominatedSend(relayed.addr, remote.addr)
        await peer.send(b"relayed-ping")
        got = await asyncio.wait_for(peer.recv(), timeout=5)
        assert got == b"echo:relayed-ping"
        assert ours.app == [(remote.addr, b"relayed-ping")]
    finally:
        timer.cancel()
        await peer.close()
        transport.close()


def test_ice_agent_against_aioice_relayed_through_coturn(
    monkeypatch: pytest.MonkeyPatch, coturn: Coturn
) -> None:
    asyncio.run(asyncio.wait_for(_relayed(monkeypatch, coturn), timeout=40))
