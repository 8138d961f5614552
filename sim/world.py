"""The simulated world: a discrete-event loop over a virtual clock and a simulated network.

Theory of operation: the world owns the :class:`~sim.clock.VirtualClock`, the :class:`~sim.net.Network`,
the hosts, and one priority queue of events ordered by ``(time, sequence number)``; the sequence number
grows by one per scheduled event, so events at the same instant run in the order they were scheduled and a
run is deterministic. Events are: a packet copy arriving at a host, a host's component deadline (a wake),
a stream event, and scenario actions (:meth:`World.at`).

:meth:`World.run_until` pops events in order, moves the clock to each event's time and serves it. Every
time a component is touched (network input, a served deadline, an external call through
:meth:`World.drive`) the world then *settles* it: drains its commands in order (R3) through its host,
runs the contract checks (:mod:`sim.contract`) and schedules a wake at its next deadline. A wake whose
deadline was superseded is skipped (each host remembers the sequence number of its live wake).
:meth:`World.replace_component` swaps the component a host drives (a restarted process) and keeps this
bookkeeping consistent: the old wake is cancelled, the new component gets a fresh contract checker and is
settled at once.

Randomness: one :class:`~gateway_core.entropy.SeededEntropy` per world; the network and each component
get independent forks (:meth:`World.entropy_for`), so adding a random draw in one place does not shift
another's stream.

A UDP datagram reaching a host is delivered to a bound socket when the destination is one of the host's
own addresses; otherwise (a prefix route, e.g. into a gateway's TUN) it is handed over as a raw IP packet.
A raw IP packet carrying UDP to a host that takes no raw packets goes to the matching socket instead.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Duration, Instant, fmt
from gateway_core.commands import Exit
from gateway_core.contract import Component, Deadline
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import UsageError
from gateway_core.stats import Stats
from gateway_core.wire.ip import build_udp_packet
from sim.clock import VirtualClock
from sim.contract import PURITY_EVERY
from sim.host import Host, StreamClosed, StreamEvent, StreamFrame, StreamOpened
from sim.nat import Nat
from sim.net import NetDrop, Network, ip_endpoints, udp_in_ip
from sim.trace import Record, Trace

if TYPE_CHECKING:
    from sim.pcap import PcapWriter

MAX_EVENTS_PER_INSTANT = 100_000
"""Livelock guard: events served without the clock moving (e.g. two hosts bouncing packets over zero-delay
links). A healthy scenario serves a handful per instant."""

MAX_COMMANDS_PER_STEP = 100_000
"""A component that keeps producing commands while being drained is stuck in a loop."""

UDP = 17

_DELIVER = 0
_WAKE = 1
_ACTION = 2
_STREAM = 3


class SimError(RuntimeError):
    """The simulation itself cannot go on (livelock, a command nothing can execute)."""


@dataclass(slots=True)
class Packet:
    """One packet in flight. ``proto`` is ``udp`` (a datagram) or ``ip`` (a raw IP packet in ``payload``)."""

    id: int
    proto: str
    src_host: str
    dst_host: str
    src: SocketAddr
    dst: SocketAddr
    l4: int
    payload: bytes
    sent_at: Instant
    fields: dict[str, int | str | None] | None = None
    ecn: int = 0
    """The ECN bits of the datagram's IP header: the sender's (``Transmit.ecn``), or a marking router's
    (:meth:`World.mark_ecn`)."""


@dataclass(slots=True)
class _Stream:
    id: int
    client: str
    server: str
    client_addr: SocketAddr
    server_addr: SocketAddr
    open: bool = True
    reset: bool = False
    last_to_client: Instant = Instant(0)
    last_to_server: Instant = Instant(0)


class World:
    """The event loop; see the module docstring."""

    def __init__(
        self,
        seed: int | bytes,
        *,
        trace: Trace | None = None,
        pcap: PcapWriter | None = None,
        clock: VirtualClock | None = None,
        max_events_per_instant: int = MAX_EVENTS_PER_INSTANT,
        purity_every: int = PURITY_EVERY,
    ) -> None:
        self.seed = seed
        self.clock = clock if clock is not None else VirtualClock()
        self.entropy = SeededEntropy(seed)
        self.network = Network(self.entropy.fork("net"))
        self.trace = trace if trace is not None else Trace()
        self.pcap = pcap
        self.hosts: dict[str, Host] = {}
        self.stats = Stats()
        self.max_events_per_instant = max_events_per_instant
        self.purity_every = purity_every
        """Every host's checker runs the full R4 purity check on one settle in this many (sim.contract)."""
        self._queue: list[tuple[int, int, int, object]] = []
        self._seq = 0
        self._packet_ids = 0
        self._streams: dict[int, _Stream] = {}
        self._wakes: dict[str, int] = {}
        self._instant_events = 0
        self._instant: int = -1
        self.nats: dict[str, Nat] = {}
        """NATs by the name of the host behind each (:meth:`add_nat`)."""
        self._nat_public: dict[IPAddress, Nat] = {}
        self._ecn_marks: dict[tuple[str, str], int] = {}

    # --- basics ---

    @property
    def now(self) -> Instant:
        return self.clock.now

    def entropy_for(self, name: str) -> SeededEntropy:
        """An independent deterministic stream for the component of host ``name``."""
        return self.entropy.fork(f"host/{name}")

    def _push(self, t: int, kind: int, obj: object) -> int:
        if t < self.clock.now:
            raise UsageError(f"cannot schedule an event in the past ({t} < {self.clock.now})")
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, kind, obj))
        return self._seq

    def _tracing(self) -> bool:
        """Whether anything consumes trace records (a sink, kept records or a listener); when nothing
        does, the per-packet records (hex payloads, address strings) are not built at all."""
        t = self.trace
        return t.sink is not None or t.keep or bool(t.listeners)

    def _emit(self, ev: str, **fields: int | str | None) -> None:
        if not self._tracing():
            return
        rec: Record = {"t": int(self.clock.now), "ev": ev}
        rec.update(fields)
        self.trace.emit(rec)

    # --- hosts ---

    def add_host(self, host: Host) -> Host:
        """Put ``host`` on the network and start driving its component."""
        if host.name in self.hosts:
            raise UsageError(f"duplicate host name {host.name!r}")
        self.network.attach(host.name, host.addresses(), host.link)
        self.hosts[host.name] = host
        host.checker.purity_every = self.purity_every
        host.attached(self)
        self._settle(host, None)
        return host

    def remove_host(self, name: str) -> None:
        """Take a host off the network; its addresses become stale, its pending events are dropped."""
        host = self.hosts.pop(name)
        self.network.detach(name)
        self._wakes.pop(name, None)
        host.exited = host.exited or Exit("removed")

    def replace_component(self, host: Host | str, component: Component) -> None:
        """From now on ``host`` drives ``component`` instead of its current one (a process restarted on
        the same machine: same name, addresses, ports and link).

        The old component is driven no more: its pending wake is cancelled and nothing reaches it again.
        The host forgets what it kept for the old one (:meth:`Host.swap_component`, e.g. the streams a
        crash closes). The new component gets a fresh contract checker (R2 counts from ``now``, the R4
        sampling and the R5 busy-loop count start over) and is settled at once, like a host just added:
        its commands are drained and a wake is scheduled at its first deadline. A host that had exited
        runs again. Packets and stream events already in flight to the host reach the new component, as
        they would reach a restarted process on the same ports. No trace record is written; trace records
        name the host, which stays.
        """
        h = self._host(host)
        self._wakes.pop(h.name, None)
        h.deadline = None
        h.exited = None
        h.swap_component(component)
        h.checker.purity_every = self.purity_every
        h.checker.check_now(self.now)
        self._settle(h, None)

    def readdress(
        self, host: Host | str, *, ipv4: IPv4Address | None = None, ipv6: IPv6Address | None = None
    ) -> None:
        """``host`` moves to new addresses (a roaming client): the given ones replace those of the same
        family, the old ones become stale on the network (:meth:`Network.readdress`). Its component is not
        told: a test drives it through whatever the component does on a network change."""
        h = self._host(host)
        new4 = ipv4 if ipv4 is not None else h.ipv4
        new6 = ipv6 if ipv6 is not None else h.ipv6
        self.network.readdress(h.name, [a for a in (new4, new6) if a is not None])
        h.ipv4, h.ipv6 = new4, new6

    def _host(self, host: Host | str) -> Host:
        name = host if isinstance(host, str) else host.name
        found = self.hosts.get(name)
        if found is None or (not isinstance(host, str) and found is not host):
            raise UsageError(f"host {name!r} is not in this world")
        return found

    def host_exited(self, host: Host, command: Exit) -> None:
        """Called by :meth:`Host.execute` on ``Exit``: the host is driven no more."""
        host.exited = command
        self._wakes.pop(host.name, None)
        self._emit("exit", host=host.name, reason=command.reason, code=command.code)

    def drive(self, host: Host | str, call: Callable[[Instant], object]) -> None:
        """Call into a component from outside (a scenario step), then drain and check it like any step."""
        h = self.hosts[host] if isinstance(host, str) else host
        h.checker.check_now(self.now)
        call(self.now)
        self._settle(h, None)

    def _settle(self, host: Host, served: Deadline | None) -> None:
        comp = host.component
        n = 0
        while (cmd := comp.poll_command()) is not None:
            n += 1
            if n > MAX_COMMANDS_PER_STEP:
                raise SimError(f"{host.name} produced more than {MAX_COMMANDS_PER_STEP} commands in one step")
            if host.exited is None:
                host.execute(self.now, cmd)
        if host.exited is not None:
            return
        deadline = host.checker.settle(self.now, served)
        previous = host.deadline
        host.deadline = deadline
        if deadline is None:
            self._wakes.pop(host.name, None)
        elif deadline != previous or host.name not in self._wakes:
            self._wakes[host.name] = self._push(deadline.at, _WAKE, host.name)

    # --- scenario actions ---

    def at(self, t: Instant, action: Callable[[], None], label: str | None = None) -> None:
        """Run ``action`` at virtual time ``t``; with a ``label`` it is traced as an ``action`` record.

        (:meth:`partition` and :meth:`heal` trace themselves, so schedule them without a label.)"""
        self._push(t, _ACTION, (label, action))

    def after(self, delay: Duration, action: Callable[[], None], label: str | None = None) -> None:
        self.at(Instant(self.now + delay), action, label)

    def mark_ecn(self, src_host: str, dst_host: str, ecn: int | None) -> None:
        """Every UDP datagram ``src_host`` sends to ``dst_host`` from now on carries the ECN bits ``ecn``
        in its IP header (a router re-marking them, e.g. CE = 3 under congestion); ``None`` stops it."""
        if ecn is None:
            self._ecn_marks.pop((src_host, dst_host), None)
        elif 0 <= ecn <= 3:
            self._ecn_marks[(src_host, dst_host)] = ecn
        else:
            raise UsageError(f"ECN bits are 0-3, not {ecn}")

    def partition(self, group_a: list[str], group_b: list[str]) -> None:
        """Cut the paths between two groups of hosts now (traced)."""
        self.network.partition(group_a, group_b)
        self._emit("action", what=f"partition {','.join(group_a)} | {','.join(group_b)}")

    def heal(self, group_a: list[str] | None = None, group_b: list[str] | None = None) -> None:
        """Heal cuts now (all of them when no group is given; traced)."""
        self.network.heal(group_a, group_b)
        what = (
            "heal all"
            if group_a is None or group_b is None
            else f"heal {','.join(group_a)} | {','.join(group_b)}"
        )
        self._emit("action", what=what)

    # --- sending ---

    def _drop(self, pkt: Packet | None, reason: NetDrop, **fields: int | str | None) -> None:
        self.stats.incr(f"drop.{reason.value}")
        if pkt is not None:
            self.stats.incr(f"{pkt.src_host}.dropped")
            if self._tracing():
                fields.update(_packet_fields(pkt))
        self._emit("drop", reason=reason.value, **fields)

    def send_udp(
        self, host: Host, src: SocketAddr | None, dst: SocketAddr, payload: bytes, ecn: int = 0
    ) -> None:
        """Send one UDP datagram from ``host`` with the ECN bits ``ecn`` in its IP header; ``src=None``
        picks the host's address and sending port."""
        if src is None:
            ip = host.source_for(dst.ip)
            if ip is None:
                self._drop(None, NetDrop.NO_SOURCE_ADDRESS, host=host.name, dst=str(dst))
                return
            src = SocketAddr(ip, host.sending_port())
        elif not host.owns(src.ip):
            self._drop(None, NetDrop.NOT_OWN_ADDRESS, host=host.name, src=str(src), dst=str(dst))
            return
        self._send(host, "udp", src, dst, UDP, bytes(payload), ecn)

    def send_ip(self, host: Host, packet: bytes) -> None:
        """Send one raw IP packet from ``host`` (routed by its destination address)."""
        ends = ip_endpoints(packet)
        if ends is None:
            self._drop(None, NetDrop.MALFORMED_IP, host=host.name, len=len(packet))
            return
        src_ip, dst_ip, l4 = ends
        self._send(host, "ip", SocketAddr(src_ip, 0), SocketAddr(dst_ip, 0), l4, bytes(packet))

    def add_nat(self, nat: Nat) -> Nat:
        """Put ``nat`` in front of its inside host: that host's outbound UDP over IPv4 leaves from the
        NAT's public address (:mod:`sim.nat`), its private address is reachable by nobody else, and
        datagrams to the public address come in only through a live, opened mapping."""
        if nat.inside_host not in self.hosts or nat.public in self._nat_public:
            raise UsageError(f"cannot put a NAT in front of {nat.inside_host!r} at {nat.public}")
        if self.network.route(nat.public) != NetDrop.UNROUTABLE:
            raise UsageError(f"address {nat.public} is already in use")
        self.nats[nat.inside_host] = nat
        self._nat_public[nat.public] = nat
        return nat

    def _send(
        self, host: Host, proto: str, src: SocketAddr, dst: SocketAddr, l4: int, payload: bytes, ecn: int = 0
    ) -> None:
        self._packet_ids += 1
        nat = self.nats.get(host.name) if self.nats else None
        if nat is not None and proto == "udp" and src.ip.version == 4 and dst.ip not in self._nat_public:
            src = nat.outbound(src, dst, self.now)
        inside = self._nat_public.get(dst.ip) if self.nats else None
        if inside is not None:
            inner = inside.inbound(dst, src, self.now) if proto == "udp" else None
            pkt0 = Packet(
                self._packet_ids, proto, host.name, inside.inside_host, src, dst, l4, payload, self.now
            )
            if inner is None:
                self.stats.incr("sent")
                self._drop(pkt0, NetDrop.NAT_FILTERED)
                return
            dst = inner
        route = self.network.route(dst.ip)
        dst_host = route if isinstance(route, str) else ""
        if dst_host in self.nats and dst_host != host.name and inside is None and dst.ip.version == 4:
            route = NetDrop.UNROUTABLE  # a private address behind a NAT: nobody outside reaches it
            dst_host = ""
        pkt = Packet(self._packet_ids, proto, host.name, dst_host, src, dst, l4, payload, self.now)
        pkt.ecn = ecn  # the sender's bits; a marking router (mark_ecn) rewrites them
        if self._ecn_marks and proto == "udp":
            pkt.ecn = self._ecn_marks.get((host.name, dst_host), ecn)
        self.stats.incr("sent")
        self.stats.incr(f"{host.name}.sent")
        if self._tracing():
            self._emit("send", len=len(payload), **_packet_fields(pkt))
        if isinstance(route, NetDrop):
            self._drop(pkt, route)
            return
        if self.network.is_partitioned(host.name, dst_host):
            self._drop(pkt, NetDrop.PARTITION)
            return
        delays = self.network.fate(host.name, dst_host)
        if not delays:
            self._drop(pkt, NetDrop.LOSS)
            return
        for copy, delay in enumerate(delays):
            self._push(self.now + delay, _DELIVER, (pkt, copy))

    # --- the loop ---

    def run_until(self, t_end: Instant) -> None:
        """Serve every event up to and including ``t_end``, then leave the clock at ``t_end``."""
        while self._queue and self._queue[0][0] <= t_end:
            self.step()
        if t_end > self.now:
            self.clock.advance_to(t_end)

    def run_for(self, d: Duration) -> None:
        self.run_until(Instant(self.now + d))

    def run_until_idle(self, budget: Duration) -> bool:
        """Serve events until none is left (``True``) or the next lies beyond ``now + budget`` (``False``).

        Like Firezone's ``advance`` (at most 20 s per step): the clock stays at the last event served, so
        a test can check its invariants right when the world went quiet. Components with periodic timers
        are never idle; use :meth:`run_until` for them.
        """
        limit = self.now + budget
        while self._queue and self._queue[0][0] <= limit:
            self.step()
        return not self._queue

    def next_event_at(self) -> Instant | None:
        return Instant(self._queue[0][0]) if self._queue else None

    def step(self) -> None:
        """Serve the earliest event."""
        t, seq, kind, obj = heapq.heappop(self._queue)
        if t != self._instant:
            self._instant = t
            self._instant_events = 0
        self._instant_events += 1
        if self._instant_events > self.max_events_per_instant:
            raise SimError(f"livelock: more than {self.max_events_per_instant} events at {fmt(t)}")
        self.clock.advance_to(Instant(t))
        if kind == _DELIVER:
            assert isinstance(obj, tuple)
            self._deliver(obj[0], obj[1])
        elif kind == _WAKE:
            assert isinstance(obj, str)
            self._wake(obj, seq)
        elif kind == _ACTION:
            assert isinstance(obj, tuple)
            label, action = obj
            if label is not None:
                self._emit("action", what=label)
            action()
        else:
            assert isinstance(obj, tuple)
            self._stream_deliver(obj[0], obj[1])

    def _wake(self, name: str, seq: int) -> None:
        if self._wakes.get(name) != seq:
            return  # superseded by a later deadline, or the host is gone
        del self._wakes[name]
        host = self.hosts[name]
        served = host.deadline
        assert served is not None
        self._emit("timeout", host=name, reason=served.reason, at=int(served.at))
        host.checker.check_now(self.now)
        host.component.handle_timeout(self.now)
        self._settle(host, served)

    def _deliver(self, pkt: Packet, copy: int) -> None:
        host = self.hosts.get(pkt.dst_host)
        if host is None or host.exited is not None:
            self._drop(pkt, NetDrop.HOST_DOWN, copy=copy)
            return
        if self.network.is_partitioned(pkt.src_host, pkt.dst_host):
            self._drop(pkt, NetDrop.PARTITION, copy=copy)
            return
        now = self.now
        as_datagram: tuple[SocketAddr, SocketAddr, bytes] | None = None
        if pkt.proto == "udp":
            if host.owns(pkt.dst.ip) and pkt.dst.port in host.ports and host.accepts_datagrams():
                as_datagram = (pkt.dst, pkt.src, pkt.payload)
            elif not host.accepts_raw_ip():
                self._drop(pkt, NetDrop.NO_SOCKET, copy=copy)
                return
        elif not host.accepts_raw_ip():
            udp = udp_in_ip(pkt.payload)
            if udp is None or not host.owns(pkt.dst.ip) or udp[1] not in host.ports:
                self._drop(pkt, NetDrop.NO_HANDLER, copy=copy)
                return
            as_datagram = (SocketAddr(pkt.dst.ip, udp[1]), SocketAddr(pkt.src.ip, udp[0]), udp[2])
        self.stats.incr("delivered")
        self.stats.incr(f"{host.name}.received")
        if copy:
            self.stats.incr("duplicated")
        if self._tracing():
            self._emit(
                "deliver",
                copy=copy,
                sent=int(pkt.sent_at),
                len=len(pkt.payload),
                payload=pkt.payload.hex(),
                **_packet_fields(pkt),
            )
        if self.pcap is not None:
            self.pcap.write(self.clock.unix_ns(now), self._as_ip(pkt))
        if as_datagram is not None:
            local, remote, payload = as_datagram
            if pkt.ecn:
                ecn = pkt.ecn
                host.checker.network_input(now, lambda: host.on_datagram(now, local, remote, payload, ecn))
            else:
                host.checker.network_input(now, lambda: host.on_datagram(now, local, remote, payload))
        else:
            raw = self._as_ip(pkt)
            host.checker.network_input(now, lambda: host.on_ip_packet(now, raw))
        self._settle(host, None)

    @staticmethod
    def _as_ip(pkt: Packet) -> bytes:
        if pkt.proto == "ip":
            return pkt.payload
        return build_udp_packet(pkt.src.ip, pkt.dst.ip, pkt.src.port, pkt.dst.port, pkt.payload)

    # --- reliable streams (the portal's WebSocket, simulated as ordered text frames) ---

    def stream_connect(self, host: Host, dst: SocketAddr) -> int:
        """Open a stream from ``host`` to ``dst``; both ends get :class:`StreamOpened` (or the client a
        :class:`StreamClosed` with the reason it failed). Returns the stream id."""
        self._packet_ids += 1
        sid = self._packet_ids
        src_ip = host.source_for(dst.ip)
        route = self.network.route(dst.ip)
        src = SocketAddr(src_ip, host.ephemeral_port()) if src_ip is not None else SocketAddr(dst.ip, 0)
        server = route if isinstance(route, str) else ""
        st = _Stream(sid, host.name, server, src, dst)
        self._streams[sid] = st
        self._emit("stream_connect", stream=sid, host=host.name, src=str(src), dst=str(dst))
        reason = None
        if src_ip is None:
            reason = NetDrop.NO_SOURCE_ADDRESS.value
        elif isinstance(route, NetDrop):
            reason = route.value
        elif self.network.is_partitioned(host.name, server):
            reason = NetDrop.PARTITION.value
        elif dst.port not in self.hosts[server].stream_ports:
            reason = "refused"
        if reason is not None:
            st.open = False
            self._push(self.now, _STREAM, (host.name, StreamClosed(sid, reason)))
            return sid
        one_way = self.network.path(host.name, server).latency
        st.last_to_server = Instant(self.now + one_way)
        st.last_to_client = Instant(self.now + 2 * one_way)
        self._push(st.last_to_server, _STREAM, (server, StreamOpened(sid, dst, src)))
        self._push(st.last_to_client, _STREAM, (host.name, StreamOpened(sid, src, dst)))
        return sid

    def stream_send(self, host: Host, sid: int, text: str) -> None:
        """Send one text frame on stream ``sid``; frames arrive whole and in order, or the stream resets."""
        st = self._streams[sid]
        if not st.open:
            return
        if self.network.is_partitioned(st.client, st.server):
            self._reset(st, NetDrop.PARTITION.value)
            return
        to_server = host.name == st.client
        peer = st.server if to_server else st.client
        p = self.network.path(host.name, peer)
        # Reliable transport: loss shows up as delay (one retransmission), never as a missing frame.
        delay = p.latency + (self.network.draw_jitter(p))
        if to_server:
            st.last_to_server = Instant(max(self.now + delay, st.last_to_server))
            at = st.last_to_server
        else:
            st.last_to_client = Instant(max(self.now + delay, st.last_to_client))
            at = st.last_to_client
        self._emit("stream_send", stream=sid, host=host.name, len=len(text), text=text)
        self._push(at, _STREAM, (peer, StreamFrame(sid, text)))

    def stream_close(self, host: Host, sid: int, reason: str = "closed") -> None:
        """Close stream ``sid`` from ``host``; the peer gets :class:`StreamClosed` after the path delay."""
        st = self._streams[sid]
        if not st.open:
            return
        st.open = False
        to_server = host.name == st.client
        peer = st.server if to_server else st.client
        last = st.last_to_server if to_server else st.last_to_client
        at = max(self.now + self.network.path(host.name, peer).latency, last)
        self._emit("stream_close", stream=sid, host=host.name, reason=reason)
        self._push(at, _STREAM, (peer, StreamClosed(sid, reason)))

    def _reset(self, st: _Stream, reason: str) -> None:
        st.open = False
        st.reset = True
        self._emit("stream_close", stream=st.id, host="", reason=reason)
        self._push(self.now, _STREAM, (st.client, StreamClosed(st.id, reason)))
        self._push(self.now, _STREAM, (st.server, StreamClosed(st.id, reason)))

    def _stream_deliver(self, name: str, event: StreamEvent) -> None:
        host = self.hosts.get(name)
        st = self._streams[event.stream]
        if host is None or host.exited is not None:
            return
        if not isinstance(event, StreamClosed):
            if st.reset:
                return  # reset while in flight
            if self.network.is_partitioned(st.client, st.server):
                self._reset(st, NetDrop.PARTITION.value)
                return
        fields: dict[str, int | str | None] = {"stream": event.stream, "host": name}
        if isinstance(event, StreamFrame):
            fields["text"] = event.text
        elif isinstance(event, StreamClosed):
            fields["reason"] = event.reason
        self._emit(_STREAM_EV[type(event)], **fields)
        now = self.now
        host.checker.network_input(now, lambda: host.on_stream_event(now, event))
        self._settle(host, None)


_STREAM_EV: dict[type, str] = {
    StreamOpened: "stream_open",
    StreamFrame: "stream_frame",
    StreamClosed: "stream_closed",
}


def _packet_fields(pkt: Packet) -> dict[str, int | str | None]:
    """Trace fields identifying a packet; ``from``/``to`` are host names (``to`` empty if unroutable)."""
    if pkt.fields is not None:
        return pkt.fields
    udp = pkt.proto == "udp"
    pkt.fields = {
        "id": pkt.id,
        "proto": pkt.proto,
        "l4": pkt.l4,
        "from": pkt.src_host,
        "to": pkt.dst_host,
        "src": str(pkt.src) if udp else str(pkt.src.ip),
        "dst": str(pkt.dst) if udp else str(pkt.dst.ip),
    }
    if pkt.ecn:
        pkt.fields["ecn"] = pkt.ecn  # (only when set: traces of Not-ECT traffic are unchanged)
    return pkt.fields
