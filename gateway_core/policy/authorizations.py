"""Per-client authorisations with expiry, and the gateway-wide decisions about them.

Theory of operation (Firezone: ``ClientOnGateway`` and ``ResourceOnGateway`` in
``rust/connlib/tunnel/src/gateway/client_on_gateway.rs``, the expiry sweep of ``handle_timeout`` in
``rust/connlib/tunnel/src/gateway.rs``):

- A client's :class:`ClientAuthorizations` maps resource ids to :class:`Authorization`: the resource
  description, an optional expiry (integer Unix seconds from the portal; ``None`` = never) and, for DNS
  resources, the real IPs each resolved domain maps to (set by the DNS-resource NAT set-up).
- An authorisation is *allowed* while ``expires_at`` is absent or strictly later than the wall clock.
  Wall-clock time is passed in as integer nanoseconds since the Unix epoch (``utc_ns``), never read.
- Re-authorising an existing resource replaces its filters (name and address stay, as in the
  reference) **and its expiry** (a deliberate fix: the reference keeps the old expiry;
  docs/decisions/0041-policy-reauthorisation-updates-expiry.md). A change of resource type is logged
  and ignored.
- The gateway sweeps on a grid of :data:`EXPIRE_RESOURCES_INTERVAL` (:class:`ExpiryTimer`): expired
  authorisations are removed (:meth:`ClientAuthorizations.expire`), then every client left without
  resources is removed and its connection closed with a goodbye (``Peers.handle_timeout`` in
  :mod:`gateway_core.policy.peers`). The same "no resources left" rule decides after a ``reject_access``
  (:meth:`ClientAuthorizations.is_empty`).
- ``init`` carries the full list of authorisations: for every client, resources not listed are revoked,
  then each listed expiry is applied (``Peers.apply_init``). A client the list does not name
  at all loses every authorisation and goes at the next sweep: a deliberate fix, the reference's
  ``retain_authorizations`` (``rust/connlib/tunnel/src/gateway.rs``) leaves such a client untouched, so a
  client whose last resource was revoked while the gateway was away from the portal kept its access
  (docs/decisions/0123-policy-init-revokes-unlisted-clients.md).

The owner (:class:`~gateway_core.policy.client.ClientPolicy`) asks before a change whether it applies
(``rid in authorizations``) and rebuilds the client's filter table after it; the changes themselves
return nothing but the ids they removed. Iteration is always in resource-id (UUID byte) order, so
results are deterministic.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from gateway_core.addr import IPAddress, IPNetwork
from gateway_core.clock import NANOS_PER_SEC, Instant, secs
from gateway_core.policy.filters import Filters
from gateway_core.policy.resources import (
    CidrResource,
    DnsResource,
    InternetResource,
    ResourceDescription,
)

log = logging.getLogger("gateway_core.policy.authorizations")

EXPIRE_RESOURCES_INTERVAL = secs(1)
"""How often expiry is swept (Firezone's ``EXPIRE_RESOURCES_INTERVAL``, 1 s, ``gateway.rs:30``)."""

_DEFAULT_V4 = IPv4Network("0.0.0.0/0")
_DEFAULT_V6 = IPv6Network("::/0")


@dataclass(slots=True)
class Authorization:
    """One authorised resource of one client."""

    resource: ResourceDescription
    expires_at: int | None = None
    """Unix seconds; ``None`` means never."""
    domains: dict[str, frozenset[IPAddress]] = field(default_factory=dict)
    """DNS resources only: resolved real IPs per domain (as ``ResourceOnGateway::Dns``)."""

    # --- the FilterSource protocol of gateway_core.policy.filters ---

    @property
    def resource_id(self) -> uuid.UUID:
        return self.resource.id

    @property
    def is_cidr(self) -> bool:
        return isinstance(self.resource, CidrResource)

    @property
    def is_dns(self) -> bool:
        return isinstance(self.resource, DnsResource)

    @property
    def is_internet(self) -> bool:
        return isinstance(self.resource, InternetResource)

    @property
    def filters(self) -> Filters:
        return self.resource.filters

    def networks(self) -> Sequence[IPNetwork]:
        """CIDR: its network; DNS: every resolved real IP as a host network; Internet: both defaults."""
        r = self.resource
        if isinstance(r, CidrResource):
            return (r.network,)
        if isinstance(r, InternetResource):
            return (_DEFAULT_V4, _DEFAULT_V6)
        hosts: set[IPNetwork] = set()
        for ips in self.domains.values():
            for ip in ips:
                hosts.add(IPv4Network(ip) if ip.version == 4 else IPv6Network(ip))
        return tuple(sorted(hosts, key=lambda n: (n.version, n)))

    def is_allowed(self, utc_ns: int) -> bool:
        """Whether the authorisation is unexpired at wall-clock ``utc_ns`` (``expires_at > now``)."""
        return self.expires_at is None or self.expires_at * NANOS_PER_SEC > utc_ns


class ClientAuthorizations:
    """The resources one client may reach through this gateway."""

    __slots__ = ("_by_id", "client_id")

    def __init__(self, client_id: uuid.UUID) -> None:
        self.client_id = client_id
        self._by_id: dict[uuid.UUID, Authorization] = {}

    # --- queries ---

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, rid: object) -> bool:
        return rid in self._by_id

    def is_empty(self) -> bool:
        """No resource left: the client's peer and connection should be removed."""
        return not self._by_id

    def earliest_expiry(self) -> int | None:
        """The earliest ``expires_at`` in wall-clock nanoseconds, or ``None`` when nothing expires."""
        ats = [a.expires_at for a in self._by_id.values() if a.expires_at is not None]
        return min(ats) * NANOS_PER_SEC if ats else None

    def get(self, rid: uuid.UUID) -> Authorization | None:
        return self._by_id.get(rid)

    def ids(self) -> list[uuid.UUID]:
        return sorted(self._by_id)

    def values(self) -> list[Authorization]:
        """Every authorisation in resource-id order."""
        return [self._by_id[rid] for rid in sorted(self._by_id)]

    def internet_resource(self) -> uuid.UUID | None:
        """The first Internet resource in id order, if any."""
        return next((a.resource_id for a in self.values() if a.is_internet), None)

    # --- changes ---

    def add(self, resource: ResourceDescription, expires_at: int | None) -> None:
        """Authorise ``resource`` until ``expires_at`` (``authorize_flow``, ``allow_access``). Already
        authorised: its filters and expiry are replaced (decision 0041); with another resource type: ignored
        (logged)."""
        current = self._by_id.get(resource.id)
        if current is None:
            self._by_id[resource.id] = Authorization(resource, expires_at)
            log.info("client %s: allowing resource %s until %s", self.client_id, resource.id, expires_at)
            return
        if not self._replace_filters(current, resource):
            return
        log.info(
            "client %s: resource %s re-authorised, expiry %s -> %s",
            self.client_id,
            resource.id,
            current.expires_at,
            expires_at,
        )
        current.expires_at = expires_at  # the fix of decision 0041

    def update_resource(self, resource: ResourceDescription) -> None:
        """``resource_updated`` for a resource this client has (the owner checks): replace its filters."""
        self._replace_filters(self._by_id[resource.id], resource)

    def _replace_filters(self, current: Authorization, new: ResourceDescription) -> bool:
        """Replace ``current``'s filters by ``new``'s (name and address stay); False if the type differs."""
        old = current.resource
        if isinstance(old, CidrResource) and isinstance(new, CidrResource):
            current.resource = CidrResource(old.id, old.name, old.network, new.filters)
        elif isinstance(old, DnsResource) and isinstance(new, DnsResource):
            current.resource = DnsResource(old.id, old.name, old.address, new.filters)
        elif not (isinstance(old, InternetResource) and isinstance(new, InternetResource)):
            log.error(
                "client %s: resource %s cannot change type from %s to %s; ignored",
                self.client_id,
                old.id,
                old.kind.value,
                new.kind.value,
            )
            return False
        return True

    def update_expiry(self, rid: uuid.UUID, expires_at: int | None) -> None:
        """``access_authorization_expiry_updated`` / ``init``: overwrite the expiry (unknown: logged)."""
        current = self._by_id.get(rid)
        if current is None:
            log.debug("client %s: expiry update for unknown resource %s", self.client_id, rid)
            return
        log.info(
            "client %s: resource %s expiry %s -> %s", self.client_id, rid, current.expires_at, expires_at
        )
        current.expires_at = expires_at

    def remove(self, rid: uuid.UUID) -> None:
        """``reject_access``: revoke one resource this client has (the owner checks)."""
        del self._by_id[rid]

    def retain(self, keep: Collection[uuid.UUID]) -> list[uuid.UUID]:
        """Revoke every resource not in ``keep``; the revoked ids in order."""
        gone = [rid for rid in sorted(self._by_id) if rid not in keep]
        for rid in gone:
            del self._by_id[rid]
            log.info("client %s: revoking resource %s", self.client_id, rid)
        return gone

    def expire(self, utc_ns: int) -> list[uuid.UUID]:
        """Remove every authorisation no longer allowed at ``utc_ns``; the removed ids in order."""
        gone = [rid for rid in sorted(self._by_id) if not self._by_id[rid].is_allowed(utc_ns)]
        for rid in gone:
            del self._by_id[rid]
            log.info("client %s: access to resource %s expired", self.client_id, rid)
        return gone


# --------------------------------------------------------------------------------------------------
# Gateway-wide decisions.


class ExpiryTimer:
    """The grid of the periodic expiry check: ticks :data:`EXPIRE_RESOURCES_INTERVAL` apart, the first one
    interval after the first timeout (``GatewayState::handle_timeout`` in
    ``rust/connlib/tunnel/src/gateway.rs``).

    The reference sweeps at every tick; here a tick at which nothing is due is skipped (its sweep would
    change nothing), so the owner asks for :meth:`tick_at_or_after` the earliest time something is due and
    sleeps until then: the same ticks do the same work, and an idle gateway does not wake every second.
    :meth:`handle_timeout` moves the grid past ``now`` and says which tick was reached last (sweep what was
    due at it)."""

    __slots__ = ("next_check",)

    def __init__(self) -> None:
        self.next_check: Instant | None = None

    def tick_at_or_after(self, t: int) -> Instant | None:
        """The first tick at or after ``t`` (``None`` before the first :meth:`handle_timeout`)."""
        nxt = self.next_check
        if nxt is None:
            return None
        if t <= nxt:
            return nxt
        return Instant(nxt + -((nxt - t) // EXPIRE_RESOURCES_INTERVAL) * EXPIRE_RESOURCES_INTERVAL)

    def handle_timeout(self, now: Instant) -> Instant | None:
        """Reach ``now``: the first call only starts the grid; a call at or after a tick moves the grid to
        its first tick after ``now`` and returns the last tick at or before ``now``: the owner sweeps what
        was due *at that tick*, as the reference's sweep there would have (a tick skipped because nothing
        was due at it is passed at the next call, which can come between ticks)."""
        nxt = self.next_check
        if nxt is None:
            self.next_check = Instant(now + EXPIRE_RESOURCES_INTERVAL)
            return None
        if now < nxt:
            return None
        last = nxt + (now - nxt) // EXPIRE_RESOURCES_INTERVAL * EXPIRE_RESOURCES_INTERVAL
        self.next_check = Instant(last + EXPIRE_RESOURCES_INTERVAL)
        return Instant(last)


@dataclass(frozen=True, slots=True)
class InitAuthorization:
    """One entry of ``init.authorizations``."""

    client_id: uuid.UUID
    resource_id: uuid.UUID
    expires_at: int
