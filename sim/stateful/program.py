"""A program of the stateful test: the initial world and a list of steps, as plain data that round-trips
through JSON.

A :class:`Step` is a transition kind (:class:`StepKind`, whose values are the kind names saved in program
files) and small integer arguments the handler of that kind interprets (a client index and two choice
indices, taken modulo whatever the handler chooses from). :data:`WEIGHTS` gives each kind its weight when
steps are drawn (by Hypothesis or from a seed); the harness (:mod:`sim.stateful.harness`) has one handler
per kind. Adding a transition is one :class:`StepKind` value, one entry in :data:`WEIGHTS` and one handler.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class StepKind(StrEnum):
    """The transitions of the stateful test; each value is the name saved in program files."""

    PING_CIDR = "ping_cidr"
    UDP_CIDR = "udp_cidr"
    TCP_CIDR = "tcp_cidr"
    PROBE_DNS_RESOURCE = "probe_dns_resource"
    DNS_QUERY = "dns_query"
    PROBE_FOREIGN = "probe_foreign"
    PROBE_INTERNET = "probe_internet"
    GRANT = "grant"
    REVOKE = "revoke"
    UPDATE_EXPIRY = "update_expiry"
    LET_EXPIRE = "let_expire"
    UPDATE_FILTERS = "update_filters"
    CHANGE_CIDR_ADDRESS = "change_cidr_address"
    MOVE_SITE = "move_site"
    DEAUTHORIZE_PARTITIONED = "deauthorize_partitioned"
    UPSTREAM_TOGGLE = "upstream_toggle"
    SET_DNS_SERVERS = "set_dns_servers"
    RESTART_GATEWAY = "restart_gateway"
    RESTART_CLIENT = "restart_client"
    PORTAL_OUTAGE = "portal_outage"
    RELAYS_HIDDEN = "relays_hidden"
    RELAY_ADD = "relay_add"
    RELAY_REMOVE = "relay_remove"
    RELAY_REBOOT = "relay_reboot"
    RELAY_ROTATE = "relay_rotate"
    ROAM = "roam"
    PARTITION_DIRECT = "partition_direct"
    IDLE = "idle"
    CONTROL_EDGE = "control_edge"
    NAT_COLLISION = "nat_collision"
    UPSTREAM_DOWN = "upstream_down"
    UPSTREAM_UP = "upstream_up"
    FLOW_EDGE = "flow_edge"
    NAT_EDGE = "nat_edge"
    EXPIRY_EDGE = "expiry_edge"
    NESTED_EDGE = "nested_edge"
    FLOW_LOG_EDGE = "flow_log_edge"


WEIGHTS: dict[StepKind, int] = {
    StepKind.PING_CIDR: 6,
    StepKind.UDP_CIDR: 6,
    StepKind.TCP_CIDR: 4,
    StepKind.PROBE_DNS_RESOURCE: 6,
    StepKind.DNS_QUERY: 5,
    StepKind.PROBE_FOREIGN: 2,
    StepKind.PROBE_INTERNET: 2,
    StepKind.GRANT: 5,
    StepKind.REVOKE: 3,
    StepKind.UPDATE_EXPIRY: 2,
    StepKind.LET_EXPIRE: 3,
    StepKind.UPDATE_FILTERS: 3,
    StepKind.CHANGE_CIDR_ADDRESS: 1,
    StepKind.MOVE_SITE: 1,
    StepKind.DEAUTHORIZE_PARTITIONED: 1,
    StepKind.UPSTREAM_TOGGLE: 2,
    StepKind.SET_DNS_SERVERS: 1,
    StepKind.RESTART_GATEWAY: 1,
    StepKind.RESTART_CLIENT: 1,
    StepKind.PORTAL_OUTAGE: 1,
    StepKind.RELAYS_HIDDEN: 1,
    StepKind.RELAY_ADD: 1,
    StepKind.RELAY_REMOVE: 1,
    StepKind.RELAY_REBOOT: 1,
    StepKind.RELAY_ROTATE: 1,
    StepKind.ROAM: 1,
    StepKind.PARTITION_DIRECT: 1,
    StepKind.IDLE: 1,
    StepKind.CONTROL_EDGE: 2,  # see EDGE_KINDS
    StepKind.NAT_COLLISION: 1,
    StepKind.UPSTREAM_DOWN: 0,
    StepKind.UPSTREAM_UP: 0,
    StepKind.FLOW_EDGE: 0,  # only in its edge program (sim/stateful/flow_edges.py)
    StepKind.NAT_EDGE: 0,  # only in its edge program (sim/stateful/nat_edges.py)
    StepKind.EXPIRY_EDGE: 0,  # only in its edge program (sim/stateful/expiry_edges.py)
    StepKind.NESTED_EDGE: 0,  # only in its edge program (sim/stateful/nested_edges.py)
    StepKind.FLOW_LOG_EDGE: 0,  # only in its edge program (sim/stateful/flowlog_edges.py)
}
"""Weight of each kind when steps are drawn: traffic dominates, as in Firezone's ``tunnel_test`` (10 per
packet kind, 1 for most others). Every kind with a weight can run in any state (no guard), so the mix of a
run follows these weights: each kind's share of the drawn steps is its weight over the total
(``tests/sim/test_stateful.py`` checks it within a factor of two). A weight of 0 keeps a kind replayable
from program files (the two upstream kinds, replaced by ``upstream_toggle``) but never drawn, or only in an
edge program (``flow_edge``, ``expiry_edge``, ``nested_edge``, ``flow_log_edge``). The order is
the order of the weighted index: changing it changes every drawn program."""
EDGE_KINDS = (StepKind.CONTROL_EDGE, StepKind.NAT_COLLISION)
"""The edge-case kinds (``sim/stateful/edges.py``): drawn like every other kind (weights 2 and 1), and
also run from their edge programs, which walk every case of their tables (``make test``, ``make
mutation``)."""

KINDS = tuple(k for k, w in WEIGHTS.items() if w)
"""The kinds that can be drawn (a weight of 0 keeps a kind replayable from files but never drawn)."""
TOTAL_WEIGHT = sum(WEIGHTS.values())


def kind_at(index: int) -> StepKind:
    """The kind of the weighted index ``index`` (taken modulo :data:`TOTAL_WEIGHT`): a kind of weight
    ``w`` owns ``w`` consecutive indices, so a uniform index gives each kind its share."""
    x = index % TOTAL_WEIGHT
    for kind in KINDS:
        w = WEIGHTS[kind]
        if x < w:
            return kind
        x -= w
    raise AssertionError("unreachable")


_MASK64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """SplitMix64's finaliser: spreads any 64-bit value (0, 1, 2**64 - 1, ...) over all 64 bits."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def draw_kind(world: WorldSpec, index: int, choice: int) -> StepKind:
    """The kind of the ``index``-th drawn step of an example on ``world``, from a ``choice`` Hypothesis drew.

    Hypothesis favours small and repeated integers (0, 1, all ones, a value it drew before) within an
    example and across examples, so a kind taken straight from a drawn index comes out skewed towards the
    first kinds (measured: 37 % of the steps were the first kind, weight 13 %). The choice is mixed with
    everything that tells examples and steps apart (the world and the step's position) through
    :func:`mix64`, which spreads Hypothesis' favourite values over all kinds: measured on the ``ci``
    profile, every kind's share lies within 0.7 to 1.5 times its weight's share. The price: deleting a
    step while shrinking changes the kinds of the steps after it, so shrunk programs stay longer."""
    sig = mix64(world.seed ^ mix64(hash_world(world)))
    return kind_at(mix64(sig ^ mix64(choice ^ mix64(index))))


def hash_world(world: WorldSpec) -> int:
    """A stable integer of the world's shape (not ``hash()``: string hashes change between processes)."""
    text = f"{world.clients}/{world.relays}/{world.relay_only}/{world.stack}/{world.net}/{world.nat}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


KEY_EVENTS: dict[str, int] = {
    "relay_fallback": 20,
    "rekey": 5,
    "nat_expiry": 5,
    "servfail": 5,
    "refused": 10,
    "icmp_prohibited": 50,
    "reconnect_after_outage": 10,
    "relay_rotated": 10,
    "expiry_in_flight": 30,
    "revoke_in_flight": 30,
    "filter_edge_probed": 100,
    "dns_resource_unauthorised": 10,
    "spoofed_source": 5,
    "foreign_destination": 10,
    "gateway_tunnel_address": 10,
    "internet_resource": 10,
    "reconciled_on_rejoin": 5,
    "dns_over_tcp": 20,
    "first_packet_checked": 100,
}
"""Events the coverage gate wants to see, with the minimum count per ``ci`` shard (256 examples; counted
as ``event:<name>`` in the coverage). The Internet resource's 10: a shard sees it only while a client
holds the resource, 17 to 51 times in the four shards of ``make test``."""


@dataclass(frozen=True, slots=True, repr=False)
class Step:
    """One transition: ``kind`` and small arguments (client index, choice indices)."""

    kind: StepKind
    client: int = 0
    a: int = 0
    b: int = 0

    def __repr__(self) -> str:
        # Written into traces ("step Step(kind='grant', ...)"): the kind as its plain name.
        return f"Step(kind={str(self.kind)!r}, client={self.client!r}, a={self.a!r}, b={self.b!r})"

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "client": self.client, "a": self.a, "b": self.b}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Step:
        raw = str(d["kind"])
        try:
            kind = StepKind(raw)
        except ValueError:
            raise ValueError(f"unknown transition {raw!r}") from None
        return Step(kind, int(d.get("client", 0)), int(d.get("a", 0)), int(d.get("b", 0)))


STACKS = ("v4", "v6", "dual")
"""The clients' underlay address families (as Firezone's ``tunnel_test``: IPv4 only, IPv6 only, both)."""
NETS = ("plain", "jittery", "lossy")
"""Link profiles: 10 ms +- 2 ms everywhere; 10-60 ms with 0-40 ms jitter (reordering); the jittery
links plus 1 % loss on the clients' access links."""
NATS = ("none", "cone", "symmetric")
"""What sits between the clients and everything else: nothing, an endpoint-independent NAT (hole
punching works), or an endpoint-dependent ("symmetric") NAT (only relayed paths work)."""


@dataclass(frozen=True, slots=True)
class WorldSpec:
    """The initial world of one example."""

    seed: int
    clients: int = 1
    relays: int = 2
    relay_only: bool = False
    stack: str = "v4"
    net: str = "plain"
    nat: str = "none"

    def __post_init__(self) -> None:
        if self.stack not in STACKS or self.net not in NETS or self.nat not in NATS:
            raise ValueError(f"bad world: stack {self.stack!r}, net {self.net!r}, nat {self.nat!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "clients": self.clients,
            "relays": self.relays,
            "relay_only": self.relay_only,
            "stack": self.stack,
            "net": self.net,
            "nat": self.nat,
        }

    @staticmethod
    def from_json(w: dict[str, Any]) -> WorldSpec:
        return WorldSpec(
            int(w["seed"]),
            int(w["clients"]),
            int(w["relays"]),
            bool(w["relay_only"]),
            str(w.get("stack", "v4")),
            str(w.get("net", "plain")),
            str(w.get("nat", "none")),
        )


@dataclass(slots=True)
class Program:
    """An initial world and the steps run on it."""

    world: WorldSpec
    steps: list[Step] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps(
            {"world": self.world.to_json(), "steps": [s.to_json() for s in self.steps]}, sort_keys=True
        )

    @staticmethod
    def loads(text: str) -> Program:
        d = json.loads(text)
        return Program(WorldSpec.from_json(d["world"]), [Step.from_json(s) for s in d["steps"]])
