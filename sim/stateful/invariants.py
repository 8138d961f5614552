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
from typing import NamedTuple

from devpeers.client_types import GoodbyeReceived, Received
from gateway_core.addr import IPAddress
from gateway_core.clock import Duration, millis, secs
from gateway_core.node.connection import PathKind
from gateway_core.wire.ip import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from sim.stateful.access import Access
from sim.stateful.program import Step
from sim.stateful.scene import InvariantError, Scene

CONNECT_BOUND: Duration = secs(15)
"""A connection must be up this long after the step that (re)created it ends: ICE over relays converges
in a few seconds of virtual time; 15 s also covers a TURN allocation retried once."""
_NAT_LOGGER = "gateway_core.policy.nat"
_PROTO_NAMES = {PROTO_ICMP: "icmp", PROTO_ICMPV6: "icmp", PROTO_UDP: "udp", PROTO_TCP: "tcp"}


class ErrorLog(logging.Handler):
    """Collects ERROR records of every component, and counts the NAT-expiry debug line.

    :meth:`install` hooks it to the root logger (at INFO at least) and the NAT logger (at DEBUG);
    :meth:`uninstall` puts the levels back."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []
        self.nat_expired = 0
        self._root_level = logging.NOTSET
        self._nat_level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
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
    """How many records each client, the two resources and the upstream DNS server had."""

    clients: list[int]
    web: int
    app: int
    upstream: int


class Invariants:
    """See the module docstring; :attr:`count` is how many times :meth:`after_step` ran."""

    def __init__(self, scene: Scene, access: Access, log: ErrorLog) -> None:
        self.s = scene
        self.access = access
        self.log = log
        self.count = 0
        self._goodbyes_expected = [0] * scene.spec.clients
        self._peer = [False] * scene.spec.clients

    # --- around one probe ---------------------------------------------------------------------------------

    def mark(self) -> Mark:
        gw = self.s.gw
        return Mark(
            [len(c.received) for c in gw.clients],
            len(gw.web.received),
            len(gw.app.received),
            len(gw.upstream.queries),
        )

    def since(self, mark: Mark) -> list[list[Received]]:
        """What each client received since ``mark``."""
        return [c.received[m:] for c, m in zip(self.s.gw.clients, mark.clients, strict=True)]

    def nothing_for_others(self, c: int, got: list[list[Received]]) -> None:
        """No client but ``c`` received anything besides goodbyes."""
        for i, recs in enumerate(got):
            if i == c:
                continue
            other = [r for r in recs if not isinstance(r, GoodbyeReceived)]
            if other:
                raise InvariantError(f"client-{i} received packets nobody asked for: {other}")

    def arrivals(self, mark: Mark, expected: dict[str, int]) -> None:
        """Exactly ``expected[name]`` packets (0 when absent) reached each resource since ``mark``."""
        gw = self.s.gw
        for name, server, start in (("web", gw.web, mark.web), ("app", gw.app, mark.app)):
            new = server.received[start:]
            want = expected.get(name, 0)
            if len(new) != want:
                raise InvariantError(f"{len(new)} packets reached {name}, the model expects {want}: {new}")

    def upstream(self, mark: Mark, expected: list[tuple[str, str]]) -> None:
        """The upstream DNS server was asked exactly ``expected`` since ``mark``."""
        got = [(q.name, q.rtype) for q in self.s.gw.upstream.queries[mark.upstream :]]
        if got != expected:
            raise InvariantError(f"the upstream DNS server was asked {got}, the model expects {expected}")

    # --- after every step ---------------------------------------------------------------------------------

    def after_step(self, step: Step) -> None:
        """Security over all arrivals, connections, goodbyes, key events, no ERROR."""
        s = self.s
        self.count += 1
        now = s.world.now
        tunnel: dict[IPAddress, int] = {}
        for i, cl in enumerate(s.gw.clients):
            tunnel[cl.tunnel_v4] = i
            tunnel[cl.tunnel_v6] = i
        for name, server in (("web", s.gw.web), ("app", s.gw.app)):
            for a in server.received:
                who = tunnel.get(a.src)
                proto = _PROTO_NAMES.get(a.proto, "other")
                port = a.dport if proto in ("udp", "tcp") else 0
                if who is None or not s.model.may_reach(who, name, proto, port, a.at):
                    raise InvariantError(f"SECURITY: {a} reached {name} outside a live authorisation/filter")
        gid = s.gw.gateway_id()
        for c in range(s.spec.clients):
            peer = s.model.has_peer(c, now)
            if self._peer[c] and not peer:  # the gateway removed the client: one goodbye
                self._goodbyes_expected[c] += 1
            self._peer[c] = peer
            if peer and not self.access.connected(c, gid):
                end = now + CONNECT_BOUND
                self.access.reconnect_all(only=c)
                while not self.access.connected(c, gid) and s.world.now < end:
                    s.world.run_for(millis(50))
                if not self.access.connected(c, gid):
                    raise InvariantError(f"client-{c} not connected {CONNECT_BOUND // 10**9} s after {step}")
            bye = sum(isinstance(r, GoodbyeReceived) for r in s.client(c).received)
            if bye != self._goodbyes_expected[c]:
                raise InvariantError(
                    f"client-{c} received {bye} goodbyes, the model expects {self._goodbyes_expected[c]}"
                )
        if self.log.errors:
            raise InvariantError(f"ERROR logged: {self.log.errors}")
        self._key_events()

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
