"""An initiator and a responder over an in-memory link (handshake, sessions, timers, cookies)."""

from __future__ import annotations

import struct

import pytest

from gateway_core.clock import Instant, millis, secs
from gateway_core.errors import DropReason, UsageError
from gateway_core.wireguard.messages import MSG_COOKIE_REPLY, MSG_DATA, MSG_INITIATION, MSG_RESPONSE
from gateway_core.wireguard.peer import WgEvent
from gateway_core.wireguard.ratelimit import RateLimiter
from gateway_core.wireguard.timers import WireGuardConfig

from .wireguard_link import Link, ipv4_udp


def mtype(d: bytes) -> int:
    return int(struct.unpack_from("<I", d)[0])


def handshake(link: Link) -> None:
    link.send_a(ipv4_udp(b"first"))
    assert link.received_b == [ipv4_udp(b"first")]


def test_handshake_and_data_both_ways() -> None:
    link = Link.make()
    handshake(link)
    # initiation, then (after the response) a keepalive and the queued packet.
    assert [mtype(d) for d in link.wire_a_to_b] == [MSG_INITIATION, MSG_DATA, MSG_DATA]
    assert [mtype(d) for d in link.wire_b_to_a] == [MSG_RESPONSE]
    assert len(link.wire_a_to_b[1]) == 32  # unpadded keepalive
    assert link.events_a == [WgEvent.SESSION_ESTABLISHED]
    assert link.events_b == [WgEvent.SESSION_ESTABLISHED]
    for i in range(20):
        link.send_a(ipv4_udp(b"a%d" % i))
        link.send_b(ipv4_udp(b"b%d" % i))
    assert link.received_b[1:] == [ipv4_udp(b"a%d" % i) for i in range(20)]
    assert link.received_a == [ipv4_udp(b"b%d" % i) for i in range(20)]
    assert link.a.stats.total_drops == 0 and link.b.stats.total_drops == 0
    # No padding: transport size is exactly packet + 32.
    assert len(link.wire_b_to_a[-1]) == len(ipv4_udp(b"b19")) + 32


def test_ipv6_and_padded_plaintext_is_cut_to_ip_length() -> None:
    link = Link.make()
    handshake(link)
    v6 = bytes([0x60, 0, 0, 0, 0, 4, 17, 64]) + bytes(32) + b"abcd"
    link.send_a(v6 + bytes(12))  # padded as the WireGuard paper allows
    assert link.received_b[-1] == v6


def test_garbage_plaintext_is_dropped_and_counted() -> None:
    link = Link.make()
    handshake(link)
    for bad in (b"\x45" + bytes(10), b"\x70" + bytes(40), ipv4_udp(b"x")[:-1][:2] + b"\xff\xff" + bytes(30)):
        link.send_a(bad)
    assert link.b.stats.drops[DropReason.MALFORMED_IP] == 3
    assert link.received_b == [ipv4_udp(b"first")]


def test_responder_switches_session_on_first_data() -> None:
    link = Link.make()
    link.a_to_b = lambda d: mtype(d) != MSG_DATA  # hold back the keepalive
    link.send_a(ipv4_udp(b"q"))
    assert link.b.current_session is None  # stored, not current
    # The responder must send but has no current session: it queues and starts its own handshake.
    out = link.b.encapsulate(link.now, ipv4_udp(b"r"))
    assert out is not None and mtype(out) == MSG_INITIATION
    link.a_to_b = lambda d: True
    keepalive = link.wire_a_to_b[1]
    assert link.b.decapsulate(link.now, keepalive) is None
    assert link.b.current_session is not None
    # The queued packet went out on the now-current session.
    flushed = link.b.poll_transmit()
    assert flushed is not None and mtype(flushed) == MSG_DATA
    assert link.a.decapsulate(link.now, flushed) == ipv4_udp(b"r")


def test_rekey_after_120s_of_virtual_time() -> None:
    link = Link.make()
    handshake(link)
    first = link.a.current_session
    assert first is not None
    for t in range(1, 135):
        link.advance(secs(1))
        link.send_a(ipv4_udp(b"ping %d" % t))
        link.send_b(ipv4_udp(b"pong %d" % t))
    assert link.a.stats.counters["handshakes_as_initiator"] == 2
    second = link.a.current_session
    assert second is not None and second is not first
    assert 120 * 10**9 <= second.established_at <= 120 * 10**9 + millis(333) + secs(1)
    assert len(link.received_b) == 135 and len(link.received_a) == 134
    assert link.a.stats.total_drops == 0 and link.b.stats.total_drops == 0


def test_initiation_retransmitted_with_new_index_then_gives_up() -> None:
    link = Link.make()
    link.a_to_b = lambda d: False  # the responder is unreachable
    link.send_a(ipv4_udp(b"lost"))
    link.advance(secs(16))
    inits = [d for d in link.wire_a_to_b if mtype(d) == MSG_INITIATION]
    # t=0, then every 5 s + jitter until 15 s after the first: 3 in total.
    assert len(inits) == 3
    assert len({d[4:8] for d in inits}) == 3
    assert len({d[8:40] for d in inits}) == 3  # fresh ephemeral each time
    assert link.events_a == [WgEvent.CONNECTION_EXPIRED]
    assert link.a.is_expired and link.a.poll_timeout() is None


def test_idle_responder_expires_after_540s_without_a_session() -> None:
    link = Link.make()
    handshake(link)
    link.a_to_b = lambda d: False
    link.b_to_a = lambda d: False
    link.advance(secs(539))
    assert WgEvent.CONNECTION_EXPIRED not in link.events_b
    link.advance(secs(2))
    assert link.events_b[-1] == WgEvent.CONNECTION_EXPIRED
    assert all(s is None for s in link.b.sessions)
    # The initiator re-handshakes when its session expires at 180 s and gives up 15 s later.
    assert WgEvent.CONNECTION_EXPIRED in link.events_a


def test_initiator_rehandshakes_when_session_expires_idle() -> None:
    link = Link.make()
    handshake(link)
    link.advance(secs(200))
    assert link.a.stats.counters["handshakes_as_initiator"] == 2
    assert not link.a.is_expired and not link.b.is_expired


def test_passive_keepalive_after_10s() -> None:
    link = Link.make()
    handshake(link)
    link.send_a(ipv4_udp(b"x"))
    n = len(link.wire_b_to_a)
    link.advance(secs(9))
    assert len(link.wire_b_to_a) == n
    link.advance(secs(2))
    assert len(link.wire_b_to_a) == n + 1 and len(link.wire_b_to_a[-1]) == 32


def test_loss_reordering_and_replay_window() -> None:
    link = Link.make()
    handshake(link)
    held: list[bytes] = []
    link.a_to_b = lambda d: (held.append(d), False)[1]
    packets = [ipv4_udp(b"%d" % i) for i in range(1300)]
    for p in packets:
        link.send_a(p)
    link.a_to_b = lambda d: True
    b = link.b
    got = []
    # Deliver newest first: 1024 of them fit the window, the oldest 276 are too old.
    for d in reversed(held):
        pt = b.decapsulate(link.now, d)
        if pt is not None:
            got.append(pt)
    assert len(got) == 1024
    assert set(got) == set(packets[-1024:])
    assert b.stats.drops[DropReason.WG_REPLAY] == 276
    # Replays of everything are rejected.
    for d in held:
        assert b.decapsulate(link.now, d) is None
    assert b.stats.drops[DropReason.WG_REPLAY] == 276 + 1300


def test_forged_and_misdirected_data_is_dropped() -> None:
    link = Link.make()
    handshake(link)
    out = link.a.encapsulate(link.now, ipv4_udp(b"x"))
    assert out is not None
    forged = out[:-1] + bytes([out[-1] ^ 1])
    assert link.b.decapsulate(link.now, forged) is None
    assert link.b.stats.drops[DropReason.WG_DECRYPT_FAILED] == 1
    # The forged packet did not consume the counter: the real one still decrypts.
    assert link.b.decapsulate(link.now, out) == ipv4_udp(b"x")
    wrong_index = out[:4] + struct.pack("<I", struct.unpack_from("<I", out, 4)[0] ^ 0x100) + out[8:]
    assert link.b.decapsulate(link.now, wrong_index) is None
    assert link.b.stats.drops[DropReason.WG_UNKNOWN_INDEX] == 1
    empty_slot = out[:4] + struct.pack("<I", struct.unpack_from("<I", out, 4)[0] ^ 0x4) + out[8:]
    assert link.b.decapsulate(link.now, empty_slot) is None
    assert link.b.stats.drops[DropReason.WG_NO_SESSION] == 1


def test_replayed_initiation_and_response_are_rejected() -> None:
    link = Link.make()
    handshake(link)
    init, resp = link.wire_a_to_b[0], link.wire_b_to_a[0]
    assert link.b.decapsulate(link.now, init) is None
    assert link.b.stats.drops[DropReason.WG_STALE_TIMESTAMP] == 1
    assert link.a.decapsulate(link.now, resp) is None
    assert link.a.stats.drops[DropReason.WG_UNEXPECTED] == 1
    bad_mac = init[:120] + bytes([init[120] ^ 1]) + init[121:]
    assert link.b.decapsulate(link.now, bad_mac) is None
    assert link.b.stats.drops[DropReason.WG_BAD_MAC1] == 1


def test_cookie_round_trip_under_load() -> None:
    def limiter(pub: bytes, ent: object) -> RateLimiter:
        from gateway_core.entropy import SeededEntropy

        assert isinstance(ent, SeededEntropy)
        return RateLimiter(pub, ent, Instant(0), limit=0)  # under load from the first message

    link = Link.make(b_limiter=limiter)
    link.send_a(ipv4_udp(b"under load"))
    assert [mtype(d) for d in link.wire_b_to_a] == [MSG_COOKIE_REPLY]
    assert link.b.stats.drops[DropReason.WG_COOKIE_REQUIRED] == 1
    assert link.a.handshake.cookies.cookie is not None
    assert link.received_b == []
    # The retransmission 5 s later carries a valid mac2 and is accepted.
    link.advance(secs(6))
    assert link.received_b == [ipv4_udp(b"under load")]
    retransmit = [d for d in link.wire_a_to_b if mtype(d) == MSG_INITIATION][-1]
    assert retransmit[132:148] != bytes(16)
    # Without a source address, a node under load cannot check mac2 and drops.
    assert link.b.decapsulate(link.now, retransmit, None) is None
    assert link.b.stats.drops[DropReason.WG_RATE_LIMITED] == 1
    # The cookie is forgotten after 120 s.
    link.advance(secs(121))
    assert link.a.handshake.cookies.cookie is None


def test_cookie_reply_for_another_message_is_rejected() -> None:
    link = Link.make()
    link.a_to_b = lambda d: False
    link.send_a(ipv4_udp(b"x"))
    reply = link.b.rate_limiter.cookie_reply(0x1234, bytes(16), bytes(16))
    assert link.a.decapsulate(link.now, reply) is None
    assert link.a.stats.drops[DropReason.WG_UNKNOWN_INDEX] == 1
    idx = struct.unpack_from("<I", link.wire_a_to_b[0], 4)[0]
    reply = link.b.rate_limiter.cookie_reply(idx, bytes(16), bytes(16))  # wrong mac1 as ad
    assert link.a.decapsulate(link.now, reply) is None
    assert link.a.stats.drops[DropReason.WG_DECRYPT_FAILED] == 1


def test_rate_limiter_resets_every_second() -> None:
    link = Link.make()
    rl = link.b.rate_limiter
    assert rl.limit == 10  # the tunnel's own limiter (boringtun per-tunnel default)
    handshake(link)
    assert rl.count == 1
    link.advance(secs(1))
    assert rl.count == 0


def test_message_limits_force_rekey_and_reject() -> None:
    cfg = WireGuardConfig(rekey_after_messages=5, reject_after_messages=8)
    link = Link.make(config=cfg)
    handshake(link)  # keepalive (0) and data (1) sent
    for i in range(3):
        link.send_a(ipv4_udp(b"%d" % i))
    assert link.a.poll_timeout() is not None
    link.advance(millis(400))
    assert link.a.stats.counters["handshakes_as_initiator"] == 2
    s = link.a.current_session
    assert s is not None and s.send_counter == 1  # new session: only its keepalive so far


def test_queue_is_bounded() -> None:
    link = Link.make()
    link.a_to_b = lambda d: False
    for i in range(300):
        link.send_a(ipv4_udp(b"%d" % i))
    assert link.a.stats.drops[DropReason.QUEUE_FULL] == 300 - 256
    link.a_to_b = lambda d: True
    link.advance(secs(6))
    assert len(link.received_b) == 256


def test_time_going_backwards_is_a_usage_error() -> None:
    link = Link.make()
    link.advance(secs(1))
    link.a.handle_timeout(link.now)
    with pytest.raises(UsageError):
        link.a.handle_timeout(Instant(0))
    with pytest.raises(UsageError):
        link.a.encapsulate(Instant(0), b"")
    with pytest.raises(UsageError):
        link.a.decapsulate(Instant(0), b"")


def test_wrong_peer_key_is_rejected() -> None:
    one, other = Link.make(seed=1), Link.make(seed=2)
    out = one.a.encapsulate(one.now, ipv4_udp(b"x"))
    assert out is not None
    # Different responder key: mac1 does not verify.
    assert other.b.decapsulate(other.now, out) is None
    assert other.b.stats.drops[DropReason.WG_BAD_MAC1] == 1


def test_counter_at_reject_after_messages_is_refused_by_receiver() -> None:
    cfg = WireGuardConfig(rekey_after_messages=100, reject_after_messages=100)
    link = Link.make(config=cfg)
    handshake(link)
    s = link.a.current_session
    assert s is not None
    s.send_counter = 100  # forge the sender past the limit (it would itself refuse to send)
    out = s.sender.encrypt(struct.pack("<IQ", 0, 100), ipv4_udp(b"late"), None)
    datagram = struct.pack("<IIQ", MSG_DATA, s.peer_index, 100) + out
    assert link.b.decapsulate(link.now, datagram) is None
    assert link.b.stats.drops[DropReason.WG_SESSION_EXPIRED] == 1
    # The sender side refuses too: the packet is queued and a handshake starts.
    sent = link.a.encapsulate(link.now, ipv4_udp(b"queued"))
    assert sent is not None and mtype(sent) == MSG_INITIATION
