"""The per-flow cache of the policy's decision (``gateway_core.policy.flowcache``): the fast path gives
exactly what the full path gives, and a cached flow is refused as soon as the full path would refuse it
(revocation, filter update, expiry, client removal, NAT session end)."""

from __future__ import annotations

import struct
import uuid
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.clock import NANOS_PER_SEC, Instant, secs
from gateway_core.gateway_types import DomainResolved, ResolveDomain
from gateway_core.policy.client import FORWARD, ClientPolicy
from gateway_core.policy.flowcache import MAX_FLOWS, forward
from gateway_core.policy.nat import MAX_NAT_SESSIONS, UDP_TTL
from gateway_core.policy.p2p_control import build_assigned_ips
from gateway_core.policy.resources import CidrResource, DnsResource
from gateway_core.wire.ip import l4_checksum_ok
from gateway_core.wire.ipbuild import build_tcp_packet, build_udp_packet
from gateway_core.wire.ipconst import TCP_ACK, TCP_RST, TCP_SYN
from tests.unit.gateway_harness import (
    CIDR_ID,
    CL_TUN4,
    CLIENT_ID,
    DNS_ID,
    EPOCH,
    Harness,
    cidr_resource,
    dns_resource,
)

CID = str(CLIENT_ID)
RES = ip_address("172.20.0.5")
PROXY = ip_address("100.96.0.1")
REAL = ip_address("10.0.0.7")
CV4, CV6 = IPv4Address("100.64.0.1"), IPv6Address("fd00:2021:1111::1")
GV4, GV6 = IPv4Address("100.64.0.9"), IPv6Address("fd00:2021:1111::9")
P4, P6 = IPv4Address("100.96.0.3"), IPv6Address("fd00:2021:1111:8000::3")
R4, R6 = IPv4Address("10.1.1.1"), IPv6Address("2001:db8::1")
NOW = Instant(0)


def udp(src: object, dst: object, sport: int = 40000, dport: int = 80, payload: bytes = b"data") -> bytes:
    return build_udp_packet(ip_address(str(src)), ip_address(str(dst)), sport, dport, payload)


def cache_of(h: Harness) -> tuple[int, int]:
    c = h.gw.peers.clients[CLIENT_ID].flow_cache
    return len(c.outbound), len(c.inbound)


# --- the fast path is the full path -------------------------------------------------------------------


def _policy() -> ClientPolicy:
    p = ClientPolicy(uuid.UUID(int=77), CV4, CV6, GV4, GV6, None, MAX_NAT_SESSIONS)
    p.allow(CidrResource(uuid.UUID(int=1), "net", ip_network("10.9.0.0/16"), ()), None)
    p.allow(CidrResource(uuid.UUID(int=3), "net6", ip_network("2001:db8:9::/48"), ()), None)
    p.allow(DnsResource(uuid.UUID(int=2), "app", "*.example.com", ()), None)
    assert p.setup_nat("app.example.com", uuid.UUID(int=2), [R4, R6], [P4, P6]) is None
    return p


def _with(packet: bytes, ident: int, csum: int | None, tcp: bool, v6: bool) -> bytes:
    """``packet`` with another IPv4 identification and, optionally, another transport checksum (the
    incremental rewrite must then carry the same error as the full path's)."""
    buf = bytearray(packet)
    l4 = 40 if v6 else 20
    if not v6:
        old = struct.unpack_from("!H", buf, 4)[0]
        struct.pack_into("!H", buf, 4, ident)
        hc = struct.unpack_from("!H", buf, 10)[0]
        total = (~hc & 0xFFFF) + (~old & 0xFFFF) + ident  # keep the header checksum right
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        struct.pack_into("!H", buf, 10, ~total & 0xFFFF)
    if csum is not None:
        struct.pack_into("!H", buf, l4 + (16 if tcp else 6), csum)
    return bytes(buf)


@settings(max_examples=300, deadline=None)
@given(
    v6=st.booleans(),
    tcp=st.booleans(),
    nat=st.booleans(),
    sport=st.integers(1, 65535),
    dport=st.integers(1, 65535),
    payloads=st.lists(st.binary(max_size=64), min_size=2, max_size=4),
    idents=st.lists(st.integers(0, 65535), min_size=4, max_size=4),
    csum=st.one_of(st.none(), st.sampled_from([0, 0xFFFF, 1, 0xFFFE]), st.integers(0, 65535)),
)
def test_fast_path_equals_full_path(
    v6: bool,
    tcp: bool,
    nat: bool,
    sport: int,
    dport: int,
    payloads: list[bytes],
    idents: list[int],
    csum: int | None,
) -> None:
    p = _policy()
    client = CV6 if v6 else CV4
    dst = (P6 if v6 else P4) if nat else ip_address("2001:db8:9::5" if v6 else "10.9.0.5")
    real = (R6 if v6 else R4) if nat else dst
    for direction in ("out", "in"):
        for i, payload in enumerate(payloads):
            if direction == "out":
                src_ip, dst_ip, sp, dp = client, dst, sport, dport
            else:
                src_ip, dst_ip, sp, dp = real, client, dport, sport
            if tcp:
                pkt = build_tcp_packet(src_ip, dst_ip, sp, dp, payload, flags=TCP_ACK)  # type: ignore[arg-type]
            else:
                pkt = build_udp_packet(src_ip, dst_ip, sp, dp, payload)  # type: ignore[arg-type]
            pkt = _with(pkt, idents[i], csum if i else None, tcp, v6)
            table = p.flow_cache.outbound if direction == "out" else p.flow_cache.inbound
            fast = forward(table, pkt, NOW)
            buf = bytearray(pkt)
            action, out, _, _ = (p.outbound if direction == "out" else p.inbound)(buf, NOW)
            assert action is FORWARD
            if i == 0:
                assert fast is None  # nothing cached before the flow's first packet
            else:
                assert fast == bytes(out), "the fast path must give the full path's bytes"
            if csum is None:
                assert l4_checksum_ok(bytes(out))


def test_packets_of_another_shape_take_the_full_path() -> None:
    p = _policy()
    first = udp(CV4, P4, 5000, 53)
    p.outbound(bytearray(first), NOW)
    assert forward(p.flow_cache.outbound, first, NOW) is not None
    bad_len = bytearray(first)
    bad_len[25] = 200  # UDP length beyond the packet: the full path drops it
    fragment = bytearray(first)
    fragment[6] = 0x20  # more fragments
    trailing = first + b"\x00"  # IP total length shorter than the buffer
    for pkt in (bytes(bad_len), bytes(fragment), trailing, first + bytes(1300)):
        assert forward(p.flow_cache.outbound, pkt, NOW) is None
    syn = build_tcp_packet(CV4, P4, 5001, 80, flags=TCP_SYN)
    p.outbound(bytearray(syn), NOW)
    rst = build_tcp_packet(CV4, P4, 5001, 80, flags=TCP_RST)
    assert forward(p.flow_cache.outbound, syn, NOW) is not None
    assert forward(p.flow_cache.outbound, rst, NOW) is None  # ends the NAT session: the full path


def test_the_cache_is_bounded() -> None:
    p = _policy()
    for port in range(1, MAX_FLOWS + 10):
        p.outbound(bytearray(udp(CV4, "10.9.0.5", port, 80)), NOW)
        assert len(p.flow_cache.outbound) <= MAX_FLOWS


# --- a cached flow is refused as soon as the full path refuses it ---------------------------------------


def test_revocation_refuses_a_cached_flow_at_once() -> None:
    h = Harness()
    h.setup(cidr_resource())
    h.authorize(cidr_resource("10.0.0.0/8", rid=DNS_ID), ref="r2")
    out, back = udp(CL_TUN4, RES), udp(RES, CL_TUN4, 80, 40000)
    for _ in range(3):
        assert h.send(out) == out
        assert h.from_tun(back) == back
    assert cache_of(h) == (1, 1)
    h.push("reject_access", {"client_id": CID, "resource_id": str(CIDR_ID)})
    assert cache_of(h) == (0, 0)
    assert h.send(out) is None
    assert h.from_tun(back) is None
    assert h.drops()["not_authorized"] == 2


def test_revoking_the_last_resource_refuses_the_cached_flow() -> None:
    h = Harness()
    h.setup(cidr_resource())
    out, back = udp(CL_TUN4, RES), udp(RES, CL_TUN4, 80, 40000)
    assert h.send(out) == out and h.send(out) == out
    assert h.from_tun(back) == back and h.from_tun(back) == back
    h.push("reject_access", {"client_id": CID, "resource_id": str(CIDR_ID)})
    assert h.from_tun(back) is None


def test_filter_update_refuses_a_cached_flow() -> None:
    h = Harness()
    h.setup(cidr_resource(filters=[{"protocol": "udp", "port_range_start": 80, "port_range_end": 80}]))
    out = udp(CL_TUN4, RES)
    assert h.send(out) == out and h.send(out) == out
    h.push("resource_updated", cidr_resource(filters=[{"protocol": "tcp"}]))
    assert h.send(out) is None
    assert h.drops()["filtered"] == 1


def test_expiry_refuses_a_cached_flow_within_the_sweep() -> None:
    h = Harness()
    h.setup(cidr_resource(), expires_at=EPOCH + 3600)
    h.authorize(cidr_resource("10.0.0.0/8", rid=DNS_ID), ref="r2")
    expiry = EPOCH + h.now // NANOS_PER_SEC + 2
    h.push(
        "access_authorization_expiry_updated",
        {"client_id": CID, "resource_id": str(CIDR_ID), "expires_at": expiry},
    )
    out = udp(CL_TUN4, RES)
    assert h.send(out) == out and h.send(out) == out
    h.advance(secs(3))
    assert h.gw.peers.clients[CLIENT_ID].authorizations.ids() == [DNS_ID]
    assert h.send(out) is None


def _dns_nat(h: Harness) -> None:
    h.setup(dns_resource())
    proxies = [ip_address(f"100.96.0.{i}") for i in range(1, 5)]
    h.send(build_assigned_ips(DNS_ID, "app.example.com", proxies))  # type: ignore[arg-type]
    (req,) = [c for c in h.commands if isinstance(c, ResolveDomain)]
    h.gw.handle_input(h.now, DomainResolved(req.request_id, (REAL,)))
    h.pump()


def test_a_nat_session_that_ends_takes_its_cached_flow_along() -> None:
    h = Harness()
    _dns_nat(h)
    out, back = udp(CL_TUN4, PROXY, 5401, 53), udp(REAL, CL_TUN4, 53, 5401)
    for _ in range(3):
        assert h.send(out) is not None
        assert h.from_tun(back) is not None
    assert cache_of(h) == (1, 1)
    h.advance(UDP_TTL + secs(2))  # idle past the TTL: the sweep ends the session (tombstone)
    assert cache_of(h) == (0, 0)
    assert h.from_tun(back) is None
    assert h.drops()["nat_session_expired"] == 1


def test_the_cache_refreshes_the_nat_session() -> None:
    h = Harness()
    _dns_nat(h)
    out, back = udp(CL_TUN4, PROXY, 5401, 53), udp(REAL, CL_TUN4, 53, 5401)
    assert h.send(out) is not None and h.send(out) is not None  # the second from the cache
    for _ in range(3):
        h.advance(UDP_TTL // 2)
        assert h.send(out) is not None  # cached, and keeps the session alive
    assert h.from_tun(back) is not None
    assert "nat_session_expired" not in h.drops()


def test_tcp_rst_through_a_cached_nat_flow_ends_the_session() -> None:
    h = Harness()
    _dns_nat(h)
    syn = build_tcp_packet(CL_TUN4, PROXY, 5000, 80, flags=TCP_SYN)
    ack = build_tcp_packet(CL_TUN4, PROXY, 5000, 80, flags=TCP_ACK)
    assert h.send(syn) is not None and h.send(ack) is not None
    reply = build_tcp_packet(REAL, CL_TUN4, 80, 5000, flags=TCP_ACK)  # type: ignore[arg-type]
    assert h.from_tun(reply) is not None and h.from_tun(reply) is not None
    assert h.send(build_tcp_packet(CL_TUN4, PROXY, 5000, 80, flags=TCP_RST)) is not None
    assert h.from_tun(reply) is None
    assert h.drops()["nat_session_expired"] == 1
