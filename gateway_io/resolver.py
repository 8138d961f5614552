"""Recursive resolution with the host's nameservers: forwarded SRV/TXT queries and DNS-resource domains
(Firezone: ``rust/connlib/tunnel/src/io.rs``, ``rust/connlib/tunnel/src/io/nameserver_set.rs`` and
``resolve`` in ``rust/gateway/src/eventloop.rs``).

Theory of operation. The candidate nameservers are the ``nameserver`` lines of ``/etc/resolv.conf``, read
once at start-up (:func:`read_nameservers`; a missing file stops the daemon, no entries means every
forwarded query fails). :class:`Resolver` picks the *fastest* of them: an evaluation round
(:meth:`Resolver.evaluate`, at start and every :data:`EVALUATION_INTERVAL` from
:meth:`Resolver.run_evaluation`) sends ``A firezone.dev`` over UDP and over TCP to every candidate, at most
:data:`PROBE_CONCURRENCY` at once, each bounded by :data:`PROBE_TIMEOUT`; every probe answered NOERROR
records its round-trip time, and the smallest wins. As long as no probe ever succeeded there is no
fastest nameserver and forwarding fails at once (the core answers SERVFAIL).

Deliberate difference: Firezone never clears its RTT map, so a server that was fastest once stays
"fastest" after it stops answering. Here each round that gets at least one answer replaces
the previous results; a round with no answer at all keeps them (nothing better is known).

:meth:`Resolver.forward` sends a client's query unchanged (same id and flags) to the fastest nameserver,
port 53, over the transport it arrived on, and returns the response bytes or a :class:`ResolveError` -
never raises. One more difference: a UDP answer with TC set is asked again over TCP, so a client whose
answer fits the gateway's 1200-byte UDP limit gets it whole instead of retrying itself (Firezone passes
the truncated answer on). :meth:`Resolver.forward_command` wraps this as the core's input (R7).

The driver takes a faster way (decision 0112): after :meth:`Resolver.start` (its task group and report
function), :meth:`Resolver.submit` executes a ``ForwardDnsQuery`` without waiting: a UDP query goes out at
once on the fastest nameserver's long-lived socket (:class:`gateway_io.upstream.UdpUpstream`: own ids,
answers matched by id and question, rotated every few hundred queries), a TCP query runs
:meth:`forward_command` in a task of its own; outcomes come back through the report function.

:meth:`Resolver.resolve_domain` resolves A and AAAA of a DNS resource's name (as Firezone's later
userspace resolver does) against the fastest nameserver, then the others (each attempt bounded
by the upstream timeout, the whole by :data:`DOMAIN_TIMEOUT`); a failing family contributes nothing,
both failing is an error. The name is taken as absolute (no search list).

Every socket (UDP per query or shared, TCP per query with ``TCP_NODELAY``) carries ``SO_MARK 0xfd002021``
so its traffic bypasses the tunnel's routing tables (Firezone's mark, ``rust/bin-shared/src/linux.rs``).
Upstream replies must come from the server queried (the UDP socket is connected) and carry the query's id;
other datagrams are ignored.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import math
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.dns.forwarding import DnsUpstreamFailed, DnsUpstreamResponse, ForwardDnsQuery
from gateway_core.dns.servers import DnsTransport
from gateway_core.inputs import Input
from gateway_core.interface import FIREZONE_MARK
from gateway_io.upstream import UdpUpstream

log = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")
"""Where the nameservers come from (Firezone reads it once at start-up, ``gateway/src/main.rs:183-196``)."""

DNS_PORT = 53
"""Port of the upstream nameservers (Firezone always uses 53)."""

UPSTREAM_TIMEOUT = 5.0
"""Seconds a forwarded query may take upstream (Firezone: 5 s, ``tunnel/src/io.rs:142``)."""

DOMAIN_TIMEOUT = 10.0
"""Seconds a DNS-resource domain resolution may take (Firezone: 10 s, ``gateway/src/eventloop.rs:38``)."""

UDP_RESPONSE_BUFFER = 1500
"""Bytes read from an upstream UDP reply (Firezone: 1500, ``io/udp_dns.rs``)."""

PROBE_NAME = "firezone.dev"
"""Name asked (type A) to measure a nameserver (``io/nameserver_set.rs``)."""

PROBE_TIMEOUT = 2.0
"""Seconds a probe may take (Firezone: 2 s, ``nameserver_set.rs:18-19``)."""

PROBE_CONCURRENCY = 20
"""Probes in flight at once (Firezone: 20, ``nameserver_set.rs:18-19``)."""

EVALUATION_INTERVAL = 60.0
"""Seconds between evaluation rounds (Firezone: 60 s, ``tunnel/src/io.rs:143``)."""

_LEN = struct.Struct("!H")
_ID = struct.Struct("!H")
_TC = 0x02  # in the third header byte


@dataclass(frozen=True, slots=True)
class ResolveError:
    """Why a resolution failed (timeout, I/O error, no nameserver, bad answer, NXDOMAIN...)."""

    reason: str

    def __str__(self) -> str:
        return self.reason


def parse_resolv_conf(text: str, port: int = DNS_PORT) -> list[SocketAddr]:
    """The ``nameserver`` entries of a resolv.conf text, in order (bad entries are skipped)."""
    servers: list[SocketAddr] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                ip = ipaddress.ip_address(words[1].partition("%")[0])
            except ValueError:
                log.warning("resolv.conf: ignoring nameserver %r", words[1])
                continue
            addr = SocketAddr(ip, port)
            if addr not in servers:
                servers.append(addr)
    return servers


def read_nameservers(path: Path = RESOLV_CONF, port: int = DNS_PORT) -> list[SocketAddr]:
    """The nameservers of ``path``; raises ``OSError`` if it cannot be read (the daemon then stops)."""
    return parse_resolv_conf(path.read_text(), port)


def _socket(family: int, kind: int, mark: int | None) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("=I", mark))
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _family(server: SocketAddr) -> int:
    return socket.AF_INET if server.ip.version == 4 else socket.AF_INET6


async def udp_exchange(message: bytes, server: SocketAddr, *, mark: int | None = FIREZONE_MARK) -> bytes:
    """Send ``message`` to ``server`` over UDP and return the first reply with the same id.

    Raises ``OSError`` (the caller bounds the time with a cancel scope).
    """
    sock = _socket(_family(server), socket.SOCK_DGRAM, mark)
    with sock:
        sock.connect((str(server.ip), server.port))
        sock.send(message)
        while True:
            await anyio.wait_readable(sock)
            try:
                reply = sock.recv(UDP_RESPONSE_BUFFER)
            except BlockingIOError:
                continue
            if len(reply) >= 2 and reply[:2] == message[:2]:
                return reply
            log.debug("ignoring a reply from %s with another id", server)


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            continue
        view = view[sent:]


async def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except BlockingIOError:
            await anyio.wait_readable(sock)
            continue
        if not chunk:
            raise ConnectionError("connection closed by the nameserver")
        buf += chunk
    return bytes(buf)


async def tcp_exchange(message: bytes, server: SocketAddr, *, mark: int | None = FIREZONE_MARK) -> bytes:
    """Send ``message`` length-prefixed over a new TCP connection and read one framed reply."""
    sock = _socket(_family(server), socket.SOCK_STREAM, mark)
    with sock:
        code = sock.connect_ex((str(server.ip), server.port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
        if code:
            await anyio.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
        await _send_all(sock, _LEN.pack(len(message)) + message)
        (length,) = _LEN.unpack(await _recv_exact(sock, 2))
        return await _recv_exact(sock, length)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{type(e).__name__}: {e.strerror}"
    return f"{type(e).__name__}: {e}"


class Resolver:
    """Upstream resolution through the fastest of ``nameservers`` (see the module docstring)."""

    def __init__(
        self,
        nameservers: Sequence[SocketAddr],
        *,
        mark: int | None = FIREZONE_MARK,
        timeout: float = UPSTREAM_TIMEOUT,
        domain_timeout: float = DOMAIN_TIMEOUT,
        probe_name: str = PROBE_NAME,
        probe_timeout: float = PROBE_TIMEOUT,
        tcp_on_truncation: bool = True,
    ) -> None:
        self.nameservers = tuple(nameservers)
        self.mark = mark
        self.timeout = timeout
        self.domain_timeout = domain_timeout
        self.probe_name = probe_name
        self.probe_timeout = probe_timeout
        self.tcp_on_truncation = tcp_on_truncation
        self.rtts: dict[SocketAddr, float] = {}
        """Best round-trip time (seconds) per nameserver in the latest round that got an answer."""
        self.fastest: SocketAddr | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._report: Callable[[Input], None] | None = None
        self._upstreams: dict[SocketAddr, UdpUpstream] = {}
        self._asyncio = False

    # -- nameserver selection --------------------------------------------------------------------

    async def _probe(self, server: SocketAddr, transport: DnsTransport, start: float) -> float | None:
        query = dns.message.make_query(self.probe_name, dns.rdatatype.A)
        wire = query.to_wire()
        exchange = udp_exchange if transport is DnsTransport.UDP else tcp_exchange
        try:
            with anyio.fail_after(self.probe_timeout):
                reply = await exchange(wire, server, mark=self.mark)
            if dns.message.from_wire(reply).rcode() != dns.rcode.NOERROR:
                return None
        except (OSError, TimeoutError, ConnectionError, dns.exception.DNSException) as e:
            log.debug("probe of %s over %s failed: %s", server, transport, _describe(e))
            return None
        return anyio.current_time() - start

    async def evaluate(self) -> SocketAddr | None:
        """One evaluation round (UDP and TCP probes to every nameserver); the fastest afterwards."""
        if not self.nameservers:
            return None
        start = anyio.current_time()
        rtts: dict[SocketAddr, float] = {}
        limiter = anyio.CapacityLimiter(PROBE_CONCURRENCY)

        async def probe(server: SocketAddr, transport: DnsTransport) -> None:
            async with limiter:
                rtt = await self._probe(server, transport, start)
            if rtt is not None:
                rtts[server] = min(rtt, rtts.get(server, math.inf))
                if self.fastest is None:
                    self.fastest = server  # the first answer ever: usable before the round ends

        async with anyio.create_task_group() as tg:
            for server in self.nameservers:
                for transport in (DnsTransport.UDP, DnsTransport.TCP):
                    tg.start_soon(probe, server, transport)
        if rtts:
            self.rtts = rtts
            self.fastest = min(rtts, key=lambda s: (rtts[s], self.nameservers.index(s)))
            log.debug("fastest nameserver: %s (%.1f ms)", self.fastest, rtts[self.fastest] * 1000)
        else:
            log.warning("no nameserver answered the probe for %s", self.probe_name)
        return self.fastest

    async def run_evaluation(
        self,
        interval: float = EVALUATION_INTERVAL,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Evaluate now and every ``interval`` seconds, forever (run it in the driver's task group)."""
        task_status.started()
        while True:
            await self.evaluate()
            await anyio.sleep(interval)

    # -- forwarding ------------------------------------------------------------------------------

    async def _exchange(self, message: bytes, server: SocketAddr, transport: DnsTransport) -> bytes:
        if transport is DnsTransport.TCP:
            return await tcp_exchange(message, server, mark=self.mark)
        reply = await udp_exchange(message, server, mark=self.mark)
        if self.tcp_on_truncation and len(reply) > 2 and reply[2] & _TC:
            log.debug("truncated UDP answer from %s, asking over TCP", server)
            return await tcp_exchange(message, server, mark=self.mark)
        return reply

    async def forward(self, message: bytes, transport: DnsTransport) -> bytes | ResolveError:
        """The upstream answer to a client's query (unchanged bytes), or why there is none."""
        server = self.fastest
        if server is None:
            return ResolveError("no nameserver available")
        if len(message) < 12:
            return ResolveError("query shorter than a DNS header")
        try:
            with anyio.fail_after(self.timeout):
                return await self._exchange(message, server, transport)
        except TimeoutError:
            return ResolveError(f"timeout after {self.timeout:g} s asking {server}")
        except (OSError, ConnectionError) as e:
            return ResolveError(f"{server}: {_describe(e)}")

    async def forward_command(self, command: ForwardDnsQuery) -> DnsUpstreamResponse | DnsUpstreamFailed:
        """Execute the core's :class:`ForwardDnsQuery`; the result is the input to hand back."""
        result = await self.forward(command.message, command.transport)
        if isinstance(result, ResolveError):
            return DnsUpstreamFailed(command.query_id, result.reason)
        return DnsUpstreamResponse(command.query_id, result)

    def start(self, task_group: anyio.abc.TaskGroup, report: Callable[[Input], None]) -> None:
        """Run :meth:`submit`'s work in ``task_group`` and hand its outcomes to ``report`` (the driver)."""
        self._tg, self._report = task_group, report
        try:
            asyncio.get_running_loop()
            self._asyncio = True
        except RuntimeError:  # anyio on trio: a task per forwarded query, as before
            self._asyncio = False

    def submit(self, command: ForwardDnsQuery) -> None:
        """Execute :class:`ForwardDnsQuery` without waiting (the driver's path): a UDP query goes out at once
        on the nameserver's shared socket (:class:`gateway_io.upstream.UdpUpstream`), a TCP one in a task of
        its own; the outcome is reported, failures included (R7)."""
        tg, report = self._tg, self._report
        assert tg is not None and report is not None, "call start() first"
        server = self.fastest
        if server is None:
            report(DnsUpstreamFailed(command.query_id, "no nameserver available"))
            return
        if command.transport is DnsTransport.TCP or not self._asyncio:
            tg.start_soon(self._forward_task, command)  # (the shared sockets need asyncio's reader callbacks)
            return
        upstream = self._upstreams.get(server)
        if upstream is None:
            retry = self._tcp_retry if self.tcp_on_truncation else None
            upstream = UdpUpstream(
                server, task_group=tg, report=report, mark=self.mark, timeout=self.timeout, tcp_retry=retry
            )
            self._upstreams[server] = upstream
        upstream.submit(command)

    async def _tcp_retry(self, message: bytes, server: SocketAddr) -> bytes:
        return await tcp_exchange(message, server, mark=self.mark)

    async def _forward_task(self, command: ForwardDnsQuery) -> None:
        assert self._report is not None
        self._report(await self.forward_command(command))

    @property
    def upstreams(self) -> dict[SocketAddr, UdpUpstream]:
        """The shared upstream of each nameserver :meth:`submit` used so far (a copy)."""
        return dict(self._upstreams)

    def close(self) -> None:
        """Close the shared upstream sockets."""
        for upstream in self._upstreams.values():
            upstream.close()
        self._upstreams.clear()

    # -- DNS-resource domains --------------------------------------------------------------------

    def _candidates(self) -> list[SocketAddr]:
        first = [self.fastest] if self.fastest is not None else []
        return first + [s for s in self.nameservers if s != self.fastest]

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[IPAddress] | ResolveError:
        query = dns.message.make_query(name, rdtype)
        wire = query.to_wire()
        last = ResolveError("no nameserver available")
        for server in self._candidates():
            try:
                with anyio.fail_after(self.timeout):
                    reply = dns.message.from_wire(await self._exchange(wire, server, DnsTransport.UDP))
            except TimeoutError:
                last = ResolveError(f"timeout after {self.timeout:g} s asking {server}")
                continue
            except (OSError, ConnectionError, dns.exception.DNSException) as e:
                last = ResolveError(f"{server}: {_describe(e)}")
                continue
            if not query.is_response(reply):
                last = ResolveError(f"{server}: not an answer to the query")
                continue
            rcode = reply.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                return ResolveError(f"{name}: NXDOMAIN")
            if rcode != dns.rcode.NOERROR:
                last = ResolveError(f"{server}: {dns.rcode.to_text(rcode)}")
                continue
            return [
                ipaddress.ip_address(rd.address)
                for rrset in reply.answer
                if rrset.rdtype == rdtype
                for rd in rrset
            ]
        return last

    async def resolve_domain(self, domain: str) -> tuple[IPAddress, ...] | ResolveError:
        """The A and AAAA addresses of ``domain`` (sorted, IPv4 first); an error if both lookups fail."""
        name = domain.rstrip(".") + "."
        results: dict[int, list[IPAddress] | ResolveError] = {}

        async def lookup(version: int, rdtype: dns.rdatatype.RdataType) -> None:
            results[version] = await self._lookup(name, rdtype)

        try:
            with anyio.fail_after(self.domain_timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lookup, 4, dns.rdatatype.A)
                    tg.start_soon(lookup, 6, dns.rdatatype.AAAA)
        except TimeoutError:
            if not any(isinstance(r, list) for r in results.values()):
                return ResolveError(f"{domain}: timeout after {self.domain_timeout:g} s")
        found = [r for r in results.values() if isinstance(r, list)]
        if not found:
            errors = sorted({str(r) for r in results.values()})
            return ResolveError("; ".join(errors))
        addresses = {ip for r in found for ip in r}
        return tuple(sorted(addresses, key=lambda ip: (ip.version, int(ip))))
