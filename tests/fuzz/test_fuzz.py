"""The fuzz targets in ``make test``: every corpus file replayed in-process (the seeds and every crash
input found so far, which is how a fixed fuzzer finding stays fixed), a short atheris run of every
target (each in its own process, a fixed number of executions from a fixed seed, two at a time), and the
seed writer's model of atheris' ``FuzzedDataProvider``.

The short run is a smoke test of the fuzzing machinery and of the targets (about 35 s on this 2-core
machine); the long runs that look for bugs are ``make fuzz`` (docs/testing.md, "Coverage-guided fuzzing").
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path

import atheris
import pytest

from fuzz import logcheck
from fuzz.cli import SEEDS, run_many
from fuzz.fdp_writer import FdpWriter
from fuzz.targets import TARGETS

SHORT_RUNS = 1500
"""Executions per decoder target in the short run (seeds included): a second or two each."""
SHORT_RUNS_GATEWAY = 200
"""The facade target runs a few milliseconds per input."""


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_replays(target: str) -> None:
    files = sorted((SEEDS / target).iterdir())
    assert files, f"no seed corpus for {target}"
    module = importlib.import_module(TARGETS[target].module)
    with logcheck.installed():
        for f in files:
            module.test_one_input(f.read_bytes())


def test_corpus_is_small() -> None:
    sizes = [f.stat().st_size for d in SEEDS.iterdir() for f in d.iterdir()]
    assert sum(sizes) < 300_000 and max(sizes) < 20_000


@pytest.mark.slow
def test_short_atheris_run_of_every_target(tmp_path: Path) -> None:
    runs = {t: [f"-runs={SHORT_RUNS_GATEWAY if t == 'gateway' else SHORT_RUNS}"] for t in TARGETS}
    order = ["gateway", *(t for t in TARGETS if t != "gateway")]  # the longest first, beside the others
    # The run counts bound the work (~35 s on a quiet machine for every target); the time limit only
    # guards against a hang, so it is generous: at 60 s a gateway run on a loaded machine stopped short
    # of its 200 inputs and failed the count below.
    outcomes = run_many(order, ["-seed=1", "-max_total_time=600"], 2, scratch=tmp_path, extra=runs)
    assert {o.target for o in outcomes} == set(TARGETS)
    for o in outcomes:
        log = o.log.read_text(errors="replace")
        assert o.returncode == 0, f"{o.target} failed:\n{log[-3000:]}"
        want = SHORT_RUNS_GATEWAY if o.target == "gateway" else SHORT_RUNS
        assert o.runs == want, f"{o.target} ran {o.runs} inputs, not {want}:\n{log[-2000:]}"


def test_fdp_writer_matches_atheris() -> None:
    rng = random.Random(5)
    for _ in range(300):
        w = FdpWriter()
        want: list[object] = []
        ops = []
        for _ in range(rng.randrange(1, 12)):
            kind = rng.randrange(3)
            if kind == 0:
                lo = rng.randrange(-1000, 1000)
                hi = lo + rng.choice([0, 1, 7, 255, 256, 1400, 65535, 65536, 2**40])
                v = rng.randint(lo, hi)
                w.int_in_range(lo, hi, v)
                ops.append(("int", lo, hi))
                want.append(v)
            elif kind == 1:
                b = rng.random() < 0.5
                w.bool(b)
                ops.append(("bool", 0, 0))
                want.append(b)
            else:
                data = rng.randbytes(rng.randrange(0, 20))
                w.sized(data, 100)
                ops.append(("sized", 0, 0))
                want.append(data)
        fdp = atheris.FuzzedDataProvider(w.build())
        got: list[object] = []
        for kind_name, lo, hi in ops:
            if kind_name == "int":
                got.append(fdp.ConsumeIntInRange(lo, hi))
            elif kind_name == "bool":
                got.append(fdp.ConsumeBool())
            else:
                got.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 100)))
        assert got == want
        assert fdp.remaining_bytes() == 0
