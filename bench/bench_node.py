"""The node's per-datagram overhead: ``Node.handle_datagram`` on a 1400-byte WireGuard data datagram from a
connected client, against the bare ``WireGuardPeer.decapsulate`` of the same kind of datagram on the same
tunnel, measured in the same run.

The world is the simulator's ``direct`` connectivity scenario run until the connection is up; the
client node then encapsulates a stream of packets (fresh counters each, as replay protection requires).
Rounds alternate node and bare tunnel over consecutive slices of that stream. ``python -m bench bench_node``.
"""

from __future__ import annotations

import struct
import time

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from sim.hosts.connectivity import (
    CLIENT_V4,
    GATEWAY_V4,
    NODE_PORT,
    ConnectivityScenario,
    NodeEndpoint,
    build_connectivity_world,
)
from sim.world import World

SIZE = 1400
"""Inner IP packet size (a full-MTU datagram)."""
BATCH = 400
"""Datagrams per measured round."""
ROUNDS = 30
"""Alternating rounds; the minimum per series is reported."""


def _packet() -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, SIZE, 0, 0, 64, 17, 0, bytes(4), bytes(4))
    return head + struct.pack("!HHHH", 1000, 2000, SIZE - 20, 0) + bytes(SIZE - 28)


def main() -> None:
    w = World(1)
    build_connectivity_world(w, ConnectivityScenario(kind="direct", duration=secs(3)))
    w.run_until(Instant(secs(3)))
    gw, cl = w.hosts["gateway"].component, w.hosts["client"].component
    assert isinstance(gw, NodeEndpoint) and isinstance(cl, NodeEndpoint)
    now = w.now
    pkt = _packet()
    stream = []
    for _ in range(2 * BATCH * ROUNDS):
        t = cl.node.encapsulate("gateway", pkt, now)
        assert t is not None
        stream.append(t.payload)
    local, remote = SocketAddr(GATEWAY_V4, NODE_PORT), SocketAddr(CLIENT_V4, NODE_PORT)
    node = gw.node
    tunnel = node.connections["client"].tunnel
    best_node = best_bare = float("inf")
    pos = 0
    for _ in range(ROUNDS):
        batch = stream[pos : pos + BATCH]
        t0 = time.perf_counter()
        for d in batch:
            node.handle_datagram(now, local, remote, d)
        best_node = min(best_node, (time.perf_counter() - t0) / BATCH)
        batch = stream[pos + BATCH : pos + 2 * BATCH]
        t0 = time.perf_counter()
        for d in batch:
            tunnel.decapsulate(now, d, remote.ip)
        best_bare = min(best_bare, (time.perf_counter() - t0) / BATCH)
        pos += 2 * BATCH
    assert tunnel.stats.total_drops == 0, tunnel.stats.snapshot()
    print(f"bare WireGuardPeer.decapsulate  {best_bare * 1e6:6.2f} us")
    print(f"Node.handle_datagram            {best_node * 1e6:6.2f} us   ratio {best_node / best_bare:4.2f}x")


if __name__ == "__main__":
    main()
