"""A classic BPF socket filter for the gateway's UDP sockets: datagrams that cannot be STUN, ChannelData or
WireGuard by their shape are dropped by the kernel before they are queued, so garbage never wakes the
daemon, never takes a place in the receive queue and costs the sender more than us (decision 0116).

For a UDP socket the filter sees the UDP header at offset 0 and the payload at offset 8; ``len`` is the
UDP header plus the payload. A datagram is kept when its payload is at most :data:`MAX_PAYLOAD` bytes and:

- **WireGuard** (``rust/connlib/snownet/src/node.rs`` via boringtun ``noise/mod.rs``): bytes 1-3 zero,
  type 1/2/3 with the exact length 148/92/64, or type 4 with at least 32 bytes;
- **STUN** (RFC 8489 header, as ``gateway_core.wire.stun.decode`` requires it): the top two bits of
  byte 0 clear, at least 20 bytes, the magic cookie ``0x2112A442`` at bytes 4-7, and a length field that
  is a multiple of 4 and covers exactly the rest of the datagram;
- **ChannelData** (``gateway_core.wire.turn.decode_channel_data``, ``exact=False``): from source port 3478
  only (the node recognises relay traffic by that port alone), first byte 0x40-0x4F, a length field no
  larger than the rest.

A socket with ``UDP_GRO`` gets :data:`PROGRAM_GRO`: the kernel runs the filter once on a coalesced run of
datagrams and shows it the first datagram's header with the whole run's length, so a run is kept up to
64 KiB whatever shape leads it (WireGuard data, a handshake message followed by smaller datagrams of the
same sender's ``UDP_SEGMENT`` send, STUN, ChannelData) and the daemon checks each datagram after
splitting the run (decision 0150). A client that sends its handshake initiation and a STUN message to
the gateway in one segmented send (ours does, and any sender using GSO may) would otherwise lose both:
the first handshake was lost that way and the connection waited for the retransmission, 5 s later.

These are the node's own classification rules (``gateway_core.node.node.Node._route``) or looser, never
stricter: whatever the node could use still reaches it (``tests/unit/test_socket_filter.py`` checks this
against the real node, and ``tests/system/test_udp_filter_netns.py`` in the kernel). What the kernel drops
is counted in the socket's drop counter (``/proc/net/udp``: ``drops``; ``nstat``: ``UdpInErrors``).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass

MAX_PAYLOAD = 1316
"""Largest payload kept: ``gateway_io.udp.MAX_DATAGRAM_SIZE`` (1280-byte IP packet + 32 WireGuard + 4
ChannelData; Firezone discards bigger ones before decryption)."""
MAX_GRO_PAYLOAD = 65507
"""Largest UDP payload over IPv4 (65535 - 20 - 8): the bound of a coalesced (``UDP_GRO``) run."""
TURN_PORT = 3478
"""Relays send from this port (``gateway_core.node.node.TURN_PORT``)."""
STUN_MAGIC = 0x2112A442
"""RFC 8489 magic cookie."""
UDP_HEADER = 8
"""The payload's offset in what the filter sees."""
KEEP = 0xFFFFFFFF
"""Return value that keeps the whole datagram (the filter returns how many bytes to keep)."""

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)

# Opcodes (linux/filter.h, linux/bpf_common.h).
LD_W_ABS, LD_H_ABS, LD_B_ABS, LD_W_LEN = 0x20, 0x28, 0x30, 0x80
JEQ_K, JGT_K, JGE_K, JSET_K, JEQ_X, JGT_X = 0x15, 0x25, 0x35, 0x45, 0x1D, 0x2D
ADD_K, TAX, TXA, RET_K = 0x04, 0x07, 0x87, 0x06


@dataclass(frozen=True, slots=True)
class Insn:
    """One instruction; ``jt``/``jf`` are label names (or ``None``: the next instruction)."""

    code: int
    k: int = 0
    jt: str | None = None
    jf: str | None = None
    label: str | None = None


def _program(gro: bool = False) -> list[Insn]:
    """The filter; with ``gro`` (the socket has ``UDP_GRO`` on) the kernel runs it once on a coalesced
    run of datagrams (one sender's ``UDP_SEGMENT`` run, or equal-sized datagrams the kernel merged), of
    which it sees the first datagram's header and the run's length: the run may be up to 64 KiB long,
    a handshake message or a STUN message may be followed by the run's other datagrams (at least its
    exact length; a STUN length field no larger than the rest), and userspace splits the run and checks
    every datagram (decision 0150)."""
    p = UDP_HEADER  # payload offset
    exact = JGE_K if gro else JEQ_K  # a handshake message: its length, or the first of a run
    stun_end = Insn(JGT_X, 0, "drop", "keep") if gro else Insn(JEQ_X, 0, "keep", "drop")
    return [
        Insn(LD_W_LEN),  # A = 8 + payload length
        Insn(JGT_K, p + (MAX_GRO_PAYLOAD if gro else MAX_PAYLOAD), "drop", None),
        Insn(JGE_K, p + 4, None, "drop"),  # every kept shape has at least 4 bytes
        Insn(TAX),  # X = length (kept for the exact-length checks)
        Insn(LD_B_ABS, p),  # A = byte 0
        Insn(JGE_K, 0x40, "channel", None),
        # byte 0 < 0x40: WireGuard (types 1-4) or STUN
        Insn(JEQ_K, 0, "stun", None),
        Insn(JGT_K, 4, "stun", None),
        Insn(LD_H_ABS, p + 1, label="wg"),  # bytes 1-2
        Insn(JEQ_K, 0, None, "stun"),
        Insn(LD_B_ABS, p + 3),
        Insn(JEQ_K, 0, None, "stun"),
        Insn(LD_B_ABS, p),
        Insn(JEQ_K, 1, "len148", None),
        Insn(JEQ_K, 2, "len92", None),
        Insn(JEQ_K, 3, "len64", None),
        Insn(TXA),  # type 4: data, at least 32 bytes
        Insn(JGE_K, p + 32, "keep", "stun"),
        Insn(TXA, label="len148"),
        Insn(exact, p + 148, "keep", "stun"),
        Insn(TXA, label="len92"),
        Insn(exact, p + 92, "keep", "stun"),
        Insn(TXA, label="len64"),
        Insn(exact, p + 64, "keep", "stun"),
        # STUN: 20-byte header, magic cookie, length field = the rest (with gro: not beyond it), a multiple
        # of 4
        Insn(TXA, label="stun"),
        Insn(JGE_K, p + 20, None, "drop"),
        Insn(LD_W_ABS, p + 4),
        Insn(JEQ_K, STUN_MAGIC, None, "drop"),
        Insn(LD_H_ABS, p + 2),
        Insn(JSET_K, 3, "drop", None),
        Insn(ADD_K, p + 20),
        stun_end,
        # ChannelData: 0x40-0x4F from port 3478, length field not beyond the datagram
        Insn(JGT_K, 0x4F, "drop", None, label="channel"),
        Insn(LD_H_ABS, 0),  # UDP source port
        Insn(JEQ_K, TURN_PORT, None, "drop"),
        Insn(LD_H_ABS, p + 2),
        Insn(ADD_K, p + 4),
        Insn(JGT_X, 0, "drop", "keep"),
        Insn(RET_K, KEEP, label="keep"),
        Insn(RET_K, 0, label="drop"),
    ]


def assemble(program: list[Insn]) -> list[tuple[int, int, int, int]]:
    """``(code, jt, jf, k)`` with jump labels resolved to forward offsets (cBPF jumps only forward)."""
    where = {i.label: n for n, i in enumerate(program) if i.label is not None}
    out = []
    for n, i in enumerate(program):
        jt = where[i.jt] - n - 1 if i.jt is not None else 0
        jf = where[i.jf] - n - 1 if i.jf is not None else 0
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError(f"instruction {n}: jump out of range")
        out.append((i.code, jt, jf, i.k & 0xFFFFFFFF))
    return out


PROGRAM = assemble(_program())
"""The filter, assembled."""

PROGRAM_GRO = assemble(_program(gro=True))
"""The filter for a socket with ``UDP_GRO`` (see :func:`_program`)."""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach(sock: socket.socket, program: list[tuple[int, int, int, int]] = PROGRAM) -> None:
    """Attach ``program`` to ``sock`` (``SO_ATTACH_FILTER``); OSError if the kernel refuses it."""
    raw = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(program), ctypes.cast(buf, ctypes.c_void_p).value)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def run(program: list[tuple[int, int, int, int]], packet: bytes) -> int:
    """Interpret ``program`` on ``packet`` (UDP header + payload) as the kernel does for this subset of
    instructions (for tests): the return value, 0 when a load runs past the end."""
    a = x = 0
    pc = 0
    n = len(packet)
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == LD_W_LEN:
            a = n
        elif code in (LD_W_ABS, LD_H_ABS, LD_B_ABS):
            size = {LD_W_ABS: 4, LD_H_ABS: 2, LD_B_ABS: 1}[code]
            if k + size > n:
                return 0
            a = int.from_bytes(packet[k : k + size], "big")
        elif code == TAX:
            x = a
        elif code == TXA:
            a = x
        elif code == ADD_K:
            a = (a + k) & 0xFFFFFFFF
        elif code == RET_K:
            return k
        else:
            cond = {
                JEQ_K: a == k,
                JGT_K: a > k,
                JGE_K: a >= k,
                JSET_K: bool(a & k),
                JEQ_X: a == x,
                JGT_X: a > x,
            }[code]
            pc += jt if cond else jf
