"""The TUN device: raw IP packets in and out of the kernel (as Firezone's
``rust/bin-shared/src/tun_device_manager/linux.rs``).

The device is created with ``ioctl(TUNSETIFF)`` on ``/dev/net/tun`` (name ``tun-firezone`` by default,
``IFF_TUN | IFF_NO_PI``: one IP packet per ``read``/``write``, no prefix header) and its descriptor is made
non-blocking. Reading waits for readiness with :func:`anyio.wait_readable` and then reads as many packets
as are queued, up to a batch bound (R9: the driver handles one batch per source per turn). Writing never
waits: a packet the kernel refuses is dropped and the error is returned as a value (Firezone logs a
warning and drops it).

Addresses, MTU, link state and routes are not set here but by :mod:`gateway_io.netlink` when ``init``
arrives. The device lives in the network namespace of the thread that opens it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
import struct

import anyio

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


class TunDevice:
    """One TUN queue: an open, non-blocking descriptor attached to interface :attr:`name`."""

    __slots__ = ("_closed", "_fd", "name")

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self.name = name
        self._closed = False

    @classmethod
    def open(cls, name: str = DEFAULT_NAME, *, tx_queue_len: int | None = TX_QUEUE_LEN) -> TunDevice:
        """Create (or attach to) the TUN interface ``name``; raises ``OSError`` when that fails.

        Needs ``CAP_NET_ADMIN``. The interface appears in the caller's network namespace, down and
        without addresses. A failure to set the transmit queue length is only logged (as Firezone).
        """
        encoded = name.encode()
        if not 0 < len(encoded) < 16:
            raise ValueError(f"interface name {name!r} must be 1-15 bytes")
        _ensure_device_node()
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        try:
            result = fcntl.ioctl(fd, TUNSETIFF, _IFREQ_FLAGS.pack(encoded, IFF_TUN | IFF_NO_PI))
            actual = _IFREQ_FLAGS.unpack(result)[0].rstrip(b"\0").decode()
            os.set_blocking(fd, False)
        except BaseException:
            os.close(fd)
            raise
        if tx_queue_len is not None:
            try:
                _set_tx_queue_len(actual, tx_queue_len)
            except OSError as e:
                log.warning("cannot set txqueuelen of %s to %d: %s", actual, tx_queue_len, e)
        return cls(fd, actual)

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    def try_read(self) -> bytes | None:
        """One queued packet, or ``None`` when none is queued now. Raises :class:`TunClosed`."""
        if self._closed:
            raise TunClosed(self.name)
        try:
            packet = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in (errno.EBADF, errno.EBADFD):
                raise TunClosed(self.name) from e
            raise
        if not packet:
            raise TunClosed(self.name)
        return packet

    async def read(self) -> bytes:
        """The next packet, waiting until one arrives. Raises :class:`TunClosed`."""
        while True:
            packet = self.try_read()
            if packet is not None:
                return packet
            await self._wait()

    async def read_batch(self, max_packets: int = MAX_BATCH) -> list[bytes]:
        """Between 1 and ``max_packets`` packets: waits for the first, then takes what is queued."""
        batch = [await self.read()]
        while len(batch) < max_packets:
            packet = self.try_read()
            if packet is None:
                break
            batch.append(packet)
        return batch

    def write(self, packet: bytes) -> OSError | None:
        """Write one IP packet without waiting; the error (packet dropped) is returned, never raised."""
        if self._closed:
            return OSError(errno.EBADF, "TUN device closed")
        try:
            os.write(self._fd, packet)
        except OSError as e:
            return e
        return None

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
