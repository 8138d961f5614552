"""SRV/TXT forwarding decisions: who may ask what, and the answers the core builds itself
(Firezone: ``rust/connlib/l4-udp-dns-server/lib.rs``, ``rust/connlib/l4-tcp-dns-server/lib.rs`` and the
recursive resolution in ``rust/connlib/tunnel/src/io.rs``).

Theory of operation. Clients forward SRV and TXT queries for DNS-resource names to the gateway's tunnel
address, port 53535, where the IO layer's layer-4 DNS servers receive them and report
:class:`DnsQueryReceived`. :class:`DnsForwarder` decides per query:

1. The message must be a whole query (QR = 0, exactly one question, every record whole:
   :func:`gateway_core.dns.wire.check_message`, a few microseconds); otherwise it is dropped without a
   reply (``DNS_MALFORMED``), as the reference does.
2. The sender's rate: each source address (a client's tunnel address: the listeners only take what comes
   through the tunnel, decision 0110) may send :attr:`DnsLimits.client_rate` queries a second with bursts
   of :attr:`DnsLimits.client_burst` (a token bucket in the GCRA form: one integer per client, driven by
   ``now``). Beyond that the query is answered ``SERVFAIL`` at once (``DNS_RATE_LIMITED``), before any
   other work; the reference has no limit (decision 0111).
3. The sender must be a connected client whose authorised DNS resources match the queried name
   (``may_query(client IP, name)``, supplied by the owner). Otherwise the core answers ``REFUSED`` itself
   (``DNS_REFUSED``): a deliberate fix, the reference resolves anything for any client
   (docs/decisions/0048-dns-forwarding-refuses-foreign-names.md).
4. At most :attr:`DnsLimits.in_flight` queries are forwarded at once, and at most
   :attr:`DnsLimits.client_in_flight` of them for one client; beyond either the query is answered
   ``SERVFAIL`` at once instead of being dropped silently (decision 0049; the per-client share is decision
   0111), so one client cannot hold every slot of a slow upstream.
5. Otherwise the core queues :class:`ForwardDnsQuery` (the IO layer resolves it recursively with the
   same transport) and waits for :class:`DnsUpstreamResponse` or :class:`DnsUpstreamFailed`, at most
   :data:`UPSTREAM_TIMEOUT`. A valid response (QR = 1, one question) is sent back unchanged through the
   server that received the query (UDP: truncated to :data:`UDP_RESPONSE_LIMIT` with TC set); anything
   else - failure, timeout, response that is not whole - becomes ``SERVFAIL``.

Error responses are built as Firezone does (``dns-types/lib.rs``): the query's id, QR set, its OPCODE
and RD copied, the RCODE, the question copied; no records, no OPT; AA, TC, RA clear.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.commands import Command
from gateway_core.contract import Deadline, advance
from gateway_core.dns.servers import DnsTransport
from gateway_core.dns.wire import check_message
from gateway_core.errors import DecodeError, DropReason, UsageError
from gateway_core.inputs import Input
from gateway_core.stats import Stats

log = logging.getLogger("gateway_core.dns.forwarding")

UPSTREAM_TIMEOUT = secs(5)
"""How long a forwarded query may take (Firezone's upstream DNS query timeout, 5 s, ``io.rs:142``)."""
MAX_IN_FLIGHT = 1000
"""Forwarded queries at once (Firezone: 1000, ``io.rs:169-172``)."""
MAX_IN_FLIGHT_PER_CLIENT = 64
"""Forwarded queries at once for one client (Firezone: no per-client share). A client forwards only SRV
and TXT queries for its DNS resources, a handful per lookup; 64 lets a busy client pipeline while 16
clients at most can fill the gateway's 1000 against an upstream that does not answer."""
CLIENT_RATE = 100
"""Queries per second one client may send to the forwarder (Firezone: no limit). Far above an honest
client's SRV/TXT lookups; a client beyond it gets ``SERVFAIL`` at once, without any upstream work."""
CLIENT_BURST = 200
"""Queries a client may send at once before :data:`CLIENT_RATE` applies (two seconds' worth)."""
MAX_RATE_ENTRIES = 65536
"""Clients whose rate state is kept; beyond it the idle ones (bucket full again) are forgotten. Sources
are clients' tunnel addresses, so this is only reached by a bug; it bounds the memory anyway."""
UDP_RESPONSE_LIMIT = 1200
"""Largest UDP response; longer ones are truncated with TC (``l4-udp-dns-server/lib.rs:66``)."""
TCP_RESPONSE_LIMIT = 65535
"""Largest TCP response: the 2-byte length prefix (``l4-tcp-dns-server/lib.rs:67``)."""

RCODE_SERVFAIL = 2
RCODE_REFUSED = 5
RCODE_NAMES = (
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "DSOTYPENI", "RCODE12", "RCODE13", "RCODE14", "RCODE15",
)  # fmt: skip
"""The 4-bit header RCODEs by value (RFC 1035, 2136, 8490; IANA "DNS RCODEs")."""
_RESPONSE_COUNTERS = tuple(f"responses.{n}" for n in RCODE_NAMES)

_HEADER = struct.Struct("!HHHHHH")
_QR, _TC = 0x8000, 0x0200
_OPCODE_RD = 0x7800 | 0x0100


# --------------------------------------------------------------------------------------------------
# Inputs and commands.


@dataclass(frozen=True, slots=True)
class DnsQueryReceived(Input):
    """A layer-4 DNS server at ``local`` received ``message`` from ``remote`` over ``transport``."""

    local: SocketAddr
    remote: SocketAddr
    transport: DnsTransport
    message: bytes


@dataclass(frozen=True, slots=True)
class DnsUpstreamResponse(Input):
    """The recursive resolution of forwarded query ``query_id`` answered ``message``."""

    query_id: int
    message: bytes


@dataclass(frozen=True, slots=True)
class DnsUpstreamFailed(Input):
    """The recursive resolution of forwarded query ``query_id`` failed (I/O error, timeout, ...)."""

    query_id: int
    error: str


@dataclass(frozen=True, slots=True)
class ForwardDnsQuery(Command):
    """Resolve ``message`` recursively over ``transport``; answer with DnsUpstreamResponse/-Failed."""

    query_id: int
    transport: DnsTransport
    message: bytes


@dataclass(frozen=True, slots=True)
class SendDnsResponse(Command):
    """Send ``message`` from the DNS server at ``local`` to ``remote`` over ``transport``."""

    local: SocketAddr
    remote: SocketAddr
    transport: DnsTransport
    message: bytes


DnsForwarderInput = DnsQueryReceived | DnsUpstreamResponse | DnsUpstreamFailed
"""Every input of the :class:`DnsForwarder`."""
DnsForwarderCommand = ForwardDnsQuery | SendDnsResponse
"""Every command of the :class:`DnsForwarder`."""


# --------------------------------------------------------------------------------------------------
# Wire helpers.


def question_end(message: bytes) -> int:
    """Offset just after the first question (name, QTYPE, QCLASS); DecodeError if it is not whole."""
    n = len(message)
    at = 12
    while True:
        if at >= n:
            raise DecodeError("question name truncated")
        length = message[at]
        if length == 0:
            at += 1
            break
        if length & 0xC0 == 0xC0:
            at += 2
            break
        if length & 0xC0:
            raise DecodeError("reserved label type")
        at += 1 + length
    if at + 4 > n:
        raise DecodeError("question truncated")
    return at + 4


def error_response(query: bytes, rcode: int) -> bytes:
    """The answer with ``rcode`` and no records to a query that has a whole first question."""
    qid, flags, _, _, _, _ = _HEADER.unpack_from(query)
    head = _HEADER.pack(qid, _QR | (flags & _OPCODE_RD) | (rcode & 0xF), 1, 0, 0, 0)
    return head + query[12 : question_end(query)]


def truncate_response(response: bytes, limit: int) -> bytes:
    """``response`` unchanged if it fits ``limit``; else its header with TC and QD=1, AN=NS=AR=0, and
    its question only (Firezone's ``Response::into_bytes``)."""
    if len(response) <= limit:
        return response
    qid, flags, _, _, _, _ = _HEADER.unpack_from(response)
    return _HEADER.pack(qid, flags | _TC, 1, 0, 0, 0) + response[12 : question_end(response)]


# --------------------------------------------------------------------------------------------------
# Limits.


@dataclass(frozen=True, slots=True)
class DnsLimits:
    """How much forwarding the gateway does, in all and per client (the defaults are the constants)."""

    in_flight: int = MAX_IN_FLIGHT
    client_in_flight: int = MAX_IN_FLIGHT_PER_CLIENT
    client_rate: int = CLIENT_RATE
    """Queries per second per client; 0: no rate limit."""
    client_burst: int = CLIENT_BURST

    def __post_init__(self) -> None:
        if self.in_flight < 1 or self.client_in_flight < 1:
            raise UsageError("DNS in-flight limits must be at least 1")
        if self.client_rate < 0 or self.client_rate > 1_000_000_000 or self.client_burst < 1:
            raise UsageError("DNS client rate must be 0 (none) to 1e9 per second, burst at least 1")


class RateLimiter:
    """Per-key token bucket as GCRA: the key's theoretical arrival time ``tat``; a query at ``now`` is
    admitted if ``tat - now`` stays within the burst tolerance, and moves ``tat`` one interval on."""

    __slots__ = ("_interval", "_tat", "_tolerance")

    def __init__(self, rate: int, burst: int) -> None:
        self._interval = 1_000_000_000 // rate if rate else 0
        self._tolerance = self._interval * (burst - 1)
        self._tat: dict[IPAddress, int] = {}

    def admit(self, now: Instant, key: IPAddress) -> bool:
        if not self._interval:
            return True
        tat = self._tat.get(key, now)
        if tat < now:
            tat = now
        elif tat - now > self._tolerance:
            return False
        self._tat[key] = tat + self._interval
        if len(self._tat) > MAX_RATE_ENTRIES:
            self._purge(now)
        return True

    def _purge(self, now: Instant) -> None:
        """Forget the sources whose bucket is full again; if that is not a quarter, the oldest too (so a
        purge, a scan of every entry, happens at most once per quarter of the bound's insertions)."""
        for k in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[k]
        while len(self._tat) > MAX_RATE_ENTRIES * 3 // 4:
            del self._tat[next(iter(self._tat))]

    def __len__(self) -> int:
        return len(self._tat)


# --------------------------------------------------------------------------------------------------
# The forwarder.


@dataclass(slots=True)
class _Pending:
    query: DnsQueryReceived
    deadline: Instant


class DnsForwarder:
    """The core's side of the layer-4 DNS servers (see the module docstring)."""

    __slots__ = (
        "_commands",
        "_next_id",
        "_now",
        "_pending",
        "_per_client",
        "_rate",
        "limits",
        "may_query",
        "stats",
    )

    def __init__(self, may_query: Callable[[IPAddress, str], bool], limits: DnsLimits | None = None) -> None:
        self.may_query = may_query
        """``may_query(client tunnel IP, name)``: whether that client may resolve that name here."""
        self.limits = limits or DnsLimits()
        self._pending: dict[int, _Pending] = {}  # query_id -> pending, in deadline order
        self._per_client: dict[IPAddress, int] = {}  # forwarded and unanswered, per client
        self._rate = RateLimiter(self.limits.client_rate, self.limits.client_burst)
        self._commands: deque[DnsForwarderCommand] = deque()
        self._next_id = 1
        self._now = Instant(0)
        self.stats = Stats()

    def _tick(self, now: Instant) -> None:
        self._now = advance(self._now, now)

    def _respond(self, q: DnsQueryReceived, message: bytes) -> None:
        limit = UDP_RESPONSE_LIMIT if q.transport is DnsTransport.UDP else TCP_RESPONSE_LIMIT
        try:
            out = truncate_response(message, limit)
        except DecodeError:
            out = error_response(q.message, RCODE_SERVFAIL)
        if len(out) > limit:  # pragma: no cover - a question alone always fits
            out = error_response(q.message, RCODE_SERVFAIL)
        if len(out) > 3:  # always (a response has a 12-byte header); the guard keeps R6 obvious
            self.stats.counters[_RESPONSE_COUNTERS[out[3] & 0xF]] += 1
        self._commands.append(SendDnsResponse(q.local, q.remote, q.transport, out))

    def handle_query(self, now: Instant, query: DnsQueryReceived) -> None:
        """A query arrived on a layer-4 server: refuse it, answer SERVFAIL, or forward it."""
        self._tick(now)
        try:
            name = check_message(query.message, response=False)
        except DecodeError as e:
            log.debug("dropping DNS query from %s: %s", query.remote, e)
            self.stats.drop(DropReason.DNS_MALFORMED)
            return
        client = query.remote.ip
        if not self._rate.admit(now, client):
            self.stats.drop(DropReason.DNS_RATE_LIMITED)
            self._respond(query, error_response(query.message, RCODE_SERVFAIL))
            return
        if not self.may_query(client, name):
            log.debug("refusing DNS query for %s from %s", name, query.remote)
            self.stats.drop(DropReason.DNS_REFUSED)
            self._respond(query, error_response(query.message, RCODE_REFUSED))
            return
        mine = self._per_client.get(client, 0)
        if len(self._pending) >= self.limits.in_flight or mine >= self.limits.client_in_flight:
            log.debug("too many DNS queries in flight; SERVFAIL for %s from %s", name, query.remote)
            self.stats.drop(DropReason.QUEUE_FULL)
            self._respond(query, error_response(query.message, RCODE_SERVFAIL))
            return
        qid = self._next_id
        self._next_id += 1
        self._pending[qid] = _Pending(query, Instant(now + UPSTREAM_TIMEOUT))
        self._per_client[client] = mine + 1
        self.stats.counters["dns_forwarded"] += 1
        self._commands.append(ForwardDnsQuery(qid, query.transport, query.message))

    def _take(self, query_id: int) -> _Pending | None:
        pending = self._pending.pop(query_id, None)
        if pending is None:
            self.stats.incr("dns_upstream_unmatched")
            return None
        self._release(pending)
        return pending

    def _release(self, pending: _Pending) -> None:
        client = pending.query.remote.ip
        left = self._per_client[client] - 1
        if left:
            self._per_client[client] = left
        else:
            del self._per_client[client]

    def handle_upstream_response(self, now: Instant, event: DnsUpstreamResponse) -> None:
        self._tick(now)
        pending = self._take(event.query_id)
        if pending is None:
            return
        try:
            check_message(event.message, response=True)
        except DecodeError as e:
            log.debug("upstream DNS response unusable (%s); SERVFAIL", e)
            self.stats.incr("dns_servfail")
            self._respond(pending.query, error_response(pending.query.message, RCODE_SERVFAIL))
            return
        self._respond(pending.query, event.message)

    def handle_upstream_failed(self, now: Instant, event: DnsUpstreamFailed) -> None:
        self._tick(now)
        pending = self._take(event.query_id)
        if pending is None:
            return
        log.debug("upstream DNS failed (%s); SERVFAIL", event.error)
        self.stats.incr("dns_servfail")
        self._respond(pending.query, error_response(pending.query.message, RCODE_SERVFAIL))

    def handle_input(self, now: Instant, event: Input) -> bool:
        """Dispatch one of this module's inputs; False if ``event`` is not one of them."""
        if isinstance(event, DnsQueryReceived):
            self.handle_query(now, event)
        elif isinstance(event, DnsUpstreamResponse):
            self.handle_upstream_response(now, event)
        elif isinstance(event, DnsUpstreamFailed):
            self.handle_upstream_failed(now, event)
        else:
            return False
        return True

    def handle_timeout(self, now: Instant) -> None:
        """SERVFAIL for every forwarded query past its deadline."""
        self._tick(now)
        while self._pending:
            qid, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                break
            del self._pending[qid]
            self._release(pending)
            self.stats.incr("dns_servfail")
            self.stats.incr("dns_upstream_timeout")
            self._respond(pending.query, error_response(pending.query.message, RCODE_SERVFAIL))

    def poll_timeout(self) -> Deadline | None:
        if not self._pending:
            return None
        first = next(iter(self._pending.values()))
        return Deadline(Instant(max(first.deadline, self._now)), "dns upstream timeout")

    def poll_command(self) -> DnsForwarderCommand | None:
        return self._commands.popleft() if self._commands else None

    @property
    def in_flight(self) -> int:
        return len(self._pending)
