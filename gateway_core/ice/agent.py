"""ICE agent for the gateway's controlled role, matching str0m (``algesten/str0m@44ab8e3``,
``src/ice/agent.rs``) as Firezone's snownet uses it.

Theory of operation
-------------------
Credentials come from the portal at creation; candidates trickle in (:meth:`IceAgent.add_local_candidate`,
:meth:`IceAgent.add_remote_candidate`) and are withdrawn explicitly (:meth:`IceAgent.invalidate_candidate`).
Every (local, remote) couple of the same IP family forms a :class:`~gateway_core.ice.pair.Pair`; of
two pairs with the same local base and remote address only the higher-priority one is kept, at most 100.

Checks run forever on every pair on the schedule of :mod:`gateway_core.ice.pair` (they double as consent
and keepalive); a pair whose last ``max_retransmits`` checks all went unanswered is removed (after a
timing change not before one last-resend window of the new timing: decision 0169). Requests from
the peer are answered (XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY with our password, FINGERPRINT); a request
from an unknown address creates a remote peer-reflexive candidate, a request on an unknown couple creates
a pair (a triggered check, since a new pair is checked at once). USE-CANDIDATE from the controlling peer
nominates the pair and triggers our own check on it. After every input the agent announces, as
:class:`NominatedSend`, the highest-priority nominated pair when its priority differs from the last one
announced. A success response whose XOR-MAPPED-ADDRESS is no local candidate's address adds a local
peer-reflexive candidate (never signalled).

The agent state (:class:`IceState`) follows str0m's rules (``set_connection_state``); every change is checked
against :data:`STATE_TRANSITIONS` and reported as :class:`IceStateChanged`. Outputs are ``Transmit`` s
whose ``src`` is the local candidate's base (a relayed address means "send through the relay").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Transmit
from gateway_core.contract import Deadline, advance
from gateway_core.entropy import Entropy
from gateway_core.errors import UsageError
from gateway_core.ice import candidate as cand
from gateway_core.ice.pair import DEFAULT_TIMING, MAX_PAIRS, Pair, StunTiming, pair_priority, resend_delay
from gateway_core.stats import Stats
from gateway_core.wire.stun import Attr, Class, Method, StunMessage

log = logging.getLogger(__name__)


class IceState(StrEnum):
    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    COMPLETED = "completed"
    DISCONNECTED = "disconnected"


_S = IceState
STATE_TRANSITIONS: frozenset[tuple[IceState, IceState]] = frozenset(
    {
        (_S.NEW, _S.CHECKING),
        (_S.CHECKING, _S.CONNECTED),
        (_S.CHECKING, _S.COMPLETED),
        (_S.CHECKING, _S.DISCONNECTED),
        (_S.DISCONNECTED, _S.CONNECTED),
        (_S.DISCONNECTED, _S.COMPLETED),
        (_S.DISCONNECTED, _S.CHECKING),
        (_S.CONNECTED, _S.COMPLETED),
        (_S.CONNECTED, _S.CHECKING),
        (_S.CONNECTED, _S.DISCONNECTED),
        (_S.COMPLETED, _S.CONNECTED),
        (_S.COMPLETED, _S.CHECKING),
        (_S.COMPLETED, _S.DISCONNECTED),
    }
)
"""str0m ``agent.rs:1715-1780``; rendered in ``docs/design/ice-agent.md``."""


def transition_diagram() -> str:
    """Mermaid state diagram of :data:`STATE_TRANSITIONS` (``docs/design/ice-agent.md`` embeds it)."""
    order = list(IceState)
    lines = ["stateDiagram-v2", "    [*] --> new"]
    for a, b in sorted(STATE_TRANSITIONS, key=lambda t: (order.index(t[0]), order.index(t[1]))):
        lines.append(f"    {a.value} --> {b.value}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class IceStateChanged:
    state: IceState


@dataclass(frozen=True, slots=True)
class NominatedSend:
    """Send on this path from now on: from our ``source`` (a base) to the peer's ``destination``."""

    source: SocketAddr
    destination: SocketAddr


IceEvent = IceStateChanged | NominatedSend


@dataclass(slots=True)
class _Entry:
    c: cand.Candidate
    discarded: bool = False


class IceAgent:
    """One ICE agent (one connection); see the module docstring."""

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str,
        remote_pwd: str,
        entropy: Entropy,
        *,
        controlling: bool = False,
        timing: StunTiming = DEFAULT_TIMING,
        stats: Stats | None = None,
        tid_prefix: bytes = b"",
    ) -> None:
        """``tid_prefix`` (at most 12 bytes) replaces the start of every transaction id this agent sends,
        after the same 12 random bytes are drawn: the node puts its connection index there, so it finds
        the agent of a response without asking every agent."""
        if len(tid_prefix) > 12:
            raise UsageError("a transaction id is 12 bytes")
        self._tid_prefix = tid_prefix
        self.local_ufrag, self.local_pwd = local_ufrag, local_pwd
        self.remote_ufrag, self.remote_pwd = remote_ufrag, remote_pwd
        self._lkey, self._rkey = local_pwd.encode(), remote_pwd.encode()
        self.controlling = controlling
        self.timing = timing
        self.stats = stats if stats is not None else Stats()
        self._entropy = entropy
        self.tie_breaker = int.from_bytes(entropy.random_bytes(8), "big")
        self.local: list[_Entry] = []
        self.remote: list[_Entry] = []
        self.pairs: list[Pair] = []
        self.state = IceState.NEW
        self._announced: tuple[int, int] | None = None
        self._transmits: list[Transmit] = []  # (lists: an empty deque costs 760 bytes, a list 56)
        self._events: list[IceEvent] = []
        self._now = Instant(0)

    # --- candidates -------------------------------------------------------------------------------------

    def local_candidates(self) -> list[cand.Candidate]:
        return [e.c for e in self.local if not e.discarded]

    def remote_candidates(self) -> list[cand.Candidate]:
        return [e.c for e in self.remote if not e.discarded]

    def add_local_candidate(self, c: cand.Candidate) -> cand.Candidate | None:
        """Adopt a host or relayed candidate; returns the form to signal, ``None`` if redundant."""
        for e in self.local:
            if e.c.addr == c.addr and e.c.base == c.base and e.c.kind is c.kind:
                if not e.discarded:
                    return None
                e.discarded = False
                self._pair_local(self.local.index(e))
                return e.c
        same = sum(1 for e in self.local if e.c.kind is c.kind and e.c.addr.ip.version == c.addr.ip.version)
        pref = cand.local_preference(c.kind, c.addr, same, c.local_if)
        adopted = c.with_local_preference(pref, self.local_ufrag)
        self.local.append(_Entry(adopted))
        self._pair_local(len(self.local) - 1)
        return adopted

    def add_remote_candidate(self, c: cand.Candidate) -> bool:
        if c.ufrag is not None and c.ufrag != self.remote_ufrag:
            return False
        for i, e in enumerate(self.remote):
            if e.c.key() == c.key() and not e.discarded:
                return False
            if e.c.foundation == "tmp_prflx" and e.c.addr == c.addr and not e.discarded:
                self.remote[i] = _Entry(c)
                for p in self.pairs:
                    if p.remote == i:
                        p.priority = self._pair_prio(p.local, i)
                return True
        self.remote.append(_Entry(c))
        ri = len(self.remote) - 1
        for li, le in enumerate(self.local):
            if not le.discarded and le.c.addr.ip.version == c.addr.ip.version:
                self._add_pair(li, ri)
        return True

    def _pair_local(self, li: int) -> None:
        v = self.local[li].c.addr.ip.version
        for ri, re in enumerate(self.remote):
            if not re.discarded and re.c.addr.ip.version == v:
                self._add_pair(li, ri)

    def invalidate_candidate(self, c: cand.Candidate) -> bool:
        """Discard a local (looked up first) or remote candidate and all its pairs.

        A remote peer-reflexive candidate at the same address is the same transport address learned from
        a check (e.g. the peer's relayed address, when its candidate was never signalled to this agent):
        it goes too."""
        for lst, is_local in ((self.local, True), (self.remote, False)):
            for i, e in enumerate(lst):
                same = e.c.key() == c.key() or (
                    not is_local and e.c.foundation == "tmp_prflx" and e.c.addr == c.addr
                )
                if not e.discarded and same:
                    e.discarded = True
                    self.pairs = [p for p in self.pairs if (p.local if is_local else p.remote) != i]
                    return True
        return False

    def _pair_prio(self, li: int, ri: int) -> int:
        lp, rp = self.local[li].c.priority, self.remote[ri].c.priority
        return pair_priority(lp, rp) if self.controlling else pair_priority(rp, lp)

    def _add_pair(self, li: int, ri: int) -> Pair:
        for p in self.pairs:
            if p.local == li and p.remote == ri:
                return p
        new = Pair(li, ri, self._pair_prio(li, ri), next_at=self._now)
        base, raddr = self.local[li].c.base, self.remote[ri].c.addr
        for i, p in enumerate(self.pairs):
            if self.local[p.local].c.base == base and self.remote[p.remote].c.addr == raddr:
                if p.priority >= new.priority:
                    return p
                new.nominated = p.nominated
                new.nomination_check_sent = False
                self.pairs[i] = new
                return new
        self.pairs.append(new)
        if len(self.pairs) > MAX_PAIRS:
            self.pairs.sort(key=lambda p: -p.priority)
            del self.pairs[MAX_PAIRS:]
        return new

    # --- STUN -------------------------------------------------------------------------------------------

    def accepts(self, msg: StunMessage) -> bool:
        """Whether this agent owns ``msg`` (str0m ``accepts_message``)."""
        if msg.method != Method.BINDING:
            return False
        if msg.cls == Class.REQUEST:
            user = msg.text(Attr.USERNAME)
            if user is None:
                return False
            left, sep, right = user.partition(":")
            if not sep or left != self.local_ufrag or right != self.remote_ufrag:
                return False
            return msg.verify_integrity(self._lkey)
        if msg.cls in (Class.SUCCESS, Class.ERROR):
            tid = msg.transaction_id
            return any(p.has_tid(tid) for p in self.pairs) and msg.verify_integrity(self._rkey)
        return False  # indications: never (str0m panics on one without a proper USERNAME)

    def handle_stun(
        self, now: Instant, source: SocketAddr, destination: SocketAddr, msg: StunMessage
    ) -> None:
        """An accepted message from ``source`` to our ``destination`` (relayed: our relayed address)."""
        self._now = advance(self._now, now)
        if msg.cls == Class.REQUEST:
            self._on_request(now, source, destination, msg)
        elif msg.cls == Class.SUCCESS:
            self._on_success(now, msg)
        self._update(now)

    def _on_request(
        self, now: Instant, source: SocketAddr, destination: SocketAddr, msg: StunMessage
    ) -> None:
        use_candidate = msg.has(Attr.USE_CANDIDATE)
        if use_candidate and self.controlling:
            return
        prio = msg.u32(Attr.PRIORITY)
        if prio is None:
            self.stats.incr("ice.request_without_priority")
            return
        ri = self._find_remote(source)
        if ri is None:
            if any(e.discarded and e.c.addr == source for e in self.remote):
                return
            self.remote.append(_Entry(cand.peer_reflexive(source, source, prio)))
            ri = len(self.remote) - 1
            for i, le in enumerate(self.local):
                if not le.discarded and le.c.addr.ip.version == source.ip.version:
                    self._add_pair(i, ri)
        li = next(
            (
                i
                for i, e in enumerate(self.local)
                if e.c.kind in (cand.Kind.HOST, cand.Kind.RELAY) and e.c.addr == destination
            ),
            None,
        )
        if li is None:
            self.stats.incr("ice.request_to_unknown_local")
            return
        pair = next((p for p in self.pairs if p.local == li and p.remote == ri), None)
        if pair is None:
            if self.local[li].discarded:
                return
            pair = self._add_pair(li, ri)
        if not self.controlling and use_candidate and not pair.nominated:
            pair.nominated, pair.nominated_at = True, now
            pair.nomination_check_sent = False
            pair.recompute(now, self.timing)
        resp = StunMessage(Method.BINDING, Class.SUCCESS, msg.transaction_id)
        resp.add_xor_address(Attr.XOR_MAPPED_ADDRESS, source)
        payload = resp.encode(self._lkey, fingerprint=True)
        self._transmits.append(Transmit(self.local[li].c.base, source, payload))

    def _find_remote(self, addr: SocketAddr) -> int | None:
        best: int | None = None
        for i, e in enumerate(self.remote):
            if (
                not e.discarded
                and e.c.addr == addr
                and (best is None or e.c.priority > self.remote[best].c.priority)
            ):
                best = i
        return best

    def _on_success(self, now: Instant, msg: StunMessage) -> None:
        tid = msg.transaction_id
        pair = next((p for p in self.pairs if p.has_tid(tid)), None)
        if pair is None:
            return
        pair.record_answer(tid, now, self.timing)
        mapped = msg.address(Attr.XOR_MAPPED_ADDRESS)
        if mapped is None or any(e.c.addr == mapped for e in self.local):
            return
        sender = self.local[pair.local].c
        local_pref = (sender.priority >> 8) & 0xFFFF
        prio = cand.compute_priority(cand.Kind.PRFLX, local_pref)
        prflx = cand.Candidate(
            cand.Kind.PRFLX,
            mapped,
            sender.base,
            prio,
            cand.foundation_for(cand.Kind.PRFLX, sender.base, None, prio),
        )
        self.local.append(_Entry(prflx))

    # --- time -------------------------------------------------------------------------------------------

    def set_timing(self, timing: StunTiming, now: Instant) -> None:
        """Switch the check schedule (snownet: idle <-> default timings). str0m applies the new timing's
        failure rule to the attempts made under the old one, so a connection that went idle during an
        outage (a full tail of unanswered checks, kept alive by the idle timing's 25 s) lost its pair the
        moment traffic came back, before a single check could show that the path had healed. Here a pair
        still possible under the old timing keeps one last-resend window of the new one (decision 0169);
        its overdue check leaves at once, so a healed path answers in time and a dead one fails 1.5 s
        later than in str0m."""
        now = max(now, self._now)
        old = self.timing
        self.timing = timing
        grace = Instant(now + resend_delay(timing, timing.max_retransmits))
        for p in self.pairs:
            before = p.fail_at(old)
            p.recompute(now, timing)
            after = p.fail_at(timing)
            if after is not None and after < grace and (before is None or before > now):
                p.fail_floor = grace

    def handle_timeout(self, now: Instant) -> None:
        self._now = advance(self._now, now)
        if self.state is IceState.NEW:
            self._set_state(IceState.CHECKING)
        before = len(self.pairs)
        self.pairs = [p for p in self.pairs if (f := p.fail_at(self.timing)) is None or now < f]
        if len(self.pairs) != before:
            self.stats.incr("ice.pairs_failed", before - len(self.pairs))
        for p in sorted((p for p in self.pairs if p.next_at <= now), key=lambda p: (p.next_at, -p.priority)):
            self._send_check(p, now)
        self._update(now)
        # A nomination made just now by _update (controlling role, e.g. after the nominated pair failed)
        # is due at once: send its check in this call, or the served deadline would still be due (R5).
        for p in sorted((p for p in self.pairs if p.next_at <= now), key=lambda p: (p.next_at, -p.priority)):
            self._send_check(p, now)

    def _send_check(self, p: Pair, now: Instant) -> None:
        local, remote = self.local[p.local].c, self.remote[p.remote].c
        tid = self._entropy.random_bytes(12)
        if self._tid_prefix:
            tid = self._tid_prefix + tid[len(self._tid_prefix) :]
        m = StunMessage(Method.BINDING, Class.REQUEST, tid)
        m.add_text(Attr.USERNAME, f"{self.remote_ufrag}:{self.local_ufrag}")
        m.add_u64(Attr.ICE_CONTROLLING if self.controlling else Attr.ICE_CONTROLLED, self.tie_breaker)
        m.add_u32(Attr.PRIORITY, cand.compute_priority(cand.Kind.PRFLX, (local.priority >> 8) & 0xFFFF))
        if self.controlling and p.nominated:
            m.add(Attr.USE_CANDIDATE, b"")
        self._transmits.append(Transmit(local.base, remote.addr, m.encode(self._rkey, fingerprint=True)))
        p.record_attempt(tid, now, self.timing)
        self.stats.incr("ice.checks_sent")

    def _update(self, now: Instant) -> None:
        if self.controlling:
            # Used by the simulated client and tests: nominate the best succeeded pair (continuously).
            succeeded = [p for p in self.pairs if p.succeeded]
            if succeeded:
                top = max(succeeded, key=lambda p: p.priority)
                if not top.nominated:
                    top.nominated, top.nomination_check_sent, top.nominated_at = True, False, now
                    top.recompute(now, self.timing)
        nominated = [p for p in self.pairs if p.nominated]
        if nominated:
            # Equal priorities happen (a client that roamed nominates host->host again): the latest
            # nomination is the peer's current choice. Announce by pair, not by priority.
            best = max(nominated, key=lambda p: (p.priority, p.nominated_at))
            if (best.local, best.remote) != self._announced:
                self._announced = (best.local, best.remote)
                src, dst = self.local[best.local].c.base, self.remote[best.remote].c.addr
                self._events.append(NominatedSend(src, dst))
        else:
            self._announced = None
        if self.state is IceState.NEW:
            return
        any_nom = bool(nominated)
        possible = (
            any(not p.nominated for p in self.pairs)
            or not self.local_candidates()
            or not self.remote_candidates()
        )
        s = self.state
        if s in (IceState.CHECKING, IceState.DISCONNECTED):
            if any_nom:
                new = IceState.CONNECTED if possible else IceState.COMPLETED
            else:
                new = IceState.CHECKING if possible else IceState.DISCONNECTED
        elif s is IceState.CONNECTED:
            if any_nom:
                new = s if possible else IceState.COMPLETED
            else:
                new = IceState.CHECKING if possible else IceState.DISCONNECTED
        else:
            if any_nom:
                new = IceState.CONNECTED if possible else s
            else:
                new = IceState.CHECKING if possible else IceState.DISCONNECTED
        self._set_state(new)

    def _set_state(self, new: IceState) -> None:
        if new is self.state:
            return
        if (self.state, new) not in STATE_TRANSITIONS:
            self.stats.incr("ice.unexpected_transition")
        self.state = new
        self._events.append(IceStateChanged(new))

    def poll_timeout(self) -> Deadline | None:
        # The earliest of every pair's next check and failure time (and now while NEW), never before now;
        # one pass without building lists: the node polls every connection's agent after every step.
        timing = self.timing
        best: int | None = None
        for p in self.pairs:
            t = p.next_at
            if best is None or t < best:
                best = t
            f = p.fail_at(timing)
            if f is not None and f < best:
                best = f
        if self.state is IceState.NEW and (best is None or self._now < best):
            best = self._now
        return None if best is None else Deadline(Instant(max(best, self._now)), "ice")

    def poll_transmit(self) -> Transmit | None:
        return self._transmits.pop(0) if self._transmits else None

    def poll_event(self) -> IceEvent | None:
        return self._events.pop(0) if self._events else None
