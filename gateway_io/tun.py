"""The TUN device: raw IP packets in and out of the kernel (as Firezone's
``rust/bin-shared/src/tun_device_manager/linux.rs``).

The device is created with ``ioctl(TUNSETIFF)`` on ``/dev/net/tun`` (name ``tun-firezone`` by default,
``IFF_TUN | IFF_NO_PI``: one IP packet per ``read``/``write``, no prefix header) and its descriptor is made
non-blocking. Reading waits for readiness with :func:`anyio.wait_readable` and then reads as many packets
as are queued, up to a batch bound (R9: the driver handles one batch per source per turn). Writing never
waits: a packet the kernel refuses is dropped and the error is returned as a value (Firezone logs a
warning and drops it).

**Offloads** (decision 0150). By default the device is opened with ``IFF_VNET_HDR`` and
``TUNSETOFFLOAD`` (checksum, TSO4/TSO6, and USO4/USO6 where the kernel offers them), as wireguard-go's
``tun/tun_linux.go``: every read and write then carries a 10-byte virtio-net header, one read may return
a TCP (or UDP) super-packet of up to 64 KiB, which :func:`gateway_core.wire.offload.segment` cuts into
MTU-sized packets, and :meth:`TunDevice.write_batch` hands the kernel consecutive segments of one flow as
one super-packet (:func:`gateway_core.wire.offload.coalesce`). If the kernel refuses ``IFF_VNET_HDR`` or
the TCP offloads, or ``FIREZONE_TUN_OFFLOAD=0`` is set, the device works one plain packet per system call
as before, and says so once in the log. Writes go to a writer thread by default (decision 0151), so that
the kernel's forwarding work behind a TUN write runs beside the event loop.

Addresses, MTU, link state and routes are not set here but by :mod:`gateway_io.netlink` when ``init``
arrives. The device lives in the network namespace of the thread that opens it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import queue
import socket
import stat
import struct
import threading

import anyio

from gateway_core.errors import DecodeError, DropReason
from gateway_core.stats import Stats
from gateway_core.wire.offload import VNET_HDR_LEN, ZERO_HDR, VnetHdr, coalesce, segment
from gateway_io.io_counters import IoCounters

log = logging.getLogger(__name__)

DEFAULT_NAME = "tun-firezone"
"""Interface name (Firezone: ``tun-firezone``, ``tun_device_manager/linux.rs:77``)."""

TUN_PATH = "/dev/net/tun"
"""The clone device; created as char device 10:200 when missing, as Firezone does (``linux.rs:795-820``)."""

TUN_MAJOR, TUN_MINOR = 10, 200
"""Device numbers of ``/dev/net/tun`` (Linux ``Documentation/networking/tuntap.rst``)."""

TUNSETIFF = 0x400454CA
"""``_IOW('T', 202, int)``: attach the descriptor to a (new) TUN interface (``connlib/tun/src/ioctl.rs``)."""

IFF_TUN = 0x0001
"""Layer-3 device: IP packets, no Ethernet header."""

IFF_NO_PI = 0x1000
"""No 4-byte packet-information prefix: each read/write is exactly one IP packet."""

IFF_VNET_HDR = 0x4000
"""Every read and write starts with a ``struct virtio_net_hdr`` (``linux/if_tun.h``)."""

TUNSETOFFLOAD = 0x400454D0
"""``_IOW('T', 208, unsigned int)``: the offloads userspace can take (``linux/if_tun.h``)."""

TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6 = 0x01, 0x02, 0x04, 0x20, 0x40
"""Offload bits (``linux/if_tun.h``): partial checksums, TCP segmentation (v4/v6), UDP segmentation
(v4/v6, Linux 6.2). wireguard-go asks for CSUM|TSO4|TSO6 and adds USO where the kernel has it."""

OFFLOAD_ENV = "FIREZONE_TUN_OFFLOAD"
"""``0``/``false``/``off`` turns the offloads off (one packet per system call, as before)."""

OFFLOAD_READ_SIZE = VNET_HDR_LEN + 65535
"""Read buffer with offloads: the header and the largest super-packet."""

VERIFY_COALESCED = False
"""Whether a segment's own checksum is checked before it is merged into a super-packet (Linux GRO and
wireguard-go check). Everything written here came out of the authenticated tunnel, so only its sender
could have got a checksum wrong; checking costs a full checksum per packet in Python, about four times
the rest of coalescing (decision 0150)."""

COALESCE_UDP = False
"""Whether UDP datagrams of one flow are written as one USO super-packet. Off: the kernel hands such a
packet to a receiving socket without ``UDP_GRO`` all at once, and an application with a default receive
buffer (iperf3) then lost 12 % of a 100 Mbit/s stream to buffer overflows (``UdpRcvbufErrors``), against
under 1 % with one datagram per write. TCP super-packets have no such effect (decision 0150). USO stays
negotiated, so the UDP super-packets of local senders using ``UDP_SEGMENT`` are still read and split."""

WRITER_ENV = "FIREZONE_TUN_WRITER_THREAD"
"""``0``/``false``/``off``/``no``: write to the TUN on the event loop's thread (no writer thread)."""

WRITER_QUEUE = 256
"""Batches waiting for the writer thread at most (a batch is what one driver turn produced: at most a few
64 KiB frames; some MiB at worst, reached only when the kernel stalls); beyond, batches are dropped and
counted, as a full transmit queue would drop them."""

WRITER_JOIN = 1.0
"""Seconds :meth:`TunDevice.close` waits for the writer thread to finish what is queued."""

SIOCSIFTXQLEN = 0x8943
"""Set an interface's transmit queue length (``linux/sockios.h``)."""

TX_QUEUE_LEN = 10_000
"""Transmit queue length (Firezone sets 10000, ``linux.rs:124``): room for bursts written by the kernel
towards the gateway while the event loop is busy."""

READ_SIZE = 1316
"""Read buffer per packet (Firezone's TUN receive buffer, ``MAX_FZ_PAYLOAD``). The MTU is 1280, so a
whole packet always fits."""

MAX_BATCH = 100
"""Packets read per :meth:`TunDevice.read_batch` at most (Firezone reads at most 100 TUN packets per
poll, ``tunnel/src/io.rs:35-41``), so that a flood from the TUN cannot starve the sockets and timers."""

_IFREQ_FLAGS = struct.Struct("16sH22x")
"""``struct ifreq`` (40 bytes) with the name and ``ifr_flags``."""

_IFREQ_INT = struct.Struct("16si20x")
"""``struct ifreq`` (40 bytes) with the name and an ``int`` (``ifr_qlen``)."""


class TunClosed(Exception):
    """The device was closed (by :meth:`TunDevice.aclose` or because the kernel ended it)."""


def _ensure_device_node(path: str = TUN_PATH) -> None:
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), mode=0o751, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(TUN_MAJOR, TUN_MINOR))


def _set_tx_queue_len(name: str, length: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCSIFTXQLEN, _IFREQ_INT.pack(name.encode(), length))


def _env_flag(name: str, env: dict[str, str] | None = None) -> bool:
    """A switch that is on unless ``name`` is ``0``/``false``/``off``/``no``."""
    value = (os.environ if env is None else env).get(name, "1").strip().lower()
    return value not in ("0", "false", "off", "no")


def offload_from_env(env: dict[str, str] | None = None) -> bool:
    """Whether :data:`OFFLOAD_ENV` allows the offloads (anything but ``0``/``false``/``off``/``no``)."""
    return _env_flag(OFFLOAD_ENV, env)


def _open_fd(encoded: bytes, flags: int) -> tuple[int, str]:
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        result = fcntl.ioctl(fd, TUNSETIFF, _IFREQ_FLAGS.pack(encoded, flags))
        actual = _IFREQ_FLAGS.unpack(result)[0].rstrip(b"\0").decode()
        os.set_blocking(fd, False)
    except BaseException:
        os.close(fd)
        raise
    return fd, actual


def _negotiate(fd: int) -> int:
    """The offloads the kernel accepted (``TUN_F_*``); raises ``OSError`` if it refuses the TCP ones."""
    base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, base | TUN_F_USO4 | TUN_F_USO6)
        return base | TUN_F_USO4 | TUN_F_USO6
    except OSError:
        fcntl.ioctl(fd, TUNSETOFFLOAD, base)  # a kernel before 6.2: no USO
        return base


class TunDevice:
    """One TUN queue: an open, non-blocking descriptor attached to interface :attr:`name`."""

    __slots__ = (
        "_buf",
        "_closed",
        "_fd",
        "_pending",
        "_wq",
        "_writer",
        "io",
        "name",
        "offloads",
        "stats",
        "vnet",
        "write_errors",
    )

    def __init__(self, fd: int, name: str, offloads: int = 0, *, writer_thread: bool = False) -> None:
        self._fd = fd
        self.name = name
        self._closed = False
        self.offloads = offloads
        """The ``TUN_F_*`` bits in force; 0: one plain packet per read and write."""
        self.vnet = offloads != 0
        self.stats = Stats()
        self._buf = bytearray(OFFLOAD_READ_SIZE if self.vnet else READ_SIZE)
        self._pending: list[bytes] = []
        """Segments of a super-packet not handed out yet (:meth:`try_read` returns one at a time)."""
        self.write_errors = 0
        """Frames the writer thread could not write (the kernel refused them) or dropped (queue full)."""
        self.io = IoCounters()
        """Where the packets read and written are counted (:meth:`count_into`)."""
        self._wq: queue.SimpleQueue[list[bytes] | None] | None = None
        self._writer: threading.Thread | None = None
        if writer_thread:
            self._wq = queue.SimpleQueue()
            self._writer = threading.Thread(target=self._write_loop, name=f"tun-writer-{name}", daemon=True)
            self._writer.start()

    @property
    def uso(self) -> bool:
        return bool(self.offloads & TUN_F_USO4)

    @classmethod
    def open(
        cls,
        name: str = DEFAULT_NAME,
        *,
        tx_queue_len: int | None = TX_QUEUE_LEN,
        offload: bool | None = None,
        writer_thread: bool | None = None,
    ) -> TunDevice:
        """Create (or attach to) the TUN interface ``name``; raises ``OSError`` when that fails.

        Needs ``CAP_NET_ADMIN``. The interface appears in the caller's network namespace, down and
        without addresses. A failure to set the transmit queue length is only logged (as Firezone).
        ``offload`` (default: :func:`offload_from_env`) asks for the kernel offloads; when the kernel
        refuses them the device falls back to plain packets and logs it once.
        """
        encoded = name.encode()
        if not 0 < len(encoded) < 16:
            raise ValueError(f"interface name {name!r} must be 1-15 bytes")
        _ensure_device_node()
        if offload is None:
            offload = offload_from_env()
        offloads = 0
        if offload:
            try:
                fd, actual = _open_fd(encoded, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
            except OSError as e:
                log.warning("TUN %s: IFF_VNET_HDR refused (%s): one packet per system call", name, e)
                fd, actual = _open_fd(encoded, IFF_TUN | IFF_NO_PI)
            else:
                try:
                    offloads = _negotiate(fd)
                except OSError as e:
                    log.warning("TUN %s: offloads refused (%s): one packet per system call", name, e)
                    os.close(fd)
                    fd, actual = _open_fd(encoded, IFF_TUN | IFF_NO_PI)
                else:
                    log.info(
                        "TUN %s: offloads 0x%x (checksum, TSO%s)",
                        actual,
                        offloads,
                        ", USO" * bool(offloads & TUN_F_USO4),
                    )
        else:
            fd, actual = _open_fd(encoded, IFF_TUN | IFF_NO_PI)
            log.info("TUN %s: offloads off (%s): one packet per system call", actual, OFFLOAD_ENV)
        if tx_queue_len is not None:
            try:
                _set_tx_queue_len(actual, tx_queue_len)
            except OSError as e:
                log.warning("cannot set txqueuelen of %s to %d: %s", actual, tx_queue_len, e)
        if writer_thread is None:
            writer_thread = _env_flag(WRITER_ENV)
        return cls(fd, actual, offloads, writer_thread=writer_thread)

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    def _read_frame(self) -> bytes | None:
        """One read (a frame, header included with offloads), or ``None`` when none is queued now."""
        try:
            n = os.readv(self._fd, [self._buf])
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in (errno.EBADF, errno.EBADFD):
                raise TunClosed(self.name) from e
            raise
        if not n:
            raise TunClosed(self.name)
        return bytes(memoryview(self._buf)[:n])

    def _read_into(self, out: list[bytes]) -> bool:
        """Append the packet(s) of one read to ``out``; False when nothing was queued. A frame the
        offload code cannot split is dropped and counted."""
        while True:
            frame = self._read_frame()
            if frame is None:
                return False
            io = self.io
            if not self.vnet:
                out.append(frame)
                v6 = frame[:1] >= b"\x60"  # (the version nibble 6, or not IP: as IoCounters.tun_read)
                io.tun_rx_packets[v6] += 1
                io.tun_rx_bytes[v6] += len(frame)
                return True
            v6 = frame[VNET_HDR_LEN : VNET_HDR_LEN + 1] >= b"\x60"
            if frame[1] == 0 and frame[0] == 0:  # no GSO, complete checksum: the common small packet
                out.append(frame[VNET_HDR_LEN:])
                io.tun_rx_packets[v6] += 1
                io.tun_rx_bytes[v6] += len(frame) - VNET_HDR_LEN
                return True
            try:
                segments = segment(VnetHdr.unpack(frame), frame[VNET_HDR_LEN:])
            except DecodeError as e:
                self.stats.drop(DropReason.TUN_OFFLOAD_MALFORMED)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("TUN %s: cannot split a frame: %s", self.name, e)
                continue
            out.extend(segments)
            io.tun_rx_packets[v6] += len(segments)
            io.tun_rx_bytes[v6] += sum(map(len, segments))
            self.stats.incr("tun.super_packets")
            return True

    def count_into(self, io: IoCounters) -> None:
        """Count the packets read and written in ``io`` from now on (the driver's, for the metrics): per
        frame read (a super-packet's segments at once) and per packet or batch written."""
        self.io = io

    def try_read(self) -> bytes | None:
        """One queued packet, or ``None`` when none is queued now. Raises :class:`TunClosed`."""
        if self._closed:
            raise TunClosed(self.name)
        if not self._pending and not self._read_into(self._pending):
            return None
        return self._pending.pop(0)

    async def read(self) -> bytes:
        """The next packet, waiting until one arrives. Raises :class:`TunClosed`."""
        while True:
            packet = self.try_read()
            if packet is not None:
                return packet
            await self._wait()

    async def read_batch(self, max_packets: int = MAX_BATCH) -> list[bytes]:
        """At least one packet, waiting for the first; then what is queued until ``max_packets`` are in
        (a super-packet is never cut: a batch may exceed the bound by its segments)."""
        while True:
            batch = self.read_nowait(max_packets)
            if batch:
                return batch
            await self._wait()

    def read_nowait(self, max_packets: int = MAX_BATCH) -> list[bytes]:
        """What is queued now, up to ``max_packets`` (as :meth:`read_batch`), without waiting: ``[]`` when
        nothing is. The driver reads this way while the device has packets (no task hand-over per batch)
        and waits with :meth:`wait_readable` once it is empty. Raises :class:`TunClosed`."""
        if self._closed:
            raise TunClosed(self.name)
        batch = self._pending
        self._pending = []
        while len(batch) < max_packets and self._read_into(batch):
            pass
        return batch

    async def wait_readable(self) -> None:
        """Return once a read may find a packet. Raises :class:`TunClosed`."""
        if self._pending:
            return
        await self._wait()

    def _write_loop(self) -> None:
        """The writer thread: writes queued frames in order; ``os.write`` releases the GIL, so the kernel's
        work behind a TUN write (forwarding, the receiver's stack) runs beside the event loop."""
        wq = self._wq
        assert wq is not None
        fd = self._fd
        while (frames := wq.get()) is not None:
            for frame in frames:
                try:
                    os.write(fd, frame)
                except OSError:
                    self.write_errors += 1

    def _enqueue(self, frames: list[bytes]) -> OSError | None:
        """Hand ``frames`` to the writer thread (one wake-up per batch)."""
        wq = self._wq
        assert wq is not None
        if wq.qsize() >= WRITER_QUEUE:
            self.write_errors += len(frames)
            return OSError(errno.ENOBUFS, "TUN writer queue full")
        wq.put(frames)
        return None

    def write(self, packet: bytes) -> OSError | None:
        """Write one IP packet without waiting; the error (packet dropped) is returned, never raised."""
        if self._closed:
            return OSError(errno.EBADF, "TUN device closed")
        if self._wq is not None:
            err = self._enqueue([ZERO_HDR + packet if self.vnet else packet])
            if err is None:
                self.io.tun_written(packet)
            return err
        try:
            if self.vnet:
                os.writev(self._fd, (ZERO_HDR, packet))
            else:
                os.write(self._fd, packet)
        except OSError as e:
            return e
        self.io.tun_written(packet)
        return None

    def write_batch(self, packets: list[bytes]) -> list[OSError]:
        """Write IP packets without waiting; with offloads, consecutive segments of one flow go out as one
        super-packet. The errors (each a frame dropped), never raised."""
        if self._closed:
            return [OSError(errno.EBADF, "TUN device closed")]
        errors: list[OSError] = []
        fd = self._fd
        if self._wq is not None:
            err = self._enqueue(
                coalesce(packets, udp=COALESCE_UDP and self.uso, verify=VERIFY_COALESCED)
                if self.vnet
                else list(packets)
            )
            if err is not None:
                return [err]
            self.io.tun_written_batch(packets)
            return []
        if not self.vnet or len(packets) == 1:
            for p in packets:
                err = self.write(p)
                if err is not None:
                    errors.append(err)
            return errors
        for frame in coalesce(packets, udp=COALESCE_UDP and self.uso, verify=VERIFY_COALESCED):
            try:
                os.write(fd, frame)
            except OSError as e:
                errors.append(e)
        self.io.tun_written_batch(packets[: len(packets) - len(errors)])  # (a close count: errors are frames)
        return errors

    async def _wait(self) -> None:
        try:
            await anyio.wait_readable(self._fd)
        except (anyio.ClosedResourceError, OSError) as e:
            raise TunClosed(self.name) from e
        if self._closed:
            raise TunClosed(self.name)

    def close(self) -> None:
        """Close the descriptor (the kernel then deletes the interface); waiting readers get TunClosed."""
        if self._closed:
            return
        self._closed = True
        if self._wq is not None and self._writer is not None:
            self._wq.put(None)  # the writer finishes what is queued, then stops
            self._writer.join(timeout=WRITER_JOIN)
        try:
            anyio.notify_closing(self._fd)
        except RuntimeError:
            pass  # no event loop running: nobody can be waiting
        os.close(self._fd)

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
