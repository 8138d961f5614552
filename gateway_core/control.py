"""The gateway's control plane: portal messages, domain resolutions, candidate signalling, goodbyes, shutdown.

Theory of operation
-------------------
:class:`ControlPlane` is the half of the :class:`~gateway_core.gateway.Gateway` that is not the per-packet
path. The facade builds it with the siblings it drives, each used through its public methods only: the
node (connections, relays, candidates), the peers' policies, the portal channel, the flow tracker and the
DNS-server binding; and with two things it shares with the facade: the facade's counters and its command
queue, so that the commands of both planes come out in the order they were produced. It owns:

- **Portal messages.** The facade hands it the channel's inputs (:meth:`ControlPlane.portal_input`) and
  timer (:meth:`ControlPlane.portal_timeout`); it drains the channel's events at once and applies each
  decoded message (:meth:`ControlPlane._apply`): relays and authorisations of ``init``, connections set
  up and answered on the channel, candidates, revocations, resource and expiry updates.
- **Domain resolutions** for DNS resources, asked for by a client's ``assigned_ips`` control packet or by
  a legacy message with a domain: each gets a request id and a deadline (at most
  ``max_pending_resolutions`` at once, decision 0053); its result, or its time-out, finishes what asked
  for it (the ``domain_status`` reply, or the legacy message applied with the addresses).
- **Candidate signalling.** The node's events are drained after every call that may queue one (the
  facade peeks at :attr:`Node.queued_events <gateway_core.node.node.Node.queued_events>` after every
  packet): new and invalidated local candidates are pushed to the portal, one push per client per batch,
  highest priority first, exact duplicates removed (decision 0052).
- **Clients leaving and p2p control.** Goodbyes on revocation and expiry (the periodic sweep), a client's
  own goodbye, the other control packets of a client and the replies to them.
- **DNS servers and the interface.** Which addresses the layer-4 DNS servers are bound to, once the
  interface has them (decision 0051), and the bind outcomes.
- **Shutdown** (R10): the portal is closed, every client gets a goodbye, pending work is dropped, and
  :attr:`ControlPlane.exit` is set; the facade gives the ``Exit`` out after every other command.

Client ids are UUIDs in the policy and strings in the node: a
:class:`~gateway_core.client_ids.ClientIds` shared with the facade converts both ways.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import assert_never

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.client_ids import ClientIds
from gateway_core.clock import Instant
from gateway_core.commands import Exit
from gateway_core.contract import Deadline, earliest
from gateway_core.dns.servers import DnsBindRetry, DnsServerBindFailed, DnsServerBound
from gateway_core.errors import DropReason
from gateway_core.gateway_types import GatewayCommand, GatewayConfig, ResolveDomain
from gateway_core.interface import (
    ConfigureInterface,
    InterfaceConfig,
    InterfaceConfigFailed,
    InterfaceConfigured,
)
from gateway_core.node.events import InvalidateIceCandidate, NewIceCandidate
from gateway_core.node.node import Node, RelayConfig
from gateway_core.policy.authorizations import InitAuthorization
from gateway_core.policy.client import ClientProperties
from gateway_core.policy.flows import FlowTracker
from gateway_core.policy.p2p_control import GOODBYE_PACKET, NatStatus, build_domain_status
from gateway_core.policy.peers import ClientGone, ControlReply, Peers, ResolveRequest
from gateway_core.policy.resources import from_portal
from gateway_core.portal import messages as m
from gateway_core.portal.channel import (
    PortalChannel,
    PortalFailed,
    PortalHiccup,
    PortalInput,
    PortalJoined,
    PortalMessageReceived,
    PortalReplyError,
    PortalStopped,
)
from gateway_core.portal.model import Client, IceCredentials, Subject, TurnRelay
from gateway_core.stats import Stats
from gateway_core.turn.allocation import RelaySocket

log = logging.getLogger("gateway_core.gateway")

RELAY_REALM = "firezone"
"""The TURN realm of every Firezone relay (``tunnel/src/lib.rs:47``)."""


class ResolveKind(Enum):
    P2P = "assigned_ips"
    REQUEST_CONNECTION = "request_connection"
    ALLOW_ACCESS = "allow_access"


@dataclass(slots=True)
class PendingResolve:
    """A domain resolution in flight, and what to do with its result."""

    kind: ResolveKind
    deadline: Instant
    p2p: ResolveRequest | None = None
    legacy: m.RequestConnection | m.AllowAccess | None = None


# --------------------------------------------------------------------------------------------------
# Conversions


def relay_configs(relays: Sequence[object]) -> list[RelayConfig]:
    """TURN relays of ``init`` / ``relays_presence`` as the node wants them (``utils.rs:8-58``).

    STUN entries are ignored; *adjacent* entries with the same id merge into one dual-stack relay (a
    second address of the same family is ignored with a warning); the last entry's credentials win.
    """
    out: list[RelayConfig] = []
    prev_id: uuid.UUID | None = None
    for r in relays:
        if not isinstance(r, TurnRelay):
            prev_id = None
            continue
        if prev_id == r.id and out:
            cur = out[-1]
            sock = cur.socket
            if r.addr.ip.version == 4 and sock.v4 is None:
                sock = RelaySocket(r.addr, sock.v6)
            elif r.addr.ip.version == 6 and sock.v6 is None:
                sock = RelaySocket(sock.v4, r.addr)
            else:
                log.warning("relay %s: second address of one family ignored: %s", r.id, r.addr)
            out[-1] = RelayConfig(cur.id, sock, r.username, r.password, RELAY_REALM)
        else:
            sock = RelaySocket(r.addr, None) if r.addr.ip.version == 4 else RelaySocket(None, r.addr)
            out.append(RelayConfig(str(r.id), sock, r.username, r.password, RELAY_REALM))
        prev_id = r.id
    return out


def client_properties(client: Client, subject: Subject) -> ClientProperties:
    meta = dict(client.metadata)
    return ClientProperties(
        version=meta.get("version"),
        device_serial=meta.get("device_serial"),
        device_uuid=meta.get("device_uuid"),
        device_os_name=meta.get("device_os_name"),
        device_os_version=meta.get("device_os_version"),
        identifier_for_vendor=meta.get("identifier_for_vendor"),
        firebase_installation_id=meta.get("firebase_installation_id"),
        identity_id=subject.identity_id,
        identity_name=subject.identity_name,
        actor_id=subject.actor_id,
        actor_email=subject.actor_email,
    )


def _priority(sdp: str) -> int:
    parts = sdp.split()
    try:
        return int(parts[3])
    except (IndexError, ValueError):
        return 0


# --------------------------------------------------------------------------------------------------
# The control plane


class ControlPlane:
    """See the module docstring."""

    def __init__(
        self,
        *,
        config: GatewayConfig,
        node: Node,
        peers: Peers,
        channel: PortalChannel,
        flows: FlowTracker,
        bind_retry: DnsBindRetry,
        ids: ClientIds,
        counters: Stats,
        out: deque[GatewayCommand],
        utc_ns: Callable[[Instant], int],
    ) -> None:
        self._config = config
        self._node = node
        self._peers = peers
        self._channel = channel
        self._flows = flows
        self._bind_retry = bind_retry
        self._ids = ids
        self._counters = counters
        """The facade's counters (reported as ``gateway.*``)."""
        self._out = out
        """The facade's command queue (shared, so that both planes' commands keep their order)."""
        self._utc_ns = utc_ns
        self._pending: dict[int, PendingResolve] = {}
        self._next_request = 1
        self._dns_addresses: tuple[SocketAddr, ...] = ()  # where the DNS servers are wanted
        self._shutting_down = False
        self._exit: Exit | None = None

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def exit(self) -> Exit | None:
        """The ``Exit`` to give once everything else is out (set by :meth:`shutdown`)."""
        return self._exit

    # --- the portal -----------------------------------------------------------------------------

    def portal_input(self, now: Instant, inp: PortalInput) -> None:
        self._channel.handle_input(now, inp)
        self._drain_channel(now)

    def portal_timeout(self, now: Instant) -> None:
        self._channel.handle_timeout(now)
        self._drain_channel(now)

    def _drain_channel(self, now: Instant) -> None:
        while (ev := self._channel.poll_event()) is not None:
            match ev:
                case PortalMessageReceived():
                    if not self._shutting_down:
                        self._apply(now, ev.message)
                        if self._node.queued_events:
                            self.drain_node_events(now)
                case PortalJoined():
                    self._counters.incr("portal_joined")
                case PortalReplyError():
                    self._counters.incr("portal_reply_errors")
                case PortalFailed():
                    self.shutdown(now, f"portal: {ev.kind.value}: {ev.error}", 1)
                case PortalHiccup() | PortalStopped():
                    pass  # logged by the channel; it reconnects on its own
                case _:
                    assert_never(ev)

    def _apply(self, now: Instant, msg: m.InboundMessage) -> None:
        """One decoded portal message, in arrival order."""
        self._counters.incr(f"portal.{type(msg).__name__}")
        node, peers = self._node, self._peers
        match msg:
            case m.Init():
                self._init(now, msg)
            case m.AuthorizeFlow():
                self._authorize_flow(now, msg)
            case m.RequestConnection():
                if msg.client.domain is None:
                    self._request_connection(now, msg, ())
                else:
                    self._start_resolve(
                        now, msg.client.domain.name, ResolveKind.REQUEST_CONNECTION, legacy=msg
                    )
            case m.AllowAccess():
                if msg.payload is None:
                    self._allow_access(msg, ())
                else:
                    self._start_resolve(now, msg.payload.name, ResolveKind.ALLOW_ACCESS, legacy=msg)
            case m.RejectAccess():
                if peers.remove_access(msg.client_id, msg.resource_id):
                    self.goodbye(now, msg.client_id)
            case m.ResourceUpdated():
                peers.update_resource(from_portal(msg.resource))
            case m.AccessAuthorizationExpiryUpdated():
                peers.update_expiry(msg.client_id, msg.resource_id, msg.expires_at)
            case m.RelaysPresence():
                gone = [str(i) for i in msg.disconnected_ids]
                node.update_relays(gone, relay_configs(msg.connected), now)
            case m.IceCandidates():
                node.add_remote_candidates(str(msg.client_id), msg.candidates, now)
            case m.InvalidateIceCandidates():
                for c in msg.candidates:
                    node.remove_remote_candidate(str(msg.client_id), c, now)
            case _:
                assert_never(msg)

    def _init(self, now: Instant, msg: m.Init) -> None:
        self._node.update_relays([], relay_configs(msg.relays), now)
        v4, v6 = msg.interface.ipv4, msg.interface.ipv6
        self._peers.set_tunnel_ips(v4, v6)
        self._peers.apply_init(
            InitAuthorization(a.client_id, a.resource_id, a.expires_at) for a in msg.authorizations
        )
        # The DNS servers are not ordered here: the IO layer configures the interface and binds
        # concurrently, so a bind ordered now races the address it needs ("Cannot assign requested
        # address", then a retry). They follow the InterfaceConfigured that answers this command
        # (interface_configured, decision 0051), for the families that got their address.
        self._out.append(
            ConfigureInterface(
                InterfaceConfig(
                    v4,
                    v6,
                    masquerade_v4=msg.ipv4_masquerade_enabled,
                    masquerade_v6=msg.ipv6_masquerade_enabled,
                )
            )
        )

    def _authorize_flow(self, now: Instant, msg: m.AuthorizeFlow) -> None:
        c = msg.client
        ok = self._node.upsert_connection(
            str(c.id),
            c.public_key,
            c.preshared_key,
            (msg.gateway_ice_credentials.username, msg.gateway_ice_credentials.password),
            (msg.client_ice_credentials.username, msg.client_ice_credentials.password),
            now,
        )
        if not ok:
            self._no_relays(now, "authorize_flow")
            return
        resource = from_portal(msg.resource)
        props = client_properties(c, msg.subject)
        self._peers.allow_access(c.id, c.ipv4, c.ipv6, resource, msg.expires_at, props)
        self._channel.send(now, m.FlowAuthorized(msg.ref))

    def _no_relays(self, now: Instant, what: str) -> None:
        """No TURN server: no reply; reconnect to the portal for a fresh ``init`` (as Firezone does)."""
        log.warning("%s without any relay: reconnecting to the portal", what)
        self._counters.incr("no_relays")
        self._channel.reconnect(now)

    def _request_connection(
        self, now: Instant, msg: m.RequestConnection, resolved: tuple[IPAddress, ...]
    ) -> None:
        c = msg.client
        answer = self._node.accept_connection(
            str(c.id),
            c.peer.public_key,
            c.peer.preshared_key,
            (c.ice_parameters.username, c.ice_parameters.password),
            now,
        )
        if answer is None:
            self._no_relays(now, "request_connection")
            return
        resource = from_portal(msg.resource)
        peers = self._peers
        if not peers.allow_access(
            c.id, c.peer.ipv4, c.peer.ipv6, resource, msg.expires_at, ClientProperties()
        ):
            return  # before init: not recorded (logged by the policy), no reply
        if c.domain is not None:
            policy = peers.clients.get(c.id)
            err = (
                None
                if policy is None
                else policy.setup_nat(c.domain.name, resource.id, resolved, c.domain.proxy_ips)
            )
            if policy is None or err is not None:
                log.warning(
                    "request_connection for %s: NAT set-up failed (%s); dropping the client", c.id, err
                )
                peers.remove_client(c.id)
                self.goodbye(now, c.id)
                return
        self._channel.send(now, m.ConnectionReady(msg.ref, IceCredentials(*answer)))

    def _allow_access(self, msg: m.AllowAccess, resolved: tuple[IPAddress, ...]) -> None:
        resource = from_portal(msg.resource)
        peers = self._peers
        if not peers.allow_access(msg.client_id, msg.client_ipv4, msg.client_ipv6, resource, msg.expires_at):
            return
        if msg.payload is not None:
            policy = peers.clients.get(msg.client_id)
            if policy is not None:
                err = policy.setup_nat(msg.payload.name, resource.id, resolved, msg.payload.proxy_ips)
                if err is not None:
                    log.warning("allow_access for %s: NAT set-up failed: %s", msg.client_id, err.value)

    # --- domain resolutions ---------------------------------------------------------------------

    def _start_resolve(
        self,
        now: Instant,
        domain: str,
        kind: ResolveKind,
        *,
        p2p: ResolveRequest | None = None,
        legacy: m.RequestConnection | m.AllowAccess | None = None,
    ) -> None:
        """Order a resolution, or refuse it when too many are in flight (see decision 0053)."""
        if len(self._pending) >= self._config.max_pending_resolutions:
            log.warning("too many domain resolutions in flight; refusing %s for %s", domain, kind.value)
            self._counters.incr("resolve_refused")
            if p2p is not None:
                inactive = build_domain_status(p2p.resource, p2p.domain, NatStatus.INACTIVE)
                self.send_control(now, p2p.client, inactive)
            elif isinstance(legacy, m.AllowAccess):
                self._allow_access(legacy, ())  # as if the resolution had failed
            return
        rid = self._next_request
        self._next_request += 1
        self._pending[rid] = PendingResolve(kind, Instant(now + self._config.resolve_timeout), p2p, legacy)
        self._counters.incr("resolve_started")
        self._out.append(ResolveDomain(rid, domain))

    def resolved(self, now: Instant, request_id: int, result: tuple[IPAddress, ...] | None) -> None:
        """The driver's answer to a resolution (``None``: it failed); ignored once shutting down."""
        if not self._shutting_down:
            self._finish_resolve(now, request_id, result)

    def _finish_resolve(self, now: Instant, request_id: int, result: tuple[IPAddress, ...] | None) -> None:
        """A resolution finished (``None``: failed or timed out)."""
        p = self._pending.pop(request_id, None)
        if p is None:
            self._counters.incr("resolve_unmatched")
            return
        if result is None:
            self._counters.incr("resolve_failed")
        if p.kind is ResolveKind.P2P:
            assert p.p2p is not None
            packet = self._peers.domain_resolved(p.p2p, result)
            self.send_control(now, p.p2p.client, packet)
        elif isinstance(p.legacy, m.RequestConnection):
            if result is None:
                log.info("request_connection: resolving failed; no reply (the client times out)")
                return
            self._request_connection(now, p.legacy, result)
        elif isinstance(p.legacy, m.AllowAccess):
            self._allow_access(p.legacy, () if result is None else result)

    # --- clients --------------------------------------------------------------------------------

    def p2p_control(self, now: Instant, cid: str, packet: bytes) -> None:
        """A p2p control packet from the client of connection ``cid``."""
        client = uuid.UUID(cid)
        out = self._peers.handle_control(client, packet)
        match out:
            case ResolveRequest():
                self._start_resolve(now, out.domain, ResolveKind.P2P, p2p=out)
            case ControlReply():
                self.send_control(now, client, out.packet)
            case ClientGone():
                self._counters.incr("goodbyes_received")
                self._node.remove_connection(cid)
                self._flows.remove_client(client, now)
                self._ids.forget(client)
            case DropReason():
                self._counters.drop(out)
            case None:
                pass
            case _:
                assert_never(out)

    def send_control(self, now: Instant, client: uuid.UUID, packet: bytes) -> None:
        """Encrypt a p2p control packet (or an ICMP error) for ``client``; lost if it cannot be sent yet."""
        t = self._node.encapsulate(self._ids.cid(client), packet, now)
        if t is not None:
            self._out.append(t)
        else:
            self._counters.incr("control_reply_lost")

    def goodbye(self, now: Instant, client: uuid.UUID) -> None:
        """The client has no resources left (or is being dropped): close its connection with a goodbye."""
        self._counters.incr("goodbyes_sent")
        self._node.close_connection(self._ids.cid(client), GOODBYE_PACKET, now)
        self._flows.remove_client(client, now)
        self._ids.forget(client)

    # --- node events -> portal ------------------------------------------------------------------

    def drain_node_events(self, now: Instant) -> None:
        """Candidates the node found or dropped, one push per client per batch: highest priority first,
        exact duplicates removed (not equal priorities: decision 0052)."""
        new: dict[str, list[str]] = {}
        gone: dict[str, list[str]] = {}
        while (e := self._node.poll_event()) is not None:
            if isinstance(e, NewIceCandidate):
                lst = new.setdefault(e.cid, [])
                if e.candidate not in lst:
                    lst.append(e.candidate)
            elif isinstance(e, InvalidateIceCandidate):
                lst = gone.setdefault(e.cid, [])
                if e.candidate not in lst:
                    lst.append(e.candidate)
            else:
                self._counters.incr(f"node.{type(e).__name__}")
        if self._shutting_down:
            return
        for cid in sorted(new):
            cands = tuple(sorted(new[cid], key=lambda s: (-_priority(s), s)))
            self._channel.send(now, m.BroadcastIceCandidates((uuid.UUID(cid),), cands))
        for cid in sorted(gone):
            cands = tuple(sorted(gone[cid], key=lambda s: (-_priority(s), s)))
            self._channel.send(now, m.BroadcastInvalidatedIceCandidates((uuid.UUID(cid),), cands))

    # --- the interface and the DNS servers ------------------------------------------------------

    def interface_configured(self, now: Instant, inp: InterfaceConfigured) -> None:
        """Serve DNS only on the families whose address made it onto the interface (decision 0051)."""
        self._counters.incr("interface_configured")
        for w in inp.warnings:
            log.warning("interface: %s", w)
        cfg, port = inp.config, self._config.dns_port
        if (cfg.ipv4, cfg.ipv6) != self._peers.gateway_ips:
            return  # a result for an older configuration
        want = []
        if inp.ipv4 and cfg.ipv4 is not None:
            want.append(SocketAddr(cfg.ipv4, port))
        if inp.ipv6 and cfg.ipv6 is not None:
            want.append(SocketAddr(cfg.ipv6, port))
        if tuple(want) != self._dns_addresses:
            self._dns_addresses = tuple(want)
            self._bind_retry.set_addresses(now, self._dns_addresses)

    def interface_failed(self, now: Instant, inp: InterfaceConfigFailed) -> None:
        log.error("configuring the tunnel interface failed: %s", inp.error)
        self.shutdown(now, f"interface: {inp.error}", 1)  # fatal, as in the reference

    def dns_bound(self, now: Instant, inp: DnsServerBound) -> None:
        self._counters.incr("dns_bound")
        self._bind_retry.handle_bound(now, inp)

    def dns_bind_failed(self, now: Instant, inp: DnsServerBindFailed) -> None:
        log.warning("binding the DNS servers on %s failed: %s (retrying)", inp.address, inp.error)
        self._counters.incr("dns_bind_failed")
        self._bind_retry.handle_bind_failed(now, inp)

    # --- time and shutdown ----------------------------------------------------------------------

    def handle_timeout(self, now: Instant) -> None:
        """Resolutions past their deadline fail; the expiry sweep's clients get their goodbye."""
        pending = self._pending
        while pending:
            rid, p = next(iter(pending.items()))
            if p.deadline > now:
                break
            self._counters.incr("resolve_timeout")
            self._finish_resolve(now, rid, None)
        self._peers.handle_timeout(now)
        while (client := self._peers.poll_removed()) is not None:
            self.goodbye(now, client)

    def poll_timeout(self, *, recomputed: bool = False) -> Deadline | None:
        """The earliest deadline of the control plane: the portal's, the expiry sweep's, the first
        resolution's (``recomputed``: the sweep's the slow way, for the contract checker)."""
        peers = self._peers
        sweep = None
        if not self._shutting_down:
            sweep = peers.poll_timeout_recomputed() if recomputed else peers.poll_timeout()
        first = next(iter(self._pending.values()), None)
        return earliest(
            self._channel.poll_timeout(),
            sweep,
            None if first is None else Deadline(first.deadline, "domain resolution timeout"),
        )

    def shutdown(self, now: Instant, reason: str, code: int) -> None:
        """Close the portal, say goodbye to every client, drop pending work; then :attr:`exit` is set."""
        if self._shutting_down:
            return
        log.info("gateway shutting down: %s", reason)
        self._shutting_down = True
        self._channel.close(now)
        self._drain_channel(now)
        for client in self._peers.shutdown():
            self._flows.remove_client(client, now)
        node = self._node
        self._counters.incr("goodbyes_sent", len(node.connections))
        node.close_all(GOODBYE_PACKET, now)
        while node.poll_event() is not None:
            pass
        self._pending.clear()
        self._exit = Exit(reason, code)
