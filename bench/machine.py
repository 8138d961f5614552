"""What kind of machine a benchmark ran on, measured in the same run: the cost of one system call and of
one 1280-byte UDP datagram sent and received on loopback. Figures that hinge on system calls (the
end-to-end throughput against wireguard-go, the DNS server against dnsmasq, the driver against a plain
loop) move with these: on a VM where a system call costs 0.4 us instead of 0.1 us, a program that makes
several per packet (wireguard-go without offloads, dnsmasq) loses more than one that batches them."""

from __future__ import annotations

import os
import socket
import time

CALLS = 100_000
DATAGRAMS = 5_000


def syscall_ns() -> float:
    """Nanoseconds per ``getppid()`` (the cheapest system call Python makes), best of three."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(CALLS):
            os.getppid()
        best = min(best, (time.perf_counter() - t) / CALLS * 1e9)
    return best


def udp_roundtrip_us() -> float:
    """Microseconds per 1280-byte datagram sent and received on 127.0.0.1 (one ``send``, one ``recv``)."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        tx.connect(rx.getsockname())
        data = bytes(1280)
        t = time.perf_counter()
        for _ in range(DATAGRAMS):
            tx.send(data)
            rx.recv(2048)  # one in flight at a time: never dropped, never waits long
        return (time.perf_counter() - t) / DATAGRAMS * 1e6


def line() -> str:
    """One line for a benchmark's header."""
    return (
        f"machine: one system call (getppid) {syscall_ns():.0f} ns, one 1280-byte loopback UDP datagram"
        f" sent and received {udp_roundtrip_us():.1f} us, {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    print(line())
