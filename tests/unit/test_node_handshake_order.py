"""Handshakes the WireGuard way at the node (decision 0115): mac1 and the load are checked once, before any
Diffie-Hellman; under load an initiation without a valid mac2 is answered with a Cookie Reply to its
source address (directly, or back through the relay allocation it came through) and costs no DH; the tunnel
does not check or count the message again. Real tunnels (``World`` of ``test_node``) throughout."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.clock import millis, secs
from gateway_core.commands import Transmit
from gateway_core.errors import DropReason
from gateway_core.node.connection import PathKind
from gateway_core.wire import turn as tw
from gateway_core.wireguard import crypto
from gateway_core.wireguard.messages import decode_cookie_reply
from gateway_core.wireguard.ratelimit import SOURCE_BURST, RateLimiter
from tests import attack
from tests.unit.test_node import CL, GW, RELAY, World

ATTACKER = SocketAddr(IPv4Address("192.0.2.66"), 40000)


class DhCounter:
    """Counts X25519 exchanges (``crypto.dh``) and initiator look-ups while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, w: World) -> None:
        self.dh = 0
        self.identified = 0
        real_dh = crypto.dh
        real_identify = w.gw._identify

        def dh(private: object, public: bytes) -> bytes:
            self.dh += 1
            return real_dh(private, public)  # type: ignore[arg-type]

        def identify(data: bytes) -> object:
            self.identified += 1
            return real_identify(data)

        monkeypatch.setattr(crypto, "dh", dh)
        monkeypatch.setattr(w.gw, "_identify", identify)


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    w.connect()
    w.run_until(secs(3))
    assert w.gw.connections["cl"].peer_socket is not None
    yield w


def _limiter(w: World) -> RateLimiter:
    rl = w.gw.rate_limiter
    assert isinstance(rl, RateLimiter)
    return rl


def _drain(w: World) -> list[Transmit]:
    out = []
    while (t := w.gw.poll_command()) is not None:
        out.append(t)
    return out


def _gw_public(w: World) -> bytes:
    return crypto.public_key(w.gw_priv)


def test_a_bad_mac1_initiation_costs_no_diffie_hellman(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    count = DhCounter(monkeypatch, w)
    before = _limiter(w).count
    for _ in range(50):
        assert w.gw.handle_datagram(w.now, GW, ATTACKER, attack.random148()) is None
    assert (count.dh, count.identified) == (0, 0)
    assert w.gw.stats.drops[DropReason.WG_BAD_MAC1] == 50
    assert _limiter(w).count == before  # not counted as a handshake either
    assert _drain(w) == []


def test_a_valid_mac1_initiation_from_an_unknown_key_costs_one_dh_and_is_counted_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    msg = attack.initiation(_gw_public(w))
    count = DhCounter(monkeypatch, w)
    before = _limiter(w).count
    assert w.gw.handle_datagram(w.now, GW, ATTACKER, msg) is None
    assert (count.dh, count.identified) == (1, 1)
    assert _limiter(w).count == before + 1
    assert w.gw.stats.drops[DropReason.WG_UNKNOWN_INDEX] >= 1


def test_under_load_an_initiation_without_mac2_gets_a_cookie_at_its_source_and_no_dh(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    rl = _limiter(w)
    rl.count = rl.limit  # under load from the next message on
    victim = w.gw.connections["cl"].tunnel
    victim_drops = dict(victim.stats.drops)
    msg = attack.initiation(_gw_public(w), crypto.public_key(w.cl_priv), sender=0x01020304)
    count = DhCounter(monkeypatch, w)
    assert w.gw.handle_datagram(w.now, GW, ATTACKER, msg) is None
    assert (count.dh, count.identified) == (0, 0)
    sent = _drain(w)
    assert len(sent) == 1
    reply = sent[0]
    assert (reply.src, reply.dst) == (GW, ATTACKER)  # where the initiation came from, not the client (CL)
    cookie = decode_cookie_reply(reply.payload)
    assert cookie.receiver == 0x01020304
    # The attacker can open it (it knows the gateway's public key and its own mac1): the cookie is for
    # the attacker's address, which is all a cookie proves.
    opened = crypto.xaead_decrypt(
        crypto.hash_(crypto.LABEL_COOKIE, _gw_public(w)), cookie.nonce, cookie.encrypted_cookie, msg[116:132]
    )
    assert opened == rl.cookie_for(ATTACKER.ip, w.now)
    assert w.gw.stats.drops[DropReason.WG_COOKIE_REQUIRED] == 1
    assert dict(victim.stats.drops) == victim_drops  # the tunnel never saw it


def test_a_flood_naming_a_real_client_never_reaches_that_client(world: World) -> None:
    w = world
    msgs = [attack.initiation(_gw_public(w), crypto.public_key(w.cl_priv)) for _ in range(300)]
    to_client = 0
    for m in msgs:
        w.gw.handle_datagram(w.now, GW, ATTACKER, m)
        for t in _drain(w):
            assert t.dst == ATTACKER
            to_client += t.dst == CL
    assert to_client == 0
    rl = _limiter(w)
    # Under load the attacker's address gets its burst of cookie replies, then nothing (its budget).
    assert w.gw.stats.drops[DropReason.WG_COOKIE_REQUIRED] == SOURCE_BURST
    assert w.gw.stats.drops[DropReason.WG_RATE_LIMITED] == 300 - rl.limit - SOURCE_BURST
    # The real tunnel rejected only the ones before the load (bad timestamp AEAD), each once.
    assert w.gw.connections["cl"].tunnel.stats.drops[DropReason.WG_HANDSHAKE_FAILED] == rl.limit
    # And the real client's tunnel still carries data.
    t = w.cl.encapsulate("gw", b"\x45" + bytes(19), w.now)
    assert t is not None


def test_a_legit_handshake_is_counted_once_and_its_first_dh_not_repeated(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    rl = _limiter(w)
    cl_tunnel = w.cl.connections["gw"].tunnel
    init = cl_tunnel.handshake.create_initiation(w.now, cl_tunnel._entropy)  # type: ignore[attr-defined]
    before = rl.count
    count = DhCounter(monkeypatch, w)
    gw_tunnel = w.gw.connections["cl"].tunnel
    stats_before = gw_tunnel.stats.counters["handshakes_as_responder"]
    assert w.gw.handle_datagram(w.now, GW, CL, init) is None
    assert rl.count == before + 1
    # identify (1) + the response's two (ephemeral-ephemeral, ephemeral-static); not the identify's again.
    assert (count.identified, count.dh) == (1, 3)
    assert gw_tunnel.stats.counters["handshakes_as_responder"] == stats_before + 1
    sent = _drain(w)
    assert [len(t.payload) for t in sent] == [92] and sent[0].dst == CL


def test_under_load_a_relayed_initiation_gets_its_cookie_back_through_the_relay() -> None:
    w = World()
    w.block_direct = True
    w.connect()
    w.run_until(secs(5))
    conn = w.gw.connections["cl"]
    assert conn.peer_socket is not None and conn.peer_socket.kind is not PathKind.PEER_TO_PEER
    alloc = w.gw.allocations["relay0"]
    peer = conn.peer_socket.dest  # the client's address as the relay sees it (bound to a channel)
    number = alloc.channels.connected(peer, w.now)
    assert number is not None
    rl = _limiter(w)
    rl.count = rl.limit
    msg = attack.initiation(crypto.public_key(w.gw_priv))
    framed = tw.encode_channel_data(number, msg)
    _drain(w)
    assert w.gw.handle_datagram(w.now, GW, RELAY, framed) is None
    sent = _drain(w)
    assert len(sent) == 1
    assert sent[0].dst == RELAY
    back_number, payload = tw.decode_channel_data(sent[0].payload, exact=True)
    assert back_number == number
    assert decode_cookie_reply(payload).receiver == int.from_bytes(msg[4:8], "little")


def test_garbage_drops_run_no_timers(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dropped datagram changed nothing, so the node does not tick its timers for it."""
    w = world
    ticks = 0
    real = w.gw.handle_timeout

    def tick(now: int) -> None:
        nonlocal ticks
        ticks += 1
        real(now)  # type: ignore[arg-type]

    monkeypatch.setattr(w.gw, "handle_timeout", tick)
    for d in [attack.garbage_mix(i) for i in range(64)] + [attack.junk() for _ in range(16)]:
        assert w.gw.handle_datagram(w.now, GW, ATTACKER, d) is None
    assert ticks == 0
    assert _drain(w) == []


def test_under_load_each_source_has_its_own_budget(world: World) -> None:
    """20 messages a second per source IP, 5 at once (the kernel WireGuard's numbers); another source
    is not affected; a source whose budget refilled is forgotten at the next reset."""
    w = world
    rl = _limiter(w)
    rl.count = rl.limit
    gw_pub = _gw_public(w)
    other = SocketAddr(IPv4Address("192.0.2.77"), 40000)

    def answered(src: SocketAddr) -> bool:
        w.gw.handle_datagram(w.now, GW, src, attack.initiation(gw_pub))
        return bool(_drain(w))

    assert [answered(ATTACKER) for _ in range(7)] == [True] * 5 + [False] * 2
    assert answered(other)  # a different source still gets its cookie
    w.now += millis(50)  # one token back (20 per second)
    assert [answered(ATTACKER) for _ in range(2)] == [True, False]
    w.now += secs(1)
    rl.count = 0
    rl.reset_count(w.now)
    assert rl._sources == {}  # both buckets full again: forgotten


def test_an_old_count_does_not_keep_an_idle_node_under_load(world: World) -> None:
    """snownet does not reset the counter while every connection is idle; the limiter itself forgets a
    count older than a second when the next handshake message comes, so a burst of initiations cannot
    leave an idle gateway demanding cookies from every client afterwards."""
    w = world
    rl = _limiter(w)
    rl.count = rl.limit * 5
    rl.last_reset = w.now
    gw_pub = _gw_public(w)
    w.gw.handle_datagram(w.now, GW, ATTACKER, attack.initiation(gw_pub))
    assert [len(t.payload) for t in _drain(w)] == [64]  # under load: a cookie
    w.now += secs(1)
    before = w.gw.stats.drops[DropReason.WG_COOKIE_REQUIRED]
    w.gw.handle_datagram(w.now, GW, ATTACKER, attack.initiation(gw_pub))
    assert w.gw.stats.drops[DropReason.WG_COOKIE_REQUIRED] == before  # not under load any more
    assert rl.count == 1 and rl.last_reset == w.now
