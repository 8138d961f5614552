"""A bounded UDP flood of malformed DNS queries, run as ``python -m tests.system.dns_flood`` inside a
namespace (``ip netns exec``): twelve kinds of broken message (``--tunnel``: four whose question is
whole, which a client's stub forwards), round robin, as fast as one Python loop sends (or at ``--rate``
datagrams a second), until ``--count``
datagrams or ``--seconds`` have passed, whichever comes first. Prints how many were sent and the rate
(``sent N in S s``)."""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time

import dns.message

SRV = dns.message.make_query("_http._tcp.fz.test", "SRV").to_wire()
HEADER = struct.Struct("!HHHHHH")


def kinds(name: str = "_http._tcp.fz.test") -> list[bytes]:
    """Twelve malformed queries (each rejected by the listeners' check or by the forwarder's)."""
    q = dns.message.make_query(name, "SRV").to_wire()
    body = q[12:]
    return [
        b"",  # nothing
        b"\x12",  # one byte
        q[:11],  # short header
        HEADER.pack(1, 0x8000, 1, 0, 0, 0) + body,  # a response, not a query
        HEADER.pack(2, 0x2800, 1, 0, 0, 0) + body,  # OPCODE 5 (UPDATE)
        HEADER.pack(3, 0x0100, 0, 0, 0, 0),  # no question
        HEADER.pack(4, 0x0100, 2, 0, 0, 0) + body + body,  # two questions
        HEADER.pack(5, 0x0100, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\x00\x00\x21\x00\x01",  # label > 63
        HEADER.pack(6, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x21\x00\x01",  # pointer in the question
        q[:-3],  # question cut short
        HEADER.pack(8, 0x0100, 1, 0, 0, 0) + (b"\x3fb" + b"b" * 62) * 5 + b"\x00\x00\x21\x00\x01",  # > 255
        HEADER.pack(9, 0x0100, 1, 0, 0, 1) + body + b"\x00\x00\x29\x10",  # additional record cut short
    ]


def tunnel_kinds(name: str = "_http._tcp.fz.test") -> list[bytes]:
    """Four queries whose question is whole (so a client's stub forwards them through the tunnel and the
    listeners' quick check passes them) but whose records are broken: the forwarder drops them."""
    q = dns.message.make_query(name, "SRV").to_wire()
    body = q[12:]
    return [
        HEADER.pack(10, 0x0100, 1, 0, 0, 1) + body + b"\x00\x00\x29\x10",  # additional record cut short
        HEADER.pack(11, 0x0100, 1, 1, 0, 0) + body,  # an answer record announced, none there
        q + b"junk",  # trailing bytes
        HEADER.pack(12, 0x0100, 1, 0, 0, 1) + body + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\xff\xff",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--tunnel", action="store_true", help="the kinds a client's stub forwards (tunnel_kinds)")
    ap.add_argument(
        "--rate", type=float, default=0.0, help="datagrams a second at most (0: as fast as it goes)"
    )
    args = ap.parse_args(argv)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    messages = tunnel_kinds() if args.tunnel else kinds()
    sent = 0
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        dst = (args.host, args.port)
        t0 = time.monotonic()
        stop = t0 + args.seconds
        rounds = 0
        while sent < args.count:
            for m in messages:
                try:
                    s.sendto(m, dst)
                    sent += 1
                except (BlockingIOError, ConnectionRefusedError):
                    pass
            rounds += 1
            if args.rate:  # paced: one round of the kinds every len(messages) / rate seconds
                ahead = t0 + sent / args.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            if (args.rate or rounds % 100 == 0) and time.monotonic() > stop:
                break
        took = time.monotonic() - t0
    print(f"sent {sent} in {took:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
