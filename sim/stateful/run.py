"""Running programs: drawn from a seed, or given (a saved failure, a regression).

:func:`run_program` applies a :class:`~sim.stateful.program.Program`'s steps on a fresh harness;
:func:`run_seeded` draws the world (:func:`world_from_seed`) and each step (:func:`draw_step`, by weight
among the kinds the harness enables) from one seed, so ``firezone-sim replay --seed N`` and the tests run
the same program every time.
"""

from __future__ import annotations

from typing import Any

from gateway_core.entropy import SeededEntropy
from sim.pcap import PcapWriter
from sim.stateful.harness import Harness
from sim.stateful.program import NATS, NETS, STACKS, TOTAL_WEIGHT, Program, Step, StepKind, WorldSpec, kind_at
from sim.trace import Trace


def draw_step(entropy: SeededEntropy, harness: Harness) -> Step:
    """One step drawn by weight (for seeded programs): a uniform weighted index picks the kind."""
    kind = kind_at(entropy.randbelow(TOTAL_WEIGHT))
    return Step(kind, entropy.randbelow(3), entropy.randbelow(64), entropy.randbelow(64))


def world_from_seed(seed: int) -> WorldSpec:
    e = SeededEntropy(seed).fork("stateful-world")
    clients, relays, relay_only = 1 + e.randbelow(3), 1 + e.randbelow(2), e.randbelow(4) == 0
    stack, net, nat = world_flavour(e.randbelow(1 << 16))
    return WorldSpec(seed, clients, relays, relay_only, stack, net, nat)


def world_flavour(x: int) -> tuple[str, str, str]:
    """Underlay families, links and NAT from one number: mostly IPv4 on plain links without NAT (the
    strictest checks), the rest spread over IPv6-only and dual-stack clients, jittery and lossy links,
    cone and symmetric NATs."""
    stack = STACKS[0] if x % 2 == 0 else STACKS[(x >> 1) % 3]
    net = NETS[0] if (x >> 3) % 2 == 0 else NETS[1 + (x >> 4) % 2]
    nat = NATS[0] if (x >> 6) % 2 == 0 else NATS[1 + (x >> 7) % 2]
    return stack, net, nat


def initial_steps(spec: WorldSpec) -> list[Step]:
    """Every example starts with client 0 holding the CIDR and the DNS resource (so traffic steps have work
    to do), one in three also the Internet resource."""
    steps = [Step(StepKind.GRANT, 0, 0), Step(StepKind.GRANT, 0, 1)]
    if spec.seed % 3 == 0:
        steps.append(Step(StepKind.GRANT, 0, 2))
    return steps


def run_program(
    program: Program,
    *,
    trace: Trace | None = None,
    pcap: PcapWriter | None = None,
    progress: Any = None,
) -> Harness:
    """Run ``program`` (initial world + steps) and return the harness (closed); raises on a failed check."""
    h = Harness(program.world, trace=trace, pcap=pcap)
    try:
        for i, step in enumerate(program.steps):
            h.apply(step)
            if progress is not None:
                progress(i + 1, len(program.steps), h)
    finally:
        h.close()
    return h


def run_seeded(
    seed: int,
    steps: int,
    *,
    trace: Trace | None = None,
    pcap: PcapWriter | None = None,
    progress: Any = None,
    program: Program | None = None,
) -> Harness:
    """A program drawn from ``seed`` (world and ``steps`` weighted steps) run at once; the steps taken
    are appended to ``program`` if given (so a failure can be saved and replayed)."""
    spec = world_from_seed(seed)
    prog = program if program is not None else Program(spec)
    prog.world = spec
    h = Harness(spec, trace=trace, pcap=pcap)
    e = SeededEntropy(seed).fork("program")
    try:
        todo = initial_steps(spec)
        for i in range(steps):
            step = todo[i] if i < len(todo) else draw_step(e, h)
            prog.steps.append(step)
            h.apply(step)
            if progress is not None:
                progress(i + 1, steps, h)
    finally:
        h.close()
    return h
