"""What every part of the stateful harness shares: the world, the reference model, the coverage counters,
the settle times, and the error a failed check raises."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from devpeers.client import DevClient
from gateway_core.clock import Duration, secs
from sim.gateway_world import GatewayWorld
from sim.reference import ReferenceModel
from sim.stateful.program import Step, WorldSpec
from sim.world import World

DNS_SETTLE: Duration = secs(6)
"""A forwarded query the upstream never answers is SERVFAIL after the gateway's 5 s timeout."""
CONTROL_SETTLE: Duration = secs(2)
"""After a portal action or a topology change: pushes, candidates and relay changes settle."""

Handler = Callable[[Step, int], None]
"""Runs one step on the world: the step and the index of the client it concerns (``step.client`` modulo
the number of clients)."""


class InvariantError(AssertionError):
    """A check of the stateful test failed (the message names the step and the difference)."""


@dataclass(slots=True)
class Scene:
    """The handles the harness's parts share; ``steps_done`` counts the steps applied so far."""

    spec: WorldSpec
    world: World
    gw: GatewayWorld
    model: ReferenceModel
    coverage: Counter[str] = field(default_factory=Counter)
    steps_done: int = 0
    lost_peer: list[int] = field(default_factory=list)
    """Clients that lost their last authorisation *and got one again* within the current step (the
    gateway said goodbye in between; the check after the step sees only the end state)."""
    disturbed: set[int] = field(default_factory=set)
    """Clients whose path to the gateway was cut during the current step (a partition, a roam, a lost
    relay): a goodbye the gateway sent them meanwhile may have been lost on the way."""

    def client(self, i: int) -> DevClient:
        return self.gw.clients[i]
