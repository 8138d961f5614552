"""A program of the stateful test: the initial world and a list of steps, as plain data that round-trips
through JSON.

A :class:`Step` is a transition kind (:class:`StepKind`, whose values are the kind names saved in program
files) and small integer arguments the handler of that kind interprets (a client index and two choice
indices, taken modulo whatever the handler chooses from). :data:`WEIGHTS` gives each kind its weight when
steps are drawn (by Hypothesis or from a seed); the harness (:mod:`sim.stateful.harness`) has one handler
per kind. Adding a transition is one :class:`StepKind` value, one entry in :data:`WEIGHTS` and one handler.
"""

from __future__ import annotations

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
    GRANT = "grant"
    REVOKE = "revoke"
    UPDATE_EXPIRY = "update_expiry"
    LET_EXPIRE = "let_expire"
    UPDATE_FILTERS = "update_filters"
    UPSTREAM_DOWN = "upstream_down"
    UPSTREAM_UP = "upstream_up"
    RESTART_GATEWAY = "restart_gateway"
    PORTAL_OUTAGE = "portal_outage"
    RELAY_ADD = "relay_add"
    RELAY_REMOVE = "relay_remove"
    RELAY_REBOOT = "relay_reboot"
    RELAY_ROTATE = "relay_rotate"
    ROAM = "roam"
    PARTITION_DIRECT = "partition_direct"
    IDLE = "idle"


WEIGHTS: dict[StepKind, int] = {
    StepKind.PING_CIDR: 8,
    StepKind.UDP_CIDR: 8,
    StepKind.TCP_CIDR: 5,
    StepKind.PROBE_DNS_RESOURCE: 8,
    StepKind.DNS_QUERY: 6,
    StepKind.GRANT: 6,
    StepKind.REVOKE: 3,
    StepKind.UPDATE_EXPIRY: 3,
    StepKind.LET_EXPIRE: 2,
    StepKind.UPDATE_FILTERS: 3,
    StepKind.UPSTREAM_DOWN: 1,
    StepKind.UPSTREAM_UP: 2,
    StepKind.RESTART_GATEWAY: 1,
    StepKind.PORTAL_OUTAGE: 1,
    StepKind.RELAY_ADD: 1,
    StepKind.RELAY_REMOVE: 1,
    StepKind.RELAY_REBOOT: 1,
    StepKind.RELAY_ROTATE: 1,
    StepKind.ROAM: 1,
    StepKind.PARTITION_DIRECT: 1,
    StepKind.IDLE: 1,
}
"""Weight of each kind when steps are drawn: traffic dominates, as in Firezone's ``tunnel_test`` (10 per
packet kind). The order is the order in which kinds are offered to a draw: changing it changes every
drawn program."""
KINDS = tuple(k for k, w in WEIGHTS.items() if w)
"""The kinds that can be drawn (a weight of 0 keeps a kind replayable from files but never drawn)."""

KEY_EVENTS = (
    "relay_fallback",
    "rekey",
    "nat_expiry",
    "servfail",
    "refused",
    "icmp_prohibited",
    "reconnect_after_outage",
)
"""Events the coverage gate wants to see at least once (counted as ``event:<name>`` in the coverage)."""


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


@dataclass(frozen=True, slots=True)
class WorldSpec:
    """The initial world of one example."""

    seed: int
    clients: int = 1
    relays: int = 2
    relay_only: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "clients": self.clients,
            "relays": self.relays,
            "relay_only": self.relay_only,
        }


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
        w = d["world"]
        spec = WorldSpec(int(w["seed"]), int(w["clients"]), int(w["relays"]), bool(w["relay_only"]))
        return Program(spec, [Step.from_json(s) for s in d["steps"]])
