"""The stateful test of the whole gateway world against a reference model.

A run is a :class:`Program` (the initial world and a list of :class:`Step` values, plain data that
round-trips through JSON), so the same program can come from Hypothesis (``tests/sim/test_stateful.py``),
from a seed (:func:`run_seeded`) or from a file (``firezone-sim replay``). :class:`Harness` applies the
steps to a simulated gateway world and checks the invariants after each one.

Modules: :mod:`~sim.stateful.program` (step kinds, weights, JSON), :mod:`~sim.stateful.harness` (the
harness and its step table), :mod:`~sim.stateful.traffic`, :mod:`~sim.stateful.access` and
:mod:`~sim.stateful.topology` (the steps, by what they act on), :mod:`~sim.stateful.invariants` and
:mod:`~sim.stateful.expect` (the checks), :mod:`~sim.stateful.scene` (what the parts share),
:mod:`~sim.stateful.run` (running programs).
"""

from sim.stateful.harness import Harness
from sim.stateful.program import KEY_EVENTS, KINDS, WEIGHTS, Program, Step, StepKind, WorldSpec
from sim.stateful.run import draw_step, initial_steps, run_program, run_seeded, world_from_seed
from sim.stateful.scene import InvariantError

__all__ = [
    "KEY_EVENTS",
    "KINDS",
    "WEIGHTS",
    "Harness",
    "InvariantError",
    "Program",
    "Step",
    "StepKind",
    "WorldSpec",
    "draw_step",
    "initial_steps",
    "run_program",
    "run_seeded",
    "world_from_seed",
]
