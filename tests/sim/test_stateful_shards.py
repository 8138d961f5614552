"""The stateful ``ci`` profile's shards (``FZ_STATEFUL_CI_SHARDS``): each derandomized, each different."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import seed, settings
from hypothesis.stateful import run_state_machine_as_test

from sim.stateful import Step, WorldSpec
from tests.sim import test_stateful as machine_module


class _Recorder:
    """Stands in for the harness: records each example's world, runs nothing."""

    worlds: list[tuple[int, int, int]] = []

    def __init__(self, spec: WorldSpec) -> None:
        self.coverage: Counter[str] = Counter()
        _Recorder.worlds.append((spec.seed, spec.clients, spec.relays))

    def apply(self, step: Step) -> None:
        pass

    def close(self) -> None:
        pass


def _worlds(shard: int, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    monkeypatch.setattr(machine_module, "Harness", _Recorder)
    _Recorder.worlds = []
    machine: type[machine_module.GatewayMachine] = machine_module.GatewayMachine
    if shard:
        machine = seed(shard)(type(f"Shard{shard}", (machine,), {}))
    ci = settings(settings.get_profile("stateful-ci"), max_examples=8)
    with machine_module.same_examples_everywhere():
        run_state_machine_as_test(machine, settings=ci)
    return list(_Recorder.worlds)


def test_each_shard_draws_the_same_examples_every_run_and_shards_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = _worlds(0, monkeypatch)
    assert len(first) >= 8
    assert _worlds(0, monkeypatch) == first
    one = _worlds(1, monkeypatch)
    assert _worlds(1, monkeypatch) == one
    two = _worlds(2, monkeypatch)
    assert len({tuple(first), tuple(one), tuple(two)}) == 3
    assert machine_module.CI_EXAMPLES_PER_SHARD == 256


def test_the_ci_shards_together_draw_each_kind_in_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mix gate of the ``ci`` profile: the steps every shard draws (the same ones the real run draws,
    the draws do not depend on what the worlds do) follow the weights within ``SHARE_FACTOR`` together,
    and each shard draws every kind at least ``MIN_PER_KIND`` times. Recorded without running a world
    (seconds, not minutes)."""
    monkeypatch.setattr(machine_module, "Harness", _Recorder)
    total: Counter[str] = Counter()
    examples = 0
    for shard in range(machine_module.CI_SHARDS_DEFAULT):
        machine_module.DRAWN.clear()
        machine_module.EXAMPLES[0] = 0
        machine: type[machine_module.GatewayMachine] = machine_module.GatewayMachine
        if shard:
            machine = seed(shard)(type(f"MixShard{shard}", (machine,), {}))
        with machine_module.same_examples_everywhere():
            run_state_machine_as_test(machine, settings=settings.get_profile("stateful-ci"))
        drawn = Counter(machine_module.DRAWN)
        examples += machine_module.EXAMPLES[0]
        assert all(drawn[k] >= machine_module.MIN_PER_KIND for k in machine_module.KINDS), (shard, drawn)
        total.update(drawn)
    machine_module.DRAWN.clear()
    print("\nci shards together: " + machine_module.summary_line(examples, total))
    assert sum(total.values()) >= machine_module.CI_SHARDS_DEFAULT * 3000
    assert machine_module.mix_problems(total) == []
