"""The whole gateway per packet: ``Gateway.handle_datagram`` (node demux + WireGuard decapsulation + policy +
DNS-resource NAT) and ``Gateway.handle_tun_packet`` (routing + reverse NAT + filters + encapsulation), each
against one bare ``ChaCha20Poly1305`` call on the same number of bytes, measured in the same run, with 1,
100 and 10,000 connected clients; and the memory of one idle connected client.

Packet: the largest the data path accepts, 1280 bytes (the TUN MTU, ``MAX_IP_SIZE``; a 1400-byte inner
packet is dropped as ``IP_TOO_LARGE``, as in Firezone), IPv4/UDP to a DNS resource's proxy IP, so every
packet goes through the NAT; then the same to an address of a CIDR resource (no NAT) with the same number
of clients. Every packet after a flow's first takes the per-flow cache (``gateway_core.policy.flowcache``),
as the packets of a real flow do. The measured client is fully connected (ICE, WireGuard) through
the test harness's in-memory network; the other clients are authorised (a CIDR resource each, their own
tunnel addresses) and have a node connection (ICE agent + WireGuard tunnel, no handshake yet), added with
every timer running: they populate every table the data path looks into. (``bench_scale`` connects every
client fully and measures the timers.) ``python -m bench bench_gateway``.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
import uuid
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gateway_core.entropy import SeededEntropy
from gateway_core.gateway_types import DomainResolved, ResolveDomain
from gateway_core.policy.p2p_control import build_assigned_ips
from gateway_core.policy.resources import CidrResource
from gateway_core.wire.ipbuild import build_udp_packet
from tests.unit.gateway_harness import (
    CIDR_ID,
    CL_TUN4,
    DNS_ID,
    GW,
    GW_CREDS,
    Harness,
    cidr_resource,
    dns_resource,
)

_NONCE = struct.Struct("<4xQ")
"""WireGuard's nonce: 4 zero bytes and the 64-bit counter."""
SIZE = 1280
"""Inner IP packet size: the TUN MTU."""
BATCH = 300
ROUNDS = 12
"""Alternating rounds per case; the minimum is reported."""
CLIENT_COUNTS = (1, 100, 10_000)
MEMORY_CLIENTS = 1000
PROXY = ip_address("100.96.0.1")
REAL = ip_address("10.0.0.7")
CIDR_HOST = ip_address("172.20.0.5")
"""An address of the measured client's CIDR resource (``tests.unit.gateway_harness.cidr_resource``)."""


def _setup() -> Harness:
    h = Harness()
    h.setup(dns_resource())
    h.authorize(cidr_resource(rid=CIDR_ID), ref="cidr")
    proxies = [ip_address(f"100.96.0.{i}") for i in range(1, 5)]
    h.send(build_assigned_ips(DNS_ID, "app.example.com", proxies))  # type: ignore[arg-type]
    req = next(c for c in h.commands if isinstance(c, ResolveDomain))
    h.gw.handle_input(h.now, DomainResolved(req.request_id, (REAL,)))
    h.pump()
    return h


def _add_clients(h: Harness, n: int, start: int) -> None:
    """``n`` more clients: each authorised to a CIDR resource with a node connection (no handshake)."""
    gw, now = h.gw, h.now
    ent = SeededEntropy(start)
    node = gw.node
    # Every timer runs while clients are added: the node ticks only the connection an upsert touched
    # (decision 0140), so adding n clients costs O(n log n), not n^2 connection ticks.
    for i in range(start, start + n):
        cid = uuid.UUID(int=(1 << 120) + i)
        v4 = IPv4Address(int(IPv4Address("100.65.0.0")) + i)
        v6 = IPv6Address(int(IPv6Address("fd00:2021:1111::1:0:0")) + i)
        rid = uuid.UUID(int=(2 << 120) + i)
        res = CidrResource(rid, "r", IPv4Network((0xAC100000 + ((i % 4096) << 4), 28)), ())
        gw.peers.allow_access(cid, v4, v6, res, None, None)
        node.upsert_connection(str(cid), ent.random_bytes(32), None, GW_CREDS, ("u", "p" * 22), now)


def _best(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / BATCH


def _measure(h: Harness, nat: bool) -> tuple[float, float, float, float]:
    """(handle_datagram, handle_tun_packet, aead encrypt, aead decrypt) in microseconds."""
    gw, now = h.gw, h.now
    dst, real = (PROXY, REAL) if nat else (CIDR_HOST, CIDR_HOST)
    pkt = build_udp_packet(CL_TUN4, dst, 5401, 53, bytes(SIZE - 28))
    reply = build_udp_packet(real, CL_TUN4, 53, 5401, bytes(SIZE - 28))  # type: ignore[arg-type]
    conn = h.client.connections["gateway"]
    assert conn.peer_socket is not None
    src = conn.peer_socket.source
    stream = []
    for _ in range(BATCH * ROUNDS):
        t = h.client.encapsulate("gateway", pkt, now)
        assert t is not None
        stream.append(t.payload)
    out = gw.handle_datagram(now, GW, src, stream[0])
    assert out is not None and len(out) == SIZE, "the packet must pass the policy (and the NAT)"
    assert (out[16:20] == REAL.packed) is nat
    assert gw.handle_tun_packet(now, reply) is not None
    aead = ChaCha20Poly1305(bytes(range(32)))
    nonce = bytes(12)
    # The bare decrypt opens as many distinct ciphertexts as the gateway does, a fresh batch each round, as
    # the gateway's stream: one buffer opened over and over stays in the CPU's cache, which the gateway's
    # datagrams do not (measured: 0.2-0.3 us of a 1.4 us decrypt).
    sealed = [aead.encrypt(_NONCE.pack(i), pkt, None) for i in range(BATCH * ROUNDS)]
    best = [1e9, 1e9, 1e9, 1e9]
    pos = 1
    for _ in range(ROUNDS - 1):
        batch = stream[pos : pos + BATCH]
        opened = [(_NONCE.pack(i), sealed[i]) for i in range(pos, pos + BATCH)]
        pos += BATCH

        def dg(batch: list[bytes] = batch) -> None:
            for d in batch:
                gw.handle_datagram(now, GW, src, d)

        def tun() -> None:
            for _ in range(BATCH):
                gw.handle_tun_packet(now, reply)

        def enc() -> None:
            for _ in range(BATCH):
                aead.encrypt(nonce, pkt, None)

        def dec(opened: list[tuple[bytes, bytes]] = opened) -> None:
            for n, c in opened:
                aead.decrypt(n, c, None)

        for i, fn in enumerate((dg, tun, enc, dec)):
            best[i] = min(best[i], _best(fn) * 1e6)
    return best[0], best[1], best[2], best[3]


def _memory_per_client(h: Harness) -> float:
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    _add_clients(h, MEMORY_CLIENTS, 50_000)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return grown / MEMORY_CLIENTS


def main() -> None:
    h = _setup()
    have = 1
    rounds = f"min of {ROUNDS - 1} rounds x {BATCH}"
    print(f"packet {SIZE} bytes, IPv4/UDP; {rounds}")
    for n in CLIENT_COUNTS:
        if n > have:
            _add_clients(h, n - have, have)
            have = n
        for nat in (True, False):
            dg, tun, enc, dec = _measure(h, nat)
            what = "DNS resource (NAT)" if nat else "CIDR resource    "
            print(
                f"{n:6d} clients, {what}: handle_datagram {dg:6.2f} us ({dg / dec:4.2f}x decrypt)   "
                f"handle_tun_packet {tun:6.2f} us ({tun / enc:4.2f}x encrypt)   "
                f"[bare AEAD encrypt {enc:5.2f} us, decrypt {dec:5.2f} us]"
            )
    mem = _memory_per_client(_setup())
    print(f"memory per idle connected client (policy + node connection): {mem / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
