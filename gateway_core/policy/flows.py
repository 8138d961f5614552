"""Per-flow records for flow logs (Firezone: ``rust/connlib/tunnel/src/gateway/flow_tracker.rs``).

Theory of operation. The tracker is optional (Firezone enables it when ``RUST_LOG`` contains
``flow_logs=trace``; here the owner passes ``enabled``). It follows TCP and UDP only:

- A client -> resource packet that passed classification is recorded with
  :meth:`FlowTracker.record_outbound`. The key is (client, resource, inner source IP, inner destination IP
  *after* NAT, inner source port *before* NAT, destination port). It creates the flow if absent (a TCP
  FIN or RST never creates one), counts a transmitted packet and its L4 payload bytes, and marks FIN.
  The flow is split (completed and restarted) when the outer WireGuard 4-tuple changed, or when a TCP
  SYN arrives on an existing TCP flow. An RST completes it.
- A resource -> client packet (key taken *before* reverse NAT, source and destination swapped) only
  updates an existing flow: :meth:`FlowTracker.record_inbound` counts a received packet, marks FIN, and
  completes the flow on RST.
- :meth:`FlowTracker.handle_timeout` completes flows idle for more than :data:`FLOW_TIMEOUT` and TCP
  flows with FIN seen both ways (their end is their last packet).
- Completed flows queue up for :meth:`FlowTracker.poll_completed`; the owner logs them.

The gateway's data path hands whole packets to :meth:`FlowTracker.record_outbound_packet` and
:meth:`FlowTracker.record_inbound_packet` (only when flow logs are on), which read the key from them.
Outbound, the key takes the inner source IP and port *before* NAT and the destination IP *after* NAT (the
caller passes both versions of the packet); the domain is the one the proxy IP stood for. Inbound, the key
is read from the packet as it came from the TUN (before reverse NAT), so it matches the outbound flow's
(real IP, port) pair. Packets that do not parse as TCP/UDP are not tracked.

Times inside are monotonic ``Instant``; completed flows carry wall-clock nanoseconds since the Unix
epoch, derived as the wall clock at creation plus the monotonic time elapsed (as the reference does).
Active and completed flows are bounded (:data:`MAX_ACTIVE_FLOWS`, :data:`MAX_COMPLETED_FLOWS`).
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from dataclasses import dataclass

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.contract import Deadline, advance
from gateway_core.errors import DecodeError
from gateway_core.policy.client import ClientPolicy, ClientProperties
from gateway_core.policy.filters import L4_TCP, L4_UDP
from gateway_core.wire.ip import PROTO_TCP, PROTO_UDP, five_tuple, l4_info

log = logging.getLogger("gateway_core.policy.flows")

_FIN, _SYN, _RST = 0x01, 0x02, 0x04

FLOW_TIMEOUT = secs(120)
"""A flow idle for longer than this is complete (Firezone ``FLOW_TIMEOUT``, 2 min)."""
MAX_ACTIVE_FLOWS = 65536
"""Flows followed at once (Firezone: unbounded); new flows beyond it are not logged (counted)."""
MAX_COMPLETED_FLOWS = 65536
"""Completed flows waiting for the owner to poll them; the oldest is dropped beyond it (counted)."""


@dataclass(frozen=True, slots=True)
class OuterContext:
    """The WireGuard datagram's addresses: the client's (remote) and ours (local)."""

    src_ip: IPAddress
    dst_ip: IPAddress
    src_port: int
    dst_port: int


FlowKey = tuple[uuid.UUID, uuid.UUID, IPAddress, IPAddress, int, int]
"""(client, resource, inner source IP, inner destination IP, source port, destination port)."""


@dataclass(frozen=True, slots=True)
class CompletedFlow:
    """One finished flow, ready for a flow-log record (the fields of ``gateway.rs:484-575``)."""

    protocol: str  # "tcp" or "udp"
    client_id: uuid.UUID
    client: ClientProperties
    resource_id: uuid.UUID
    resource_name: str
    resource_address: str
    start: int  # wall-clock ns
    end: int
    last_packet: int
    inner_src_ip: IPAddress
    inner_dst_ip: IPAddress
    inner_src_port: int
    inner_dst_port: int
    inner_domain: str | None
    outer: OuterContext
    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int


def _l4(buf: bytearray) -> tuple[int, int, int] | None:
    """``(proto, payload length, TCP flags)`` for TCP/UDP, else ``None``."""
    try:
        proto, off, end = l4_info(buf)
    except DecodeError:
        return None
    if proto == PROTO_UDP and end - off >= 8:
        return proto, end - off - 8, 0
    if proto == PROTO_TCP and end - off >= 20:
        hl = (buf[off + 12] >> 4) * 4
        return proto, max(0, end - off - hl), buf[off + 13]
    return None


class _Flow:
    __slots__ = (
        "client",
        "context",
        "domain",
        "fin_rx",
        "fin_tx",
        "last",
        "resource_address",
        "resource_name",
        "rx_bytes",
        "rx_packets",
        "start",
        "tx_bytes",
        "tx_packets",
    )

    def __init__(
        self,
        now: Instant,
        payload_len: int,
        context: OuterContext,
        domain: str | None,
        name: str,
        address: str,
        client: ClientProperties,
    ) -> None:
        self.start = now
        self.last = now
        self.tx_packets = 1
        self.tx_bytes = payload_len
        self.rx_packets = 0
        self.rx_bytes = 0
        self.context = context
        self.fin_tx = False
        self.fin_rx = False
        self.domain = domain
        self.resource_name = name
        self.resource_address = address
        self.client = client


class FlowTracker:
    """Active TCP/UDP flows of every client and the queue of completed ones."""

    __slots__ = (
        "_created",
        "_created_utc",
        "_next_due",
        "_now",
        "completed",
        "enabled",
        "max_active",
        "not_tracked",
        "overflowed",
        "tcp",
        "udp",
    )

    def __init__(
        self, now: Instant, utc_ns: int, enabled: bool = True, max_active: int = MAX_ACTIVE_FLOWS
    ) -> None:
        self.enabled = enabled
        self.max_active = max_active
        self._created = now
        self._created_utc = utc_ns
        self._now = now
        self._next_due: Instant | None = None
        self.tcp: dict[FlowKey, _Flow] = {}
        self.udp: dict[FlowKey, _Flow] = {}
        self.completed: deque[CompletedFlow] = deque()
        self.not_tracked = 0
        """New flows not followed because :data:`MAX_ACTIVE_FLOWS` were active."""
        self.overflowed = 0
        """Completed flows dropped because nobody polled them."""

    def _tick(self, now: Instant) -> None:
        if now != self._now:  # (per packet: the call to the R2 helper only when time moved)
            self._now = advance(self._now, now)

    def _wall(self, t: Instant) -> int:
        return self._created_utc + (t - self._created)

    def _due_at(self, t: Instant) -> None:
        if self._next_due is None or t < self._next_due:
            self._next_due = t

    def _complete(self, proto: str, key: FlowKey, f: _Flow, end: Instant) -> None:
        if len(self.completed) >= MAX_COMPLETED_FLOWS:
            self.completed.popleft()
            self.overflowed += 1
        self.completed.append(
            CompletedFlow(
                proto,
                key[0],
                f.client,
                key[1],
                f.resource_name,
                f.resource_address,
                self._wall(f.start),
                self._wall(end),
                self._wall(f.last),
                key[2],
                key[3],
                key[4],
                key[5],
                f.domain,
                f.context,
                f.rx_packets,
                f.tx_packets,
                f.rx_bytes,
                f.tx_bytes,
            )
        )

    def record_outbound_packet(
        self,
        now: Instant,
        policy: ClientPolicy,
        rid: uuid.UUID,
        pre: bytearray,
        post: bytearray,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> None:
        """A packet from ``policy``'s client that resource ``rid`` allowed: ``pre`` as it came out of the
        tunnel, ``post`` after the policy's NAT; it arrived from ``remote`` on our ``local`` socket."""
        info = _l4(pre)
        auth = policy.authorizations.get(rid)
        if info is None or auth is None:
            return
        proto, plen, flags = info
        try:
            _, src, pre_dst, sport, dport = five_tuple(pre)
            _, _, dst, _, _ = five_tuple(post)
        except DecodeError:
            return
        st = policy.nat.translations.get(pre_dst)
        self.record_outbound(
            now,
            proto=proto,
            client_id=policy.client_id,
            client=policy.properties,
            resource_id=rid,
            resource_name=auth.resource.name,
            resource_address=auth.resource.address_for(dst),
            domain=None if st is None else st.domain,
            src_ip=src,
            dst_ip=dst,
            src_port=sport,
            dst_port=dport,
            payload_len=plen,
            outer=OuterContext(remote.ip, local.ip, remote.port, local.port),
            syn=bool(flags & _SYN),
            fin=bool(flags & _FIN),
            rst=bool(flags & _RST),
        )

    def record_inbound_packet(self, now: Instant, policy: ClientPolicy, buf: bytearray) -> None:
        """A packet read from the TUN for ``policy``'s client, before the policy's reverse NAT."""
        info = _l4(buf)
        if info is None:
            return
        proto, plen, flags = info
        try:
            _, src, dst, sport, dport = five_tuple(buf)
        except DecodeError:
            return
        for rid in policy.authorizations.ids():
            self.record_inbound(
                now,
                proto=proto,
                client_id=policy.client_id,
                resource_id=rid,
                src_ip=src,
                dst_ip=dst,
                src_port=sport,
                dst_port=dport,
                payload_len=plen,
                fin=bool(flags & _FIN),
                rst=bool(flags & _RST),
            )

    def record_outbound(
        self,
        now: Instant,
        *,
        proto: int,
        client_id: uuid.UUID,
        client: ClientProperties,
        resource_id: uuid.UUID,
        resource_name: str,
        resource_address: str,
        domain: str | None,
        src_ip: IPAddress,
        dst_ip: IPAddress,
        src_port: int,
        dst_port: int,
        payload_len: int,
        outer: OuterContext,
        syn: bool = False,
        fin: bool = False,
        rst: bool = False,
    ) -> None:
        """A client -> resource packet that passed the policy (``dst_ip`` after NAT, ports before)."""
        self._tick(now)
        if not self.enabled or proto not in (L4_TCP, L4_UDP):
            return
        table, name = (self.tcp, "tcp") if proto == L4_TCP else (self.udp, "udp")
        key: FlowKey = (client_id, resource_id, src_ip, dst_ip, src_port, dst_port)
        f = table.get(key)
        if f is not None and (f.context != outer or (proto == L4_TCP and syn)):
            del table[key]
            self._complete(name, key, f, now)  # split: context changed, or a new SYN
            f = None
        if f is None:
            if proto == L4_TCP and (fin or rst):
                return
            if len(self.tcp) + len(self.udp) >= self.max_active:
                self.not_tracked += 1
                return
            table[key] = _Flow(now, payload_len, outer, domain, resource_name, resource_address, client)
            self._due_at(Instant(now + FLOW_TIMEOUT + 1))
            return
        f.tx_packets += 1
        f.tx_bytes += payload_len
        f.last = now
        if fin:
            f.fin_tx = True
            if f.fin_rx:
                self._due_at(now)
        if rst:
            del table[key]
            self._complete(name, key, f, now)

    def record_inbound(
        self,
        now: Instant,
        *,
        proto: int,
        client_id: uuid.UUID,
        resource_id: uuid.UUID,
        src_ip: IPAddress,
        dst_ip: IPAddress,
        src_port: int,
        dst_port: int,
        payload_len: int,
        fin: bool = False,
        rst: bool = False,
    ) -> None:
        """A resource -> client packet as read from the TUN (before reverse NAT); updates only."""
        self._tick(now)
        if not self.enabled or proto not in (L4_TCP, L4_UDP):
            return
        table, name = (self.tcp, "tcp") if proto == L4_TCP else (self.udp, "udp")
        key: FlowKey = (client_id, resource_id, dst_ip, src_ip, dst_port, src_port)
        f = table.get(key)
        if f is None:
            return
        f.rx_packets += 1
        f.rx_bytes += payload_len
        f.last = now
        if proto == L4_TCP:
            if fin:
                f.fin_rx = True
                if f.fin_tx:
                    self._due_at(now)
            if rst:
                del table[key]
                self._complete(name, key, f, now)

    def handle_timeout(self, now: Instant) -> None:
        """Complete idle flows and TCP flows closed in both directions."""
        self._tick(now)
        if self._next_due is None or now < self._next_due:
            return
        nxt: Instant | None = None
        for name, table in (("tcp", self.tcp), ("udp", self.udp)):
            for key in list(table):
                f = table[key]
                if now - f.last > FLOW_TIMEOUT:
                    del table[key]
                    self._complete(name, key, f, now)
                elif f.fin_tx and f.fin_rx:
                    del table[key]
                    self._complete(name, key, f, f.last)
                else:
                    due = Instant(f.last + FLOW_TIMEOUT + 1)
                    nxt = due if nxt is None or due < nxt else nxt
        self._next_due = nxt

    def poll_timeout(self) -> Deadline | None:
        """When a flow may next complete (a lower bound, never before the last ``now``)."""
        if self._next_due is None:
            return None
        return Deadline(max(self._next_due, self._now), "flow timeout")

    def poll_completed(self) -> CompletedFlow | None:
        return self.completed.popleft() if self.completed else None

    def remove_client(self, client_id: uuid.UUID, now: Instant) -> None:
        """The client is gone: complete its flows now."""
        self._tick(now)
        for name, table in (("tcp", self.tcp), ("udp", self.udp)):
            for key in [k for k in table if k[0] == client_id]:
                self._complete(name, key, table.pop(key), now)


__all__ = [
    "FLOW_TIMEOUT",
    "MAX_ACTIVE_FLOWS",
    "MAX_COMPLETED_FLOWS",
    "ClientProperties",
    "CompletedFlow",
    "FlowKey",
    "FlowTracker",
    "OuterContext",
]
