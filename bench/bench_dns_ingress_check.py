"""What checking a DNS query's ingress interface costs per datagram: ``SO_BINDTODEVICE`` (the kernel
checks while looking up the socket; we read with a plain ``recvfrom``) against ``IP_PKTINFO`` (we read
with ``recvmsg`` and compare the ancillary data's interface index ourselves), on 127.0.0.1.

Both sockets receive the same 50-byte datagrams, queued beforehand (so only the read and the check are
timed); the best of several alternating rounds counts. The ratio is pktinfo / bindtodevice: what a
per-datagram check in Python would add to the read the UDP DNS server does anyway (decision 0110). TCP
has no per-connection equivalent of ``IP_PKTINFO`` short of looking up the accepted socket's route, which
is one more reason for the device binding. Run: ``.venv/bin/python -m bench bench_dns_ingress_check``.
"""

from __future__ import annotations

import socket
import struct
import time

IP_PKTINFO = 8
"""``linux/in.h``."""
N = 2000
"""Datagrams per round (fits the default receive buffer)."""
ROUNDS = 15
_PKTINFO = struct.Struct("=i4s4s")


def _pair() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    return rx, tx


def _fill(tx: socket.socket) -> None:
    payload = b"q" * 50
    for _ in range(N):
        tx.send(payload)


def bindtodevice_round(rx: socket.socket, tx: socket.socket) -> float:
    _fill(tx)
    recvfrom = rx.recvfrom
    got = 0
    t0 = time.perf_counter()
    while True:
        try:
            recvfrom(2001)
        except BlockingIOError:
            break
        got += 1
    return (time.perf_counter() - t0) / max(got, 1)


def pktinfo_round(rx: socket.socket, tx: socket.socket, ifindex: int) -> float:
    _fill(tx)
    recvmsg = rx.recvmsg
    space = socket.CMSG_SPACE(_PKTINFO.size)
    unpack = _PKTINFO.unpack_from
    got = 0
    t0 = time.perf_counter()
    while True:
        try:
            _data, anc, _flags, _remote = recvmsg(2001, space)
        except BlockingIOError:
            break
        ok = False
        for level, kind, cdata in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                ok = unpack(cdata)[0] == ifindex
        if ok:
            got += 1
    return (time.perf_counter() - t0) / max(got, 1)


def main() -> None:
    plain = _pair()
    plain[0].setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    info = _pair()
    info[0].setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    ifindex = socket.if_nametoindex("lo")
    best_plain = best_info = float("inf")
    try:
        for _ in range(ROUNDS):
            best_plain = min(best_plain, bindtodevice_round(*plain))
            best_info = min(best_info, pktinfo_round(*info, ifindex))
    finally:
        for s in (*plain, *info):
            s.close()
    print(f"  {N} datagrams per round, best of {ROUNDS} alternating rounds, 127.0.0.1")
    print(f"  SO_BINDTODEVICE + recvfrom:        {best_plain * 1e6:6.2f} us per datagram")
    print(f"  IP_PKTINFO + recvmsg + check:      {best_info * 1e6:6.2f} us per datagram")
    print(f"  ratio pktinfo / bindtodevice: {best_info / best_plain:.2f}")


if __name__ == "__main__":
    main()
