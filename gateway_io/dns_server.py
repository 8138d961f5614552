"""Layer-4 DNS servers: one UDP socket or one TCP listener on exactly one socket address.

Theory of operation. Firezone's ``rust/connlib/l4-udp-dns-server`` and ``rust/connlib/l4-tcp-dns-server``
receive DNS queries on ordinary sockets bound to the gateway's tunnel addresses and hand them to the core;
the core's answer goes back to the client that asked. Here each server instance binds exactly one address
(port 0 picks a free port); :mod:`gateway_io.dns_servers` keeps one UDP and one TCP server per address.

- :class:`UdpDnsServer` owns a non-blocking UDP socket and no task. :meth:`UdpDnsServer.receive_batch`
  reads datagrams straight from the socket (waiting with :func:`anyio.wait_readable` only when the socket
  is empty), checks each with :func:`gateway_core.dns.query_check.query_drop_reason` and returns up to
  :data:`UDP_BATCH` that pass (:meth:`UdpDnsServer.receive`: one); the others are dropped and counted in
  :attr:`UdpDnsServer.stats`. Sending never blocks (:meth:`UdpDnsServer.send_nowait`): a datagram the
  kernel will not take now is dropped and counted (the client retries, as over any UDP).
- :class:`TcpDnsServer` owns a listener and one reader task and one writer task per connection, all inside
  the server's own task group (in the caller's task group when one is passed to :meth:`TcpDnsServer.bind`,
  otherwise in a task the server spawns on the running event loop and stops in :meth:`aclose`). Messages
  are framed with a 2-byte big-endian length (RFC 1035 4.2.2). A connection may pipeline several queries
  (RFC 7766 6.2.1.1): they are read and handed on as they come, and each response is written, framed, on the
  connection its query arrived on, in whatever order the core answers. Unlike Firezone (no limits at all)
  every resource a client can hold is bounded: connections per server and per source address (one host
  holds at most :data:`MAX_TCP_PER_SOURCE` of the :data:`MAX_TCP_CONNECTIONS`; decision 0111), unanswered
  queries per connection (beyond it we stop reading, which pushes back through TCP), idle time, the time a
  response may take to be written, and the query size. A connection that sends a malformed or oversized
  frame, stalls, or exceeds a limit is closed; nothing that happens on one connection affects another.

Addresses are ``(host, port)`` tuples with ``host`` the canonical text of an IPv4 or IPv6 literal; IPv6
sockets are ``IPV6_V6ONLY`` so that ``::`` does not also take IPv4 traffic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import anyio
import anyio.abc
from anyio.lowlevel import checkpoint
from anyio.streams.buffered import BufferedByteReceiveStream

from gateway_core.dns.query_check import query_drop_reason
from gateway_core.dns.servers import DnsTransport
from gateway_core.errors import DropReason
from gateway_core.stats import Stats

log = logging.getLogger(__name__)

HostPort = tuple[str, int]

MAX_QUERY_LEN = 2000
"""Largest query accepted, in bytes, over UDP and TCP. Firezone reads UDP queries into a 2000-byte buffer
(``rust/connlib/l4-udp-dns-server/lib.rs:131``); a query is one question plus at most an OPT record
(cookies, RFC 8467 padding to 468 bytes), far smaller, and a TCP query is no bigger than a UDP one."""

UDP_YIELD_EVERY = 32
"""After this many datagrams returned without waiting, :meth:`UdpDnsServer.receive` yields once to the event
loop, so that a flood on one socket cannot starve the other tasks (R9 fairness)."""

UDP_BATCH = 64
"""Queries one :meth:`UdpDnsServer.receive_batch` returns at most (as the driver's UDP batch; R9)."""

LISTEN_BACKLOG = 128
"""Accept backlog; the value Rust's ``TcpListener::bind`` uses on Linux, as Firezone's TCP server."""

MAX_TCP_CONNECTIONS = 128
"""Open connections per TCP server; more are accepted and closed at once. Firezone has no limit. Clients
forward only SRV/TXT queries over TCP, a handful at a time; 128 bounds the memory and the
tasks a misbehaving client can hold while leaving room for many honest ones."""

MAX_TCP_PER_SOURCE = 16
"""Connections one source address may hold on a server (an eighth of :data:`MAX_TCP_CONNECTIONS`; more are
closed at once), so one client cannot take every slot (decision 0111). Firezone has no limit."""

TCP_IDLE_TIMEOUT = 10.0
"""Seconds a connection may go without a complete query arriving or a response leaving before it is closed.
Firezone has none; RFC 7766 6.2.3 recommends "of the order of seconds" (unbound: 30 s). Longer than the
5 s bound on an upstream query (Firezone's, ``rust/connlib/tunnel/src/io.rs``) so a client waiting for a
slow answer is not cut off; it also bounds a frame that starts and never ends (slowloris)."""

TCP_WRITE_TIMEOUT = 5.0
"""Seconds a response may take to be written; a client that does not read its answers is closed."""

MAX_TCP_PIPELINED = 32
"""Unanswered queries per connection. At this many, the connection is not read any further until answers
go out (TCP flow control pushes back); RFC 7766 asks servers to read pipelined queries, not unboundedly."""

TCP_QUERY_QUEUE = 256
"""Queries read from one server's connections, not yet taken by :meth:`TcpDnsServer.receive` (then wait)."""

ACCEPT_ERROR_PAUSE = 0.1
"""Seconds to wait after a failed ``accept`` (e.g. out of file descriptors) so the loop does not spin."""

CLOSE_GRACE = 1.0
"""Seconds allowed for closing one connection's socket during shutdown."""

_LEN = struct.Struct("!H")
_RECV_SIZE = MAX_QUERY_LEN + 1
"""One byte more than a query may have: a longer datagram is seen to be too long, not cut."""
_new_tuple = tuple.__new__


class DnsQuery(NamedTuple):
    """One query as received: the server's address, the client's address, the wire bytes, the transport."""

    local: HostPort
    remote: HostPort
    message: bytes
    transport: DnsTransport


@dataclass(frozen=True, slots=True)
class TcpLimits:
    """Per-server limits of :class:`TcpDnsServer` (seconds for times); the defaults are the constants."""

    max_connections: int = MAX_TCP_CONNECTIONS
    max_per_source: int = MAX_TCP_PER_SOURCE
    idle_timeout: float = TCP_IDLE_TIMEOUT
    write_timeout: float = TCP_WRITE_TIMEOUT
    max_pipelined: int = MAX_TCP_PIPELINED
    max_query_len: int = MAX_QUERY_LEN


def parse_address(address: tuple[Any, int]) -> tuple[int, HostPort]:
    """``(family, (canonical host, port))`` for a ``(host, port)`` with an IP literal (or address object)."""
    host, port = address
    ip = ipaddress.ip_address(str(host))
    port = int(port)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, (str(ip), port)


def bind_socket(
    address: tuple[Any, int], kind: socket.SocketKind, device: str | None = None
) -> socket.socket:
    """A non-blocking socket of ``kind`` bound to exactly ``address`` and, when ``device`` is given, to that
    network device (``SO_BINDTODEVICE``: only what arrives over it is received; unprivileged on Linux >= 5.7
    for a socket not yet bound to a device). Raises ``OSError`` if it cannot be."""
    family, (host, port) = parse_address(address)
    sock = socket.socket(family, kind)
    try:
        if device is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            # As Rust's TcpListener::bind: rebinding works while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _local(sock: socket.socket) -> HostPort:
    return (str(sock.getsockname()[0]), int(sock.getsockname()[1]))


class UdpDnsServer:
    """A DNS server on one UDP socket; see the module docstring."""

    __slots__ = ("_closed", "_since_yield", "_sock", "local_address", "stats")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False
        self._since_yield = 0
        self.local_address: HostPort = _local(sock)
        self.stats = Stats()

    @classmethod
    async def bind(cls, address: tuple[Any, int], *, device: str | None = None) -> UdpDnsServer:
        """Bind a UDP socket to exactly ``address`` (and ``device``, see :func:`bind_socket`)."""
        await checkpoint()
        return cls(bind_socket(address, socket.SOCK_DGRAM, device))

    @property
    def closed(self) -> bool:
        return self._closed

    async def receive(self) -> DnsQuery:
        """The next datagram that passes the query check; raises ``anyio.ClosedResourceError`` once closed."""
        self._since_yield += 1
        if self._since_yield >= UDP_YIELD_EVERY:
            self._since_yield = 0
            await checkpoint()
        return (await self._read(1))[0]

    async def receive_batch(self, limit: int = UDP_BATCH) -> list[DnsQuery]:
        """One to ``limit`` queries that pass the check (waits only for the first; raises as receive)."""
        out = await self._read(limit)
        if len(out) >= limit:
            await checkpoint()  # a full batch: the socket may have more; let others run first
        return out

    async def _read(self, limit: int) -> list[DnsQuery]:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            out = self.read_nowait(limit)
            if out:
                return out
            await anyio.wait_readable(self._sock)

    def read_nowait(self, limit: int = UDP_BATCH) -> list[DnsQuery]:
        """Up to ``limit`` queries that passed the check, read until the socket is empty (maybe none).
        Reads at most ``4 * limit`` datagrams, so a flood of rejected ones cannot keep it going. Per
        query: one ``recvfrom``, the check and the :class:`DnsQuery` (built with ``tuple.__new__``, the
        socket's own ``(host, port)`` tuple kept for IPv4); nothing else is allocated."""
        if self._closed:
            return []
        recvfrom = self._sock.recvfrom
        local = self.local_address
        udp = DnsTransport.UDP
        check = query_drop_reason
        new = _new_tuple
        out: list[DnsQuery] = []
        append = out.append
        for _ in range(4 * limit):
            try:
                data, remote = recvfrom(_RECV_SIZE)
            except BlockingIOError:
                self._since_yield = 0
                break
            except OSError as e:  # e.g. a queued ICMP error; never fatal
                self.stats.incr("udp.receive_errors")
                log.debug("udp dns server %s: receive error %s", local, e)
                continue
            if len(data) > MAX_QUERY_LEN:
                self.stats.drop(DropReason.DNS_TOO_LARGE)
                continue
            reason = check(data)
            if reason is not None:
                self.stats.drop(reason)
                continue
            append(new(DnsQuery, (local, remote if len(remote) == 2 else remote[:2], data, udp)))
            if len(out) >= limit:
                break
        if out:
            self.stats.counters["udp.queries"] += len(out)
        return out

    def fileno(self) -> int:
        return self._sock.fileno()

    def __aiter__(self) -> UdpDnsServer:
        return self

    async def __anext__(self) -> DnsQuery:
        try:
            return await self.receive()
        except anyio.ClosedResourceError:
            raise StopAsyncIteration from None

    async def send_response(self, remote: tuple[Any, int], message: bytes) -> bool:
        """Send ``message`` to ``remote``; ``False`` (counted) if the kernel refused it. Never blocks."""
        return self.send_nowait(remote, message)

    def send_nowait(self, remote: tuple[Any, int], message: bytes) -> bool:
        """:meth:`send_response` without the ``await`` (it never waits)."""
        if self._closed:
            return False
        try:
            self._sock.sendto(message, remote if type(remote[0]) is str else (str(remote[0]), remote[1]))
        except OSError as e:  # BlockingIOError (buffer full), EMSGSIZE, EHOSTUNREACH, EPERM (netfilter)...
            self.stats.incr("udp.send_failed")
            log.debug("udp dns server %s: send to %s failed: %s", self.local_address, remote, e)
            return False
        self.stats.counters["udp.responses"] += 1
        return True

    async def aclose(self) -> None:
        """Close the socket; a task waiting in :meth:`receive` gets ``anyio.ClosedResourceError``."""
        if self._closed:
            return
        self._closed = True
        anyio.notify_closing(self._sock)
        self._sock.close()
        await checkpoint()


# Strong references to the service tasks spawned on the asyncio loop (the loop only keeps weak ones).
_system_tasks: set[asyncio.Task[None]] = set()


def _spawn_system_task(fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``fn`` in a task of its own on the running event loop (asyncio or trio)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: anyio's other backend
        import trio

        trio.lowlevel.spawn_system_task(fn)
        return

    async def runner() -> None:
        await fn()

    task = loop.create_task(runner())
    _system_tasks.add(task)
    task.add_done_callback(_system_tasks.discard)


class TcpDnsServer:
    """A DNS server on one TCP listener; see the module docstring."""

    def __init__(self, listener: anyio.abc.SocketListener, local: HostPort, limits: TcpLimits) -> None:
        self._listener = listener
        self.local_address = local
        self.limits = limits
        self.stats = Stats()
        self._send_q, self._recv_q = anyio.create_memory_object_stream[DnsQuery](TCP_QUERY_QUEUE)
        self._conns: dict[HostPort, _Connection] = {}
        self._per_source: dict[str, int] = {}
        self._closed = False
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()

    @classmethod
    async def bind(
        cls,
        address: tuple[Any, int],
        *,
        limits: TcpLimits | None = None,
        task_group: anyio.abc.TaskGroup | None = None,
        device: str | None = None,
    ) -> TcpDnsServer:
        """Listen on exactly ``address`` (and ``device``, see :func:`bind_socket`; accepted connections
        inherit it) and start accepting connections.

        The server's tasks run in ``task_group`` when given, else in a task of their own until
        :meth:`aclose`.
        """
        sock = bind_socket(address, socket.SOCK_STREAM, device)
        try:
            sock.listen(LISTEN_BACKLOG)
            local = _local(sock)
            listener = await anyio.abc.SocketListener.from_socket(sock)
        except BaseException:
            sock.close()
            raise
        server = cls(listener, local, limits or TcpLimits())
        if task_group is not None:
            await task_group.start(server._serve)
        else:
            started = anyio.Event()

            async def serve() -> None:
                await server._serve(started=started)

            _spawn_system_task(serve)
            await started.wait()
        return server

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    async def _serve(
        self,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
        started: anyio.Event | None = None,
    ) -> None:
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._closed:
                    scope.cancel()
                async with anyio.create_task_group() as tg:
                    task_status.started()
                    if started is not None:
                        started.set()
                    await self._accept_loop(tg)
        except Exception:  # a bug; the server stops, the process does not
            log.exception("tcp dns server %s failed", self.local_address)
        finally:
            self._closed = True
            self._send_q.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_GRACE):
                await self._listener.aclose()
            if started is not None:
                started.set()
            self._stopped.set()

    async def _accept_loop(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                stream = await self._listener.accept()
            except OSError as e:
                self.stats.incr("tcp.accept_errors")
                log.warning("tcp dns server %s: accept failed: %s", self.local_address, e)
                await anyio.sleep(ACCEPT_ERROR_PAUSE)
                continue
            raw = stream.extra(anyio.abc.SocketAttribute.remote_address)
            remote: HostPort = (str(raw[0]), int(raw[1]))
            held = self._per_source.get(remote[0], 0)
            if len(self._conns) >= self.limits.max_connections or held >= self.limits.max_per_source:
                self.stats.drop(DropReason.DNS_TCP_LIMIT)
                with anyio.move_on_after(CLOSE_GRACE):
                    await stream.aclose()
                continue
            conn = _Connection(self, stream, remote)
            self._conns[remote] = conn
            self._per_source[remote[0]] = held + 1
            self.stats.incr("tcp.connections")
            tg.start_soon(conn.run)

    def _forget(self, conn: _Connection) -> None:
        if self._conns.get(conn.remote) is not conn:
            return
        del self._conns[conn.remote]
        host = conn.remote[0]
        left = self._per_source[host] - 1
        if left:
            self._per_source[host] = left
        else:
            del self._per_source[host]

    async def receive(self) -> DnsQuery:
        """The next query from any connection; raises ``anyio.ClosedResourceError`` once closed."""
        try:
            return await self._recv_q.receive()
        except anyio.EndOfStream:
            raise anyio.ClosedResourceError from None

    def __aiter__(self) -> TcpDnsServer:
        return self

    async def __anext__(self) -> DnsQuery:
        try:
            return await self.receive()
        except anyio.ClosedResourceError:
            raise StopAsyncIteration from None

    async def send_response(self, remote: tuple[Any, int], message: bytes) -> bool:
        """Queue ``message`` on the connection of ``remote``; ``False`` (counted) if that is gone.

        Never blocks: a per-connection writer sends it. A client whose unsent answers pile up beyond the
        pipelining limit is disconnected.
        """
        return self.send_nowait(remote, message)

    def send_nowait(self, remote: tuple[Any, int], message: bytes) -> bool:
        """:meth:`send_response` without the ``await`` (it never waits)."""
        conn = self._conns.get((str(remote[0]), int(remote[1])))
        if conn is None:
            self.stats.incr("tcp.response_no_connection")
            return False
        if len(message) > 0xFFFF:
            self.stats.drop(DropReason.DNS_TOO_LARGE)
            return False
        return conn.queue_response(_LEN.pack(len(message)) + message)

    async def aclose(self) -> None:
        """Stop accepting, close every connection and the listener; :meth:`receive` then raises."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()
        await self._stopped.wait()
        self._recv_q.close()


class _Connection:
    """One accepted TCP connection: a reader and a writer task (see the module docstring)."""

    def __init__(self, server: TcpDnsServer, stream: anyio.abc.SocketStream, remote: HostPort) -> None:
        self.server = server
        self.stream = stream
        self.remote = remote
        self.limits = server.limits
        self.outstanding = 0
        self.slot_free = anyio.Event()
        self.scope = anyio.CancelScope()
        self.idle_scope: anyio.CancelScope | None = None
        self.out_send, self.out_recv = anyio.create_memory_object_stream[bytes](self.limits.max_pipelined)

    async def run(self) -> None:
        stats = self.server.stats
        try:
            with self.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write_loop)
                    if await self._read_loop():
                        await self._drain_after_eof()
                        self.out_send.close()  # the writer sends what is queued, then ends
                    else:
                        tg.cancel_scope.cancel()  # garbage, a limit or idle: close at once
        except Exception:  # a bug: close this connection only
            log.exception("tcp dns server %s: connection %s failed", self.server.local_address, self.remote)
        finally:
            self.server._forget(self)
            self.out_send.close()
            stats.incr("tcp.closed")
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_GRACE):
                await self.stream.aclose()

    def abort(self, reason: DropReason | None = None) -> None:
        if reason is not None:
            self.server.stats.drop(reason)
        self.scope.cancel()

    def _extend_idle(self) -> None:
        if self.idle_scope is not None:
            self.idle_scope.deadline = anyio.current_time() + self.limits.idle_timeout

    def queue_response(self, framed: bytes) -> bool:
        try:
            self.out_send.send_nowait(framed)
        except anyio.WouldBlock:
            self.abort(DropReason.DNS_TCP_LIMIT)  # the client does not read its answers
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.server.stats.incr("tcp.response_no_connection")
            return False
        if self.outstanding > 0:
            self.outstanding -= 1
        self.slot_free.set()
        return True

    async def _read_loop(self) -> bool:
        """Read and hand on queries until the connection ends; ``True`` for a clean end of stream."""
        server = self.server
        stats = server.stats
        limits = self.limits
        buf = BufferedByteReceiveStream(self.stream)
        while True:
            message = b""
            with anyio.CancelScope(deadline=anyio.current_time() + limits.idle_timeout) as idle:
                self.idle_scope = idle
                while self.outstanding >= limits.max_pipelined:
                    self.slot_free = anyio.Event()
                    await self.slot_free.wait()
                try:
                    head = await buf.receive_exactly(2)
                except anyio.IncompleteRead:
                    if buf.buffer:
                        stats.drop(DropReason.DNS_MALFORMED)  # EOF inside the length prefix
                        return False
                    return True
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return False
                (length,) = _LEN.unpack(head)
                if length > limits.max_query_len:
                    stats.drop(DropReason.DNS_TOO_LARGE)
                    return False
                try:
                    message = await buf.receive_exactly(length)
                except anyio.IncompleteRead:
                    stats.drop(DropReason.DNS_MALFORMED)  # EOF inside a message
                    return False
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return False
            self.idle_scope = None
            if idle.cancelled_caught:
                stats.drop(DropReason.DNS_TCP_IDLE)
                return False
            reason = query_drop_reason(message)
            if reason is not None:
                stats.drop(reason)
                return False
            self.outstanding += 1
            stats.counters["tcp.queries"] += 1
            try:
                await server._send_q.send(
                    DnsQuery(server.local_address, self.remote, message, DnsTransport.TCP)
                )
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return False

    async def _drain_after_eof(self) -> None:
        """The client half-closed: wait (bounded by the idle timeout) for the answers it still expects."""
        with anyio.CancelScope(deadline=anyio.current_time() + self.limits.idle_timeout) as idle:
            self.idle_scope = idle
            while self.outstanding > 0:
                self.slot_free = anyio.Event()
                await self.slot_free.wait()
        self.idle_scope = None

    async def _write_loop(self) -> None:
        stats = self.server.stats
        async with self.out_recv:
            async for framed in self.out_recv:
                try:
                    with anyio.move_on_after(self.limits.write_timeout) as timeout:
                        await self.stream.send(framed)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    self.abort()
                    return
                if timeout.cancelled_caught:
                    self.abort(DropReason.DNS_TCP_IDLE)
                    return
                stats.counters["tcp.responses"] += 1
                self._extend_idle()
