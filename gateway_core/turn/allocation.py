"""TURN client allocation: one relay, as snownet's ``rust/connlib/snownet/src/allocation.rs``, as a pure
machine.

Theory of operation
-------------------
An :class:`Allocation` is created for a relay (IPv4 and/or IPv6 address, port 3478) with opaque
credentials. It first sends one BINDING request per relay address; the first answered family becomes the
*active socket*, and every answer yields a host candidate (the local address it arrived on) and a
server-reflexive candidate (XOR-MAPPED-ADDRESS). On the first answer it sends ALLOCATE (REQUESTED-TRANSPORT
UDP, ADDITIONAL-ADDRESS-FAMILY IPv6). The success gives up to two relayed candidates and a lifetime;
the allocation is refreshed at half its lifetime and kept alive by a BINDING every 25 s. Standard servers
also get ADDITIONAL-ADDRESS-FAMILY at coturn's pre-4.8 codepoint, and a 440 to the dual ALLOCATE (coturn
with ``external-ip``) is answered by an ALLOCATE for one family (decision 0171).

Authentication, long-term with realm ``firezone``, for the Firezone relay and for standard RFC 8656
servers such as coturn (decision 0020), is :attr:`Allocation.auth`, a
:class:`~gateway_core.turn.auth.LongTermAuth`: every request but BINDING is signed anew on every (re)send,
challenges update the nonce, and a response that is not authentic changes nothing. The one exception to
signing: coturn answers a first, nonce-less ALLOCATE with an unsigned 400, and we resend it once unsigned.

A 437 to ALLOCATE means our 5-tuple already holds an allocation (RFC 8656 §7.2): it is deleted (REFRESH
LIFETIME 0), signed with the :class:`StaleCredentials` the node handed over when the relay's credentials
rotated (coturn lets only the allocation's own username delete it, and answers 437 unsigned), else with
ours, then ALLOCATE is sent again; a 437 soon after our own delete only defers the ALLOCATE by 1 s (coturn
frees the 5-tuple on a later tick). At most two deletes per successful ALLOCATE. A 437 to a *retransmitted*
ALLOCATE once no stale credentials are left is our own allocation whose success was lost (every send has a
fresh transaction id, so the server cannot tell): it is deleted with our credentials and allocated again at
once, outside that budget and that deferral (snownet's reaction to any 437 to ALLOCATE).

Requests are retransmitted at 0, 1, 2.5, 4.75 s (1 s x 1.5) and abandoned at 8 s; an abandoned request
to the active socket's family invalidates the allocation. Channels (0x4000-0x4FFF) are bound per peer,
live 10 min, are refreshed after 5 min if data was received, and a number is reused only after a 5 min
quarantine. For standard servers, CreatePermission (refreshed every 4 min) and Send/Data indications are
available too. Relayed candidates come and go as :class:`CandidateEvent` s; :meth:`Allocation.can_be_freed`
says when the allocation is dead. The lifecycle :class:`Phase` is derived from the fields and every
change is checked against :data:`TRANSITIONS` in :meth:`Allocation._transition`.
"""

from __future__ import annotations

import logging
from collections import deque

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.commands import Transmit
from gateway_core.contract import Deadline, advance
from gateway_core.entropy import Entropy
from gateway_core.errors import DecodeError, DropReason
from gateway_core.ice import candidate as cand
from gateway_core.stats import Stats
from gateway_core.turn.auth import LongTermAuth
from gateway_core.turn.channels import CHANNEL_REFRESH_AFTER, Channels
from gateway_core.turn.datapath import DataPath
from gateway_core.turn.permissions import Permissions
from gateway_core.turn.requests import Requests
from gateway_core.turn.types import (
    TRANSITIONS,
    CandidateEvent,
    FreeReason,
    Phase,
    RelaySocket,
    StaleCredentials,
)
from gateway_core.turn.types import PendingRequest as _Pending
from gateway_core.wire import turn as tw
from gateway_core.wire.stun import Attr, Class, Method, StunMessage

log = logging.getLogger(__name__)

BINDING_INTERVAL = secs(25)
"""Keepalive/liveness BINDING to the active socket (snownet ``BINDING_INTERVAL`` 25 s)."""
RETRY_INITIAL = secs(1)
"""First retransmission after 1 s (snownet ``backoff.rs``)."""
RETRY_MULTIPLIER = (3, 2)
"""Each retransmission interval is 1.5 times the previous one (snownet)."""
RETRY_MAX_ELAPSED = secs(8)
"""A request is abandoned 8 s after its first send: sends at 0, 1, 2.5, 4.75 s (snownet)."""
PROBE_MAX_ELAPSED = secs(1)
"""The REFRESH sent when the portal re-announces a relay gets a single 1 s try (snownet ``refresh``)."""
MAX_MISMATCH_RECOVERIES = 2
"""437 to ALLOCATE: delete the existing allocation and allocate again at most twice (once with the stale
credentials, once with ours) until an ALLOCATE succeeds; snownet retries without bound."""
DELETE_GRACE = secs(5)
"""coturn releases a deleted allocation's 5-tuple on a later timer tick (measured 0.8-1.5 s, coturn 4.6.1)
and answers 437 until then: for 5 s after our delete succeeded, a 437 to ALLOCATE defers it by 1 s."""
MAX_BUFFERED_BINDINGS = 100
"""Peers waiting for an allocation before their CHANNEL-BIND (snownet ring of 100)."""
TRANSITIONS_KEPT = 32
"""Phase changes an allocation remembers: a ring, as an allocation may cycle through failures forever."""


class Allocation(DataPath, Requests):
    """One TURN allocation; see the module docstring (the data path is in :mod:`.datapath`, the request
    layouts in :mod:`.requests`)."""

    def __init__(
        self,
        server: RelaySocket,
        username: str,
        password: str,
        realm: str,
        now: Instant,
        entropy: Entropy,
        *,
        software: str | None = "snownet; session=python",
        stats: Stats | None = None,
        requested_family: int | None = None,
        stale: StaleCredentials | None = None,
    ) -> None:
        self.server = server
        self.auth = LongTermAuth(username, password, realm, stale)
        """The credentials, the server's nonce and the rotated-away credentials (:mod:`.auth`)."""
        self.software = software
        self.requested_family = requested_family
        """``None``: IPv4 + ADDITIONAL-ADDRESS-FAMILY IPv6 (snownet); else REQUESTED-ADDRESS-FAMILY only."""
        self.stats = stats if stats is not None else Stats()
        self._entropy = entropy
        self._mismatch_budget = MAX_MISMATCH_RECOVERIES
        self._single_family = False
        """The server refused a dual allocation (440): ask for its default family only (decision 0171)."""
        self._deleted_at: Instant | None = None
        self._active: SocketAddr | None = None
        self._next_binding: Instant | None = None
        self._host: dict[int, cand.Candidate] = {}
        self._srflx: dict[int, cand.Candidate] = {}
        self._relayed: dict[int, cand.Candidate] = {}
        self._lifetime: tuple[Instant, int] | None = None
        self._pending: dict[bytes, _Pending] = {}
        self._transmits: deque[Transmit] = deque()
        self._events: deque[CandidateEvent] = deque()
        self.channels = Channels()
        self._buffered: deque[SocketAddr] = deque(maxlen=MAX_BUFFERED_BINDINGS)
        self._permissions = Permissions()
        self._explicit_failure: FreeReason | None = None
        self._refresh_not_before = now
        self._now = now
        self._phase = Phase.PROBING
        self.transitions: deque[tuple[Instant, Phase, Phase]] = deque(maxlen=TRANSITIONS_KEPT)
        """The last :data:`TRANSITIONS_KEPT` phase changes ``(at, old, new)``, for diagnostics and tests."""
        self._send_binding_requests(now)

    # --- queries ----------------------------------------------------------------------------------------

    @property
    def username(self) -> str:
        return self.auth.username

    @property
    def password(self) -> str:
        return self.auth.password

    @property
    def active_socket(self) -> SocketAddr | None:
        return self._active

    def has_allocation(self) -> bool:
        return bool(self._relayed)

    def relay_candidates(self) -> list[cand.Candidate]:
        return [self._relayed[v] for v in sorted(self._relayed)]

    def host_and_srflx_candidates(self) -> list[cand.Candidate]:
        return [d[v] for d in (self._host, self._srflx) for v in sorted(d)]

    def relayed_address(self, version: int) -> SocketAddr | None:
        c = self._relayed.get(version)
        return c.addr if c else None

    def has_socket(self, addr: SocketAddr) -> bool:
        return any(c.addr == addr for c in self._relayed.values())

    def matches_credentials(self, username: str, password: str) -> bool:
        return self.auth.matches(username, password)

    def handover(self) -> StaleCredentials | None:
        """Credentials whose allocation may exist on the server, for the allocation replacing this one."""
        return self.auth.handover(self.has_allocation())

    def expires_at(self) -> Instant | None:
        """When the current allocation lapses unless refreshed."""
        return None if self._lifetime is None else Instant(self._lifetime[0] + self._lifetime[1])

    @property
    def phase(self) -> Phase:
        return self._phase

    def _derive_phase(self) -> Phase:
        if self._explicit_failure is not None or self._dead_reason() is not None:
            return Phase.DEAD
        if self._lifetime is not None:
            return Phase.ALLOCATED
        if self._active is None:
            return Phase.PROBING if self._pending else Phase.SUSPENDED
        if any(p.template.method in (Method.ALLOCATE, Method.REFRESH) for p in self._pending.values()):
            return Phase.ALLOCATING
        return Phase.SUSPENDED

    def _transition(self) -> None:
        new = self._derive_phase()
        old = self._phase
        if new is old:
            return
        if not any(a is old and b is new for a, b, _ in TRANSITIONS):
            self.stats.incr("turn.unexpected_transition")
            log.warning("TURN %s: unexpected transition %s -> %s", self.server, old, new)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("TURN %s: %s -> %s", self.server, old, new)
        self._phase = new
        self.transitions.append((self._now, old, new))

    # --- sending ----------------------------------------------------------------------------------------

    def _tid(self) -> bytes:
        return self._entropy.random_bytes(12)

    def _send_binding_requests(self, now: Instant) -> None:
        for dst in self.server.addrs():
            self._queue(dst, self._binding(), now)

    def _binding(self) -> StunMessage:
        m = StunMessage(Method.BINDING, Class.REQUEST, self._tid())
        if self.software is not None:
            m.add_text(Attr.SOFTWARE, self.software)
        return m

    def _queue(
        self, dst: SocketAddr, template: StunMessage, now: Instant, pending: _Pending | None = None
    ) -> bool:
        """(Re)send ``template`` to ``dst``; authenticated requests get a fresh tid every time."""
        p = pending or _Pending(dst, template, now, now + RETRY_INITIAL, RETRY_INITIAL, RETRY_MAX_ELAPSED)
        if template.method == Method.BINDING:
            tid, payload = template.transaction_id, template.encode()
        elif p.plain:
            tid = self._tid()
            payload = template.with_transaction_id(tid).encode()
        else:
            signed = self.auth.sign(template, p, self._tid)
            if signed is None:
                return False
            tid, payload = signed
        self._pending[tid] = p
        p.sends += 1
        self._transmits.append(Transmit(None, dst, payload))
        self.stats.incr("turn.requests_sent")
        return True

    def _authenticated(
        self, template: StunMessage, now: Instant, max_elapsed: int = RETRY_MAX_ELAPSED
    ) -> None:
        if self._active is None:
            return
        p = _Pending(self._active, template, now, now + RETRY_INITIAL, RETRY_INITIAL, max_elapsed)
        self._queue(self._active, template, now, p)

    def _allocate(self, now: Instant, *, defer: bool = False) -> None:
        m = self._allocate_request()
        if defer and self._active is not None:
            # First sent by handle_timeout in 1 s (the key is only a slot: every send gets a fresh tid).
            at = Instant(now + RETRY_INITIAL)
            self._pending[self._tid()] = _Pending(self._active, m, now, at, RETRY_INITIAL, RETRY_MAX_ELAPSED)
            return
        self._authenticated(m, now)

    # --- inputs -----------------------------------------------------------------------------------------

    def handle_input(self, from_: SocketAddr, local: SocketAddr, msg: StunMessage, now: Instant) -> bool:
        """A STUN response from the relay; ``True`` if it belonged to this allocation."""
        self._now = advance(self._now, now)
        if not self.server.matches(from_):
            return False
        p = self._pending.get(msg.transaction_id)
        if p is None or msg.cls not in (Class.SUCCESS, Class.ERROR):
            return False
        if p.template.method != Method.BINDING and not self.auth.authentic(msg, p):
            self.stats.drop(DropReason.STUN_BAD_INTEGRITY)
            return True  # stays pending, as snownet: unauthenticated input must not change state
        del self._pending[msg.transaction_id]
        try:
            if msg.cls == Class.ERROR:
                self._on_error(msg, p, now)
            else:
                self._on_success(msg, p, local, now)
        except DecodeError:
            self.stats.drop(DropReason.TURN_MALFORMED)
        self._transition()
        return True

    def _on_error(self, msg: StunMessage, p: _Pending, now: Instant) -> None:
        err = msg.error_code()
        if err is None:
            return
        code = err[0]
        method = p.template.method
        self.stats.incr(f"turn.error_{code}")
        if p.stale:
            self._on_stale_error(msg, code, p, now)
            return
        if code == 401 and p.sent_nonce:
            log.warning("TURN %s: credentials refused", self.server)
            self.auth.refuse()
            self._invalidate()
            return
        if code in (401, 438):
            other = self.auth.other_realm(msg)
            if other is not None:
                log.warning("TURN %s: server realm %r is not ours", self.server, other)
            elif self.auth.take_challenge(msg):
                self._authenticated(p.template, now)
            return
        if code == 400 and not p.sent_nonce and not p.plain and method == Method.ALLOCATE and self._active:
            # A standard server (coturn) refuses a signed request without NONCE: ask for a challenge.
            self.auth.standard_server = True
            m = self._allocate_request()  # now with coturn's codepoint of ADDITIONAL-ADDRESS-FAMILY
            q = _Pending(self._active, m, now, now + RETRY_INITIAL, RETRY_INITIAL, RETRY_MAX_ELAPSED)
            q.plain = True
            self._queue(self._active, m, now, q)
            return
        if code == 440 and method == Method.ALLOCATE and self._dual():
            # The server cannot give two families (coturn with external-ip): its default family, once.
            log.info("TURN %s: dual allocation refused (440), asking for one family", self.server)
            self._single_family = True
            self._allocate(now)
            return
        if code == 437:
            self._invalidate()
            deleting = self._deleted_at is not None and now < self._deleted_at + DELETE_GRACE
            if method == Method.ALLOCATE and p.sends > 1 and self.auth.stale is None:
                # A retransmitted ALLOCATE: an earlier send may have made the allocation on the server and
                # its success was lost. Then it is ours, neither coturn still tearing our delete down nor
                # a mismatch to recover from (the budget): delete it with our credentials, allocate again
                # (snownet's reaction to every 437 to ALLOCATE).
                self._delete_existing(now)
            elif method == Method.ALLOCATE and deleting:
                self._allocate(now, defer=True)  # our delete is still being carried out (coturn)
            elif method == Method.ALLOCATE and self._mismatch_budget > 0:
                # Our 5-tuple already has an allocation (RFC 8656 §7.2): delete it, then allocate.
                self._mismatch_budget -= 1
                self._delete_existing(now)
            elif method == Method.ALLOCATE:
                log.warning("TURN %s: 5-tuple still allocated, cannot delete it", self.server)
            elif method in (Method.REFRESH, Method.CHANNEL_BIND):
                self._allocate(now)
                if method == Method.CHANNEL_BIND:
                    peer = p.template.address(Attr.XOR_PEER_ADDRESS)
                    if peer is not None:
                        self._buffered.append(peer)
            return
        if code == 420:
            self._explicit_failure = FreeReason.PROTOCOL_FAILURE
            self._invalidate()
            return
        if method == Method.REFRESH:
            # Not before a second from now: a refresh that keeps failing must not spin (snownet would).
            self._refresh_not_before = Instant(now + RETRY_INITIAL)
        if method == Method.ALLOCATE:
            self._buffered.clear()
        elif method == Method.CHANNEL_BIND:
            number = p.template.channel_number()
            if number is not None:
                self.channels.forget(number)
        log.warning("TURN %s: %s failed with %s %s", self.server, method, code, err[1])

    def _delete_existing(self, now: Instant) -> None:
        """REFRESH with LIFETIME 0, signed with the stale credentials if we have them (else ours)."""
        template = self._refresh_request(lifetime=0)
        if self.auth.stale is None or self._active is None:
            self._authenticated(template, now)
            return
        q = _Pending(self._active, template, now, now + RETRY_INITIAL, RETRY_INITIAL, RETRY_MAX_ELAPSED)
        q.stale = True
        self._queue(self._active, template, now, q)

    def _on_stale_error(self, msg: StunMessage, code: int, p: _Pending, now: Instant) -> None:
        if self.auth.take_stale_challenge(msg, code, p):
            self._delete_existing(now)
            return
        # 437: nothing left to delete; anything else: the stale credentials cannot delete it.
        log.info("TURN %s: delete with rotated credentials ended with %s", self.server, code)
        self._allocate(now)

    def _on_success(self, msg: StunMessage, p: _Pending, local: SocketAddr, now: Instant) -> None:
        method = p.template.method
        if method == Method.BINDING:
            v = local.ip.version
            self._update(self._host, v, cand.host(local) if cand.is_valid_local_address(local) else None)
            mapped = msg.address(Attr.XOR_MAPPED_ADDRESS)
            srflx = cand.server_reflexive(mapped, local) if mapped is not None else None
            self._update(self._srflx, p.dst.ip.version, srflx)
            if self._active is None:
                self._active = p.dst
                self._next_binding = Instant(now + BINDING_INTERVAL)
                if self.has_allocation():
                    self._authenticated(self._refresh_request(), now)
                else:
                    self._allocate(now)
        elif method == Method.ALLOCATE:
            lifetime = msg.u32(Attr.LIFETIME)
            if lifetime is None:
                return
            v4, v6 = tw.relayed_addresses(msg)
            if v4 is None and v6 is None:
                return
            self._lifetime = (now, secs(lifetime))
            self._mismatch_budget = MAX_MISMATCH_RECOVERIES
            self._deleted_at = None
            self._update(self._relayed, 4, cand.relayed(v4, local) if v4 else None)
            self._update(self._relayed, 6, cand.relayed(v6, local) if v6 else None)
            while self._buffered:
                self.bind_channel(self._buffered.popleft(), now)
        elif method == Method.REFRESH:
            lifetime = msg.u32(Attr.LIFETIME)
            if p.stale:
                self.auth.stale = None  # the allocation of the rotated-away credentials is gone
            if lifetime is None:
                return
            if lifetime == 0 or p.stale:
                self._deleted_at = now
                self._allocate(now)
            elif self.has_allocation():
                self._lifetime = (now, secs(lifetime))
        elif method == Method.CHANNEL_BIND:
            number = p.template.channel_number()
            if number is not None:
                self.channels.set_confirmed(number, now)
        elif method == Method.CREATE_PERMISSION:
            for peer in p.template.addresses(Attr.XOR_PEER_ADDRESS):
                self._permissions.installed(peer, now)

    def _update(self, slot: dict[int, cand.Candidate], v: int, new: cand.Candidate | None) -> None:
        old = slot.get(v)
        if new is None or old == new:
            return
        slot[v] = new
        self._events.append(CandidateEvent(True, new))
        if old is not None:
            self._events.append(CandidateEvent(False, old))

    def _invalidate(self) -> None:
        for v in sorted(self._relayed):
            self._events.append(CandidateEvent(False, self._relayed[v]))
        self._relayed.clear()
        self.channels.clear()
        self._lifetime = None
        self._pending.clear()
        self._permissions.clear()

    # --- data path --------------------------------------------------------------------------------------

    def bind_channel(self, peer: SocketAddr, now: Instant) -> None:
        """Bind a channel to ``peer`` unless one is connected or in flight (snownet's
        ``Allocation::bind_channel``)."""
        self._now = advance(self._now, now)
        if self._derive_phase() is Phase.SUSPENDED:
            return
        if self.channels.connected(peer, now) is not None or self._bind_in_flight(peer):
            return
        if peer in self._buffered:
            return
        if not self.has_allocation():
            self._buffered.append(peer)
            return
        if self.relayed_address(peer.ip.version) is None:
            return
        number = self.channels.new_channel(peer, now)
        if number is None:
            log.warning("TURN %s: all channels exhausted", self.server)
            return
        self._authenticated(tw.channel_bind(self._tid(), peer, number, software=self.software), now)

    def create_permission(self, peers: list[SocketAddr], now: Instant) -> None:
        """Install permissions for ``peers``' IPs (standard servers; refreshed every 4 min)."""
        self._now = advance(self._now, now)
        if self.has_allocation() and peers:
            self._authenticated(tw.create_permission(self._tid(), peers, software=self.software), now)

    def _bind_in_flight(self, peer: SocketAddr) -> bool:
        for p in self._pending.values():
            if p.template.method == Method.CHANNEL_BIND and p.template.address(Attr.XOR_PEER_ADDRESS) == peer:
                return True
        return False

    def _bind_in_flight_number(self, number: int) -> bool:
        return any(
            p.template.method == Method.CHANNEL_BIND and p.template.channel_number() == number
            for p in self._pending.values()
        )

    # --- time -------------------------------------------------------------------------------------------

    def refresh(self, now: Instant) -> None:
        """The portal re-announced this relay: re-probe if suspended, else one quick REFRESH."""
        self._now = advance(self._now, now)
        allocating = any(p.template.method == Method.ALLOCATE for p in self._pending.values())
        if not self.has_allocation() and allocating:
            return
        if self._derive_phase() in (Phase.SUSPENDED, Phase.DEAD) and self.auth.key is not None:
            self._active = None
            self._mismatch_budget = MAX_MISMATCH_RECOVERIES
            self._send_binding_requests(now)
        else:
            self._authenticated(self._refresh_request(), now, max_elapsed=PROBE_MAX_ELAPSED)
        self._transition()

    def handle_timeout(self, now: Instant) -> None:
        self._now = advance(self._now, now)
        if self._explicit_failure is not None:
            return
        if self._lifetime is not None and now >= self._lifetime[0] + self._lifetime[1]:
            self._invalidate()
        if (
            self.has_allocation()
            and self._active
            and self._next_binding is not None
            and now >= self._next_binding
        ):
            self._queue(self._active, self._binding(), now)
            self._next_binding = Instant(now + BINDING_INTERVAL)
        for tid in sorted(t for t, p in self._pending.items() if now >= p.next_at):
            p = self._pending.pop(tid, None)
            if p is None:
                continue
            expired = now >= p.start + p.max_elapsed
            p.interval = p.interval * RETRY_MULTIPLIER[0] // RETRY_MULTIPLIER[1]
            p.next_at = Instant(p.next_at + p.interval)
            sent = False if expired else self._queue(p.dst, p.template, now, p)
            if not sent and self._active is not None and self._active.ip.version == p.dst.ip.version:
                self._active = None
                self._invalidate()
        refresh_at = self._refresh_at()
        if refresh_at is not None and now >= refresh_at and not self._refresh_in_flight():
            self._authenticated(self._refresh_request(), now)
        for number, peer in self.channels.due_for_refresh(now):
            if not self._bind_in_flight_number(number):
                self._authenticated(tw.channel_bind(self._tid(), peer, number, software=self.software), now)
        for peer in self._permissions.due(now):
            self._authenticated(tw.create_permission(self._tid(), [peer], software=self.software), now)
        self._transition()

    def _refresh_at(self) -> Instant | None:
        if self._lifetime is None or self._explicit_failure is not None:
            return None
        return Instant(max(self._lifetime[0] + self._lifetime[1] // 2, self._refresh_not_before))

    def _refresh_in_flight(self) -> bool:
        return any(p.template.method == Method.REFRESH for p in self._pending.values())

    def poll_timeout(self) -> Deadline | None:
        cands: list[tuple[int, str]] = []
        refresh_at = self._refresh_at()
        if refresh_at is not None and not self._refresh_in_flight():
            cands.append((refresh_at, "turn refresh"))
        if self._lifetime is not None:
            cands.append((self._lifetime[0] + self._lifetime[1], "turn allocation expiry"))
        if self.has_allocation() and self._next_binding is not None:
            cands.append((self._next_binding, "turn keepalive"))
        cands.extend((p.next_at, "turn retransmit") for p in self._pending.values())
        ch = self.channels.refresh_deadline(self._bind_in_flight_number)
        if ch is not None:
            cands.append((ch.at, ch.reason))
        perm = self._permissions.deadline()
        if perm is not None:
            cands.append((perm.at, perm.reason))
        if not cands:
            return None
        when, reason = min(cands)
        return Deadline(Instant(max(when, self._now)), reason)

    def poll_transmit(self) -> Transmit | None:
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> CandidateEvent | None:
        return self._events.popleft() if self._events else None

    def _dead_reason(self) -> FreeReason | None:
        if self._pending or self._transmits or self._events:
            return None
        if self._active is None:
            return FreeReason.NO_RESPONSE
        if self.auth.key is None:
            return FreeReason.AUTHENTICATION_ERROR
        return None

    def can_be_freed(self) -> FreeReason | None:
        """Why this allocation is dead and should be dropped, or ``None`` (as snownet's
        ``can_be_freed``)."""
        return self._explicit_failure or self._dead_reason()


__all__ = [
    "CHANNEL_REFRESH_AFTER",
    "Allocation",
    "CandidateEvent",
    "FreeReason",
    "Phase",
    "RelaySocket",
    "StaleCredentials",
]
