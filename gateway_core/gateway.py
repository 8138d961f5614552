"""The Gateway facade: node (ICE + TURN + WireGuard), policy, portal channel, DNS forwarding, one clock.

Theory of operation
-------------------
The facade owns its parts and is the only thing the driver (``gateway_io``) or the simulator talks to:

- **Data plane, direct returns (R3).** :meth:`Gateway.handle_datagram` hands a UDP datagram to the node;
  a decrypted IP packet is checked (datapath §12.1), p2p control packets are consumed (§8), everything
  else goes through the client's policy (anti-spoofing, filters, DNS-resource NAT, §4) and comes back as
  the IP packet to write to the TUN, or ``None`` (an ICMP error for the client is queued as a
  ``Transmit``). :meth:`Gateway.handle_tun_packet` routes a TUN packet to its client by destination
  (§5), applies reverse NAT and the inbound filters, and returns the encrypted ``Transmit`` or ``None``.
  Every drop is counted under a :class:`DropReason`.
- **Control plane.** :meth:`Gateway.handle_input` takes the portal channel's inputs (the channel's
  decoded messages are applied at once by :mod:`gateway_core.gateway_control`), resolution results,
  DNS-server and forwarding inputs, ``SendFailed``, ``ShutdownRequested`` and ``WallClockAnchor``.
  Commands of every part come out of one :meth:`Gateway.poll_command`; ``Exit`` always comes last.
- **Time.** :meth:`Gateway.handle_timeout` serves every part; :meth:`Gateway.poll_timeout` is the
  earliest of their deadlines (the 1 s expiry sweep, node timers, portal heartbeats, DNS and resolution
  timeouts). Wall-clock UTC, needed for expiry, is ``utc_ns + (now - anchor)`` from the last anchor.
- **Shutdown (R10).** ``ShutdownRequested`` closes the portal, clears every peer and sends the goodbye
  control packet to every connected client (portal-protocol.md §4.7), then queues ``Exit``.

Client ids are UUIDs in the policy and their string form in the node.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from ipaddress import IPv4Address, IPv6Address

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command, Exit, Transmit
from gateway_core.contract import Deadline
from gateway_core.dns.forwarding import DnsForwarder
from gateway_core.dns.servers import DnsBindRetry, DnsServerBindFailed, DnsServerBound
from gateway_core.entropy import Entropy, SeededEntropy
from gateway_core.errors import DropReason, UsageError
from gateway_core.gateway_control import (
    PendingResolve,
    ResolveKind,
    dns_bind_failed,
    drain_node_events,
    finish_resolve,
    handle_message,
    start_resolve,
)
from gateway_core.gateway_flows import record_inbound, record_outbound
from gateway_core.gateway_types import DomainResolved, DomainResolveFailed, GatewayConfig, WallClockAnchor
from gateway_core.inputs import Input, SendFailed, ShutdownRequested
from gateway_core.interface import InterfaceConfigFailed, InterfaceConfigured
from gateway_core.node.factory import wireguard_node
from gateway_core.policy.authorizations import AddOutcome
from gateway_core.policy.client import DROP, FORWARD, ClientPolicy
from gateway_core.policy.flows import ClientProperties, CompletedFlow, FlowTracker
from gateway_core.policy.p2p_control import GOODBYE_PACKET, is_control_packet
from gateway_core.policy.peers import ClientGone, ControlReply, Peers, ResolveRequest
from gateway_core.policy.resources import ResourceDescription
from gateway_core.portal.channel import (
    PortalChannel,
    PortalConnected,
    PortalConnectFailed,
    PortalDisconnected,
    PortalFailed,
    PortalFrameReceived,
    PortalJoined,
    PortalMessageReceived,
    PortalReplyError,
    PortalSendFailed,
)
from gateway_core.portal.login import login_url, user_agent
from gateway_core.stats import Stats
from gateway_core.wire.icmp import build_icmp_prohibited
from gateway_core.wire.ip import validate
from gateway_core.wireguard.crypto import public_key

log = logging.getLogger("gateway_core.gateway")

_PORTAL_INPUTS = (
    PortalConnected,
    PortalConnectFailed,
    PortalDisconnected,
    PortalFrameReceived,
    PortalSendFailed,
)


class Gateway:
    """See the module docstring."""

    def __init__(
        self, *, config: GatewayConfig, private_key: bytes, entropy: Entropy, now: Instant, utc_ns: int
    ) -> None:
        if len(private_key) != 32:
            raise UsageError("the WireGuard private key is 32 bytes")
        self.config = config
        self._now = now
        self._anchor_now = now
        self._anchor_utc = utc_ns
        self.private_key = private_key
        self.public_key = public_key(private_key)
        ent = entropy if isinstance(entropy, SeededEntropy) else SeededEntropy(entropy.random_bytes(32))
        self.counters = Stats()
        """The facade's own counters and drops (the parts keep theirs; :meth:`stats` merges them)."""
        self._out: deque[Command] = deque()
        self.shutting_down = False
        self._exit: Exit | None = None
        self._exit_sent = False
        self.pending: dict[int, PendingResolve] = {}
        self._next_request = 1
        self._client_stats: dict[uuid.UUID, Stats] = {}
        self._retired = Stats()
        self._cid: dict[uuid.UUID, str] = {}
        self._uuid: dict[str, uuid.UUID] = {}
        self.dns_addresses: tuple[SocketAddr, ...] = ()
        """Where the layer-4 DNS servers are wanted (the last ``BindDnsServers``)."""

        self.node = wireguard_node(private_key, ent, ent.fork("node"), now, self.utc_ns, controlling=False)
        self.peers = Peers(config.max_nat_sessions)
        self.peers.handle_timeout(now, utc_ns)  # schedules the first expiry sweep (reference: first tick)
        self.forwarder = DnsForwarder(self.peers.may_query)
        self.bind_retry = DnsBindRetry(ent.fork("dns-bind"))
        self.flows = FlowTracker(now, utc_ns, enabled=config.flow_logs)
        url = login_url(config.api_url, config.token, config.firezone_id, config.name, self.public_key)
        ua = config.user_agent or user_agent("Linux", "unknown", None, None, config.version)
        self.channel = PortalChannel(url, ua, ent.fork("portal"), config.channel)
        self.channel.start(now)

    # --- clocks ---------------------------------------------------------------------------------

    def _tick(self, now: Instant) -> None:
        if now < self._now:
            raise UsageError(f"time went backwards: {now} < {self._now}")
        self._now = now

    def utc_ns(self, now: Instant) -> int:
        """Wall-clock UTC (ns since the epoch) at ``now``, from the last anchor."""
        return self._anchor_utc + (now - self._anchor_now)

    # --- helpers for gateway_control ------------------------------------------------------------

    def queue(self, command: Command) -> None:
        self._out.append(command)

    def next_request_id(self) -> int:
        rid = self._next_request
        self._next_request += 1
        return rid

    def cid(self, client: uuid.UUID) -> str:
        s = self._cid.get(client)
        if s is None:
            s = self._cid[client] = str(client)
        return s

    def allow(
        self,
        client: uuid.UUID,
        v4: IPv4Address,
        v6: IPv6Address,
        resource: ResourceDescription,
        expires_at: int | None,
        properties: ClientProperties | None,
    ) -> AddOutcome | None:
        """Authorise ``resource`` for ``client`` (``None`` before ``init``: not recorded)."""
        out = self.peers.allow_access(client, v4, v6, resource, expires_at, properties)
        policy = self.peers.clients.get(client)
        if policy is not None:
            old = self._client_stats.get(client)
            if old is not None and old is not policy.stats:
                self._retired.merge(old)
            self._client_stats[client] = policy.stats
        return out

    def goodbye(self, now: Instant, client: uuid.UUID) -> None:
        """The client has no resources left (or is being dropped): close its connection with a goodbye."""
        self.counters.incr("goodbyes_sent")
        self.node.close_connection(self.cid(client), GOODBYE_PACKET, now)
        self.flows.remove_client(client, now)
        self._uuid.pop(self._cid.pop(client, ""), None)

    def send_control(self, now: Instant, client: uuid.UUID, packet: bytes) -> None:
        """Encrypt a p2p control packet for ``client``; lost if the connection cannot send yet (§8.5)."""
        t = self.node.encapsulate(self.cid(client), packet, now)
        if t is not None:
            self._out.append(t)
        else:
            self.counters.incr("control_reply_lost")

    # --- data plane -----------------------------------------------------------------------------

    def handle_datagram(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes
    ) -> bytes | None:
        """A UDP datagram from the network; the IP packet to write to the TUN, if any (§4)."""
        if now < self._now:
            raise UsageError(f"time went backwards: {now} < {self._now}")
        self._now = now
        got = self.node.handle_datagram(now, local, remote, payload)
        if self.node._events:
            drain_node_events(self, now)
        if got is None:
            return None
        cid, packet = got
        reason = validate(packet)
        if reason is not None:
            self.counters.drop(reason)
            return None
        if packet[0] >> 4 == 6 and packet[6] == 0xFF and is_control_packet(packet):
            self._control(now, cid, packet)
            return None
        client = self._uuid.get(cid)
        if client is None:
            client = self._uuid[cid] = uuid.UUID(cid)
        policy = self.peers.clients.get(client)
        if policy is None:
            self.counters.drop(DropReason.UNKNOWN_CLIENT)
            return None
        version = packet[0] >> 4
        if (
            (version == 4 and packet[16] == 100 and 64 <= packet[17] < 96)  # cheap pre-check of 100.64/11
            or (version == 6 and packet[24] == 0xFD and packet[25] == 0)
        ) and policy.to_another_client(packet):
            self.counters.drop(DropReason.NOT_AUTHORIZED)
            self.send_control(now, client, build_icmp_prohibited(packet))
            return None
        buf = bytearray(packet)
        flows = self.flows.enabled
        pre = buf[:] if flows else None
        action, out, rid, _ = policy.outbound(buf, now)
        if action is FORWARD:
            if flows and rid is not None and pre is not None:
                record_outbound(self, now, policy, rid, pre, buf, local, remote)
            return bytes(out)
        if action is DROP:
            return None
        t = self.node.encapsulate(cid, bytes(out), now)  # an ICMP error: already bytes, not copied
        if t is not None:
            self._out.append(t)
        else:
            self.counters.incr("icmp_reply_lost")
        return None

    def _control(self, now: Instant, cid: str, packet: bytes) -> None:
        client = uuid.UUID(cid)
        out = self.peers.handle_control(client, packet)
        if isinstance(out, ResolveRequest):
            start_resolve(self, now, out.domain, ResolveKind.P2P, p2p=out)
        elif isinstance(out, ControlReply):
            self.send_control(now, client, out.packet)
        elif isinstance(out, ClientGone):
            self.counters.incr("goodbyes_received")
            self.node.remove_connection(cid)
            self.flows.remove_client(client, now)
            self._uuid.pop(self._cid.pop(client, ""), None)
        elif isinstance(out, DropReason):
            self.counters.drop(out)

    def handle_tun_packet(self, now: Instant, packet: bytes) -> Transmit | None:
        """An IP packet read from the TUN; the encrypted datagram for its client, if any (§5)."""
        if now < self._now:
            raise UsageError(f"time went backwards: {now} < {self._now}")
        self._now = now
        reason = validate(packet)
        if reason is not None:
            self.counters.drop(reason)
            return None
        policy = self.peers.route_tun(packet)
        if not isinstance(policy, ClientPolicy):
            self.counters.drop(policy)
            return None
        buf = bytearray(packet)
        if self.flows.enabled:
            record_inbound(self, now, policy, buf)
        action, out, _, _ = policy.inbound(buf, now)
        if action is not FORWARD:
            return None
        t = self.node.encapsulate(self.cid(policy.client_id), bytes(out), now)
        if self.node._events:
            drain_node_events(self, now)
        return t

    # --- control plane --------------------------------------------------------------------------

    def handle_input(self, now: Instant, inp: Input) -> None:
        self._tick(now)
        if isinstance(inp, _PORTAL_INPUTS):
            self.channel.handle_input(now, inp)
            self._drain_channel(now)
        elif isinstance(inp, DomainResolved):
            if not self.shutting_down:
                finish_resolve(self, now, inp.request_id, inp.addresses)
        elif isinstance(inp, DomainResolveFailed):
            if not self.shutting_down:
                finish_resolve(self, now, inp.request_id, None)
        elif self.forwarder.handle_input(now, inp):
            pass
        elif isinstance(inp, DnsServerBound):
            self.counters.incr("dns_bound")
            self.bind_retry.handle_bound(now, inp)
        elif isinstance(inp, DnsServerBindFailed):
            dns_bind_failed(self, now, inp)
        elif isinstance(inp, SendFailed):
            self.counters.incr("send_failed")
            log.debug("send to %s failed: %s", inp.dst, inp.error)
        elif isinstance(inp, ShutdownRequested):
            self._shutdown(now, "shutdown requested", 0)
        elif isinstance(inp, WallClockAnchor):
            self._anchor_now, self._anchor_utc = now, inp.utc_ns
        elif isinstance(inp, InterfaceConfigured):
            self.counters.incr("interface_configured")
            for w in inp.warnings:
                log.warning("interface: %s", w)
            self._bind_configured_families(now, inp)
        elif isinstance(inp, InterfaceConfigFailed):
            log.error("configuring the tunnel interface failed: %s", inp.error)
            self._shutdown(now, f"interface: {inp.error}", 1)  # fatal, as the reference (portal §2.2)
        else:
            raise UsageError(f"the gateway does not take {type(inp).__name__}")
        if self.node._events:
            drain_node_events(self, now)

    def _bind_configured_families(self, now: Instant, inp: InterfaceConfigured) -> None:
        """Serve DNS only on the families whose address made it onto the interface (decision 0051)."""
        cfg, port = inp.config, self.config.dns_port
        if (cfg.ipv4, cfg.ipv6) != (self.peers.gateway_v4, self.peers.gateway_v6):
            return  # a result for an older configuration
        want = []
        if inp.ipv4 and cfg.ipv4 is not None:
            want.append(SocketAddr(cfg.ipv4, port))
        if inp.ipv6 and cfg.ipv6 is not None:
            want.append(SocketAddr(cfg.ipv6, port))
        if tuple(want) != self.dns_addresses:
            self.dns_addresses = tuple(want)
            self.bind_retry.set_addresses(now, self.dns_addresses)

    def _drain_channel(self, now: Instant) -> None:
        while (ev := self.channel.poll_event()) is not None:
            if isinstance(ev, PortalMessageReceived):
                if not self.shutting_down:
                    handle_message(self, now, ev.message)
                    if self.node._events:
                        drain_node_events(self, now)
            elif isinstance(ev, PortalJoined):
                self.counters.incr("portal_joined")
            elif isinstance(ev, PortalReplyError):
                self.counters.incr("portal_reply_errors")
            elif isinstance(ev, PortalFailed):
                self._shutdown(now, f"portal: {ev.kind.value}: {ev.error}", 1)

    def _shutdown(self, now: Instant, reason: str, code: int) -> None:
        if self.shutting_down:
            return
        log.info("gateway shutting down: %s", reason)
        self.shutting_down = True
        self.channel.close(now)
        self._drain_channel(now)
        for client in self.peers.shutdown():
            self.flows.remove_client(client, now)
        self.counters.incr("goodbyes_sent", len(self.node.connections))
        self.node.close_all(GOODBYE_PACKET, now)
        while self.node.poll_event() is not None:
            pass
        self.pending.clear()
        self._exit = Exit(reason, code)

    # --- time -----------------------------------------------------------------------------------

    def handle_timeout(self, now: Instant) -> None:
        self._tick(now)
        self.node.handle_timeout(now)
        self.channel.handle_timeout(now)
        self._drain_channel(now)
        self.forwarder.handle_timeout(now)
        self.bind_retry.handle_timeout(now)
        while self.pending:
            rid, p = next(iter(self.pending.items()))
            if p.deadline > now:
                break
            self.counters.incr("resolve_timeout")
            finish_resolve(self, now, rid, None)
        for client in self.peers.handle_timeout(now, self.utc_ns(now)):
            self.goodbye(now, client)
        self.flows.handle_timeout(now)
        if self.node._events:
            drain_node_events(self, now)

    def poll_timeout(self) -> Deadline | None:
        ds = [
            d
            for d in (
                self.node.poll_timeout(),
                self.channel.poll_timeout(),
                self.forwarder.poll_timeout(),
                self.bind_retry.poll_timeout(),
                None if self.shutting_down else self.peers.poll_timeout(),
            )
            if d is not None
        ]
        if self.pending:
            ds.append(Deadline(next(iter(self.pending.values())).deadline, "domain resolution timeout"))
        f = self.flows.poll_timeout()
        if f is not None:
            ds.append(Deadline(f, "flow timeout"))
        if not ds:
            return None
        best = min(ds, key=lambda d: (d.at, d.reason))
        return best if best.at >= self._now else Deadline(self._now, best.reason)

    def poll_command(self) -> Command | None:
        if self._out:
            return self._out.popleft()
        c = self.node.poll_command() or self.channel.poll_command() or self.forwarder.poll_command()
        c = c or self.bind_retry.poll_command()
        if c is not None:
            return c
        if self._exit is not None and not self._exit_sent:
            self._exit_sent = True
            return self._exit
        return None

    def poll_flow(self) -> CompletedFlow | None:
        """The next completed flow for the flow log (only with ``GatewayConfig.flow_logs``)."""
        return self.flows.poll_completed()

    # --- statistics -----------------------------------------------------------------------------

    def bind_retry_stats(self) -> Stats:
        st = Stats()
        st.incr("bind_failures", self.bind_retry.failures)
        return st

    def stats(self) -> dict[str, int]:
        """Every part's counters (prefixed with the part's name) and all drops by reason, merged."""
        clients = Stats()
        clients.merge(self._retired)
        for client in sorted(self._client_stats):
            policy = self.peers.clients.get(client)
            st = self._client_stats[client]
            if policy is None or policy.stats is not st:
                self._retired.merge(st)
                del self._client_stats[client]
            clients.merge(st)
        tunnels = Stats()
        for cid in sorted(self.node.connections):
            tunnels.merge(self.node.connections[cid].tunnel.stats)
        total = Stats()
        total.merge(self.counters, "gateway.")
        total.merge(self.node.stats)  # its counters are already named node.*
        total.merge(tunnels, "wireguard.")
        for rid in sorted(self.node.allocations):
            total.merge(self.node.allocations[rid].stats)  # turn.*
        total.merge(self.channel.stats)  # portal.*
        total.merge(self.forwarder.stats, "dns.")
        total.merge(self.bind_retry_stats(), "dns.")
        total.merge(clients, "policy.")
        out = total.snapshot()
        out["gateway.clients"] = len(self.peers)
        out["gateway.connections"] = len(self.node.connections)
        out["gateway.flows_active"] = len(self.flows.tcp) + len(self.flows.udp)
        return out
