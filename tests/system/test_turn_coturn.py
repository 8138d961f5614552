"""Our TURN client (``gateway_core.turn.allocation``) against a real coturn on loopback.

coturn comes from the fixture of ``coturn_harness`` (config written there, started on loopback, stopped by
its PID). A tiny select() loop drives the sans-IO allocation with real
sockets and real monotonic time. See ``docs/decisions/0020-turn-client-firezone-and-rfc-relays.md``.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Transmit
from gateway_core.entropy import SeededEntropy
from gateway_core.turn.allocation import Allocation, Phase, RelaySocket
from gateway_core.wire import stun
from gateway_core.wire import turn as tw
from tests.system.coturn_harness import LIFETIME, Coturn, coturn, coturn_external_ip, rest_credentials

__all__ = ["coturn", "coturn_external_ip"]  # the fixtures, imported for pytest

pytestmark = pytest.mark.system


class Driver:
    """Real sockets around sans-IO allocations (one socket each) plus plain UDP peers."""

    def __init__(self) -> None:
        self.t0 = time.monotonic_ns()
        self.allocs: list[tuple[Allocation, socket.socket, SocketAddr]] = []
        self.received: list[tuple[int, SocketAddr, bytes, SocketAddr]] = []
        self.peers: list[tuple[socket.socket, bool]] = []

    def now(self) -> Instant:
        return Instant(time.monotonic_ns() - self.t0)

    def add(self, server: SocketAddr, *, requested_family: int | None = None, seed: int = 1) -> Allocation:
        fam = socket.AF_INET6 if server.ip.version == 6 else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((str(server.ip), 0))
        local = SocketAddr(ip_address(s.getsockname()[0]), s.getsockname()[1])
        user, password = rest_credentials(f"gateway{seed}")
        relay = RelaySocket(v6=server) if server.ip.version == 6 else RelaySocket(server)
        a = Allocation(
            relay,
            user,
            password,
            "firezone",
            self.now(),
            SeededEntropy(seed),
            requested_family=requested_family,
        )
        self.allocs.append((a, s, local))
        return a

    def echo_peer(self, host: str = "127.0.0.1") -> SocketAddr:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((host, 0))
        self.peers.append((s, True))
        return SocketAddr(ip_address(host), s.getsockname()[1])

    def send(self, a: Allocation, t: Transmit) -> None:
        sock = next(s for x, s, _ in self.allocs if x is a)
        sock.sendto(t.payload, (str(t.dst.ip), t.dst.port))

    def flush(self) -> None:
        for a, s, _ in self.allocs:
            while (t := a.poll_transmit()) is not None:
                s.sendto(t.payload, (str(t.dst.ip), t.dst.port))
            while a.poll_event() is not None:
                pass

    def run(self, until: Callable[[], bool], timeout: float) -> None:
        end = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < end, "condition not reached in time"
            now = self.now()
            for a, _, _ in self.allocs:
                a.handle_timeout(now)
            self.flush()
            deadlines = [d.at for a, _, _ in self.allocs if (d := a.poll_timeout()) is not None]
            wait = min([0.05] + [max(0.0, (d - self.now()) / 1e9) for d in deadlines])
            socks = [s for _, s, _ in self.allocs] + [p for p, _ in self.peers]
            ready, _, _ = select.select(socks, [], [], wait)
            for r in ready:
                data, addr = r.recvfrom(65535)
                src = SocketAddr(ip_address(addr[0]), addr[1])
                peer = next((p for p, _ in self.peers if p is r), None)
                if peer is not None:
                    peer.sendto(b"echo:" + data, addr)
                    continue
                a, _, local = next(x for x in self.allocs if x[1] is r)
                self._from_relay(a, local, src, data)
            self.flush()

    def _from_relay(self, a: Allocation, local: SocketAddr, src: SocketAddr, data: bytes) -> None:
        now = self.now()
        kind = tw.classify(data)
        if kind is tw.Kind.CHANNEL_DATA:
            ch, payload = tw.decode_channel_data(data, exact=False)
            got = a.decapsulate(src, ch, payload, now)
        elif kind is tw.Kind.STUN:
            msg = stun.decode(data)
            if msg.cls == stun.Class.INDICATION:
                got = a.decapsulate_indication(src, msg)
            else:
                a.handle_input(src, local, msg, now)
                got = None
        else:
            got = None
        if got is not None:
            self.received.append((len(self.allocs), got[0], got[1], got[2]))

    def close(self) -> None:
        for _, s, _ in self.allocs:
            s.close()
        for p, _ in self.peers:
            p.close()


@pytest.fixture
def driver() -> Iterator[Driver]:
    d = Driver()
    try:
        yield d
    finally:
        d.close()


def test_allocate_ipv4_channel_and_indications(coturn: Coturn, driver: Driver) -> None:
    a = driver.add(coturn.v4)
    driver.run(lambda: a.phase is Phase.ALLOCATED, 5)
    relayed = a.relayed_address(4)
    assert relayed is not None and str(relayed.ip) == "127.0.0.1"
    # coturn: signed request without nonce -> 400, plain -> 401 + nonce, then signed success.
    assert a.stats.counters["turn.error_400"] == 1 and a.stats.counters["turn.error_401"] == 1

    peer = driver.echo_peer()
    a.bind_channel(peer, driver.now())
    driver.run(lambda: a.channels.connected(peer, driver.now()) is not None, 5)
    t = a.encapsulate(peer, b"over-channel", driver.now())
    assert t is not None
    driver.send(a, t)
    driver.run(lambda: any(p == b"echo:over-channel" for _, _, p, _ in driver.received), 5)
    assert (peer, relayed) in [(x[1], x[3]) for x in driver.received]

    peer2 = driver.echo_peer()
    a.create_permission([peer2], driver.now())
    driver.run(lambda: not a._pending, 5)
    t2 = a.send_indication(peer2, b"over-send")
    assert t2 is not None
    driver.send(a, t2)
    driver.run(lambda: any(p == b"echo:over-send" for _, _, p, _ in driver.received), 5)
    assert [x[1] for x in driver.received if x[2] == b"echo:over-send"] == [peer2]


def test_allocate_ipv6(coturn: Coturn, driver: Driver) -> None:
    a = driver.add(coturn.v6, requested_family=stun.FAMILY_IPV6)
    driver.run(lambda: a.phase is Phase.ALLOCATED, 5)
    relayed = a.relayed_address(6)
    assert relayed is not None and str(relayed.ip) == "::1"
    assert a.active_socket == coturn.v6
    peer = driver.echo_peer("::1")
    a.bind_channel(peer, driver.now())
    driver.run(lambda: a.channels.connected(peer, driver.now()) is not None, 5)
    t = a.encapsulate(peer, b"six", driver.now())
    assert t is not None
    driver.send(a, t)
    driver.run(lambda: any(p == b"echo:six" for _, _, p, _ in driver.received), 5)


def test_one_allocate_over_ipv4_gives_relays_of_both_families(coturn: Coturn, driver: Driver) -> None:
    """Decision 0171: coturn 4.6 reads ADDITIONAL-ADDRESS-FAMILY at the draft codepoint only; the allocation
    (snownet's layout, asked over IPv4) gets coturn's IPv6 relay as well, and it carries data."""
    a = driver.add(coturn.v4)
    driver.run(lambda: a.phase is Phase.ALLOCATED, 5)
    assert a.active_socket == coturn.v4
    r4, r6 = a.relayed_address(4), a.relayed_address(6)
    assert r4 is not None and str(r4.ip) == "127.0.0.1" and r6 is not None and str(r6.ip) == "::1"
    assert sorted(c.addr.ip.version for c in a.relay_candidates()) == [4, 6]
    peer6 = driver.echo_peer("::1")
    a.bind_channel(peer6, driver.now())
    driver.run(lambda: a.channels.connected(peer6, driver.now()) is not None, 5)
    t = a.encapsulate(peer6, b"v4-client-v6-relay", driver.now())
    assert t is not None and t.dst == coturn.v4  # to coturn over IPv4, relayed from its IPv6 address
    driver.send(a, t)
    driver.run(lambda: any(p == b"echo:v4-client-v6-relay" for _, _, p, _ in driver.received), 5)
    assert [(x[1], x[3]) for x in driver.received if x[2] == b"echo:v4-client-v6-relay"] == [(peer6, r6)]
    # A REFRESH (no family attribute) keeps both relays: after one, the IPv6 relay still carries data.
    first_expiry = a.expires_at()
    assert first_expiry is not None
    driver.run(lambda: (a.expires_at() or 0) > first_expiry, 12)
    t = a.encapsulate(peer6, b"after-refresh", driver.now())
    assert t is not None
    driver.send(a, t)
    driver.run(lambda: any(p == b"echo:after-refresh" for _, _, p, _ in driver.received), 5)
    assert a.relayed_address(6) == r6


def test_a_dual_allocation_refused_for_external_ip_falls_back_to_ipv4(
    coturn_external_ip: Coturn, driver: Driver
) -> None:
    """coturn with ``external-ip`` answers a dual ALLOCATE with 440 ("Dual allocation cannot be supported
    in the current server configuration"): the allocation asks again for one family and gets IPv4."""
    a = driver.add(coturn_external_ip.v4)
    driver.run(lambda: a.phase is Phase.ALLOCATED, 5)
    assert a.stats.counters["turn.error_440"] == 1
    assert a.relayed_address(4) is not None and a.relayed_address(6) is None


def test_data_between_two_allocations_and_refresh(coturn: Coturn, driver: Driver) -> None:
    a = driver.add(coturn.v4, seed=1)
    b = driver.add(coturn.v4, seed=2)
    driver.run(lambda: a.phase is Phase.ALLOCATED and b.phase is Phase.ALLOCATED, 5)
    ra, rb = a.relayed_address(4), b.relayed_address(4)
    assert ra is not None and rb is not None and ra != rb
    a.bind_channel(rb, driver.now())
    b.bind_channel(ra, driver.now())
    driver.run(
        lambda: (
            a.channels.connected(rb, driver.now()) is not None
            and b.channels.connected(ra, driver.now()) is not None
        ),
        5,
    )
    t = a.encapsulate(rb, b"a-to-b", driver.now())
    assert t is not None
    driver.send(a, t)
    driver.run(lambda: any(p == b"a-to-b" for _, _, p, _ in driver.received), 5)
    (_, src, _, dst) = next(x for x in driver.received if x[2] == b"a-to-b")
    assert (src, dst) == (ra, rb)
    # The granted lifetime is capped at 8 s, so the refresh is due at 4 s; nonces go stale after 3 s, so
    # that refresh first meets a 438 and is re-authenticated with the new nonce.
    first_expiry = a.expires_at()
    assert first_expiry is not None and first_expiry - driver.now() <= LIFETIME * 1_000_000_000
    driver.run(lambda: (a.expires_at() or 0) > first_expiry, 12)
    assert a.phase is Phase.ALLOCATED and a.relayed_address(4) == ra
    assert a.stats.counters["turn.error_438"] >= 1
    t = b.encapsulate(ra, b"b-to-a-later", driver.now())
    assert t is not None
    driver.send(b, t)
    driver.run(lambda: any(p == b"b-to-a-later" for _, _, p, _ in driver.received), 5)


def test_rotated_credentials_free_the_old_allocation_on_the_same_5_tuple(
    coturn: Coturn, driver: Driver
) -> None:
    """The portal restarted and hands out new credentials for the same relay (decision 0020).

    The new allocation uses the same local socket (the same 5-tuple) while the old one is still alive on
    coturn: coturn answers the ALLOCATE with 437 (unsigned), the old allocation is deleted with a REFRESH
    LIFETIME 0 signed with the old credentials (``Allocation.handover``, as ``Node.update_relays`` passes
    it), and the new ALLOCATE then succeeds and relays data.
    """
    a = driver.add(coturn.v4, seed=1)
    driver.run(lambda: a.phase is Phase.ALLOCATED, 5)
    old_relayed = a.relayed_address(4)
    stale = a.handover()
    assert stale is not None and stale.username == a.username
    user, password = rest_credentials("gateway-rotated")
    b = Allocation(
        RelaySocket(coturn.v4), user, password, "firezone", driver.now(), SeededEntropy(7), stale=stale
    )
    _, sock, local = driver.allocs[0]
    driver.allocs[0] = (b, sock, local)  # same socket: same 5-tuple on coturn
    driver.run(lambda: b.phase is Phase.ALLOCATED, 8)
    # 437 to the first ALLOCATE, and again while coturn finishes the delete (on its next timer tick); the
    # delete itself was accepted: a delete signed with the new credentials would get 441 Wrong Credentials.
    assert b.stats.counters["turn.error_437"] >= 1 and b.stats.counters["turn.error_441"] == 0
    relayed = b.relayed_address(4)
    assert relayed is not None and relayed != old_relayed
    peer = driver.echo_peer()
    b.bind_channel(peer, driver.now())
    driver.run(lambda: b.channels.connected(peer, driver.now()) is not None, 5)
    t = b.encapsulate(peer, b"after-rotation", driver.now())
    assert t is not None
    driver.send(b, t)
    driver.run(lambda: any(p == b"echo:after-rotation" for _, _, p, _ in driver.received), 5)
    assert (peer, relayed) in [(x[1], x[3]) for x in driver.received]
