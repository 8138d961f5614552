"""Which arrivals behind the gateway are a probe's (``Probe.owns_arrival`` in sim/stateful/probes.py)."""

from __future__ import annotations

from ipaddress import IPv4Address

from gateway_core.clock import Instant
from gateway_core.wire.ip import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from sim.gateway_world import APP_V4, WEB_V4
from sim.hosts.resources import Arrival
from sim.reference import Outcome, Prediction
from sim.stateful.probes import Probe

CLIENT0 = IPv4Address("100.64.1.10")
CLIENT1 = IPv4Address("100.64.1.11")
PROXY = IPv4Address("100.96.0.1")
SPOOFED = IPv4Address("100.64.1.250")
NOTHING = Prediction.exact(Outcome.NOTHING, 0)


def _probe(
    proto: str,
    dst: IPv4Address = WEB_V4,
    host: str = "web",
    seq: int = 0,
    sport: int = 0,
    src: IPv4Address | None = None,
) -> Probe:
    """Client-1's probe as ``Prober.prepare`` makes it (sources, echo identifier)."""
    port = 0 if proto == "icmp" else 7
    p = Probe(1, proto, dst, port, NOTHING, host, raw=src is not None, src=src, seq=seq, sport=sport)
    p.sources = (src,) if src is not None else (CLIENT1,)
    p.ident = 0xC001
    return p


def _arrival(proto: int, src: IPv4Address, sport: int, dport: int, dst: IPv4Address = WEB_V4) -> Arrival:
    return Arrival(Instant(0), proto, src, dst, sport, dport, 40)


def test_an_echo_of_another_client_with_the_same_sequence_number_is_not_the_probes() -> None:
    """The nightly finding: client-0's first ping (seq 1), held while a lost handshake was retried, reached
    web during client-1's ping with seq 1 and was counted as client-1's."""
    p = _probe("icmp", seq=1)
    assert p.owns_arrival(_arrival(PROTO_ICMP, CLIENT1, 0xC001, 1))
    assert not p.owns_arrival(_arrival(PROTO_ICMP, CLIENT0, 0xC000, 1))
    assert not p.owns_arrival(_arrival(PROTO_ICMP, CLIENT0, 0xC001, 1))  # the source decides alone too


def test_identifier_sequence_destination_and_protocol_must_match() -> None:
    p = _probe("icmp", seq=1)
    assert not p.owns_arrival(_arrival(PROTO_ICMP, CLIENT1, 0xC000, 1))
    assert not p.owns_arrival(_arrival(PROTO_ICMP, CLIENT1, 0xC001, 2))
    assert not p.owns_arrival(_arrival(PROTO_ICMP, CLIENT1, 0xC001, 1, dst=APP_V4))
    u = _probe("udp", sport=20001)
    assert u.owns_arrival(_arrival(PROTO_UDP, CLIENT1, 20001, 7))
    assert not u.owns_arrival(_arrival(PROTO_TCP, CLIENT1, 20001, 7))
    assert not u.owns_arrival(_arrival(PROTO_UDP, CLIENT1, 20001, 9))
    assert not u.owns_arrival(_arrival(PROTO_UDP, CLIENT1, 20002, 7))
    assert not u.owns_arrival(_arrival(PROTO_ICMP, CLIENT1, 20001, 7))


def test_through_the_dns_resource_nat_the_destination_and_echo_identifier_may_differ() -> None:
    p = _probe("icmp", dst=PROXY, host="app", seq=3)
    assert p.owns_arrival(_arrival(PROTO_ICMP, CLIENT1, 0xC001, 3, dst=APP_V4))
    assert p.owns_arrival(_arrival(PROTO_ICMP, CLIENT1, 0xC002, 3, dst=APP_V4))  # identifier rewritten
    assert not p.owns_arrival(_arrival(PROTO_ICMP, CLIENT0, 0xC001, 3, dst=APP_V4))
    assert not p.owns_arrival(_arrival(PROTO_ICMP, CLIENT1, 0xC001, 4, dst=APP_V4))


def test_a_spoofed_probe_owns_what_arrives_from_its_spoofed_source() -> None:
    """So a spoofed packet the gateway let through fails the probe's own check (expected nothing)."""
    p = _probe("udp", src=SPOOFED, sport=20003)
    assert p.owns_arrival(_arrival(PROTO_UDP, SPOOFED, 20003, 7))
    assert not p.owns_arrival(_arrival(PROTO_UDP, CLIENT1, 20003, 7))
