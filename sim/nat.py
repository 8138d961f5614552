"""A NAT in front of one simulated host: mappings that are made by outbound UDP and time out.

Theory of operation
-------------------
A :class:`Nat` stands between one *inside* host (with a private IPv4 address nobody else can reach) and
everything else, with one public IPv4 address. The world (:meth:`sim.world.World.add_nat`) asks it about
every UDP datagram crossing it:

- **outbound** (:meth:`Nat.outbound`): the inside host sends from ``private:port`` to ``dst``. The NAT
  finds or makes a *mapping* and rewrites the source to ``public:mapped``. An endpoint-independent
  ("cone") NAT keys mappings by the inside socket alone, so every destination sees the same public
  socket (hole punching works); an endpoint-dependent ("symmetric") NAT keys them by inside socket and
  destination, so a peer learns a public socket that only works for the server that reported it. Every
  outbound datagram refreshes its mapping and opens the mapping's *filter* for ``dst`` (address and port
  dependent filtering, RFC 4787 section 5).
- **inbound** (:meth:`Nat.inbound`): a datagram for ``public:mapped`` is let in, rewritten to the inside
  socket, only if that mapping is alive and has sent to exactly that remote socket; anything else is
  dropped (the world counts ``nat_filtered``).
- A mapping without outbound traffic for :attr:`Nat.timeout` is gone; the next outbound datagram makes a
  new one on a new port (ports count up from :data:`FIRST_PORT`, never reused), as a real NAT's binding
  expiry moves a client to a new public socket. Inbound traffic does not refresh a mapping (the
  conservative choice RFC 4787 allows), so a peer that only receives keeps its binding only through its
  own keepalives (snownet's idle connections check every 25 s; WireGuard's persistent keepalive).

Deterministic: ports are a counter, times are the world's, dicts are looked up by key only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address

from gateway_core.addr import SocketAddr
from gateway_core.clock import Duration, Instant, secs
from gateway_core.errors import UsageError

FIRST_PORT = 40000
"""The first public port a NAT hands out (any range works; distinct from the hosts' own ports)."""
DEFAULT_TIMEOUT: Duration = secs(30)
"""How long a mapping lives without outbound traffic: 30 s, what many home routers use for UDP (RFC 4787
asks for at least 2 minutes; snownet's 25 s idle checks are built for the shorter real-world value)."""
KINDS = ("cone", "symmetric")


@dataclass(slots=True)
class _Mapping:
    inside: SocketAddr
    port: int
    last_out: Instant
    opened: set[SocketAddr] = field(default_factory=set)
    """Remote sockets the inside host sent to through this mapping (the filter)."""


class Nat:
    """See the module docstring."""

    def __init__(
        self, inside_host: str, public: IPv4Address, kind: str = "cone", timeout: Duration = DEFAULT_TIMEOUT
    ) -> None:
        if kind not in KINDS:
            raise UsageError(f"unknown NAT kind {kind!r} (one of {KINDS})")
        if timeout <= 0:
            raise UsageError("a NAT mapping timeout must be positive")
        self.inside_host = inside_host
        self.public = public
        self.kind = kind
        self.timeout = timeout
        self._by_key: dict[tuple[SocketAddr, SocketAddr | None], _Mapping] = {}
        self._by_port: dict[int, _Mapping] = {}
        self._next_port = FIRST_PORT
        self.mappings_made = 0

    def _alive(self, m: _Mapping, now: Instant) -> bool:
        return now - m.last_out < self.timeout

    def outbound(self, inside: SocketAddr, dst: SocketAddr, now: Instant) -> SocketAddr:
        """The public source of a datagram the inside host sends from ``inside`` to ``dst``."""
        key = (inside, dst if self.kind == "symmetric" else None)
        m = self._by_key.get(key)
        if m is None or not self._alive(m, now):
            if m is not None:
                self._by_port.pop(m.port, None)
            m = _Mapping(inside, self._next_port, now)
            self._next_port += 1
            self.mappings_made += 1
            self._by_key[key] = m
            self._by_port[m.port] = m
        m.last_out = now
        m.opened.add(dst)
        return SocketAddr(self.public, m.port)

    def inbound(self, dst: SocketAddr, src: SocketAddr, now: Instant) -> SocketAddr | None:
        """The inside socket a datagram from ``src`` to ``dst`` (our public socket) goes to, or None."""
        if dst.ip != self.public:
            return None
        m = self._by_port.get(dst.port)
        if m is None or not self._alive(m, now) or src not in m.opened:
            return None
        return m.inside

    def reset(self) -> None:
        """The NAT device restarts: every mapping is gone (ports keep counting up)."""
        self._by_key.clear()
        self._by_port.clear()
