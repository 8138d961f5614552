"""One UDP and one TCP DNS server per socket address, reconciled with the set the core asks for.

Theory of operation. :class:`DnsServerSet` executes the core's :class:`BindDnsServers` (the whole desired
set of addresses) and :class:`RetryDnsServerBind` (one address) commands:

- an address that stays in the set keeps its two servers untouched (same objects, same sockets, open TCP
  connections survive; Firezone instead closes and re-binds everything,
  ``rebind_dns`` in ``rust/connlib/tunnel/src/io.rs``);
- a new address gets a UDP server, then a TCP server on the same port (port 0: the port the UDP socket got);
  if either bind fails neither is kept, and the failure is reported as a :class:`DnsServerBindFailed`
  input, never raised (a deliberate fix: Firezone 1.4.18 exits, ``rust/gateway/src/eventloop.rs``);
- a removed address has both servers closed.

With ``device`` (the daemon passes the TUN's name) every socket is bound to that device
(``SO_BINDTODEVICE``): a datagram or connection for the tunnel address that arrives over any other
interface never reaches a server, whatever its source address claims (decision 0110).

Each outcome is reported through ``on_input`` (:class:`DnsServerBound` or :class:`DnsServerBindFailed`).
*When* to retry a failed address is not decided here (R7): the core's
:class:`gateway_core.dns.servers.DnsBindRetry` decides, and its :class:`RetryDnsServerBind` commands reach
:meth:`DnsServerSet.execute` through the driver like every other command.

Queries from every server come out of one stream, in batches (:meth:`receive_batch`: what one server read
at once; :meth:`receive` and ``async for``: one at a time) as :class:`gateway_io.dns_server.DnsQuery`; or,
after :meth:`attach` (the driver's way, decision 0112), UDP queries go straight from the sockets' reader
callbacks to the attached sink, with no task or queue in between, paused while the sink is full;
:meth:`send_response_nowait` (never waits) and :meth:`send_response` route an answer to the server whose
transport and local address the query carried.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from gateway_core.addr import SocketAddr
from gateway_core.commands import Command
from gateway_core.dns.servers import (
    BindDnsServers,
    DnsServerBindFailed,
    DnsServerBound,
    DnsTransport,
    RetryDnsServerBind,
)
from gateway_core.inputs import Input
from gateway_core.stats import Stats
from gateway_io.dns_server import DnsQuery, HostPort, TcpDnsServer, TcpLimits, UdpDnsServer, parse_address

log = logging.getLogger(__name__)

MERGED_QUEUE = 8
"""Batches taken from the servers and not yet taken by :meth:`DnsServerSet.receive_batch` (at most 64
queries each); when full, the per-server pumps wait, and the servers' own bounds take over."""

EPHEMERAL_PAIR_ATTEMPTS = 3
"""For port 0: how many fresh UDP ports to try when the TCP port of the same number is taken."""


@dataclass(slots=True)
class ServerPair:
    """The two servers of one address, and the cancel scope of their pumps."""

    udp: UdpDnsServer
    tcp: TcpDnsServer
    scope: anyio.CancelScope


def _sort_key(address: SocketAddr) -> tuple[int, int, int]:
    return (address.ip.version, int(address.ip), address.port)


class DnsServerSet:
    """The reconciled set of DNS servers; an async context manager (see the module docstring)."""

    def __init__(
        self,
        on_input: Callable[[Input], None],
        *,
        tcp_limits: TcpLimits | None = None,
        device: str | None = None,
    ) -> None:
        self._on_input = on_input
        self._tcp_limits = tcp_limits
        self.device = device
        """Every socket is bound to this network device (the TUN; decision 0110); ``None``: any device."""
        self._desired: frozenset[SocketAddr] = frozenset()
        self._pairs: dict[SocketAddr, ServerPair] = {}
        self._by_local: dict[tuple[DnsTransport, HostPort], UdpDnsServer | TcpDnsServer] = {}
        self._send_q, self._recv_q = anyio.create_memory_object_stream[list[DnsQuery]](MERGED_QUEUE)
        self._leftover: deque[DnsQuery] = deque()  # of a batch that receive() took one at a time
        self._tg: anyio.abc.TaskGroup | None = None
        self._lock = anyio.Lock()
        self._sink: Callable[[list[DnsQuery]], bool] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused = False
        self.retired = Stats()
        """The counters and drops of servers since closed (the metrics' totals never fall)."""

    def stats(self) -> list[Stats]:
        """The counters of every server, closed ones included (for the metrics)."""
        out = [self.retired]
        for pair in self._pairs.values():
            out += [pair.udp.stats, pair.tcp.stats]
        return out

    # --- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> DnsServerSet:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        with anyio.CancelScope(shield=True):
            for address in list(self._pairs):
                await self._remove(address)
        self._send_q.close()
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(exc_type, exc, tb)

    # --- inspection ------------------------------------------------------------------------------------

    @property
    def servers(self) -> dict[SocketAddr, ServerPair]:
        """The bound pairs by the address the core asked for (a copy)."""
        return dict(self._pairs)

    @property
    def desired(self) -> frozenset[SocketAddr]:
        return self._desired

    # --- commands --------------------------------------------------------------------------------------

    async def execute(self, command: Command) -> None:
        """Execute a :class:`BindDnsServers` or :class:`RetryDnsServerBind` command."""
        async with self._lock:
            match command:
                case BindDnsServers(addresses=addresses):
                    self._desired = frozenset(addresses)
                    for address in sorted(set(self._pairs) - self._desired, key=_sort_key):
                        await self._remove(address)
                    for address in sorted(self._desired - set(self._pairs), key=_sort_key):
                        await self._try_bind(address)
                case RetryDnsServerBind(address=address):
                    if address in self._desired and address not in self._pairs:
                        await self._try_bind(address)
                case _:
                    raise TypeError(f"not a DNS server command: {command!r}")

    async def _try_bind(self, address: SocketAddr) -> None:
        try:
            pair = await self._bind_pair(address)
        except OSError as e:
            log.warning("dns servers on %s: bind failed: %s", address, e)
            self._on_input(DnsServerBindFailed(address, str(e)))
            return
        self._pairs[address] = pair
        self._by_local[(DnsTransport.UDP, pair.udp.local_address)] = pair.udp
        self._by_local[(DnsTransport.TCP, pair.tcp.local_address)] = pair.tcp
        log.info("dns servers listening on %s (udp+tcp)", pair.udp.local_address)
        self._on_input(DnsServerBound(address, pair.udp.local_address[1]))

    async def _bind_pair(self, address: SocketAddr) -> ServerPair:
        assert self._tg is not None, "use DnsServerSet as an async context manager"
        _, (host, port) = parse_address(address)
        attempts = EPHEMERAL_PAIR_ATTEMPTS if port == 0 else 1
        for attempt in range(attempts):
            udp = await UdpDnsServer.bind((host, port), device=self.device)
            try:
                tcp = await TcpDnsServer.bind(
                    (host, udp.local_address[1]),
                    limits=self._tcp_limits,
                    task_group=self._tg,
                    device=self.device,
                )
            except OSError:
                await udp.aclose()
                if attempt + 1 == attempts:
                    raise
                continue
            except BaseException:
                await udp.aclose()
                raise
            scope = anyio.CancelScope()
            pair = ServerPair(udp, tcp, scope)
            self._tg.start_soon(self._pump, pair)
            if self._loop is not None and not self._paused:
                self._loop.add_reader(udp.fileno(), self._readable, udp)
            return pair
        raise AssertionError("unreachable")

    async def _pump(self, pair: ServerPair) -> None:
        async def udp(server: UdpDnsServer) -> None:
            if self._loop is not None:
                return  # read by _readable
            try:
                while True:
                    await self._send_q.send(await server.receive_batch())
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the set is closing

        async def tcp(server: TcpDnsServer) -> None:
            try:
                async for query in server:
                    await self._send_q.send([query])
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the set is closing

        with pair.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(udp, pair.udp)
                tg.start_soon(tcp, pair.tcp)

    async def _remove(self, address: SocketAddr) -> None:
        pair = self._pairs.pop(address)
        self.retired.merge(pair.udp.stats)
        self.retired.merge(pair.tcp.stats)
        pair.scope.cancel()
        if self._loop is not None and not self._paused:
            self._loop.remove_reader(pair.udp.fileno())
        self._by_local.pop((DnsTransport.UDP, pair.udp.local_address), None)
        self._by_local.pop((DnsTransport.TCP, pair.tcp.local_address), None)
        await pair.udp.aclose()
        await pair.tcp.aclose()
        log.info("dns servers on %s closed", address)

    # --- queries ---------------------------------------------------------------------------------------

    def attach(self, sink: Callable[[list[DnsQuery]], bool]) -> bool:
        """Hand UDP queries to ``sink`` straight from the event loop's reader callbacks (no task, no queue
        between the socket and the sink), one server's batch at a time; ``sink`` returns ``False`` once it
        holds enough, and reading then pauses (the kernel buffers) until :meth:`resume`. Only on asyncio
        (the daemon's loop) and before any server is bound; returns whether it is attached. TCP queries keep
        coming from :meth:`receive`."""
        if self._pairs:
            return False
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._sink = sink
        return True

    def _readable(self, server: UdpDnsServer) -> None:
        batch = server.read_nowait()
        if batch and self._sink is not None and not self._sink(batch) and not self._paused:
            self._paused = True
            assert self._loop is not None
            for pair in self._pairs.values():
                self._loop.remove_reader(pair.udp.fileno())

    def resume(self) -> None:
        """Read again after the sink said it was full (cheap when nothing is paused)."""
        if self._paused:
            self._paused = False
            assert self._loop is not None
            for pair in self._pairs.values():
                self._loop.add_reader(pair.udp.fileno(), self._readable, pair.udp)

    @property
    def paused(self) -> bool:
        return self._paused

    async def receive_batch(self) -> list[DnsQuery]:
        """The next queries (one server's batch); raises ``anyio.EndOfStream`` once the set is closed."""
        if self._leftover:
            out = list(self._leftover)
            self._leftover.clear()
            return out
        return await self._recv_q.receive()

    async def receive(self) -> DnsQuery:
        """The next query from any server; raises ``anyio.EndOfStream`` once the set is closed."""
        if not self._leftover:
            self._leftover.extend(await self._recv_q.receive())
        return self._leftover.popleft()

    def __aiter__(self) -> DnsServerSet:
        return self

    async def __anext__(self) -> DnsQuery:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    def send_response_nowait(
        self, transport: DnsTransport, local: tuple[Any, int], remote: tuple[Any, int], message: bytes
    ) -> bool:
        """Answer ``remote`` from the server of ``transport`` on ``local``; ``False`` if there is none or the
        answer could not be sent or queued. Never waits (UDP sends at once, TCP queues on the connection)."""
        server = self._by_local.get((transport, (str(local[0]), int(local[1]))))
        if server is None:
            log.debug("no dns server %s on %s", transport, local)
            return False
        return server.send_nowait(remote, message)

    async def send_response(
        self, transport: DnsTransport, local: tuple[Any, int], remote: tuple[Any, int], message: bytes
    ) -> bool:
        """:meth:`send_response_nowait` as a coroutine (the driver's older interface)."""
        return self.send_response_nowait(transport, local, remote, message)
