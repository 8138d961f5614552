"""The gateway's control plane: what each portal message (portal-protocol.md §2) does to the node and the
policy, domain resolutions for DNS resources (datapath §8.3-§8.5, portal §2.4-§2.5), and the candidate
signalling back to the portal (§2.11).

These are functions over the :class:`~gateway_core.gateway.Gateway`'s parts rather than methods, to keep
each module small; the facade calls them inside its own ``handle_*`` calls (R8) and drains what they
queue. Deliberate choices are recorded in ``docs/decisions/0050-0059``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant
from gateway_core.dns.servers import DnsServerBindFailed
from gateway_core.gateway_types import ResolveDomain
from gateway_core.interface import ConfigureInterface, InterfaceConfig
from gateway_core.node.events import InvalidateIceCandidate, NewIceCandidate
from gateway_core.node.node import RelayConfig
from gateway_core.policy.authorizations import InitAuthorization
from gateway_core.policy.flows import ClientProperties
from gateway_core.policy.p2p_control import GOODBYE_PACKET, NatStatus, build_domain_status
from gateway_core.policy.peers import ResolveRequest as P2pResolve
from gateway_core.policy.resources import from_portal
from gateway_core.portal import messages as m
from gateway_core.portal.model import Client, IceCredentials, Subject, TurnRelay
from gateway_core.turn.allocation import RelaySocket

if TYPE_CHECKING:
    from gateway_core.gateway import Gateway

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
    p2p: P2pResolve | None = None
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
# Portal messages


def handle_message(gw: Gateway, now: Instant, msg: m.InboundMessage) -> None:
    """One decoded portal message (§2), in arrival order."""
    gw.counters.incr(f"portal.{type(msg).__name__}")
    match msg:
        case m.Init():
            _init(gw, now, msg)
        case m.AuthorizeFlow():
            _authorize_flow(gw, now, msg)
        case m.RequestConnection():
            if msg.client.domain is None:
                _request_connection(gw, now, msg, ())
            else:
                start_resolve(gw, now, msg.client.domain.name, ResolveKind.REQUEST_CONNECTION, legacy=msg)
        case m.AllowAccess():
            if msg.payload is None:
                _allow_access(gw, now, msg, ())
            else:
                start_resolve(gw, now, msg.payload.name, ResolveKind.ALLOW_ACCESS, legacy=msg)
        case m.RejectAccess():
            if gw.peers.remove_access(msg.client_id, msg.resource_id):
                gw.goodbye(now, msg.client_id)
        case m.ResourceUpdated():
            gw.peers.update_resource(from_portal(msg.resource))
        case m.AccessAuthorizationExpiryUpdated():
            if not gw.peers.update_expiry(msg.client_id, msg.resource_id, msg.expires_at):
                log.debug("expiry update for unknown authorisation %s/%s", msg.client_id, msg.resource_id)
        case m.RelaysPresence():
            gone = [str(i) for i in msg.disconnected_ids]
            gw.node.update_relays(gone, relay_configs(msg.connected), now)
        case m.IceCandidates():
            for c in msg.candidates:
                gw.node.add_remote_candidate(str(msg.client_id), c, now)
        case m.InvalidateIceCandidates():
            for c in msg.candidates:
                gw.node.remove_remote_candidate(str(msg.client_id), c, now)


def _init(gw: Gateway, now: Instant, msg: m.Init) -> None:
    gw.node.update_relays([], relay_configs(msg.relays), now)
    v4, v6 = msg.interface.ipv4, msg.interface.ipv6
    gw.peers.set_tunnel_ips(v4, v6)
    gw.peers.apply_init(
        InitAuthorization(a.client_id, a.resource_id, a.expires_at) for a in msg.authorizations
    )
    # The DNS servers are not ordered here: the IO layer configures the interface and binds concurrently,
    # so a bind ordered now races the address it needs ("Cannot assign requested address", then a retry).
    # They follow the InterfaceConfigured that answers this command (Gateway._bind_configured_families,
    # decision 0051), for the families that got their address.
    gw.queue(ConfigureInterface(InterfaceConfig(v4, v6)))


def _authorize_flow(gw: Gateway, now: Instant, msg: m.AuthorizeFlow) -> None:
    c = msg.client
    ok = gw.node.upsert_connection(
        str(c.id),
        c.public_key,
        c.preshared_key,
        (msg.gateway_ice_credentials.username, msg.gateway_ice_credentials.password),
        (msg.client_ice_credentials.username, msg.client_ice_credentials.password),
        now,
    )
    if not ok:
        no_relays(gw, now, "authorize_flow")
        return
    gw.allow(
        c.id, c.ipv4, c.ipv6, from_portal(msg.resource), msg.expires_at, client_properties(c, msg.subject)
    )
    gw.channel.send(now, m.FlowAuthorized(msg.ref))


def no_relays(gw: Gateway, now: Instant, what: str) -> None:
    """No TURN server: no reply; reconnect to the portal for a fresh ``init`` (§2.3 step 2)."""
    log.warning("%s without any relay: reconnecting to the portal", what)
    gw.counters.incr("no_relays")
    gw.channel.reconnect(now)


def _request_connection(
    gw: Gateway, now: Instant, msg: m.RequestConnection, resolved: tuple[IPAddress, ...]
) -> None:
    c = msg.client
    cid = str(c.id)
    answer = gw.node.accept_connection(
        cid,
        c.peer.public_key,
        c.peer.preshared_key,
        (c.ice_parameters.username, c.ice_parameters.password),
        now,
    )
    if answer is None:
        no_relays(gw, now, "request_connection")
        return
    resource = from_portal(msg.resource)
    if gw.allow(c.id, c.peer.ipv4, c.peer.ipv6, resource, msg.expires_at, ClientProperties()) is None:
        return  # before init: not recorded (logged by the policy), no reply
    if c.domain is not None:
        policy = gw.peers.clients.get(c.id)
        err = (
            None
            if policy is None
            else policy.setup_nat(c.domain.name, resource.id, resolved, c.domain.proxy_ips)
        )
        if policy is None or err is not None:
            log.warning("request_connection for %s: NAT set-up failed (%s); dropping the client", c.id, err)
            gw.peers.remove_client(c.id)
            gw.goodbye(now, c.id)
            return
    gw.channel.send(now, m.ConnectionReady(msg.ref, IceCredentials(*answer)))


def _allow_access(gw: Gateway, now: Instant, msg: m.AllowAccess, resolved: tuple[IPAddress, ...]) -> None:
    resource = from_portal(msg.resource)
    if gw.allow(msg.client_id, msg.client_ipv4, msg.client_ipv6, resource, msg.expires_at, None) is None:
        return
    if msg.payload is not None:
        policy = gw.peers.clients.get(msg.client_id)
        if policy is not None:
            err = policy.setup_nat(msg.payload.name, resource.id, resolved, msg.payload.proxy_ips)
            if err is not None:
                log.warning("allow_access for %s: NAT set-up failed: %s", msg.client_id, err.value)


# --------------------------------------------------------------------------------------------------
# Domain resolutions


def start_resolve(
    gw: Gateway,
    now: Instant,
    domain: str,
    kind: ResolveKind,
    *,
    p2p: P2pResolve | None = None,
    legacy: m.RequestConnection | m.AllowAccess | None = None,
) -> None:
    """Order a resolution, or refuse it when too many are in flight (see decision 0053)."""
    if len(gw.pending) >= gw.config.max_pending_resolutions:
        log.warning("too many domain resolutions in flight; refusing %s for %s", domain, kind.value)
        gw.counters.incr("resolve_refused")
        if p2p is not None:
            gw.send_control(
                now, p2p.client, build_domain_status(p2p.resource, p2p.domain, NatStatus.INACTIVE)
            )
        elif isinstance(legacy, m.AllowAccess):
            _allow_access(gw, now, legacy, ())  # as if the resolution had failed (§2.5)
        return
    rid = gw.next_request_id()
    gw.pending[rid] = PendingResolve(kind, Instant(now + gw.config.resolve_timeout), p2p, legacy)
    gw.counters.incr("resolve_started")
    gw.queue(ResolveDomain(rid, domain))


def finish_resolve(gw: Gateway, now: Instant, request_id: int, result: tuple[IPAddress, ...] | None) -> None:
    """A resolution finished (``None``: failed or timed out)."""
    p = gw.pending.pop(request_id, None)
    if p is None:
        gw.counters.incr("resolve_unmatched")
        return
    if result is None:
        gw.counters.incr("resolve_failed")
    if p.kind is ResolveKind.P2P:
        assert p.p2p is not None
        packet = gw.peers.domain_resolved(p.p2p, result)
        gw.send_control(now, p.p2p.client, packet)
    elif isinstance(p.legacy, m.RequestConnection):
        if result is None:
            log.info("request_connection: resolving failed; no reply (the client times out)")
            return
        _request_connection(gw, now, p.legacy, result)
    elif isinstance(p.legacy, m.AllowAccess):
        _allow_access(gw, now, p.legacy, () if result is None else result)


# --------------------------------------------------------------------------------------------------
# Node events -> portal


def drain_node_events(gw: Gateway, now: Instant) -> None:
    """Candidates the node found or dropped, one push per client per batch (§2.11): highest priority
    first, exact duplicates removed (not equal priorities: decision 0052)."""
    new: dict[str, list[str]] = {}
    gone: dict[str, list[str]] = {}
    while (e := gw.node.poll_event()) is not None:
        if isinstance(e, NewIceCandidate):
            lst = new.setdefault(e.cid, [])
            if e.candidate not in lst:
                lst.append(e.candidate)
        elif isinstance(e, InvalidateIceCandidate):
            lst = gone.setdefault(e.cid, [])
            if e.candidate not in lst:
                lst.append(e.candidate)
        else:
            gw.counters.incr(f"node.{type(e).__name__}")
    if gw.shutting_down:
        return
    for cid in sorted(new):
        cands = tuple(sorted(new[cid], key=lambda s: (-_priority(s), s)))
        gw.channel.send(now, m.BroadcastIceCandidates((uuid.UUID(cid),), cands))
    for cid in sorted(gone):
        cands = tuple(sorted(gone[cid], key=lambda s: (-_priority(s), s)))
        gw.channel.send(now, m.BroadcastInvalidatedIceCandidates((uuid.UUID(cid),), cands))


def dns_bind_failed(gw: Gateway, now: Instant, inp: DnsServerBindFailed) -> None:
    log.warning("binding the DNS servers on %s failed: %s (retrying)", inp.address, inp.error)
    gw.counters.incr("dns_bind_failed")
    gw.bind_retry.handle_bind_failed(now, inp)


__all__ = [
    "GOODBYE_PACKET",
    "PendingResolve",
    "ResolveKind",
    "drain_node_events",
    "finish_resolve",
    "handle_message",
    "relay_configs",
    "start_resolve",
]
