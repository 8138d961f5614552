"""The invariants the stateful harness checks: per probe (what reached whom since a mark) and after every
step (security over every arrival, connections, goodbyes, no ERROR log), plus the key-event counters.

Theory of operation: a probe takes a :class:`Mark` (how many records every client, resource and the
upstream DNS server had) before it acts; afterwards everything past the mark is what the probe caused,
and :class:`Invariants` compares it with the model's prediction exactly. :meth:`Invariants.after_step`
looks at everything that ever reached a resource (an arrival outside a live authorisation or its filters
is a security failure, whenever it happened), waits up to :data:`CONNECT_BOUND` for every client that
should have a connection (asking for it again as Firezone's client would), counts the goodbyes each
client must have received, and fails on any ERROR log record (:class:`ErrorLog`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from devpeers.client_types import DomainStatusReceived, GoodbyeReceived, Received
from gateway_core.addr import IPAddress
from gateway_core.clock import Duration, millis, secs
from gateway_core.node.connection import PathKind
from gateway_core.wire.ip import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from sim.hosts.resources import Arrival, ResourceServer
from sim.stateful.access import Access
from sim.stateful.program import Step
from sim.stateful.scene import InvariantError, Scene

CONNECT_BOUND: Duration = secs(15)
"""A connection must be up this long after the step that (re)created it ends: ICE over relays converges
in a few seconds of virtual time; 15 s also covers a TURN allocation retried once."""
DISTURBED_CONNECT_BOUND: Duration = secs(40)
"""After a step that cut the client's path (roam, partition, lost relay, restart), and on lossy links
(ICE checks and WireGuard handshakes lost and retried 5 s later): the gateway keeps the
highest-priority pair the client ever nominated until its checks fail (15.25 s, str0m's timing in
snownet), and a WireGuard handshake sent meanwhile is given up after 15 s and started again; 40 s covers
both in turn (Firezone's behaviour: the gateway cannot know a roamed client's old relay candidate died)."""
_NAT_LOGGER = "gateway_core.policy.nat"
_POLICY_LOGGERS = "gateway_core.policy"
"""The policy warns only of what these worlds never send (a filter range with start > end, a proxy IP
outside the proxy ranges, a tunnel address moving between clients, an authorisation before ``init``):
a WARNING from it fails the step like an ERROR from anywhere."""
_PROTO_NAMES = {PROTO_ICMP: "icmp", PROTO_ICMPV6: "icmp", PROTO_UDP: "udp", PROTO_TCP: "tcp"}


class ErrorLog(logging.Handler):
    """Collects ERROR records of every component and WARNING records of the policy, and counts the
    NAT-expiry debug line.

    :meth:`install` hooks it to the root logger (at INFO at least) and the NAT logger (at DEBUG);
    :meth:`uninstall` puts the levels back."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []
        self.nat_expired = 0
        self._root_level = logging.NOTSET
        self._nat_level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or (
            record.levelno >= logging.WARNING and record.name.startswith(_POLICY_LOGGERS)
        ):
            self.errors.append(f"{record.name}: {record.getMessage()}")
        elif record.msg == "NAT session expired: %r":
            self.nat_expired += 1

    def install(self) -> None:
        root = logging.getLogger()
        root.addHandler(self)
        self._root_level = root.level
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        nat = logging.getLogger(_NAT_LOGGER)
        self._nat_level = nat.level
        nat.setLevel(logging.DEBUG)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)
        logging.getLogger().setLevel(self._root_level)
        logging.getLogger(_NAT_LOGGER).setLevel(self._nat_level)


class Mark(NamedTuple):
    """How many records each client, each host behind the gateway and the upstream DNS server had."""

    clients: list[int]
    hosts: dict[str, int]
    upstream: int


class Invariants:
    """See the module docstring; :attr:`count` is how many times :meth:`after_step` ran."""

    def __init__(self, scene: Scene, access: Access, log: ErrorLog) -> None:
        self.s = scene
        self.access = access
        self.log = log
        self.count = 0
        self._goodbyes_expected = [0] * scene.spec.clients
        self._goodbyes_optional = [0] * scene.spec.clients
        self._peer = [False] * scene.spec.clients
        self._checked: dict[str, int] = {}
        self._policy_counts: tuple[object, dict[str, int]] | None = None
        """The gateway the policy's counters were last read from, and what they were."""
        """How many arrivals of each host the security check has judged already."""

    def restarted(self, c: int) -> None:
        """Client ``c``'s process restarted: its records start over (a goodbye to the old process, if it
        ever comes, is lost with it)."""
        self._goodbyes_expected[c] = 0
        self._goodbyes_optional[c] = 0

    # --- around one probe ---------------------------------------------------------------------------------

    def servers(self) -> dict[str, ResourceServer]:
        gw = self.s.gw
        out = {"web": gw.web, "app": gw.app, "inet": gw.inet}
        if gw.webdns is not None:
            out["webdns"] = gw.webdns
        return out

    def mark(self) -> Mark:
        gw = self.s.gw
        return Mark(
            [len(c.received) for c in gw.clients],
            {name: len(srv.received) for name, srv in self.servers().items()},
            len(gw.upstream.queries),
        )

    def since(self, mark: Mark) -> list[list[Received]]:
        """What each client received since ``mark``."""
        return [c.received[m:] for c, m in zip(self.s.gw.clients, mark.clients, strict=True)]

    def arrivals_since(self, mark: Mark) -> dict[str, list[Arrival]]:
        """What reached each host behind the gateway since ``mark``."""
        return {name: srv.received[mark.hosts.get(name, 0) :] for name, srv in self.servers().items()}

    def nothing_for_others(self, c: int, got: list[list[Received]]) -> None:
        """No client but ``c`` received anything besides goodbyes and domain statuses."""
        for i, recs in enumerate(got):
            if i == c:
                continue
            other = [r for r in recs if not isinstance(r, GoodbyeReceived | DomainStatusReceived)]
            if other:
                raise InvariantError(f"client-{i} received packets nobody asked for: {other}")

    def arrivals(self, mark: Mark, expected: dict[str, int]) -> None:
        """Exactly ``expected[name]`` packets (0 when absent) reached each host since ``mark``."""
        for name, new in self.arrivals_since(mark).items():
            want = expected.get(name, 0)
            if len(new) != want:
                raise InvariantError(f"{len(new)} packets reached {name}, the model expects {want}: {new}")

    def upstream(self, mark: Mark, expected: list[tuple[str, str]]) -> None:
        """The upstream DNS server was asked exactly ``expected`` (in any order) since ``mark``; on lossy
        links a query may have been lost on its way."""
        got = sorted((q.name, q.rtype) for q in self.s.gw.upstream.queries[mark.upstream :])
        want = sorted(expected)
        if got == want or (self.s.model.lossy and all(got.count(q) <= want.count(q) for q in got)):
            return
        raise InvariantError(f"the upstream DNS server was asked {got}, the model expects {want}")

    # --- after every step ---------------------------------------------------------------------------------

    def after_step(self, step: Step) -> None:
        """Security over all arrivals, connections, goodbyes, key events, no ERROR."""
        s = self.s
        self.count += 1
        now = s.world.now
        self.security()
        if s.spec.relay_only:  # the harness's own promise: no step opened the direct path
            for h in s.gw.client_hosts:
                if not s.world.network.is_partitioned(h.name, "gateway"):
                    raise InvariantError(
                        f"relay-only world: {h.name} reaches the gateway directly after {step}"
                    )
        gid = s.gw.gateway_id()
        for c in range(s.spec.clients):
            peer = s.model.has_peer(c, now)
            if self._peer[c] and not peer:  # the gateway removed the client: one goodbye
                if c in s.disturbed or s.model.lossy:
                    # Sent while the client's path was cut: a goodbye is one best-effort packet (as in
                    # Firezone), so it may be lost; the client then learns from its own timers.
                    self._goodbyes_optional[c] += 1
                else:
                    self._goodbyes_expected[c] += 1
            for _ in range(s.lost_peer.count(c)):
                if c in s.disturbed or s.model.lossy:
                    self._goodbyes_optional[c] += 1
                else:
                    self._goodbyes_expected[c] += 1
            self._peer[c] = peer
            if peer and not self.access.connected(c, gid):
                slow = c in s.disturbed or s.model.lossy  # lost handshakes are retried after 5 s each
                bound = DISTURBED_CONNECT_BOUND if slow else CONNECT_BOUND
                end = now + bound
                self.access.reconnect_all(only=c)
                while not self.access.connected(c, gid) and s.world.now < end:
                    s.world.run_for(millis(50))
                    if gid not in s.client(c).node.connections:
                        # The client's connection failed: like Firezone's client, it asks again.
                        self.access.reconnect_all(only=c)
                if not self.access.connected(c, gid):
                    raise InvariantError(f"client-{c} not connected {bound // 10**9} s after {step}")
            if s.client(c).stats.snapshot().get("control.not_canonical"):
                raise InvariantError(f"client-{c} got a control packet Firezone's gateway would not write")
            bye = sum(isinstance(r, GoodbyeReceived) for r in s.client(c).received)
            low = self._goodbyes_expected[c]
            high = low + self._goodbyes_optional[c]
            if not low <= bye <= high:
                want = f"{low}" if low == high else f"{low} to {high}"
                raise InvariantError(f"client-{c} received {bye} goodbyes, the model expects {want}")
        self.counters_never_go_down()
        if self.log.errors:
            raise InvariantError(f"ERROR logged: {self.log.errors}")
        self._key_events()

    def counters_never_go_down(self) -> None:
        """The policy's counters (drops and NAT events of every client, those of clients since removed or
        replaced included) never go down while the gateway runs (a restart starts them at zero). Checked
        after every step, and by a step that reads them in between."""
        gw = self.s.gw.gateway
        now = gw.peers.policy_stats().snapshot()
        if self._policy_counts is not None and self._policy_counts[0] is gw:
            before = self._policy_counts[1]
            down = {k: (v, now.get(k, 0)) for k, v in before.items() if now.get(k, 0) < v}
            if down:
                raise InvariantError(f"policy counters went down (before, after): {down}")
        self._policy_counts = (gw, now)

    def security(self, may_reach: Callable[[int, IPAddress, str, int, int], bool] | None = None) -> None:
        """Every packet that reached a host behind the gateway came from a client holding, when it passed
        the gateway, an authorisation in force that covered it (:meth:`ReferenceModel.may_reach`, or
        ``may_reach`` for a step that grants what the model does not know of, judging the arrivals so far)."""
        s = self.s
        judge = s.model.may_reach if may_reach is None else may_reach
        tunnel: dict[IPAddress, int] = {}
        for i, cl in enumerate(s.gw.clients):
            tunnel[cl.tunnel_v4] = i
            tunnel[cl.tunnel_v6] = i
        for name, server in self.servers().items():
            start = self._checked.get(name, 0)
            for a in server.received[start:]:
                who = tunnel.get(a.src)
                proto = _PROTO_NAMES.get(a.proto, "other")
                port = a.dport if proto in ("udp", "tcp") else 0
                if who is None or not judge(who, a.dst, proto, port, a.at):
                    raise InvariantError(f"SECURITY: {a} reached {name} outside a live authorisation/filter")
            self._checked[name] = len(server.received)

    def _key_events(self) -> None:
        coverage = self.s.coverage
        for conn in self.s.gw.gateway.node.connections.values():
            ps = conn.peer_socket
            if ps is not None and ps.kind is not PathKind.PEER_TO_PEER:
                coverage["event:relay_fallback"] += 1
            if conn.tunnel.stats.snapshot().get("handshakes_as_responder", 0) >= 2:
                coverage["event:rekey"] += 1
        if self.log.nat_expired:
            coverage["event:nat_expiry"] += self.log.nat_expired
            self.log.nat_expired = 0
