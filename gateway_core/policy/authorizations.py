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
- The gateway sweeps every :data:`EXPIRE_RESOURCES_INTERVAL` (:class:`ExpiryTimer`): expired
  authorisations are removed from every client (:func:`sweep_expired`), then every client left without
  resources is removed and its connection closed with a goodbye (:func:`empty_clients`). The same
  "no resources left" rule decides after a ``reject_access`` (:meth:`ClientAuthorizations.is_empty`).
- ``init`` carries the full list of authorisations: for every client, resources not listed are revoked,
  then each listed expiry is applied (:func:`apply_init_authorizations`). A client the list does not name
  at all loses every authorisation and goes at the next sweep: a deliberate fix, the reference's
  ``retain_authorizations`` (``rust/connlib/tunnel/src/gateway.rs``) leaves such a client untouched, so a
  client whose last resource was revoked while the gateway was away from the portal kept its access
  (docs/decisions/0123-policy-init-revokes-unlisted-clients.md).

Every method returns what changed so the owner knows when to rebuild the client's filter table.
Iteration is always in resource-id (UUID byte) order, so results are deterministic.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network

from gateway_core.addr import IPAddress, IPNetwork
from gateway_core.clock import NANOS_PER_SEC, Instant, secs
from gateway_core.contract import Deadline
from gateway_core.errors import UsageError
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


class AddOutcome(StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    """Already authorised: filters and expiry replaced."""
    TYPE_MISMATCH = "type_mismatch"
    """Already authorised with another resource type: ignored (logged)."""


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

    def add(self, resource: ResourceDescription, expires_at: int | None) -> AddOutcome:
        """Authorise ``resource`` until ``expires_at`` (``authorize_flow``, ``allow_access``)."""
        current = self._by_id.get(resource.id)
        if current is None:
            self._by_id[resource.id] = Authorization(resource, expires_at)
            log.info("client %s: allowing resource %s until %s", self.client_id, resource.id, expires_at)
            return AddOutcome.ADDED
        if not self._replace_filters(current, resource):
            return AddOutcome.TYPE_MISMATCH
        if current.expires_at != expires_at:
            log.info(
                "client %s: resource %s re-authorised, expiry %s -> %s",
                self.client_id,
                resource.id,
                current.expires_at,
                expires_at,
            )
        current.expires_at = expires_at  # the fix of decision 0041
        return AddOutcome.UPDATED

    def update_resource(self, resource: ResourceDescription) -> bool:
        """``resource_updated``: replace the filters if this client has the resource; True if it has."""
        current = self._by_id.get(resource.id)
        if current is None:
            return False
        return self._replace_filters(current, resource)

    def _replace_filters(self, current: Authorization, new: ResourceDescription) -> bool:
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

    def update_expiry(self, rid: uuid.UUID, expires_at: int | None) -> bool:
        """``access_authorization_expiry_updated`` / ``init``: overwrite the expiry; False if unknown."""
        current = self._by_id.get(rid)
        if current is None:
            log.debug("client %s: expiry update for unknown resource %s", self.client_id, rid)
            return False
        log.info(
            "client %s: resource %s expiry %s -> %s", self.client_id, rid, current.expires_at, expires_at
        )
        current.expires_at = expires_at
        return True

    def remove(self, rid: uuid.UUID) -> bool:
        """``reject_access``: revoke one resource; False if it was not authorised."""
        return self._by_id.pop(rid, None) is not None

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
    """The grid of the periodic expiry check: ticks one interval apart, the first one interval after the
    first timeout (``GatewayState::handle_timeout`` in ``rust/connlib/tunnel/src/gateway.rs``).

    The reference sweeps at every tick; here a tick at which nothing is due is skipped (its sweep would
    change nothing), so the owner asks for :meth:`tick_at_or_after` the earliest time something is due and
    sleeps until then: the same ticks do the same work, and an idle gateway does not wake every second.
    :meth:`handle_timeout` moves the grid past ``now``; :meth:`poll_sweep` says (once) whether a tick was
    reached."""

    __slots__ = ("_swept", "interval", "next_check")

    def __init__(self, interval: int = EXPIRE_RESOURCES_INTERVAL) -> None:
        if interval <= 0:
            raise UsageError("expiry interval must be positive")
        self.interval = interval
        self.next_check: Instant | None = None
        self._swept = False

    def poll_timeout(self) -> Deadline | None:
        """The next tick (``None`` until the first :meth:`handle_timeout`); the owner asks
        :meth:`tick_at_or_after` instead, to skip ticks with nothing due."""
        return None if self.next_check is None else Deadline(self.next_check, "resource expiry")

    def tick_at_or_after(self, t: int) -> Instant | None:
        """The first tick at or after ``t`` (``None`` before the first :meth:`handle_timeout`)."""
        nxt = self.next_check
        if nxt is None:
            return None
        if t <= nxt:
            return nxt
        return Instant(nxt + -((nxt - t) // self.interval) * self.interval)

    def handle_timeout(self, now: Instant) -> None:
        """Reach ``now``: the first call only starts the grid; a call at or after a tick makes
        :meth:`poll_sweep` true once and moves the grid to its first tick after ``now``."""
        nxt = self.next_check
        if nxt is None:
            self.next_check = Instant(now + self.interval)
            return
        if now < nxt:
            return
        self._swept = True
        self.next_check = Instant(nxt + ((now - nxt) // self.interval + 1) * self.interval)

    def poll_sweep(self) -> bool:
        """True once after :meth:`handle_timeout` reached a tick: the owner sweeps what is due."""
        swept, self._swept = self._swept, False
        return swept


def sweep_expired(
    clients: Mapping[uuid.UUID, ClientAuthorizations], utc_ns: int
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """Expire authorisations of every client; ``{client: [expired resources]}`` for those that lost any."""
    out: dict[uuid.UUID, list[uuid.UUID]] = {}
    for cid in sorted(clients):
        gone = clients[cid].expire(utc_ns)
        if gone:
            out[cid] = gone
    return out


def empty_clients(clients: Mapping[uuid.UUID, ClientAuthorizations]) -> list[uuid.UUID]:
    """The clients without any resource left, in id order: remove them and say goodbye."""
    return [cid for cid in sorted(clients) if clients[cid].is_empty()]


@dataclass(frozen=True, slots=True)
class InitAuthorization:
    """One entry of ``init.authorizations``."""

    client_id: uuid.UUID
    resource_id: uuid.UUID
    expires_at: int


def apply_init_authorizations(
    clients: Mapping[uuid.UUID, ClientAuthorizations], entries: Iterable[InitAuthorization]
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """``init``: every client retains only its listed resources (none when it is not listed), then the
    listed expiries apply.

    Returns ``{client: [revoked resources]}`` for the clients that lost any. Entries naming unknown
    clients or resources are no-ops (logged at debug), as in the reference.
    """
    listed: dict[uuid.UUID, set[uuid.UUID]] = {}
    entries = list(entries)
    for e in entries:
        listed.setdefault(e.client_id, set()).add(e.resource_id)
    revoked: dict[uuid.UUID, list[uuid.UUID]] = {}
    for cid in sorted(clients):
        gone = clients[cid].retain(listed.get(cid, set()))
        if gone:
            revoked[cid] = gone
    for e in entries:
        auths = clients.get(e.client_id)
        if auths is None:
            log.debug("init: authorisation for unknown client %s", e.client_id)
            continue
        auths.update_expiry(e.resource_id, e.expires_at)
    return revoked
