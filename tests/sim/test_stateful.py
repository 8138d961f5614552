"""Hypothesis stateful test of the whole gateway world against the reference model.

The machine draws every transition from the harness's *model-side* view (:meth:`Harness.enabled`,
weighted as :data:`sim.stateful.WEIGHTS`), applies it to the world and checks the invariants after each
step (:mod:`sim.stateful`). Profiles (``FZ_STATEFUL_PROFILE``): ``ci`` (default; what ``make test``
runs: derandomized, 256 examples of up to 15 steps), ``dev`` (fast, random), ``nightly`` (random,
``FZ_STATEFUL_EXAMPLES`` examples, default 5000). A failure saves the failing program to
``.stateful/failure.json``, writes its trace and pcap next to it and prints the ``firezone-sim replay``
command. The coverage gate fails the run if a transition kind or key event never happened.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from sim.pcap import PcapWriter
from sim.stateful import (
    KEY_EVENTS,
    KINDS,
    WEIGHTS,
    Harness,
    Program,
    Step,
    StepKind,
    WorldSpec,
    initial_steps,
    run_program,
    run_seeded,
)
from sim.trace import Trace

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".stateful"
FAILURE = ARTIFACTS / "failure.json"
MAX_STEPS = 13
"""Drawn steps per example; with the two initial grants an example has up to 15 transitions."""

_COMMON = {
    "deadline": None,
    "stateful_step_count": MAX_STEPS + 1,  # + the initialize rule
    "suppress_health_check": list(HealthCheck),
    "database": None,
    "print_blob": True,
    # No explain phase: it re-runs the failing example under sys.settrace (very slow on Python 3.11).
    "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
}
settings.register_profile("stateful-ci", max_examples=256, derandomize=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("stateful-dev", max_examples=25, **_COMMON)  # type: ignore[arg-type]
settings.register_profile(
    "stateful-nightly",
    max_examples=int(os.environ.get("FZ_STATEFUL_EXAMPLES", "5000")),
    **_COMMON,  # type: ignore[arg-type]
)
settings.register_profile(
    "stateful-mutation",
    max_examples=int(os.environ.get("FZ_STATEFUL_EXAMPLES", "20")),
    derandomize=True,
    **{**_COMMON, "phases": [Phase.explicit, Phase.generate]},  # type: ignore[arg-type]
)  # a killed mutant needs no shrinking
PROFILE = os.environ.get("FZ_STATEFUL_PROFILE", "ci")

COVERAGE: Counter[str] = Counter()


class GatewayMachine(RuleBasedStateMachine):
    """One example = one world (seed, 1-3 clients, 1-2 relays, maybe relay-only) and its transitions."""

    def __init__(self) -> None:
        super().__init__()
        self.h: Harness | None = None
        self.program: Program | None = None

    @initialize(
        seed=st.integers(0, 2**31 - 1),
        clients=st.integers(1, 3),
        relays=st.integers(1, 2),
        relay_only=st.booleans(),
    )
    def start(self, seed: int, clients: int, relays: int, relay_only: bool) -> None:
        spec = WorldSpec(seed, clients, relays, relay_only)
        self.program = Program(spec)
        self.h = Harness(spec)
        for s in initial_steps(spec):
            self._apply(s)

    def _apply(self, s: Step) -> None:
        assert self.h is not None and self.program is not None
        self.program.steps.append(s)
        try:
            self.h.apply(s)
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            FAILURE.write_text(self.program.dumps() + "\n", encoding="ascii")
            raise

    @rule(data=st.data())
    def transition(self, data: st.DataObject) -> None:
        assert self.h is not None
        options = self.h.enabled()
        total = sum(w for _, w in options)
        x = data.draw(st.integers(0, total - 1), label="transition")
        kind = options[-1][0]
        for k, w in options:
            if x < w:
                kind = k
                break
            x -= w
        step = Step(
            kind,
            data.draw(st.integers(0, 2), label="client"),
            data.draw(st.integers(0, 63), label="a"),
            data.draw(st.integers(0, 63), label="b"),
        )
        event(kind)
        self._apply(step)

    def teardown(self) -> None:
        if self.h is not None:
            COVERAGE.update(self.h.coverage)
            self.h.close()


def _replay_hint(exc: BaseException) -> None:
    if not FAILURE.exists():
        return
    program = Program.loads(FAILURE.read_text(encoding="ascii"))
    trace_path, pcap_path = ARTIFACTS / "failure.jsonl", ARTIFACTS / "failure.pcap"
    with open(trace_path, "w", encoding="ascii", newline="\n") as t, open(pcap_path, "wb") as p:
        try:
            run_program(program, trace=Trace(t), pcap=PcapWriter(p))
        except BaseException:
            pass
    print(
        f"\nstateful failure: {exc}\n  replay: firezone-sim replay {FAILURE}\n"
        f"  trace:  {trace_path}\n  pcap:   {pcap_path}\n"
    )


@pytest.mark.timeout(900)  # the ci profile takes ~2 min alone; room for a loaded machine and shrinking
def test_gateway_world_against_the_reference_model() -> None:
    COVERAGE.clear()
    FAILURE.unlink(missing_ok=True)
    try:
        run_state_machine_as_test(GatewayMachine, settings=settings.get_profile(f"stateful-{PROFILE}"))
    except BaseException as exc:
        _replay_hint(exc)
        raise
    if PROFILE in ("dev", "mutation"):
        return
    missing = [f"transition {k}" for k in KINDS if not COVERAGE[f"transition:{k}"]]
    missing += [f"event {k}" for k in KEY_EVENTS if not COVERAGE[f"event:{k}"]]
    assert not missing, f"coverage gate: never exercised: {missing} (counts: {sorted(COVERAGE.items())})"


# --- regressions found by the stateful test (kept as explicit programs) --------------------------------

REGRESSIONS = json.loads((Path(__file__).parent / "stateful_regressions.json").read_text(encoding="ascii"))


@pytest.mark.parametrize("case", REGRESSIONS, ids=[r["name"] for r in REGRESSIONS])
def test_regression(case: dict[str, object]) -> None:
    """Each failing example the stateful test found, as the exact program it ran (see its ``note``)."""
    program = Program.loads(json.dumps(case["program"]))
    h = run_program(program)
    assert h.steps_done == len(program.steps) and h.checks == len(program.steps)


@pytest.mark.parametrize("seed", [3, 44])
def test_seeded_programs_pass(seed: int) -> None:
    h = run_seeded(seed, 15)
    assert h.steps_done == 15 and h.checks == 15


def test_program_round_trips_through_json() -> None:
    p = Program(WorldSpec(9, 2, 1, True), [Step(StepKind.GRANT, 1, 2, 3), Step(StepKind.IDLE, 0, 1, 0)])
    assert Program.loads(p.dumps()) == p
    assert json.loads(p.dumps())["steps"][0] == {"kind": "grant", "client": 1, "a": 2, "b": 3}
    assert all(s.kind is StepKind(s.kind.value) for s in Program.loads(p.dumps()).steps)


def test_step_is_traced_with_the_plain_kind_name() -> None:
    """The trace line of a step (``"what": "step Step(kind='grant', ...)"``) does not show the enum."""
    assert repr(Step(StepKind.GRANT, 1, 2, 3)) == "Step(kind='grant', client=1, a=2, b=3)"
    assert f"step {Step(StepKind.ROAM)}" == "step Step(kind='roam', client=0, a=0, b=0)"


def test_every_step_kind_has_a_weight_and_exactly_one_handler() -> None:
    assert set(WEIGHTS) == set(StepKind)
    assert set(KINDS) <= set(StepKind)
    h = Harness(WorldSpec(1))
    try:
        assert set(h.handlers) == set(StepKind) == set(WEIGHTS)
        assert {k for k, _ in h.enabled()} <= set(KINDS)
        assert set(h.guards) <= set(StepKind)
    finally:
        h.close()


def test_a_saved_program_with_an_unknown_kind_is_refused() -> None:
    text = Program(WorldSpec(1)).dumps().replace('"steps": []', '"steps": [{"kind": "teleport"}]')
    with pytest.raises(ValueError, match="unknown transition 'teleport'"):
        Program.loads(text)


def test_the_machine_replays_only_explicit_examples_quickly() -> None:
    """The profiles exist and the CI one is derandomized (a fixed set of examples every run)."""
    ci = settings.get_profile("stateful-ci")
    assert ci.derandomize and ci.max_examples >= 256 and ci.stateful_step_count == MAX_STEPS + 1
    assert Phase.shrink in settings.get_profile("stateful-dev").phases


def test_firezone_sim_replay_from_a_file_and_from_a_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sim.cli import main

    program = Program.loads(json.dumps(REGRESSIONS[0]["program"]))
    path = tmp_path / "p.json"
    path.write_text(program.dumps(), encoding="ascii")
    trace, pcap = tmp_path / "t.jsonl", tmp_path / "t.pcap"
    assert main(["replay", str(path), "--trace", str(trace), "--pcap", str(pcap), "--progress"]) == 0
    out = capsys.readouterr().out
    n = len(program.steps)
    assert f"[{n}/{n}]" in out and "invariant_checks" in out and "packets_delivered" in out
    steps_traced = [ln for ln in trace.read_text(encoding="ascii").splitlines() if '"what":"step Step(' in ln]
    assert len(steps_traced) == n and pcap.stat().st_size > 24
    assert main(["replay", "--seed", "3", "--steps", "4"]) == 0
    assert "steps" in capsys.readouterr().out
    bad = Program(program.world, [Step("no_such_transition")])
    path.write_text(bad.dumps(), encoding="ascii")
    with pytest.raises(ValueError, match="unknown transition"):
        main(["replay", str(path)])
