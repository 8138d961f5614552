"""Checksum-verifying transfers for the offload system tests, run inside the test's namespaces.

``server PORT``: a TCP echo server and a UDP echo server on ``PORT`` (both families' wildcard). The UDP
server echoes what one receive burst brought back with one ``sendmsg`` and ``UDP_SEGMENT`` when the
datagrams are of one size (so the gateway's TUN reads UDP super-packets where USO is on).

``tcp HOST PORT BYTES``: sends ``BYTES`` random bytes, reads the echo, prints ``{"ok": ..., "bytes": n,
"seconds": t}`` (``ok``: every byte came back intact and in order).

``udp HOST PORT COUNT SIZE``: sends ``COUNT`` datagrams of ``SIZE`` bytes (a SHA-256 of the rest in front),
in runs of 16 with ``UDP_SEGMENT`` (so the client's TUN reads UDP super-packets where USO is on), paced, and
prints ``{"sent": n, "received": n, "bad": n}`` (``bad``: a datagram whose hash does not match).

Every mode stops by itself (timeouts); nothing here is sent outside the test's namespaces.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import sys
import threading
import time

UDP_SEGMENT = 103
SOL_UDP = 17
DEADLINE = 60.0
"""Seconds any mode runs at most."""


def _echo_tcp(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(DEADLINE)
        while data := conn.recv(1 << 16):
            conn.sendall(data)


def _tcp_server(port: int) -> None:
    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_echo_tcp, args=(conn,), daemon=True).start()


def _udp_server(port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.setblocking(False)
    while True:
        select.select([sock], [], [])
        burst: dict[tuple[object, ...], list[bytes]] = {}
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            burst.setdefault(addr, []).append(data)
        for addr, items in burst.items():
            size = len(items[0])
            if len(items) > 1 and all(len(d) == size for d in items):
                try:
                    sock.sendmsg(
                        [b"".join(items)], [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))], 0, addr
                    )
                    continue
                except OSError:
                    pass
            for d in items:
                sock.sendto(d, addr)


def server(port: int) -> None:
    threading.Thread(target=_udp_server, args=(port,), daemon=True).start()
    _tcp_server(port)


def tcp_client(host: str, port: int, n: int) -> dict[str, object]:
    blob = os.urandom(n)
    t0 = time.monotonic()
    sock = socket.create_connection((host, port), timeout=DEADLINE)
    got = bytearray()

    def send() -> None:
        sock.sendall(blob)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    while data := sock.recv(1 << 16):
        got += data
        if time.monotonic() - t0 > DEADLINE:
            break
    sender.join(timeout=DEADLINE)
    sock.close()
    return {"ok": bytes(got) == blob, "bytes": len(got), "seconds": round(time.monotonic() - t0, 3)}


def udp_client(host: str, port: int, count: int, size: int) -> dict[str, object]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sent = received = bad = 0
    run = 16
    t_end = time.monotonic() + DEADLINE / 2
    while sent < count and time.monotonic() < t_end:
        items = []
        for _ in range(min(run, count - sent)):
            body = os.urandom(size - 32)
            items.append(hashlib.sha256(body).digest() + body)
        try:
            sock.sendmsg([b"".join(items)], [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))])
        except OSError:
            for d in items:
                sock.send(d)
        sent += len(items)
        received, bad = _drain(sock, received, bad, 0.005)  # paced: about 3200 datagrams/s
    deadline = time.monotonic() + 3
    while received + bad < sent and time.monotonic() < deadline:
        received, bad = _drain(sock, received, bad, 0.1)
    return {"sent": sent, "received": received, "bad": bad}


def _drain(sock: socket.socket, received: int, bad: int, wait: float) -> tuple[int, int]:
    while select.select([sock], [], [], wait)[0]:
        wait = 0
        d = sock.recv(65535)
        if hashlib.sha256(d[32:]).digest() == d[:32]:
            received += 1
        else:
            bad += 1
    return received, bad


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "server":
        server(int(argv[1]))
    elif mode == "tcp":
        print(json.dumps(tcp_client(argv[1], int(argv[2]), int(argv[3]))))
    elif mode == "udp":
        print(json.dumps(udp_client(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
