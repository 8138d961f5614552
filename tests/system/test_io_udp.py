"""System tests: the gateway's UDP sockets inside network namespaces the tests create (root; CI runs as
root, never skipped): port 52625 per family with fallback when taken, SO_MARK, buffer sizes from the
environment, batch receive with the destination address, oversized datagrams dropped (by the socket filter,
or counted by the socket without it), source selection,
send failures returned as values, a family that cannot bind.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import ip_address

import anyio
import pytest

from gateway_core.addr import SocketAddr
from gateway_core.commands import Transmit
from gateway_core.errors import DropReason
from gateway_core.inputs import SendFailed
from gateway_core.interface import FIREZONE_MARK
from gateway_io.udp import DEFAULT_PORT, MAX_DATAGRAM_SIZE, UdpSocket, UdpSockets, buffer_sizes_from_env
from tests.system.io_netns import inside, netns, sh

pytestmark = [pytest.mark.system]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ns() -> Iterator[str]:
    with netns("fzudp") as name:
        yield name


@pytest.fixture
def sockets(ns: str) -> Iterator[UdpSockets]:
    with inside(ns):
        s = UdpSockets.bind(
            env={"FIREZONE_UDP_RECV_BUFFER_SIZE": "65536", "FIREZONE_UDP_SEND_BUFFER_SIZE": "32768"}
        )
    try:
        yield s
    finally:
        s.close()


def peer_socket(ns: str, family: int, host: str) -> socket.socket:
    with inside(ns):
        s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(10)
    return s


def test_binds_52625_per_family_with_mark_and_buffers(ns: str, sockets: UdpSockets) -> None:
    assert sockets.v4 is not None and sockets.v6 is not None and sockets.errors == {}
    assert sockets.v4.local == SocketAddr(ip_address("0.0.0.0"), DEFAULT_PORT)
    assert sockets.v6.local == SocketAddr(ip_address("::"), DEFAULT_PORT)
    for s in sockets.sockets:
        assert s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) & 0xFFFFFFFF == FIREZONE_MARK
        # Linux doubles the requested value for bookkeeping.
        assert s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 65536
        assert s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 32768
    assert sockets.v6.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    listing = sh("ss", "-u", "-a", "-n", "-H", ns=ns)
    assert "0.0.0.0:52625" in listing and "[::]:52625" in listing


def test_falls_back_to_a_free_port_when_taken(ns: str, sockets: UdpSockets) -> None:
    with inside(ns):
        second = UdpSockets.bind()
    try:
        assert second.v4 is not None and second.v6 is not None
        assert second.v4.local.port not in (0, DEFAULT_PORT)
        assert second.v6.local.port not in (0, DEFAULT_PORT)
    finally:
        second.close()


def test_buffer_sizes_from_env() -> None:
    assert buffer_sizes_from_env({}) == (16 * 1024 * 1024, 128 * 1024 * 1024)
    assert buffer_sizes_from_env({"FIREZONE_UDP_SEND_BUFFER_SIZE": "1000"}) == (1000, 128 * 1024 * 1024)
    assert buffer_sizes_from_env({"FIREZONE_UDP_RECV_BUFFER_SIZE": "lots"}) == (
        16 * 1024 * 1024,
        128 * 1024 * 1024,
    )


def _wg_data(tag: bytes) -> bytes:
    """A datagram shaped like WireGuard data (what the socket filter lets through)."""
    return b"\x04\x00\x00\x00" + tag.ljust(28, b".")


@pytest.mark.anyio
async def test_batch_receive_with_destination_and_oversized_drop(ns: str, sockets: UdpSockets) -> None:
    assert sockets.v4 is not None and sockets.v6 is not None
    sh("ip", "addr", "add", "127.0.0.2/8", "dev", "lo", ns=ns)
    peer = peer_socket(ns, socket.AF_INET, "127.0.0.1")
    peer.sendto(b"\x04\x00\x00\x00" * ((MAX_DATAGRAM_SIZE + 4) // 4), ("127.0.0.2", DEFAULT_PORT))
    for i in range(10):
        peer.sendto(_wg_data(b"d%d" % i), ("127.0.0.2", DEFAULT_PORT))
    got = []
    with anyio.fail_after(10):
        first = await sockets.v4.receive_batch(max_datagrams=4)
        assert len(first) == 4
        got += first
        while len(got) < 10:
            got += await sockets.v4.receive_batch(max_datagrams=4)
    assert [p for _, _, p, _ in got] == [_wg_data(b"d%d" % i) for i in range(10)]
    local, remote, _, ecn = got[0]
    assert ecn == 0  # Not-ECT: the peer set no ECN bits
    assert local == SocketAddr(ip_address("127.0.0.2"), DEFAULT_PORT)  # the address it was sent to
    assert remote == SocketAddr(ip_address("127.0.0.1"), peer.getsockname()[1])
    # The oversized one never left the kernel (the filter), unless the socket has UDP_GRO: then the filter
    # lets WireGuard-data-shaped datagrams of any length through (a coalesced run is filtered whole) and
    # the daemon drops it by its length, counted (decision 0150).
    assert sockets.v4.stats.total_drops == (1 if sockets.v4.gro else 0)

    # Without the filter the daemon itself discards an oversized datagram, counted.
    with inside(ns):
        bare = UdpSocket.bind(socket.AF_INET, 0, mark=None, shape_filter=False)
    try:
        assert not bare.filtered
        port = bare.local.port
        peer.sendto(b"x" * (MAX_DATAGRAM_SIZE + 1), ("127.0.0.1", port))
        peer.sendto(b"small", ("127.0.0.1", port))
        with anyio.fail_after(10):
            [(_, _, payload, _)] = await bare.receive_batch()
        assert payload == b"small"
        assert bare.stats.snapshot().get(f"drop.{DropReason.UDP_OVERSIZED}") == 1
    finally:
        bare.close()
    peer.close()

    peer6 = peer_socket(ns, socket.AF_INET6, "::1")
    peer6.sendto(_wg_data(b"six"), ("::1", DEFAULT_PORT))
    with anyio.fail_after(10):
        [(local6, remote6, payload, _)] = await sockets.v6.receive_batch()
    assert payload == _wg_data(b"six") and local6 == SocketAddr(ip_address("::1"), DEFAULT_PORT)
    assert remote6.ip == ip_address("::1")
    peer6.close()


@pytest.mark.anyio
async def test_the_ecn_bits_of_each_datagram_come_with_it(ns: str, sockets: UdpSockets) -> None:
    """``IP_RECVTOS`` / ``IPV6_RECVTCLASS``: the ECN bits the sender's kernel put in the IP header."""
    assert sockets.v4 is not None and sockets.v6 is not None
    for family, host, level, opt, sock in (
        (socket.AF_INET, "127.0.0.1", socket.IPPROTO_IP, socket.IP_TOS, sockets.v4),
        (socket.AF_INET6, "::1", socket.IPPROTO_IPV6, socket.IPV6_TCLASS, sockets.v6),
    ):
        peer = peer_socket(ns, family, host)
        try:
            got = []
            for ecn in (3, 1, 2, 0):
                peer.setsockopt(level, opt, 0xB8 | ecn)  # DSCP EF plus the ECN bits
                peer.sendto(_wg_data(b"ecn%d" % ecn), (host, DEFAULT_PORT))
            with anyio.fail_after(10):
                while len(got) < 4:
                    got += await sock.receive_batch()
            assert [(p, e) for _, _, p, e in got] == [(_wg_data(b"ecn%d" % e), e) for e in (3, 1, 2, 0)]
        finally:
            peer.close()


def test_send_chooses_family_and_source(ns: str, sockets: UdpSockets) -> None:
    sh("ip", "addr", "add", "127.0.0.2/8", "dev", "lo", ns=ns)
    peer = peer_socket(ns, socket.AF_INET, "127.0.0.1")
    dst = SocketAddr(ip_address("127.0.0.1"), peer.getsockname()[1])
    assert sockets.send(Transmit(None, dst, b"plain")) is None
    data, (host, port) = peer.recvfrom(100)
    assert data == b"plain" and port == DEFAULT_PORT
    src = SocketAddr(ip_address("127.0.0.2"), DEFAULT_PORT)
    assert sockets.send(Transmit(src, dst, b"from .2")) is None
    data, (host, port) = peer.recvfrom(100)
    assert (data, host, port) == (b"from .2", "127.0.0.2", DEFAULT_PORT)
    peer.close()

    peer6 = peer_socket(ns, socket.AF_INET6, "::1")
    dst6 = SocketAddr(ip_address("::1"), peer6.getsockname()[1])
    assert sockets.send(Transmit(SocketAddr(ip_address("::1"), DEFAULT_PORT), dst6, b"v6")) is None
    assert peer6.recvfrom(100)[0] == b"v6"
    peer6.close()


def test_send_failures_are_values(ns: str, sockets: UdpSockets) -> None:
    unroutable = SocketAddr(ip_address("192.0.2.1"), 9)  # no route in the fresh namespace
    failed = sockets.send(Transmit(None, unroutable, b"x"))
    assert isinstance(failed, SendFailed) and failed.dst == unroutable
    assert "unreachable" in failed.error.lower()
    v4_only = UdpSockets(sockets.v4, None)
    missing = v4_only.send(Transmit(None, SocketAddr(ip_address("::1"), 9), b"x"))
    assert isinstance(missing, SendFailed) and "IPv6" in missing.error


def test_a_family_that_cannot_bind_is_recorded(ns: str, sockets: UdpSockets) -> None:
    with inside(ns):
        none = UdpSockets.bind(fallback=False)  # 52625 is taken by the fixture's sockets
    assert none.v4 is None and none.v6 is None and none.sockets == []
    assert "Address already in use" in none.errors[4] and "Address already in use" in none.errors[6]
    failed = none.send(Transmit(None, SocketAddr(ip_address("127.0.0.1"), 9), b"x"))
    assert isinstance(failed, SendFailed) and "no IPv4 socket" in failed.error


@pytest.mark.anyio
async def test_closing_wakes_a_waiting_receiver(sockets: UdpSockets) -> None:
    assert sockets.v4 is not None
    v4 = sockets.v4
    outcome: list[BaseException] = []

    async def receiver() -> None:
        try:
            await v4.receive_batch()
        except anyio.ClosedResourceError as e:
            outcome.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(receiver)
        await anyio.wait_all_tasks_blocked()
        v4.close()
    assert len(outcome) == 1
