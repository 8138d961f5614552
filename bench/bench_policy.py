"""Per-packet policy cost: ``ClientPolicy.outbound`` / ``inbound`` against a bare AEAD call.

Measured in the same run, on a 1200-byte UDP payload (a 1228-byte IPv4 packet, under the 1280-byte limit):

- reference: ChaCha20-Poly1305 encryption of the packet (what WireGuard does to every packet anyway);
- CIDR resource, client -> resource: anti-spoofing, longest-prefix match, port filter (no rewrite);
- DNS resource, client -> resource: the same plus the NAT lookup and an in-place rewrite (incremental
  checksums), and the reverse direction;
- classification alone with 1, 100 and 10,000 CIDR resources in the client's table.

Each line prints nanoseconds per call and the ratio to the AEAD call.
Run: ``.venv/bin/python -m bench bench_policy``.
"""

from __future__ import annotations

import time
import tracemalloc
import uuid
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gateway_core.clock import Instant
from gateway_core.policy.client import FORWARD, ClientPolicy
from gateway_core.policy.filters import L4_UDP, Filter, FilterProtocol, FilterTable, build_filter_table
from gateway_core.policy.nat import MAX_NAT_SESSIONS
from gateway_core.policy.resources import CidrResource, DnsResource
from gateway_core.wire.ipbuild import build_udp_packet

ROUNDS = 15
"""Interleaved rounds; the minimum of each case is reported (the shared VM is noisy)."""
N = 2_000
"""Calls per round."""
CV4, CV6 = IPv4Address("100.64.0.1"), IPv6Address("fd00:2021:1111::1")
PAYLOAD = bytes(1200)


def per_call_ns(fn: Callable[[], object], n: int = N) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n


def best(cases: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Nanoseconds per call of each case: minimum over :data:`ROUNDS` interleaved rounds."""
    out = {name: float("inf") for name in cases}
    for _ in range(ROUNDS):
        for name, fn in cases.items():
            out[name] = min(out[name], per_call_ns(fn))
    return out


def main() -> None:
    aead = ChaCha20Poly1305(bytes(32))
    nonce = bytes(12)
    packet = build_udp_packet(CV4, IPv4Address("10.0.0.5"), 5000, 53, PAYLOAD)

    p = ClientPolicy(uuid.UUID(int=1), CV4, CV6, GV4, GV6, None, MAX_NAT_SESSIONS)
    udp53 = (Filter(FilterProtocol.UDP, 53, 53),)
    p.allow(CidrResource(uuid.UUID(int=2), "net", IPv4Network("10.0.0.0/24"), udp53), None)
    p.allow(DnsResource(uuid.UUID(int=3), "dns", "*.example.com", udp53), None)
    proxy = ip_address("100.96.0.1")
    p.setup_nat("a.example.com", uuid.UUID(int=3), [ip_address("10.0.1.1")], [proxy])
    now = Instant(0)
    to_proxy = build_udp_packet(CV4, proxy, 5000, 53, PAYLOAD)
    reply = build_udp_packet(ip_address("10.0.1.1"), CV4, 53, 5000, PAYLOAD)
    assert p.outbound(bytearray(packet), now)[0] == FORWARD
    assert p.outbound(bytearray(to_proxy), now)[0] == FORWARD
    assert p.inbound(bytearray(reply), now)[0] == FORWARD

    r = best(
        {
            "aead": lambda: aead.encrypt(nonce, packet, None),
            "copy": lambda: bytearray(packet),
            "cidr": lambda: p.outbound(bytearray(packet), now),
            "dns_out": lambda: p.outbound(bytearray(to_proxy), now),
            "dns_in": lambda: p.inbound(bytearray(reply), now),
        }
    )
    ref = r["aead"]
    print(f"reference: ChaCha20-Poly1305 encrypt of {len(packet)} bytes: {ref:.0f} ns")
    print(f"outbound, CIDR resource with a port filter: {r['cidr']:.0f} ns = {r['cidr'] / ref:.2f} x AEAD")
    print(f"outbound, DNS resource (NAT rewrite): {r['dns_out']:.0f} ns = {r['dns_out'] / ref:.2f} x AEAD")
    print(
        f"inbound, DNS resource (reverse NAT + filter): {r['dns_in']:.0f} ns = {r['dns_in'] / ref:.2f} x AEAD"
    )
    print(f"(each includes the bytearray copy of the packet: {r['copy']:.0f} ns)")

    for count in (1, 100, 10_000):
        resources = [
            CidrResource(uuid.UUID(int=i + 10), f"r{i}", IPv4Network((0x0A000000 + (i << 8), 24)), udp53)
            for i in range(count)
        ]
        table: FilterTable = build_filter_table(
            [_Auth(r) for r in resources],  # type: ignore[misc]
            [],
        )
        ip = int(IPv4Address("10.0.0.5")) + ((count - 1) << 8)
        assert table.classify_int(False, ip, L4_UDP, 53) is not None
        ns = best({"c": lambda t=table, a=ip: t.classify_int(False, a, L4_UDP, 53)})["c"]  # type: ignore[misc]
        print(f"classify with {count} CIDR resources: {ns:.0f} ns = {ns / ref:.3f} x AEAD")

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    clients = []
    for i in range(1000):
        c = ClientPolicy(
            uuid.UUID(int=i),
            IPv4Address(0x64400000 + i),
            IPv6Address(int(CV6) + i),
            GV4,
            GV6,
            None,
            MAX_NAT_SESSIONS,
        )
        c.allow(CidrResource(uuid.UUID(int=2), "net", IPv4Network("10.0.0.0/24"), udp53), None)
        clients.append(c)
    per_client = (tracemalloc.get_traced_memory()[0] - before) / len(clients)
    tracemalloc.stop()
    print(f"memory per ClientPolicy with one CIDR resource: {per_client / 1024:.1f} KiB")


GV4, GV6 = IPv4Address("100.64.0.9"), IPv6Address("fd00:2021:1111::9")


class _Auth:
    """A minimal FilterSource over a CIDR resource (building 10,000 full authorisations is slower)."""

    def __init__(self, r: CidrResource) -> None:
        self.r = r
        self.resource_id = r.id
        self.is_cidr = True
        self.is_internet = False
        self.filters = r.filters

    def networks(self) -> tuple[IPv4Network]:
        return (self.r.network,)  # type: ignore[return-value]


if __name__ == "__main__":
    main()
