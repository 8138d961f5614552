"""How far a pure-Python per-packet path can go: the hot path of ``bench_gateway`` written as ONE function
per direction, next to the real ``Gateway`` and one bare AEAD call, alternating in one process.

``Gateway.handle_datagram`` passes a data message through three layers (the facade, the node, the
WireGuard peer) and the flow cache; ``handle_tun_packet`` through the facade, the flow cache, the node and
the peer. The functions here do the same work for a packet of an established, cached flow in one frame
(the flow cache's :func:`~gateway_core.policy.flowcache.forward` stays a call): the same checks on the way
(message type, index, session, replay window, the inner packet's length, the connection's state), the
same bookkeeping (replay window, timers of the peer, the connection's activity, the cache-hit counters),
and every output is compared with the real path's, byte for byte. Anything else they do not handle (they
return ``None``): they are a measurement of the floor, not a data path.

The issue's targets for ``bench_gateway`` are 2x a bare call for a CIDR resource and 3x through the DNS
resource's NAT. What this prints is the least a data path written in Python pays on this machine with the
project's layers folded away; a ratio above a target here means the target needs a compiled data path.
``python -m bench bench_python_floor``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench.bench_gateway import CIDR_HOST, PROXY, REAL, SIZE, _setup
from gateway_core.clock import Instant
from gateway_core.commands import Transmit, transmit
from gateway_core.node.connection import ConnState
from gateway_core.node.node import _DIRECT
from gateway_core.policy.flowcache import forward
from gateway_core.wire.ipbuild import build_udp_packet
from tests.unit.gateway_harness import CL_TUN4, GW

_HDR = struct.Struct("<IIQ")
_NONCE = struct.Struct("<4xQ")
BATCH = 150
ROUNDS = 22
_CONNECTED = ConnState.CONNECTED
_FAILED = ConnState.FAILED


def _fused(h: object) -> tuple[Callable[..., bytes | None], Callable[[Instant, bytes], Transmit | None]]:
    gw = h.gw  # type: ignore[attr-defined]
    node = gw.node
    conns, by_index, by_cid, by_address = node.connections, node._by_index, gw._by_cid, gw._by_address

    def datagram(now: Instant, remote: object, data: bytes) -> bytes | None:
        if now < gw._now:
            return None
        gw._now = node._now = now
        if remote.port == 3478 or len(data) < 32:  # type: ignore[attr-defined]
            return None
        mtype, idx, ctr = _HDR.unpack_from(data)
        if mtype != 4:
            return None
        conn = conns.get(by_index.get(idx >> 8, ""))
        if conn is None or conn.state is _FAILED:
            return None
        t = conn.tunnel
        t._last_now = now
        slot = idx & 3
        s = t.sessions[slot]
        if s is None or s.local_index != idx:
            return None
        nxt = s.next
        if ctr >= nxt:
            if ctr >= t._reject_msgs:
                return None
        elif ctr + 1024 < nxt or s.flags[ctr & 1023]:
            return None
        try:
            pt = s.decrypt(_NONCE.pack(ctr), data[16:], None)
        except InvalidTag:
            return None
        if ctr == nxt:
            s.flags[ctr & 1023] = 1
            s.next = ctr + 1
        else:
            s.mark(ctr)
        if slot != t._current:
            t._set_current(slot)
        t.want_handshake_at = None
        n = len(pt)
        if not 0x45 <= (pt[0] if n else 0) <= 0x4F or n < 20:
            return None
        total = (pt[2] << 8) | pt[3]
        if not 20 <= total <= n:
            return None
        t.want_passive_keepalive_at = now + t._keepalive
        t.t_data_received = now
        if conn.state is _CONNECTED:
            conn.last_activity = now
        if total != n:
            pt = pt[:total]
        policy = by_cid.get(conn.cid)
        if policy is None:
            return None
        out = forward(policy.flow_cache.outbound, pt, now)
        if out is not None:
            gw._cache_hits_out += 1
        return out

    def tun(now: Instant, packet: bytes) -> Transmit | None:
        if now < gw._now or not packet or packet[0] != 0x45:
            return None
        gw._now = node._now = now
        policy = by_address.get(packet[16:20])
        if policy is None:
            return None
        out = forward(policy.flow_cache.inbound, packet, now)
        if out is None:
            return None
        gw._cache_hits_in += 1
        conn = conns.get(policy.cid)
        if conn is None or conn.state is not _CONNECTED or conn.peer_socket is None:
            return None
        conn.last_activity = now
        t = conn.tunnel
        t._last_now = now
        s = t.sessions[t._current]
        if s is None:
            return None
        ctr = s.send_counter
        if (t.is_initiator and now > s.established_at + t._should_not_use) or ctr >= t._reject_msgs:
            return None
        s.send_counter = ctr + 1
        wg = _HDR.pack(4, s.peer_index, ctr) + s.encrypt(_NONCE.pack(ctr), out, None)
        t.want_passive_keepalive_at = None
        t.t_data_sent = now
        if t.want_handshake_at is None:
            t.want_handshake_at = now + t._no_reply_rekey
        if ctr >= t._rekey_msgs_minus_one:
            t._want_rekey = True
        ps = conn.peer_socket
        if ps.kind not in _DIRECT:
            return None
        return transmit(ps.source, ps.dest, wg, out[1] & 3)

    return datagram, tun


def _time(fn: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    h = _setup()
    gw, now = h.gw, h.now
    datagram, tun = _fused(h)
    conn = h.client.connections["gateway"]
    assert conn.peer_socket is not None
    src = conn.peer_socket.source
    aead = ChaCha20Poly1305(bytes(range(32)))
    print(f"packet {SIZE} bytes, IPv4/UDP, one client; min of {ROUNDS} rounds x {BATCH}, alternating")
    for name, dst, real in (("CIDR resource    ", CIDR_HOST, CIDR_HOST), ("DNS resource (NAT)", PROXY, REAL)):
        pkt = build_udp_packet(CL_TUN4, dst, 5401, 53, bytes(SIZE - 28))
        reply = build_udp_packet(real, CL_TUN4, 53, 5401, bytes(SIZE - 28))  # type: ignore[arg-type]
        n = 2 * BATCH * ROUNDS + 2
        stream = []
        for _ in range(n):
            wrapped = h.client.encapsulate("gateway", pkt, now)
            assert wrapped is not None
            stream.append(wrapped.payload)
        first = gw.handle_datagram(now, GW, src, stream[0])
        assert first is not None and datagram(now, src, stream[1]) == first, "the same packet out"
        t_real = gw.handle_tun_packet(now, reply)
        t_fused = tun(now, reply)
        assert t_real is not None and t_fused is not None
        assert (t_fused.src, t_fused.dst, t_fused.ecn, len(t_fused.payload)) == (
            t_real.src,
            t_real.dst,
            t_real.ecn,
            len(t_real.payload),
        )
        assert t_fused.payload[:4] == t_real.payload[:4], "the same message type and receiver"
        sealed = [aead.encrypt(_NONCE.pack(i), pkt, None) for i in range(BATCH * ROUNDS)]
        best = dict.fromkeys(("dg", "dg_fused", "tun", "tun_fused", "dec", "enc"), 1e9)
        pos = 2
        for r in range(ROUNDS):
            a, b = stream[pos : pos + BATCH], stream[pos + BATCH : pos + 2 * BATCH]
            pos += 2 * BATCH
            opened = [(_NONCE.pack(i), sealed[i]) for i in range(r * BATCH, (r + 1) * BATCH)]
            runs: list[tuple[str, Callable[[], None]]] = [
                ("dg", lambda a=a: [gw.handle_datagram(now, GW, src, d) for d in a] and None),
                ("dg_fused", lambda b=b: [datagram(now, src, d) for d in b] and None),
                ("tun", lambda r=reply: [gw.handle_tun_packet(now, r) for _ in range(BATCH)] and None),
                ("tun_fused", lambda r=reply: [tun(now, r) for _ in range(BATCH)] and None),
                ("dec", lambda o=opened: [aead.decrypt(x, c, None) for x, c in o] and None),
                ("enc", lambda p=pkt: [aead.encrypt(bytes(12), p, None) for _ in range(BATCH)] and None),
            ]
            for key, fn in runs:
                best[key] = min(best[key], _time(fn, BATCH))
        dec, enc = best["dec"], best["enc"]
        print(
            f"{name}: handle_datagram {best['dg']:5.2f} us ({best['dg'] / dec:4.2f}x), one function"
            f" {best['dg_fused']:5.2f} us ({best['dg_fused'] / dec:4.2f}x decrypt);"
            f" handle_tun_packet {best['tun']:5.2f} us ({best['tun'] / enc:4.2f}x), one function"
            f" {best['tun_fused']:5.2f} us ({best['tun_fused'] / enc:4.2f}x encrypt)"
            f"  [bare decrypt {dec:4.2f} us, encrypt {enc:4.2f} us]"
        )


if __name__ == "__main__":
    main()
