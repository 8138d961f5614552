"""Forwarded UDP queries over a few long-lived upstream sockets, answers matched by id (decision 0112).

Theory of operation
-------------------
Firezone opens a UDP socket per forwarded query (``rust/connlib/tunnel/src/io/udp_dns.rs``), and so did
this gateway, with a task per query around it: socket, ``SO_MARK``, connect, register with the event
loop, send, wait, receive, unregister, close. :class:`UdpUpstream` sends every forwarded UDP query for one
nameserver on a connected socket it keeps, under an id of its own, and the event loop's reader callback
of that socket (no task: asyncio's ``add_reader``, registered once) drains the answers in batches:

- **submit** (:meth:`UdpUpstream.submit`, never waits): the query goes out at once with a fresh random
  16-bit id not pending on that socket; ``(id) -> (core query id, client's id, question bytes, deadline)``
  is remembered. A send that fails is reported at once as :class:`DnsUpstreamFailed`.
- **answers**: an answer counts only if it comes from the nameserver (the socket is connected), carries a
  pending id, has QR set and echoes the query's question byte for byte; anything else is ignored (a forged
  answer must guess all of that). The client's id is put back and :class:`DnsUpstreamResponse` reported. A
  truncated answer (TC) is asked again over TCP in a task of its own (rare), as :class:`Resolver` did.
- **rotation**: after :data:`ROTATE_AFTER` queries, or :data:`ROTATE_AGE` seconds, the next query opens a
  fresh socket (a new random source port); the old one keeps reading until its queries are answered or
  their time is up, then closes. So a source port serves a few hundred queries at
  most: forging an answer still means guessing port and id, as with a socket per query.
- **failures and time**: "port unreachable" from the nameserver (``ECONNREFUSED`` on the connected socket)
  fails every query pending on that socket and retires it. A query not answered within ``timeout`` is
  forgotten quietly (checked as answers come and by the socket's ``call_later`` timer, armed while
  queries are pending): the core answered ``SERVFAIL`` at its own deadline (the same 5 s). Needs the
  asyncio event loop (the daemon's).

Every socket carries ``SO_MARK`` so its traffic bypasses the tunnel's routing tables, as the resolver's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc

from gateway_core.addr import SocketAddr
from gateway_core.dns.forwarding import DnsUpstreamFailed, DnsUpstreamResponse, ForwardDnsQuery, question_end
from gateway_core.errors import DecodeError
from gateway_core.inputs import Input

log = logging.getLogger(__name__)

ROTATE_AFTER = 256
"""Queries one upstream socket sends before the next query opens a fresh one (a new source port)."""
ROTATE_AGE = 10.0
"""Seconds one upstream socket is used for new queries at most, however few it sent."""
READ_BATCH = 64
"""Answers read from one socket per wake-up before the reader yields (R9 fairness)."""
SOCKET_BUFFER = 1 << 20
"""Receive buffer asked for each upstream socket (answers to up to ~1000 queries in flight fit)."""
RESPONSE_BUFFER = 1500
"""Bytes read of one upstream answer (Firezone: 1500, ``io/udp_dns.rs``)."""
_TC = 0x02
_ID = struct.Struct("!H")

Report = Callable[[Input], None]
TcpRetry = Callable[[bytes, SocketAddr], Awaitable[bytes]]


@dataclass(slots=True)
class _Sent:
    query_id: int
    client_id: bytes
    question: bytes
    deadline: float
    message: bytes


class _Socket:
    __slots__ = ("born", "closed", "ids", "pending", "retired", "sent", "sock", "timer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending: dict[int, _Sent] = {}  # upstream id -> query, in send order
        self.sent = 0
        self.born = time.monotonic()
        self.retired = False
        self.closed = False
        self.timer = False  # a _check is scheduled
        self.ids = memoryview(os.urandom(2 * ROTATE_AFTER))  # one fresh random id per query to send


class UdpUpstream:
    """The forwarded UDP queries to one nameserver (module docstring)."""

    def __init__(
        self,
        server: SocketAddr,
        *,
        task_group: anyio.abc.TaskGroup,
        report: Report,
        mark: int | None,
        timeout: float,
        tcp_retry: TcpRetry | None = None,
    ) -> None:
        self.server = server
        self._tg = task_group
        self._report = report
        self._mark = mark
        self._timeout = timeout
        self._tcp_retry = tcp_retry
        self._loop = asyncio.get_running_loop()
        self._current: _Socket | None = None
        self.sockets: set[_Socket] = set()
        """Every open socket (the current one and the retired ones still waiting for answers)."""
        self.counters: dict[str, int] = {"sent": 0, "answered": 0, "ignored": 0, "expired": 0, "sockets": 0}

    # --- sending ---------------------------------------------------------------------------------------

    def _open(self) -> _Socket:
        family = socket.AF_INET if self.server.ip.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self._mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("=I", self._mark))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.connect((str(self.server.ip), self.server.port))
        except BaseException:
            sock.close()
            raise
        s = _Socket(sock)
        self.sockets.add(s)
        self.counters["sockets"] += 1
        self._loop.add_reader(sock.fileno(), self._readable, s)
        return s

    def _socket(self) -> _Socket:
        s = self._current
        if s is not None and s.sent < ROTATE_AFTER and time.monotonic() - s.born < ROTATE_AGE:
            return s
        if s is not None:
            self._retire(s)
        self._current = s = self._open()
        return s

    def _retire(self, s: _Socket) -> None:
        s.retired = True
        if self._current is s:
            self._current = None
        if not s.pending:
            self._close(s)

    def submit(self, cmd: ForwardDnsQuery) -> None:
        """Send ``cmd``'s query now; its outcome is reported later (or at once if the send fails)."""
        message = cmd.message
        try:
            qend = question_end(message)
            s = self._socket()
        except (DecodeError, OSError) as e:
            self._report(DnsUpstreamFailed(cmd.query_id, f"{self.server}: {e}"))
            return
        at = 2 * s.sent
        uid = (s.ids[at] << 8) | s.ids[at + 1]
        while uid in s.pending:  # an id still pending on this socket: draw another
            uid = _ID.unpack(os.urandom(2))[0]
        s.sent += 1
        try:
            s.sock.send(_ID.pack(uid) + message[2:])
        except OSError as e:  # BlockingIOError (buffer full), ENETUNREACH, EPERM (netfilter)...
            self._report(DnsUpstreamFailed(cmd.query_id, f"{self.server}: {e.strerror or e}"))
            return
        self.counters["sent"] += 1
        s.pending[uid] = _Sent(
            cmd.query_id, message[:2], message[12:qend], time.monotonic() + self._timeout, message
        )
        self._arm(s)

    # --- receiving -------------------------------------------------------------------------------------

    def _readable(self, s: _Socket) -> None:
        """The event loop's reader callback: drain a batch of answers, then close the socket if it is
        retired and has nothing pending any more."""
        self._drain(s)
        self._expire(s)
        if s.retired and not s.pending:
            self._close(s)

    def _drain(self, s: _Socket) -> None:
        recv = s.sock.recv
        for _ in range(READ_BATCH):
            try:
                reply = recv(RESPONSE_BUFFER)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                self._fail_all(s, "connection refused (port unreachable)")
                return
            except OSError as e:
                log.debug("upstream %s: receive error %s", self.server, e)
                return
            self._answer(s, reply)

    def _answer(self, s: _Socket, reply: bytes) -> None:
        if len(reply) < 12 or not reply[2] & 0x80:
            self.counters["ignored"] += 1
            return
        uid = (reply[0] << 8) | reply[1]
        sent = s.pending.get(uid)
        if sent is None or reply[12 : 12 + len(sent.question)] != sent.question:
            self.counters["ignored"] += 1  # late, unknown id, or not an answer to that question
            return
        del s.pending[uid]
        self.counters["answered"] += 1
        if reply[2] & _TC and self._tcp_retry is not None:
            self._tg.start_soon(self._retry_over_tcp, sent)
            return
        self._report(DnsUpstreamResponse(sent.query_id, sent.client_id + reply[2:]))

    async def _retry_over_tcp(self, sent: _Sent) -> None:
        assert self._tcp_retry is not None
        log.debug("truncated UDP answer from %s, asking over TCP", self.server)
        try:
            with anyio.fail_after(max(0.0, sent.deadline - time.monotonic())):
                reply = await self._tcp_retry(sent.message, self.server)
        except (OSError, TimeoutError, ConnectionError) as e:
            self._report(DnsUpstreamFailed(sent.query_id, f"{self.server} over TCP: {e}"))
            return
        self._report(DnsUpstreamResponse(sent.query_id, reply))

    def _check(self, s: _Socket) -> None:
        """A socket's timer, armed while queries are pending: forget those that timed out, and close the
        socket once it is retired and has nothing pending."""
        s.timer = False
        self._expire(s)
        if s.closed:
            return
        if s.pending:
            self._arm(s)
        elif s.retired:
            self._close(s)

    def _arm(self, s: _Socket) -> None:
        if not s.timer:
            s.timer = True
            first = s.pending[next(iter(s.pending))].deadline
            self._loop.call_later(max(0.0, first - time.monotonic()) + 0.01, self._check, s)

    def _expire(self, s: _Socket) -> None:
        now = time.monotonic()
        pending = s.pending
        while pending:
            uid = next(iter(pending))
            if pending[uid].deadline > now:
                return
            del pending[uid]
            self.counters["expired"] += 1

    def _fail_all(self, s: _Socket, why: str) -> None:
        for sent in s.pending.values():
            self._report(DnsUpstreamFailed(sent.query_id, f"{self.server}: {why}"))
        s.pending.clear()
        self._retire(s)

    def _close(self, s: _Socket) -> None:
        if s.closed:
            return
        s.closed = True
        self.sockets.discard(s)
        if self._current is s:
            self._current = None
        self._loop.remove_reader(s.sock.fileno())
        s.sock.close()

    def close(self) -> None:
        """Close every socket (their readers end); pending queries are forgotten."""
        for s in list(self.sockets):
            self._close(s)

