"""The gateway's UDP sockets: one per address family, shared by WireGuard, STUN and TURN (as
Firezone's ``rust/connlib/tunnel/src/sockets.rs``).

Each family binds the wildcard address on port 52625 and falls back to a port the kernel picks when 52625
is taken (Firezone ``sockets.rs:18-25``, ``185-237``); the IPv6 socket is ``IPV6_V6ONLY``. Every socket
carries ``SO_MARK 0xfd002021`` so that its traffic skips the Firezone routing tables, and asks for large
buffers (``FIREZONE_UDP_SEND_BUFFER_SIZE`` / ``FIREZONE_UDP_RECV_BUFFER_SIZE``, defaults 16 MiB / 128
MiB; the kernel caps them at ``net.core.wmem_max``/``rmem_max``, which :func:`raise_buffer_limits` raises
at start-up). A family that cannot bind is reported, not fatal: :class:`UdpSockets` simply has no socket
for it.

Every socket carries a classic BPF filter (:mod:`gateway_io.socket_filter`, decision 0116): datagrams
that cannot be STUN, ChannelData or WireGuard by their shape (or are longer than
:data:`MAX_DATAGRAM_SIZE`) are dropped by the kernel before they are queued; the kernel counts them
(``/proc/net/udp`` ``drops``). A kernel that refuses the filter is logged, not fatal.

Receiving reads datagrams until the socket is empty (``EAGAIN``) or a batch is full, after one
readiness wait and without awaiting between datagrams (R9: the driver serves one batch per source per
turn); each datagram comes with the address it was sent to (``IP_PKTINFO`` / ``IPV6_PKTINFO``), because
the ICE agent matches datagrams to its host candidates by that address, and with the ECN bits of its IP
header (``IP_RECVTOS`` / ``IPV6_RECVTCLASS``; the core merges a CE mark into the inner packet, as
Firezone's ``quinn-udp`` receive path hands them to ``with_ecn_from_transport``). Both addresses are
looked up in small caches keyed by the kernel's raw values, so a datagram costs the system call, one
copy of its payload and two dictionary probes. With ``UDP_GRO`` (decision 0150) one receive may bring a run of
datagrams of one flow; it is split by the segment size the kernel reports in a control message.
:meth:`UdpSocket.send_batch` sends each run of datagrams to one destination with one ``sendmsg`` and
``UDP_SEGMENT``, falling back to one datagram per call for a destination where the kernel refuses it.
Datagrams longer than :data:`MAX_DATAGRAM_SIZE` that still arrive (no
filter) are discarded and counted, as Firezone does before decryption. Sending never waits and never raises: a
datagram the kernel refuses comes back as a :class:`gateway_core.inputs.SendFailed` (R7).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from gateway_core.addr import SocketAddr
from gateway_core.commands import Transmit
from gateway_core.errors import DropReason
from gateway_core.inputs import SendFailed
from gateway_core.interface import FIREZONE_MARK
from gateway_core.stats import Stats
from gateway_io import socket_filter
from gateway_io.io_counters import IoCounters

log = logging.getLogger(__name__)

DEFAULT_PORT = 52625
"""Preferred port, 49152 + 3473 ("FIRE" on a phone pad) (Firezone ``DEFAULT_LISTEN_PORT``)."""

SEND_BUFFER_SIZE = 16 * 1024 * 1024
"""Default ``SO_SNDBUF`` request (Firezone ``socket_factory::SEND_BUFFER_SIZE``, 16 MiB)."""

RECV_BUFFER_SIZE = 128 * 1024 * 1024
"""Default ``SO_RCVBUF`` request (Firezone ``socket_factory::RECV_BUFFER_SIZE``, 128 MiB): room for bursts
while the single event loop is busy."""

MAX_DATAGRAM_SIZE = 1316
"""Largest datagram accepted: 1280-byte IP packet + 32 bytes WireGuard + 4 bytes ChannelData (Firezone
``MAX_FZ_PAYLOAD``; bigger ones are discarded before decryption, ``tunnel/src/io.rs:527-534``)."""

MAX_BATCH = 64
"""Datagrams per :meth:`UdpSocket.receive_batch` at most (R9: one batch per source per turn; a batch is
small next to the TUN's 100 so that the timer is checked often)."""

_RECV_BUFFER = 65536
"""Receive buffer: the largest UDP payload, so an oversized datagram is seen whole and then discarded."""

_ANC_SIZE = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4) + socket.CMSG_SPACE(4)
"""Ancillary buffer: one ``in6_pktinfo`` (20 bytes) or ``in_pktinfo`` (12), with room to spare, the TOS
byte or the traffic class (an ``int``), and the ``UDP_GRO`` segment size (an ``int``)."""

Datagram = tuple[SocketAddr, SocketAddr, bytes, int]
"""``(local, remote, payload, ecn)``: a received datagram and the ECN bits of its IP header."""

SOL_UDP = 17
"""Socket option level of UDP (``IPPROTO_UDP``)."""
UDP_SEGMENT = 103
"""``UDP_SEGMENT`` (``linux/udp.h``): a ``sendmsg`` control message (``u16``) asking the kernel to cut the
buffer into datagrams of that size (UDP GSO, Linux 4.18)."""
UDP_GRO = 104
"""``UDP_GRO`` (``linux/udp.h``): the kernel may hand one receive a run of same-sized datagrams of one
flow, with their size in a control message (Linux 5.0)."""

GSO_MAX_SEGMENTS = 64
"""Datagrams per ``UDP_SEGMENT`` send at most (the kernel's ``UDP_MAX_SEGMENTS`` before Linux 6.9; 128 after;
wireguard-go's ``conn/bind_std.go`` uses 64)."""
GSO_MAX_BYTES = 65507
"""Payload bytes per ``UDP_SEGMENT`` send at most: the largest UDP payload over IPv4."""

IP_PKTINFO = 8
"""``IP_PKTINFO`` (``linux/in.h``; not exported by Python's ``socket`` module)."""

_IN_PKTINFO = struct.Struct("=I4s4s")
"""``struct in_pktinfo``: ifindex, spec_dst, addr."""

_IN6_PKTINFO = struct.Struct("=16sI")
"""``struct in6_pktinfo``: addr, ifindex."""

_INT = struct.Struct("=i")
"""An ``int`` control message value (``IP_TOS`` and ``IPV6_TCLASS`` on ``sendmsg``)."""

_ADDR_CACHE_LIMIT = 4096
"""Parsed addresses kept per cache (raw kernel value -> ``SocketAddr``) so that the hot path does not
parse each time; a cache that fills up is cleared (a flood from random sources only costs the parse)."""


OFFLOAD_ENV = "FIREZONE_UDP_OFFLOAD"
"""``0``/``false``/``off``/``no`` turns ``UDP_GRO`` and ``UDP_SEGMENT`` off (one datagram per system call)."""


def offload_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Whether :data:`OFFLOAD_ENV` allows the UDP offloads (anything but ``0``/``false``/``off``/``no``)."""
    value = (os.environ if env is None else env).get(OFFLOAD_ENV, "1").strip().lower()
    return value not in ("0", "false", "off", "no")


def raise_buffer_limits(rmem: int = RECV_BUFFER_SIZE, wmem: int = SEND_BUFFER_SIZE) -> list[str]:
    """Write ``net.core.rmem_max``/``wmem_max`` (start-up step 5, unless ``--no-inc-buf``); the errors.

    Firezone only logs failures (without root the writes fail; the buffers are then capped lower).
    """
    errors = []
    for name, value in (("rmem_max", rmem), ("wmem_max", wmem)):
        try:
            with open(f"/proc/sys/net/core/{name}", "w") as f:
                f.write(str(value))
        except OSError as e:
            errors.append(f"net.core.{name}: {e.strerror or e}")
    return errors


def buffer_sizes_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(send, recv)`` from ``FIREZONE_UDP_SEND_BUFFER_SIZE``/``..._RECV_...``; bad values: defaults."""
    env = os.environ if env is None else env
    sizes = []
    for var, default in (
        ("FIREZONE_UDP_SEND_BUFFER_SIZE", SEND_BUFFER_SIZE),
        ("FIREZONE_UDP_RECV_BUFFER_SIZE", RECV_BUFFER_SIZE),
    ):
        text = env.get(var, "")
        try:
            sizes.append(int(text) if text else default)
        except ValueError:
            log.debug("ignoring %s=%r (not a number)", var, text)
            sizes.append(default)
    return sizes[0], sizes[1]


class UdpSocket:
    """One non-blocking UDP socket of one family, bound to the wildcard address."""

    __slots__ = (
        "_anc",
        "_bufs",
        "_closed",
        "_dsts",
        "_locals",
        "_no_gso",
        "_pending",
        "_pending_at",
        "_remotes",
        "_v6",
        "_view",
        "family",
        "filtered",
        "gro",
        "gso",
        "io",
        "local",
        "sock",
        "stats",
    )

    def __init__(
        self, sock: socket.socket, *, filtered: bool = False, gro: bool = False, gso: bool = False
    ) -> None:
        self.sock = sock
        self.family = sock.family
        host, port = sock.getsockname()[:2]
        self.local = SocketAddr(ipaddress.ip_address(host), port)
        self.filtered = filtered
        """The kernel drops what cannot be STUN, ChannelData or WireGuard (:mod:`socket_filter`)."""
        self.stats = Stats()
        self._view = memoryview(bytearray(_RECV_BUFFER))
        self._bufs = [self._view]
        self._anc = _ANC_SIZE
        self._locals: dict[bytes, SocketAddr] = {}
        self._remotes: dict[tuple[Any, ...], SocketAddr] = {}
        self._closed = False
        self.gro = gro
        """``UDP_GRO`` is on: one receive may hold a run of datagrams (split here)."""
        self.gso = gso
        """Runs to one destination go out with one ``sendmsg`` and ``UDP_SEGMENT``."""
        self._pending: list[Datagram] = []
        self._pending_at = 0
        self._dsts: dict[SocketAddr, tuple[str, int]] = {}
        """Destination tuples for ``sendto``, built once per peer (cleared at :data:`_ADDR_CACHE_LIMIT`)."""
        self._no_gso: set[SocketAddr] = set()
        """Destinations where the kernel refused ``UDP_SEGMENT``: sent one by one from then on."""
        self._v6 = self.local.ip.version == 6
        """The family's index in :class:`IoCounters` (a bool indexes as 0/1: ``V4``/``V6``)."""
        self.io = IoCounters()
        """Where the datagrams this socket received and sent are counted (:meth:`count_into`)."""

    def count_into(self, io: IoCounters) -> None:
        """Count received and sent datagrams in ``io`` from now on (the driver's, for the metrics): per
        receive and per sent run, where the sizes are at hand anyway."""
        self.io = io

    @classmethod
    def bind(
        cls,
        family: socket.AddressFamily,
        port: int = DEFAULT_PORT,
        *,
        mark: int | None = FIREZONE_MARK,
        send_buffer: int | None = SEND_BUFFER_SIZE,
        recv_buffer: int | None = RECV_BUFFER_SIZE,
        fallback: bool = True,
        shape_filter: bool = True,
        offload: bool | None = None,
    ) -> UdpSocket:
        """Bind ``family``'s wildcard address on ``port``, else (``fallback``) on a free port; OSError.

        With ``offload`` the socket receives with ``UDP_GRO`` and sends runs with ``UDP_SEGMENT`` where the
        kernel allows it (refusal is logged once and the socket works one datagram at a time); default:
        :func:`offload_from_env`."""
        if offload is None:
            offload = offload_from_env()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        filtered = False
        gro = gso = False
        try:
            sock.setblocking(False)
            if offload:
                try:
                    sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                    gro = True
                except OSError as e:
                    log.info("UDP_GRO refused (one datagram per receive): %s", e)
                try:
                    sock.getsockopt(SOL_UDP, UDP_SEGMENT)
                    gso = True
                except OSError as e:
                    log.info("UDP_SEGMENT not available (one datagram per send): %s", e)
            else:
                log.info("UDP offloads off (%s): one datagram per system call", OFFLOAD_ENV)
            if shape_filter:
                # Before bind: nothing unfiltered is ever queued.
                try:
                    socket_filter.attach(sock, socket_filter.PROGRAM_GRO if gro else socket_filter.PROGRAM)
                    filtered = True
                except OSError as e:
                    log.warning("cannot attach the UDP socket filter (garbage reaches the daemon): %s", e)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
            if mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("=I", mark))
            host = "::" if family == socket.AF_INET6 else "0.0.0.0"
            try:
                sock.bind((host, port))
            except OSError as e:
                if not fallback or port == 0 or e.errno != errno.EADDRINUSE:
                    raise
                log.info("UDP port %d taken (%s), using a free port", port, e.strerror)
                sock.bind((host, 0))
            for opt, size in ((socket.SO_SNDBUF, send_buffer), (socket.SO_RCVBUF, recv_buffer)):
                if size is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, opt, size)
                    except OSError as e:
                        log.warning("cannot set socket buffer size %d: %s", size, e)
        except BaseException:
            sock.close()
            raise
        return cls(sock, filtered=filtered, gro=gro, gso=gso)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _local_of(self, anc: list[tuple[int, int, bytes]]) -> SocketAddr:
        """The address a datagram was sent to, from its ``IP_PKTINFO`` / ``IPV6_PKTINFO`` (cached)."""
        local = self.local
        for level, kind, data in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
                dst = socket.inet_ntop(socket.AF_INET, _IN_PKTINFO.unpack_from(data)[2])
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
                dst = socket.inet_ntop(socket.AF_INET6, data[:16])
            else:
                continue
            local = SocketAddr(ipaddress.ip_address(dst), local.port)
            if len(self._locals) >= _ADDR_CACHE_LIMIT:
                self._locals.clear()
            self._locals[data] = local
        return local

    def _remote_of(self, addr: tuple[Any, ...]) -> SocketAddr:
        if len(self._remotes) >= _ADDR_CACHE_LIMIT:
            self._remotes.clear()
        remote = self._remotes[addr] = SocketAddr(ipaddress.ip_address(addr[0].partition("%")[0]), addr[1])
        return remote

    def try_receive(self) -> Datagram | None:
        """``(local, remote, payload, ecn)`` of one queued datagram, or ``None`` if none is queued now."""
        if self._pending_at >= len(self._pending):
            self._pending.clear()
            self._pending_at = 0
            if not self._receive_into(self._pending):
                return None
        item = self._pending[self._pending_at]
        self._pending_at += 1
        return item

    def _receive_into(self, out: list[Datagram]) -> bool:
        """One receive: its datagram(s) (a ``UDP_GRO`` run is split) appended to ``out``; False: empty."""
        while True:
            try:
                n, anc, _flags, addr = self.sock.recvmsg_into(self._bufs, self._anc)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as e:
                # e.g. ECONNREFUSED from an ICMP error for an earlier send: not a datagram, read on.
                self.stats.drop(DropReason.UDP_RECEIVE_ERROR)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("UDP receive error on %s: %s", self.local, e)
                continue
            size = n
            local = self.local
            ecn = 0
            for level, kind, data in anc:
                if level == SOL_UDP:
                    if kind == UDP_GRO and len(data) >= 2:
                        size = int.from_bytes(data[:4] if len(data) >= 4 else data, sys.byteorder) or n
                elif kind == IP_PKTINFO or kind == socket.IPV6_PKTINFO:
                    local = self._locals.get(data) or self._local_of(anc)
                else:  # the TOS byte (IPv4) or the traffic class (IPv6, an int)
                    ecn = (data[0] if len(data) == 1 else int.from_bytes(data, sys.byteorder)) & 3
            if size > MAX_DATAGRAM_SIZE:
                self.stats.drop(DropReason.UDP_OVERSIZED, -(-n // size))
                continue
            remote = self._remotes.get(addr) or self._remote_of(addr)
            view = self._view[:n]
            io, v6 = self.io, self._v6
            io.udp_rx_bytes[v6] += n
            if size >= n:
                out.append((local, remote, view[:n].tobytes(), ecn))
                io.udp_rx_packets[v6] += 1
            else:
                for at in range(0, n, size):
                    out.append((local, remote, view[at : at + size].tobytes(), ecn))
                io.udp_rx_packets[v6] += -(-n // size)
            return True

    async def receive_batch(self, max_datagrams: int = MAX_BATCH) -> list[Datagram]:
        """At least 1 datagram ``(local, remote, payload, ecn)``, waiting for the first; then what is queued,
        until ``max_datagrams`` are in (a ``UDP_GRO`` run is never cut: a batch may exceed it by one run)."""
        while True:
            batch = self.receive_nowait(max_datagrams)
            if batch:
                return batch
            await anyio.wait_readable(self.sock)

    def receive_nowait(self, max_datagrams: int = MAX_BATCH) -> list[Datagram]:
        """What is queued now, up to ``max_datagrams`` (as :meth:`receive_batch`), without waiting: ``[]``
        when nothing is. The driver receives this way while the socket has datagrams and waits with
        :meth:`wait_readable` once it is empty. Raises ``anyio.ClosedResourceError`` once closed."""
        batch: list[Datagram] = []
        if self._pending_at < len(self._pending):
            batch.extend(self._pending[self._pending_at :])
            self._pending.clear()
            self._pending_at = 0
        while len(batch) < max_datagrams and self._receive_into(batch):
            pass
        if not batch and self._closed:
            raise anyio.ClosedResourceError
        return batch

    async def wait_readable(self) -> None:
        """Return once a receive may find a datagram. Raises ``anyio.ClosedResourceError`` once closed."""
        if self._pending_at < len(self._pending):
            return
        if self._closed:
            raise anyio.ClosedResourceError
        await anyio.wait_readable(self.sock)

    def _dst(self, dst: SocketAddr) -> tuple[str, int]:
        addr = self._dsts.get(dst)
        if addr is None:
            if len(self._dsts) >= _ADDR_CACHE_LIMIT:
                self._dsts.clear()
            addr = self._dsts[dst] = (str(dst.ip), dst.port)
        return addr

    def _pktinfo(self, src: SocketAddr | None, dst: SocketAddr) -> list[tuple[int, int, bytes]]:
        if src is None or src.ip.is_unspecified or src.ip.version != dst.ip.version:
            return []
        if dst.ip.version == 4:
            return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, src.ip.packed, b"\0\0\0\0"))]
        return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(src.ip.packed, 0))]

    @staticmethod
    def _ecn(ecn: int, dst: SocketAddr) -> tuple[int, int, bytes]:
        """The control message that gives one ``sendmsg`` the ECN bits ``ecn`` (the low two bits of the
        IPv4 TOS byte or the IPv6 traffic class; the DSCP bits stay 0, as snownet sends them)."""
        if dst.ip.version == 4:
            return (socket.IPPROTO_IP, socket.IP_TOS, _INT.pack(ecn & 3))
        return (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, _INT.pack(ecn & 3))

    def send(self, transmit: Transmit) -> SendFailed | None:
        """Send one datagram now (from ``transmit.src``'s IP if given, with its ECN bits); a failure comes
        back as a value."""
        dst = transmit.dst
        try:
            src = transmit.src
            if transmit.ecn:
                anc = self._pktinfo(src, dst)
                anc.append(self._ecn(transmit.ecn, dst))
                self.sock.sendmsg([transmit.payload], anc, 0, self._dst(dst))
            elif src is None:
                self.sock.sendto(transmit.payload, self._dst(dst))
            else:
                self.sock.sendmsg([transmit.payload], self._pktinfo(src, dst), 0, self._dst(dst))
        except OSError as e:
            return SendFailed(dst, f"{type(e).__name__}: {e.strerror or e}")
        io, v6 = self.io, self._v6
        io.udp_tx_packets[v6] += 1
        io.udp_tx_bytes[v6] += len(transmit.payload)
        return None

    def send_batch(self, transmits: list[Transmit], others: list[Transmit] | None = None) -> list[SendFailed]:
        """Send ``transmits`` in order; each run to one destination (same source, same ECN bits, same size
        but a shorter last) goes out with one ``sendmsg`` and ``UDP_SEGMENT``. The failures, as values.

        With ``others``, the datagrams to the other IP family are appended to it in order instead (the
        family is looked at once per run): the driver hands one batch to its sockets in turn, with no pass
        of its own to split it."""
        failed: list[SendFailed] = []
        v6 = self._v6
        if not self.gso:
            for t in transmits:
                if others is not None and (t.dst.ip.version == 6) is not v6:
                    others.append(t)
                    continue
                f = self.send(t)
                if f is not None:
                    failed.append(f)
            return failed
        io = self.io
        i, n = 0, len(transmits)
        while i < n:
            first = transmits[i]
            if others is not None and (first.dst.ip.version == 6) is not v6:
                others.append(first)
                i += 1
                continue
            total = size = len(first.payload)
            j = i + 1
            if first.dst not in self._no_gso:
                while (
                    j < n
                    and j - i < GSO_MAX_SEGMENTS
                    and (t := transmits[j]).dst == first.dst
                    and t.src == first.src
                    and t.ecn == first.ecn
                    and len(t.payload) <= size
                    and total + len(t.payload) <= GSO_MAX_BYTES
                ):
                    total += len(t.payload)
                    j += 1
                    if len(t.payload) < size:
                        break
            if j - i == 1:
                f = self.send(first)
                if f is not None:
                    failed.append(f)
            elif self._send_run(transmits[i:j], size, failed):
                io.udp_tx_packets[v6] += j - i
                io.udp_tx_bytes[v6] += total
            i = j
        return failed

    def _send_run(self, run: list[Transmit], size: int, failed: list[SendFailed]) -> bool:
        """Send ``run`` with one ``sendmsg``: True when that went out (the caller counts it); a refusal
        of GSO sends it one by one (each counted by :meth:`send`), other failures go to ``failed``."""
        first = run[0]
        anc = self._pktinfo(first.src, first.dst)
        anc.append((SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder)))
        if first.ecn:
            anc.append(self._ecn(first.ecn, first.dst))
        try:
            self.sock.sendmsg([b"".join(t.payload for t in run)], anc, 0, self._dst(first.dst))
        except OSError as e:
            if e.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.EMSGSIZE):
                # The route's device cannot segment (e.g. no checksum offload): one by one, from now on.
                if not self._no_gso:
                    log.info("UDP GSO refused towards %s (%s): sending datagrams one by one", first.dst, e)
                self._no_gso.add(first.dst)
                self.stats.incr("udp.gso_refused")
                failed.extend(f for t in run if (f := self.send(t)) is not None)
                return False
            failed.append(SendFailed(first.dst, f"{type(e).__name__}: {e.strerror or e}"))
            return False
        self.stats.incr("udp.gso_sends")
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            anyio.notify_closing(self.sock)
        except RuntimeError:
            pass
        self.sock.close()


@dataclass(slots=True)
class UdpSockets:
    """The IPv4 and IPv6 sockets (either may be missing) and why a family could not bind."""

    v4: UdpSocket | None
    v6: UdpSocket | None
    errors: dict[int, str] = field(default_factory=dict)

    @classmethod
    def bind(
        cls,
        port: int = DEFAULT_PORT,
        *,
        mark: int | None = FIREZONE_MARK,
        env: Mapping[str, str] | None = None,
        fallback: bool = True,
        shape_filter: bool = True,
        offload: bool | None = None,
    ) -> UdpSockets:
        """Bind both families (each falling back to a free port); a family that fails is recorded."""
        send_size, recv_size = buffer_sizes_from_env(env)
        found: dict[int, UdpSocket | None] = {}
        errors: dict[int, str] = {}
        for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            try:
                found[version] = UdpSocket.bind(
                    family,
                    port,
                    mark=mark,
                    send_buffer=send_size,
                    recv_buffer=recv_size,
                    fallback=fallback,
                    shape_filter=shape_filter,
                    offload=offload,
                )
            except OSError as e:
                log.info("cannot bind the IPv%d UDP socket: %s", version, e)
                found[version] = None
                errors[version] = f"{type(e).__name__}: {e.strerror or e}"
        if not any(found.values()):
            log.error("no UDP socket available: the data plane is suspended")
        return cls(found[4], found[6], errors)

    def send(self, transmit: Transmit) -> SendFailed | None:
        """Send through the socket of the destination's family; no socket of that family: SendFailed."""
        sock = self.v4 if transmit.dst.ip.version == 4 else self.v6
        if sock is None:
            return SendFailed(transmit.dst, f"no IPv{transmit.dst.ip.version} socket")
        return sock.send(transmit)

    def send_batch(self, transmits: list[Transmit]) -> list[SendFailed]:
        """:meth:`UdpSocket.send_batch` per family (order kept within each): each socket sends its family's
        and hands the rest on; a missing family's datagrams come back as failures."""
        failed: list[SendFailed] = []
        rest = transmits
        for sock in self.sockets:
            others: list[Transmit] = []
            failed.extend(sock.send_batch(rest, others))
            rest = others
        failed.extend(SendFailed(t.dst, f"no IPv{t.dst.ip.version} socket") for t in rest)
        return failed

    @property
    def sockets(self) -> list[UdpSocket]:
        return [s for s in (self.v4, self.v6) if s is not None]

    def close(self) -> None:
        for s in self.sockets:
            s.close()
