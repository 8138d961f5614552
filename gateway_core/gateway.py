"""The Gateway facade: node (ICE + TURN + WireGuard), policy, portal channel, DNS forwarding, one clock.

Theory of operation
-------------------
The facade is the only thing the driver (``gateway_io``) or the simulator talks to. It is a composition:
it builds its parts, keeps the data plane (the per-packet path) itself, and hands the control plane to a
:class:`~gateway_core.control.ControlPlane` built with the parts that one drives:

- **Data plane, direct returns (R3).** :meth:`Gateway.handle_datagram` hands a UDP datagram to the node;
  a decrypted IP packet is validated, p2p control packets go to the control plane, a packet for another
  client's tunnel address is refused (decision 0054), everything else goes through the client's policy
  (anti-spoofing, filters, DNS-resource NAT; an outer ECN CE mark is merged into an ECN-capable packet,
  as the reference's ``with_ecn_from_transport``) and comes back as the IP packet to write to the TUN, or
  ``None`` (an ICMP error for the client is queued as a ``Transmit``). :meth:`Gateway.handle_tun_packet`
  routes a TUN packet to its client by destination, applies reverse NAT and the inbound filters, and
  returns the encrypted ``Transmit`` or ``None``. Every drop is counted under a :class:`DropReason`. With
  flow logs on, the flow tracker sees every forwarded packet.
- **Control plane.** :meth:`Gateway.handle_input` takes one of :data:`GatewayInput`: the portal channel's
  inputs, resolution results, DNS-server and forwarding inputs, the interface's outcome, ``SendFailed``,
  ``ShutdownRequested`` and ``WallClockAnchor``; the control plane applies the portal's messages at once.
  The commands of every part come out of one :meth:`Gateway.poll_command` (a :data:`GatewayCommand`):
  the facade's own queue (shared with the control plane), then the node's, the channel's, the DNS
  forwarder's and the DNS binding's; ``Exit`` always comes last.
- **Time.** :meth:`Gateway.handle_timeout` serves every part; :meth:`Gateway.poll_timeout` is the
  earliest of their deadlines (the 1 s expiry sweep, node timers, portal heartbeats, DNS and resolution
  timeouts, flows). Wall-clock UTC, needed for expiry, is ``utc_ns + (now - anchor)`` from the last anchor.
- **Shutdown (R10).** ``ShutdownRequested`` closes the portal, clears every peer and sends the goodbye
  control packet to every connected client, then ``Exit`` is given out.

Besides the driving contract the facade shows :meth:`stats`, :attr:`config`, :attr:`public_key`,
:meth:`utc_ns`, :meth:`poll_flow`, and its node, peers, channel and counters as read-only properties (for
the simulator's checks and the tests).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import assert_never

from gateway_core.addr import SocketAddr
from gateway_core.client_ids import ClientIds
from gateway_core.clock import Instant
from gateway_core.commands import Transmit
from gateway_core.contract import Deadline, advance, earliest
from gateway_core.control import ControlPlane
from gateway_core.dns.forwarding import DnsForwarder, DnsQueryReceived, DnsUpstreamFailed, DnsUpstreamResponse
from gateway_core.dns.servers import DnsBindRetry, DnsServerBindFailed, DnsServerBound
from gateway_core.entropy import Entropy, SeededEntropy
from gateway_core.errors import DropReason, UsageError
from gateway_core.gateway_types import (
    DomainResolved,
    DomainResolveFailed,
    GatewayCommand,
    GatewayConfig,
    GatewayInput,
    WallClockAnchor,
)
from gateway_core.inputs import Input, SendFailed, ShutdownRequested
from gateway_core.interface import InterfaceConfigFailed, InterfaceConfigured
from gateway_core.node.factory import wireguard_node
from gateway_core.node.node import Node
from gateway_core.policy.client import DROP, FORWARD, ClientPolicy
from gateway_core.policy.flowcache import forward
from gateway_core.policy.flows import CompletedFlow, FlowTracker
from gateway_core.policy.p2p_control import is_control_packet
from gateway_core.policy.peers import Peers
from gateway_core.portal.channel import (
    PortalChannel,
    PortalConnected,
    PortalConnectFailed,
    PortalDisconnected,
    PortalFrameReceived,
    PortalSendFailed,
)
from gateway_core.portal.login import login_url, user_agent
from gateway_core.stats import Stats
from gateway_core.wire.icmp import build_icmp_prohibited
from gateway_core.wire.ip import validate
from gateway_core.wire.rewrite import ECN_CE, merge_ecn
from gateway_core.wire.verify import checksums_valid
from gateway_core.wireguard.crypto import public_key

log = logging.getLogger("gateway_core.gateway")


class Gateway:
    """See the module docstring."""

    def __init__(
        self, *, config: GatewayConfig, private_key: bytes, entropy: Entropy, now: Instant, utc_ns: int
    ) -> None:
        if len(private_key) != 32:
            raise UsageError("the WireGuard private key is 32 bytes")
        self._config = config
        self._public_key = public_key(private_key)
        self._now = now
        self._anchor_now = now
        self._anchor_utc = utc_ns
        ent = entropy if isinstance(entropy, SeededEntropy) else SeededEntropy(entropy.random_bytes(32))
        self._counters = Stats()
        self._out: deque[GatewayCommand] = deque()
        self._exit_sent = False
        self._ids = ClientIds()
        self._validate_checksums = config.validate_checksums

        self._node = wireguard_node(private_key, ent, ent.fork("node"), now, self.utc_ns, controlling=False)
        self._peers = Peers(config.max_nat_sessions, self.utc_ns)
        self._by_cid = self._peers.by_cid  # the data path's two lookups (dicts owned by the peers)
        self._by_address = self._peers.by_tunnel_address
        self._peers.handle_timeout(now)  # starts the expiry sweep's grid (reference: first tick)
        self._forwarder = DnsForwarder(self._peers.may_query, config.dns_limits)
        self._bind_retry = DnsBindRetry(ent.fork("dns-bind"))
        self._flows = FlowTracker(now, utc_ns, enabled=config.flow_logs)
        self._fast = not config.flow_logs and not config.validate_checksums
        """Whether the data path may take the flow cache (flow logs must see every packet, and checksum
        validation checks every packet on the full path)."""
        self._cache_hits_out = 0
        self._cache_hits_in = 0
        """Packets the flow cache forwarded, from clients and to them (``gateway.flow_cache_hits.*`` in
        :meth:`stats`): one integer increment per cached packet, read only by a stats snapshot."""
        url = login_url(config.api_url, config.token, config.firezone_id, config.name, self._public_key)
        ua = config.user_agent or user_agent("Linux", "unknown", None, None, config.version)
        self._channel = PortalChannel(url, ua, ent.fork("portal"), config.channel)
        self._channel.start(now)
        self._control = ControlPlane(
            config=config,
            node=self._node,
            peers=self._peers,
            channel=self._channel,
            flows=self._flows,
            bind_retry=self._bind_retry,
            ids=self._ids,
            counters=self._counters,
            out=self._out,
            utc_ns=self.utc_ns,
        )

    # --- identity and parts, read-only ---------------------------------------------------------

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def public_key(self) -> bytes:
        """The WireGuard public key (the portal learns it from the login URL)."""
        return self._public_key

    @property
    def node(self) -> Node:
        return self._node

    @property
    def peers(self) -> Peers:
        return self._peers

    @property
    def channel(self) -> PortalChannel:
        return self._channel

    @property
    def counters(self) -> Stats:
        """The facade's own counters and drops (the parts keep theirs; :meth:`stats` merges them)."""
        return self._counters

    # --- clocks ---------------------------------------------------------------------------------

    def _tick(self, now: Instant) -> None:
        self._now = advance(self._now, now)

    def utc_ns(self, now: Instant) -> int:
        """Wall-clock UTC (ns since the epoch) at ``now``, from the last anchor."""
        return self._anchor_utc + (now - self._anchor_now)

    # --- data plane -----------------------------------------------------------------------------

    def handle_datagram(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes, ecn: int = 0
    ) -> bytes | None:
        """A UDP datagram from the network (``ecn``: the ECN bits of its IP header); the IP packet to write
        to the TUN, if any. An outer CE mark is merged into an ECN-capable inner packet."""
        if now < self._now:
            raise UsageError(f"time went backwards: {now} < {self._now}")
        self._now = now
        node = self._node
        got = node.handle_datagram(now, local, remote, payload)
        if node.queued_events:
            self._control.drain_node_events(now)
        if got is None:
            return None
        cid, packet = got
        policy = self._by_cid.get(cid)
        if policy is not None and self._fast:
            fast = forward(policy.flow_cache.outbound, packet, now)
            if fast is not None:
                self._cache_hits_out += 1
                if ecn == ECN_CE:  # (rare: a congested path; the cached rewrite keeps the inner bits)
                    marked = bytearray(fast)
                    merge_ecn(marked, ECN_CE)
                    return bytes(marked)
                return fast
        flows = self._flows
        tracking = flows.enabled
        reason = validate(packet)
        if reason is not None:
            self._counters.drop(reason)
            return None
        if packet[0] >> 4 == 6 and packet[6] == 0xFF and is_control_packet(packet):
            self._control.p2p_control(now, cid, packet)
            return None
        if policy is None:
            self._counters.drop(DropReason.UNKNOWN_CLIENT)
            return None
        version = packet[0] >> 4
        if (
            (version == 4 and packet[16] == 100 and 64 <= packet[17] < 96)  # cheap pre-check of 100.64/11
            or (version == 6 and packet[24] == 0xFD and packet[25] == 0)
        ) and policy.to_another_client(packet):
            self._counters.drop(DropReason.NOT_AUTHORIZED)
            self._control.send_control(now, policy.client_id, build_icmp_prohibited(packet))
            return None
        buf = bytearray(packet)
        pre = buf[:] if tracking else None
        action, out, rid, _ = policy.outbound(buf, now)
        if action is FORWARD:
            if self._validate_checksums and not checksums_valid(out):
                self._bad_checksum("from a client", out)
                return None
            if ecn == ECN_CE:
                out = bytearray(out)
                merge_ecn(out, ECN_CE)
            if tracking and rid is not None and pre is not None:
                flows.record_outbound_packet(now, policy, rid, pre, buf, local, remote)
            return bytes(out)
        if action is DROP:
            return None
        t = node.encapsulate(cid, bytes(out), now)  # REPLY: an ICMP error, already bytes (not copied)
        if t is not None:
            self._out.append(t)
        else:
            self._counters.incr("icmp_reply_lost")
        return None

    def handle_tun_packet(self, now: Instant, packet: bytes) -> Transmit | None:
        """An IP packet read from the TUN; the encrypted datagram for its client, if any."""
        if now < self._now:
            raise UsageError(f"time went backwards: {now} < {self._now}")
        self._now = now
        if self._fast and packet:
            # The fast path (``policy.flowcache``): the client by the packed destination, the flow's cached
            # decision; anything it does not know takes the full path below.
            b0 = packet[0]
            fast_policy = (
                self._by_address.get(packet[16:20])
                if b0 == 0x45
                else self._by_address.get(packet[24:40])
                if b0 >> 4 == 6
                else None
            )
            if fast_policy is not None:
                fast = forward(fast_policy.flow_cache.inbound, packet, now)
                if fast is not None:
                    self._cache_hits_in += 1
                    node = self._node
                    t = node.encapsulate(fast_policy.cid, fast, now)
                    if node.queued_events:
                        self._control.drain_node_events(now)
                    return t
        reason = validate(packet)
        if reason is not None:
            self._counters.drop(reason)
            return None
        if self._validate_checksums and not checksums_valid(packet):
            self._bad_checksum("from the TUN", packet)
            return None
        policy = self._peers.route_tun(packet)
        if not isinstance(policy, ClientPolicy):  # (isinstance on an Enum class is five times slower)
            self._counters.drop(policy)
            return None
        buf = bytearray(packet)
        if self._flows.enabled:
            self._flows.record_inbound_packet(now, policy, buf)
        action, out, _, _ = policy.inbound(buf, now)
        if action is not FORWARD:
            return None
        return self._encapsulate(now, policy.cid, bytes(out))

    def _encapsulate(self, now: Instant, cid: str, packet: bytes) -> Transmit | None:
        node = self._node
        t = node.encapsulate(cid, packet, now)
        if node.queued_events:
            self._control.drain_node_events(now)
        return t

    def _bad_checksum(self, where: str, packet: bytes | bytearray) -> None:
        """Count a packet dropped by ``--validate-checksums``; warn at the 1st, 2nd, 4th, 8th... one."""
        self._counters.drop(DropReason.BAD_CHECKSUM)
        n = self._counters.drops[DropReason.BAD_CHECKSUM]
        if n & (n - 1) == 0:
            log.warning("invalid checksum in a packet %s (%d so far): %s", where, n, bytes(packet[:40]).hex())

    def handle_tun_packets(self, now: Instant, packets: list[bytes]) -> list[Transmit]:
        """A batch of TUN packets, each as :meth:`handle_tun_packet` in order; their datagrams, in order.

        Commands queued meanwhile wait for the caller's ``poll_command`` after the batch (R3 per batch)."""
        out: list[Transmit] = []
        handle = self.handle_tun_packet
        for packet in packets:
            t = handle(now, packet)
            if t is not None:
                out.append(t)
        return out

    def handle_datagrams(
        self, now: Instant, datagrams: list[tuple[SocketAddr, SocketAddr, bytes, int]]
    ) -> list[bytes]:
        """A batch of datagrams ``(local, remote, payload, ecn)``, each as :meth:`handle_datagram` in
        order; the IP packets for the TUN, in order."""
        out: list[bytes] = []
        handle = self.handle_datagram
        for local, remote, payload, ecn in datagrams:
            packet = handle(now, local, remote, payload, ecn)
            if packet is not None:
                out.append(packet)
        return out

    # --- control plane --------------------------------------------------------------------------

    def handle_input(self, now: Instant, inp: Input) -> None:
        """One of :data:`GatewayInput`; any other input is a :class:`UsageError`."""
        self._tick(now)
        if not isinstance(inp, GatewayInput):
            raise UsageError(f"the gateway does not take {type(inp).__name__}")
        control = self._control
        match inp:
            case (
                PortalConnected()
                | PortalConnectFailed()
                | PortalDisconnected()
                | PortalFrameReceived()
                | PortalSendFailed()
            ):
                control.portal_input(now, inp)
            case DomainResolved():
                control.resolved(now, inp.request_id, inp.addresses)
            case DomainResolveFailed():
                control.resolved(now, inp.request_id, None)
            case DnsQueryReceived():
                self._forwarder.handle_query(now, inp)
            case DnsUpstreamResponse():
                self._forwarder.handle_upstream_response(now, inp)
            case DnsUpstreamFailed():
                self._forwarder.handle_upstream_failed(now, inp)
            case DnsServerBound():
                control.dns_bound(now, inp)
            case DnsServerBindFailed():
                control.dns_bind_failed(now, inp)
            case SendFailed():
                self._counters.incr("send_failed")
                log.debug("send to %s failed: %s", inp.dst, inp.error)
            case ShutdownRequested():
                control.shutdown(now, "shutdown requested", 0)
            case WallClockAnchor():
                self._anchor_now, self._anchor_utc = now, inp.utc_ns
            case InterfaceConfigured():
                control.interface_configured(now, inp)
            case InterfaceConfigFailed():
                control.interface_failed(now, inp)
            case _:
                assert_never(inp)
        if self._node.queued_events:
            control.drain_node_events(now)

    # --- time -----------------------------------------------------------------------------------

    def handle_timeout(self, now: Instant) -> None:
        self._tick(now)
        self._node.handle_timeout(now)
        self._control.portal_timeout(now)
        self._forwarder.handle_timeout(now)
        self._bind_retry.handle_timeout(now)
        self._control.handle_timeout(now)
        self._flows.handle_timeout(now)
        if self._node.queued_events:
            self._control.drain_node_events(now)

    def poll_timeout(self) -> Deadline | None:
        """The earliest deadline of every part, each from its kept deadlines (decision 0140): the cost does
        not grow with the number of clients. With ``GatewayConfig.check_deadlines`` it is compared with
        :meth:`poll_timeout_recomputed` (a stale kept deadline is a bug: ``AssertionError``)."""
        kept = self._at_least_now(
            earliest(
                self._node.poll_timeout(),
                self._forwarder.poll_timeout(),
                self._bind_retry.poll_timeout(),
                self._control.poll_timeout(),
                self._flows.poll_timeout(),
            )
        )
        if self._config.check_deadlines:
            exact = self.poll_timeout_recomputed()
            stale = self.stale_kept_deadlines()
            if kept != exact or stale:
                raise AssertionError(f"kept deadline {kept!r} is stale: recomputed {exact!r}; {stale}")
        return kept

    def poll_timeout_recomputed(self) -> Deadline | None:
        """:meth:`poll_timeout` the slow way, every connection and client asked (O(n)). The contract
        checker of the simulator (and the daemon's debug mode) compares the two: a kept deadline that went
        stale is a contract violation (R4/R5)."""
        return self._at_least_now(
            earliest(
                self._node.poll_timeout_recomputed(),
                self._forwarder.poll_timeout(),
                self._bind_retry.poll_timeout(),
                self._control.poll_timeout(recomputed=True),
                self._flows.poll_timeout(),
            )
        )

    def kept_deadline_count(self) -> int:
        """How many kept deadlines :meth:`poll_timeout_recomputed` and :meth:`stale_kept_deadlines` walk
        (connections and clients): the contract checker spaces those O(n) checks by it."""
        return len(self._node.connections) + len(self._peers.clients)

    def stale_kept_deadlines(self) -> list[str]:
        """The children (connections, clients) whose kept deadline would be served late, for the contract
        checker; empty when every kept deadline is a lower bound of the real one."""
        return self._node.stale_kept_deadlines() + self._peers.stale_kept_deadlines()

    def _at_least_now(self, best: Deadline | None) -> Deadline | None:
        return best if best is None or best.at >= self._now else Deadline(self._now, best.reason)

    def poll_command(self) -> GatewayCommand | None:
        if self._out:
            return self._out.popleft()
        c: GatewayCommand | None = (
            self._node.poll_command()
            or self._channel.poll_command()
            or self._forwarder.poll_command()
            or self._bind_retry.poll_command()
        )
        if c is not None:
            return c
        exit_ = self._control.exit
        if exit_ is not None and not self._exit_sent:
            self._exit_sent = True
            return exit_
        return None

    def poll_flow(self) -> CompletedFlow | None:
        """The next completed flow for the flow log (only with ``GatewayConfig.flow_logs``)."""
        return self._flows.poll_completed()

    # --- statistics -----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Every part's counters (prefixed with the part's name) and all drops by reason, merged."""
        node = self._node
        tunnels = node.tunnel_stats()
        binds = Stats()
        binds.incr("bind_failures", self._bind_retry.failures)
        total = Stats()
        total.merge(self._counters, "gateway.")
        total.merge(node.stats)  # its counters are already named node.*
        total.merge(tunnels, "wireguard.")
        for rid in sorted(node.allocations):
            total.merge(node.allocations[rid].stats)  # turn.*
        total.merge(self._channel.stats)  # portal.*
        total.merge(self._forwarder.stats, "dns.")
        total.merge(binds, "dns.")
        total.merge(self._peers.policy_stats(), "policy.")
        out = total.snapshot()
        out["gateway.clients"] = len(self._peers)
        out["gateway.connections"] = len(node.connections)
        out["gateway.flows_active"] = len(self._flows.tcp) + len(self._flows.udp)
        out["gateway.flow_cache_hits.outbound"] = self._cache_hits_out
        out["gateway.flow_cache_hits.inbound"] = self._cache_hits_in
        clients = self._peers.clients.values()
        out["gateway.authorizations"] = sum(len(p.authorizations) for p in clients)
        out["gateway.nat_sessions"] = sum(len(p.nat.table) for p in clients)
        for rid in node.allocations:
            key = f"gateway.relay_allocations.{node.allocations[rid].phase.value}"
            out[key] = out.get(key, 0) + 1
        return out
