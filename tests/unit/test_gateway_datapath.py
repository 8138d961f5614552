"""The Gateway facade, data plane: both directions through node + WireGuard + policy, ICMP errors, DNS
resources with the p2p control protocol and NAT, SRV/TXT forwarding, flows and the drop reasons."""

from __future__ import annotations

import uuid
from ipaddress import ip_address

import dns.message
import dns.rcode
import dns.rrset

from gateway_core.addr import SocketAddr
from gateway_core.clock import secs
from gateway_core.dns.forwarding import (
    DnsQueryReceived,
    DnsUpstreamFailed,
    DnsUpstreamResponse,
    ForwardDnsQuery,
    SendDnsResponse,
)
from gateway_core.dns.servers import DnsTransport
from gateway_core.gateway_types import DomainResolved, DomainResolveFailed, ResolveDomain
from gateway_core.policy.p2p_control import (
    EVENT_DOMAIN_STATUS,
    GOODBYE_PACKET,
    NatStatus,
    build_assigned_ips,
    build_control_packet,
    decode_domain_status,
    parse_control_packet,
)
from gateway_core.wire.icmp import build_icmp_error, parse_icmp_error
from gateway_core.wire.ip import l4_checksum_ok, parse_ip, parse_udp
from gateway_core.wire.ipbuild import build_icmp_echo, build_tcp_packet, build_udp_packet
from gateway_core.wire.ipconst import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from tests.unit.gateway_harness import (
    CL_TUN4,
    CL_TUN6,
    CLIENT_ID,
    DNS_ID,
    GW_TUN4,
    Harness,
    cidr_resource,
    dns_resource,
    internet_resource,
)

CID = str(CLIENT_ID)
RES = ip_address("172.20.0.5")
PROXY = ip_address("100.96.0.1")
PROXY6 = ip_address("fd00:2021:1111:8000::")
REAL = ip_address("10.0.0.7")
REAL6 = ip_address("2001:db8::7")


def udp(src: object, dst: object, sport: int = 40000, dport: int = 80, payload: bytes = b"data") -> bytes:
    return build_udp_packet(ip_address(str(src)), ip_address(str(dst)), sport, dport, payload)


def icmp_kind(packet: bytes) -> tuple[int, int]:
    p = parse_ip(packet)
    return p.payload[0], p.payload[1]


# --- client -> resource ---------------------------------------------------------------------------


def test_cidr_both_directions_v4_and_v6() -> None:
    h = Harness()
    h.setup(cidr_resource())
    h.authorize(cidr_resource("2001:db8:1::/64", rid=DNS_ID), ref="v6")
    p = udp(CL_TUN4, RES)
    assert h.send(p) == p
    back = udp(RES, CL_TUN4, 80, 40000, b"reply")
    assert h.from_tun(back) == back
    p6 = udp(CL_TUN6, "2001:db8:1::9")
    assert h.send(p6) == p6
    back6 = udp("2001:db8:1::9", CL_TUN6, 80, 40000)
    assert h.from_tun(back6) == back6


def test_spoofed_source_gets_icmp_prohibited() -> None:
    h = Harness()
    h.setup(cidr_resource())
    before = len(h.client_rx)
    assert h.send(udp("100.64.0.99", RES)) is None
    (icmp,) = h.client_rx[before:]
    assert icmp_kind(icmp) == (3, 13) and parse_ip(icmp).dst == ip_address("100.64.0.99")
    assert h.drops()["spoofed_source"] == 1


def test_unauthorised_and_filtered_destinations_get_icmp_prohibited() -> None:
    h = Harness()
    h.setup(cidr_resource(filters=[{"protocol": "tcp", "port_range_start": 80, "port_range_end": 443}]))
    before = len(h.client_rx)
    assert h.send(udp(CL_TUN4, "192.0.2.77")) is None
    assert h.send(udp(CL_TUN4, RES, dport=80)) is None  # UDP, only TCP allowed
    assert h.send(udp(CL_TUN6, "2001:db8::1")) is None
    got = h.client_rx[before:]
    assert [icmp_kind(p) for p in got] == [(3, 13), (3, 13), (1, 1)]
    assert all(l4_checksum_ok(p) for p in got)
    d = h.drops()
    assert d["not_authorized"] == 2 and d["filtered"] == 1
    tcp = build_tcp_packet(CL_TUN4, RES, 40000, 443, flags=TCP_SYN)
    assert h.send(tcp) == tcp


def test_internet_resource_and_gateway_own_address() -> None:
    h = Harness()
    h.setup(internet_resource())
    for dst in ("8.8.8.8", "172.20.0.5"):
        p = udp(CL_TUN4, dst)
        assert h.send(p) == p
    p = udp(CL_TUN4, PROXY)
    assert h.send(p) is None  # proxy IPs are never covered by the Internet resource
    dnsq = udp(CL_TUN4, GW_TUN4, dport=53535)
    assert h.send(dnsq) == dnsq  # the gateway's own address bypasses the filters


def test_icmp_error_from_a_cidr_resource_passes_regardless_of_filters() -> None:
    h = Harness()
    h.setup(cidr_resource(filters=[{"protocol": "udp", "port_range_start": 80, "port_range_end": 80}]))
    sent = udp(CL_TUN4, RES)
    assert h.send(sent) is not None
    err = build_icmp_error(sent, 3, 4)  # port unreachable, from the resource
    assert h.from_tun(err) == err


# --- resource -> client drops ---------------------------------------------------------------------


def test_tun_side_drops() -> None:
    h = Harness()
    h.setup(cidr_resource(filters=[{"protocol": "udp", "port_range_start": 80, "port_range_end": 80}]))
    assert h.from_tun(udp(RES, "192.0.2.1")) is None  # not in the tunnel ranges
    assert h.from_tun(udp(RES, "100.64.0.77")) is None  # no such client
    assert h.from_tun(udp(RES, CL_TUN4, sport=81, dport=40000)) is None  # source port not allowed
    assert h.from_tun(udp("192.0.2.200", CL_TUN4)) is None  # source outside every resource
    big = udp(RES, CL_TUN4, 80, 40000, bytes(1300))
    assert h.from_tun(big) is None
    frag = bytearray(udp(RES, CL_TUN4, 80, 40000))
    frag[6] |= 0x20  # MF
    assert h.from_tun(bytes(frag)) is None
    assert h.from_tun(b"\x45\x00") is None
    assert h.from_tun(b"\x75" + bytes(39)) is None
    bad_l4 = bytearray(udp(RES, CL_TUN4, 80, 40000))
    bad_l4[24:26] = b"\x00\x04"  # UDP length 4 < 8
    assert h.from_tun(bytes(bad_l4)) is None
    d = h.drops()
    assert d["unroutable"] == 1 and d["unknown_client"] == 1
    assert d["filtered"] == 1 and d["not_authorized"] == 1
    assert d["ip_too_large"] == 1 and d["fragment"] == 1 and d["malformed_ip"] == 1
    assert d["unsupported_ip_version"] == 1 and d["malformed_l4"] == 1


def test_tun_packet_for_a_client_without_connection() -> None:
    h = Harness()
    h.setup(cidr_resource())
    h.gw.node.remove_connection(CID)
    assert h.from_tun(udp(RES, CL_TUN4, 80, 40000)) is None
    assert h.drops()["no_connection"] == 1


# --- DNS resources --------------------------------------------------------------------------------


PROXIES = (*(PROXY + i for i in range(4)), *(PROXY6 + i for i in range(4)))
"""The client always sends 4 or 8 proxy IPs (``rust/connlib/tunnel/src/p2p_control.rs``)."""


def _assign(h: Harness, domain: str = "app.example.com", proxies: tuple[object, ...] = PROXIES) -> int:
    """Send ``assigned_ips``; the id of the ResolveDomain the gateway ordered."""
    n = len(h.commands)
    ips = [ip_address(str(p)) for p in proxies]
    h.send(build_assigned_ips(DNS_ID, domain, ips))
    (req,) = [c for c in h.commands[n:] if isinstance(c, ResolveDomain)]
    assert req.domain == domain
    return req.request_id


def _status(h: Harness, before: int) -> NatStatus:
    (pkt,) = [p for p in h.client_rx[before:] if parse_control_packet(p).event == EVENT_DOMAIN_STATUS]
    return decode_domain_status(parse_control_packet(pkt).payload).status


def test_dns_resource_nat_both_ways_and_icmp_error_translation() -> None:
    h = Harness()
    h.setup(dns_resource(filters=[{"protocol": "udp"}, {"protocol": "icmp"}]))
    rid = _assign(h)
    before = len(h.client_rx)
    h.gw.handle_input(h.now, DomainResolved(rid, (REAL, REAL6)))
    h.pump()
    assert _status(h, before) is NatStatus.ACTIVE
    out = h.send(udp(CL_TUN4, PROXY, 5401, 53))
    assert out is not None and parse_ip(out).dst == REAL and l4_checksum_ok(out)
    back = h.from_tun(udp(REAL, CL_TUN4, 53, 5401, b"answer"))
    assert back is not None and parse_ip(back).src == PROXY and l4_checksum_ok(back)
    assert parse_udp(parse_ip(back).payload).dport == 5401
    err = h.from_tun(build_icmp_error(out, 3, 3))  # port unreachable quoting the NAT'd packet
    assert err is not None
    e = parse_icmp_error(err)
    assert e is not None and e.inner_dst == PROXY and parse_ip(err).src == PROXY and l4_checksum_ok(err)
    out6 = h.send(udp(CL_TUN6, PROXY6, 5402, 53))  # IPv6 proxy IPs are mapped too (decision 0044)
    assert out6 is not None and parse_ip(out6).dst == REAL6
    ping = build_icmp_echo(CL_TUN4, PROXY, 0x77, 1, b"ping")
    out_ping = h.send(ping)
    assert out_ping is not None and parse_ip(out_ping).dst == REAL
    pong = h.from_tun(build_icmp_echo(REAL, CL_TUN4, 0x77, 1, b"ping", reply=True))
    assert pong is not None and parse_ip(pong).src == PROXY


def test_full_nat_table_drops_new_flows_and_counts_them() -> None:
    h = Harness(max_nat_sessions=1)
    h.setup(dns_resource(filters=[{"protocol": "udp"}]))
    rid = _assign(h)
    h.gw.handle_input(h.now, DomainResolved(rid, (REAL,)))
    h.pump()
    assert h.send(udp(CL_TUN4, PROXY, 5401, 53)) is not None  # the one session the table holds
    assert h.send(udp(CL_TUN4, PROXY, 5402, 53)) is None  # a second flow does not fit
    assert h.drops()["nat_table_full"] == 1
    assert h.send(udp(CL_TUN4, PROXY, 5401, 53)) is not None  # the existing flow keeps working


def test_dns_resource_unreachable_mapping_and_tcp_rst_expires_the_session() -> None:
    h = Harness()
    h.setup(dns_resource())
    rid = _assign(h)
    h.gw.handle_input(h.now, DomainResolved(rid, (REAL,)))  # no AAAA
    h.pump()
    before = len(h.client_rx)
    assert h.send(udp(CL_TUN6, PROXY6)) is None
    assert [icmp_kind(p) for p in h.client_rx[before:]] == [(1, 3)]  # address unreachable
    syn = build_tcp_packet(CL_TUN4, PROXY, 5000, 80, flags=TCP_SYN)
    assert h.send(syn) is not None
    rst = build_tcp_packet(CL_TUN4, PROXY, 5000, 80, flags=TCP_RST)
    assert h.send(rst) is not None
    assert h.from_tun(build_tcp_packet(REAL, CL_TUN4, 80, 5000, flags=TCP_ACK)) is None
    assert h.drops()["nat_session_expired"] == 1


def test_assigned_ips_for_an_unauthorised_resource_is_inactive_at_once() -> None:
    h = Harness()
    h.setup(cidr_resource())
    before = len(h.client_rx)
    n = len(h.commands)
    h.send(build_assigned_ips(uuid.uuid4(), "app.example.com", [ip_address(str(p)) for p in PROXIES]))
    assert not [c for c in h.commands[n:] if isinstance(c, ResolveDomain)]
    assert _status(h, before) is NatStatus.INACTIVE


def test_failed_or_timed_out_resolution_is_inactive() -> None:
    h = Harness()
    h.setup(dns_resource())
    rid = _assign(h)
    before = len(h.client_rx)
    h.gw.handle_input(h.now, DomainResolveFailed(rid, "SERVFAIL"))
    h.pump()
    assert _status(h, before) is NatStatus.INACTIVE
    _assign(h)
    before = len(h.client_rx)
    h.advance(secs(11))
    assert _status(h, before) is NatStatus.INACTIVE
    assert h.gw.stats()["gateway.resolve_timeout"] == 1


def test_malformed_control_packet_and_goodbye_from_the_client() -> None:
    h = Harness()
    h.setup(cidr_resource())
    assert h.send(build_control_packet(0, b"{not json")) is None
    assert h.drops()["p2p_control_malformed"] == 1
    assert h.send(build_control_packet(7)) is None  # unknown event: ignored
    assert h.send(GOODBYE_PACKET) is None
    assert CLIENT_ID not in h.gw.peers.clients and CID not in h.gw.node.connections
    assert h.gw.stats()["gateway.goodbyes_received"] == 1


# --- SRV/TXT forwarding ---------------------------------------------------------------------------

SERVER4 = SocketAddr(GW_TUN4, 53535)
CLIENT_DNS = SocketAddr(CL_TUN4, 33333)


def _query(h: Harness, name: str, transport: DnsTransport = DnsTransport.UDP) -> dns.message.Message:
    q = dns.message.make_query(name, "SRV")
    h.gw.handle_input(h.now, DnsQueryReceived(SERVER4, CLIENT_DNS, transport, q.to_wire()))
    h.pump()
    return q


def _responses(h: Harness) -> list[SendDnsResponse]:
    return [c for c in h.commands if isinstance(c, SendDnsResponse)]


def test_srv_query_forwarded_answered_refused_and_servfail() -> None:
    h = Harness()
    h.setup(dns_resource("**.example.com"))
    q = _query(h, "_sip._tcp.app.example.com")
    (fwd,) = [c for c in h.commands if isinstance(c, ForwardDnsQuery)]
    assert fwd.transport is DnsTransport.UDP
    resp = dns.message.make_response(q)
    resp.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "SRV", "0 0 5060 sip.example.com."))
    h.gw.handle_input(h.now, DnsUpstreamResponse(fwd.query_id, resp.to_wire()))
    h.pump()
    (ans,) = _responses(h)
    assert (ans.local, ans.remote) == (SERVER4, CLIENT_DNS) and ans.message == resp.to_wire()
    _query(h, "_ldap._tcp.other.org")  # outside the client's DNS resources: REFUSED (decision 0048)
    refused = dns.message.from_wire(_responses(h)[-1].message)
    assert refused.rcode() == dns.rcode.REFUSED
    _query(h, "_x._tcp.app.example.com", DnsTransport.TCP)
    fwd2 = [c for c in h.commands if isinstance(c, ForwardDnsQuery)][-1]
    h.gw.handle_input(h.now, DnsUpstreamFailed(fwd2.query_id, "timeout"))
    h.pump()
    last = _responses(h)[-1]
    assert (
        last.transport is DnsTransport.TCP
        and dns.message.from_wire(last.message).rcode() == dns.rcode.SERVFAIL
    )
    h.gw.handle_input(h.now, DnsQueryReceived(SERVER4, CLIENT_DNS, DnsTransport.UDP, b"\x00\x01junk"))
    d = h.drops()
    assert d["dns_refused"] == 1 and d["dns_malformed"] == 1


def test_large_udp_answer_is_truncated_and_the_answer_reaches_the_client() -> None:
    h = Harness()
    h.setup(dns_resource())
    q = _query(h, "big.example.com")
    (fwd,) = [c for c in h.commands if isinstance(c, ForwardDnsQuery)]
    resp = dns.message.make_response(q)
    for i in range(60):
        resp.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "TXT", f'"{"x" * 40}{i}"'))
    wire = resp.to_wire()
    assert len(wire) > 1200
    h.gw.handle_input(h.now, DnsUpstreamResponse(fwd.query_id, wire))
    h.pump()
    out = _responses(h)[-1]
    msg = dns.message.from_wire(out.message)
    assert msg.flags & dns.flags.TC and not msg.answer and len(out.message) <= 1200
    # the kernel sends the server's answer back into the TUN: it reaches the client (source = gateway)
    packet = build_udp_packet(out.local.ip, out.remote.ip, out.local.port, out.remote.port, out.message)
    got = h.from_tun(packet)
    assert got == packet and parse_ip(got).src == GW_TUN4


# --- flows and statistics -------------------------------------------------------------------------


def test_flow_records_for_a_tcp_connection() -> None:
    h = Harness(flow_logs=True)
    h.setup(dns_resource(filters=[{"protocol": "tcp"}]))
    rid = _assign(h)
    h.gw.handle_input(h.now, DomainResolved(rid, (REAL,)))
    h.pump()
    h.send(build_tcp_packet(CL_TUN4, PROXY, 6000, 443, flags=TCP_SYN))
    h.from_tun(build_tcp_packet(REAL, CL_TUN4, 443, 6000, b"hello", flags=TCP_SYN | TCP_ACK))
    h.send(build_tcp_packet(CL_TUN4, PROXY, 6000, 443, b"abc", flags=TCP_ACK | TCP_FIN))
    h.from_tun(build_tcp_packet(REAL, CL_TUN4, 443, 6000, flags=TCP_ACK | TCP_FIN))
    assert h.gw.stats()["gateway.flows_active"] == 1
    h.advance(secs(1))
    flow = h.gw.poll_flow()
    assert flow is not None and flow.protocol == "tcp" and flow.client_id == CLIENT_ID
    assert (flow.inner_dst_ip, flow.inner_dst_port, flow.inner_domain) == (REAL, 443, "app.example.com")
    assert (flow.tx_packets, flow.rx_packets, flow.tx_bytes, flow.rx_bytes) == (2, 2, 3, 5)
    assert flow.client.actor_email == "a@example.com"


def test_stats_merge_every_part() -> None:
    h = Harness()
    h.setup(cidr_resource())
    h.send(udp("100.64.0.99", RES))
    st = h.gw.stats()
    assert st["drop.spoofed_source"] == 1
    assert st["portal.joins"] == 1 and st["wireguard.handshakes_as_responder"] >= 1
    assert st["gateway.clients"] == 1 and st["gateway.connections"] == 1
    h.push("reject_access", {"client_id": CID, "resource_id": str(cidr_resource()["id"])})
    assert h.gw.stats()["drop.spoofed_source"] == 1  # a removed client's counts are kept


def test_network_side_drops_through_the_facade() -> None:
    from gateway_core.wire.stun import Attr, Class, Method, StunMessage
    from gateway_core.wire.turn import encode_channel_data
    from tests.unit.gateway_harness import GW, RELAY

    h = Harness()
    h.setup(cidr_resource())
    stranger = SocketAddr(ip_address("198.18.0.9"), 40000)
    relay_stranger = SocketAddr(ip_address("198.18.0.10"), 3478)
    for src, data in (
        (stranger, b"\x09not anything"),  # neither STUN nor WireGuard
        (stranger, b"\x01\x00\x00\x00" + bytes(20)),  # a handshake initiation of the wrong size
        (stranger, b"\x04\x00\x00\x00" + bytes(40)),  # data for an index nobody has
        (
            stranger,
            StunMessage(Method.BINDING, Class.REQUEST, bytes(12)).add_text(Attr.USERNAME, "x:y").encode(),
        ),
        (relay_stranger, encode_channel_data(0x4001, b"data")),  # ChannelData from no known relay
        (RELAY, encode_channel_data(0x4FFE, b"data")),  # a channel the relay never bound for us
    ):
        assert h.gw.handle_datagram(h.now, GW, src, data) is None
    d = h.drops()
    assert d["datagram_unclassified"] == 1 and d["wg_malformed"] == 1 and d["wg_unknown_index"] == 1
    assert d["stun_unmatched"] == 1 and d["turn_unknown_relay"] == 1 and d["turn_unknown_channel"] == 1


def test_invalid_inner_packets_from_the_client_are_dropped() -> None:
    h = Harness()
    h.setup(cidr_resource())
    frag = bytearray(udp(CL_TUN4, RES))
    frag[6] |= 0x20  # MF: a fragment
    assert h.send(bytes(frag)) is None
    assert h.drops()["fragment"] == 1


def test_no_client_to_client_traffic_even_with_the_internet_resource() -> None:
    h = Harness()
    h.setup(internet_resource())
    before = len(h.client_rx)
    assert h.send(udp(CL_TUN4, "100.64.0.77")) is None
    assert h.send(udp(CL_TUN6, "fd00:2021:1111::77")) is None
    assert [icmp_kind(p) for p in h.client_rx[before:]] == [(3, 13), (1, 1)]
    assert h.drops()["not_authorized"] == 2
    p = udp(CL_TUN4, GW_TUN4, dport=53535)
    assert h.send(p) == p  # the gateway's own address stays reachable


def test_tampered_handshake_initiation_fails_the_handshake() -> None:
    from gateway_core.entropy import SeededEntropy
    from gateway_core.wireguard import WireGuardPeer, crypto
    from tests.unit.gateway_harness import CL, CL_PRIV, GW, GW_PRIV, PSK

    h = Harness()
    h.setup(cidr_resource())
    wg = WireGuardPeer(
        static_private=CL_PRIV,
        peer_public=crypto.public_key(GW_PRIV),
        psk=PSK,
        global_index=7,
        entropy=SeededEntropy(99),
        now=h.now,
        wall_unix_ns=2_000_000_000 * 10**9,
    )
    wg.initiate(h.now)
    init = wg.poll_transmit()
    assert init is not None and len(init) == 148
    bad = bytearray(init)
    bad[90] ^= 0x01  # inside the encrypted timestamp
    bad[116:132] = crypto.mac(crypto.hash_(crypto.LABEL_MAC1, crypto.public_key(GW_PRIV)), bytes(bad[:116]))
    assert h.gw.handle_datagram(h.now, GW, CL, bytes(bad)) is None
    assert h.drops()["wg_handshake_failed"] == 1


def test_filter_range_with_start_after_end_allows_no_port_and_does_not_crash() -> None:
    h = Harness()
    bad = {"protocol": "tcp", "port_range_start": 90, "port_range_end": 80}
    h.setup(cidr_resource(filters=[bad, {"protocol": "udp", "port_range_start": 53, "port_range_end": 53}]))
    assert h.send(build_tcp_packet(CL_TUN4, RES, 40000, 85, flags=TCP_SYN)) is None  # decision 0040
    assert h.send(udp(CL_TUN4, RES, dport=53)) is not None
    assert h.drops()["filtered"] == 1


def test_forged_relay_responses_are_dropped() -> None:
    from gateway_core.wire import stun
    from gateway_core.wire.stun import Attr, Class, Method, StunMessage
    from tests.unit.gateway_harness import GW, RELAY, relay_json

    h = Harness()
    held: list[object] = []
    h.hold_to_relay = held  # type: ignore[assignment]
    h.push(
        "init",
        {
            "interface": {"ipv4": "100.64.0.1", "ipv6": "fd00:2021:1111::1"},
            "config": {"ipv4_masquerade_enabled": True, "ipv6_masquerade_enabled": True},
            "relays": [relay_json()],
        },
    )
    request = None
    for _ in range(20):  # let BINDING and the first ALLOCATE through until the authenticated ALLOCATE
        assert held, "the allocation stopped talking"
        t = held.pop(0)
        msg = stun.decode(t.payload)  # type: ignore[attr-defined]
        if msg.method == Method.ALLOCATE and msg.get(Attr.MESSAGE_INTEGRITY) is not None:
            request = msg
            break
        h.hold_to_relay = None
        h.deliver(GW, t)  # type: ignore[arg-type]
        h.hold_to_relay = held  # type: ignore[assignment]
        h.pump()
    assert request is not None
    r = relay_json()
    key = stun.long_term_key(r["username"], "firezone", r["password"])
    forged = StunMessage(Method.ALLOCATE, Class.SUCCESS, request.transaction_id).add_u32(Attr.LIFETIME, 600)
    assert h.gw.handle_datagram(h.now, GW, RELAY, forged.encode(b"not the key")) is None
    assert h.drops()["stun_bad_integrity"] == 1
    assert h.gw.handle_datagram(h.now, GW, RELAY, forged.encode(key)) is None  # now authentic: accepted
    assert h.drops()["stun_bad_integrity"] == 1
    empty_data = StunMessage(Method.DATA, Class.INDICATION, bytes(12)).encode()  # no peer, no data
    assert h.gw.handle_datagram(h.now, GW, RELAY, empty_data) is None
    assert h.drops()["turn_malformed"] == 1
