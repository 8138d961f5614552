"""``make mutation``, step 2 of a group: judge every mutant from one pytest session that forks per mutant.

Run by :mod:`scripts.mutation` in a group's copy of the tree after :mod:`scripts.mutation_prepare`, as
``python scripts/mutation_runner.py --children N --budget SECONDS [PATTERN ...]`` (patterns: judge only
the matching mutants and print their verdicts, leaving the group's results alone; ``--verbose`` keeps the
children's output and times each item).

Theory of operation
-------------------
``mutmut run`` starts a whole pytest session for every mutant (configuration, plugins, conftests,
collection of every file its tests live in) in a child forked from its main process. Here one pytest
session collects the group's tests once and takes over the run loop (``pytest_runtestloop``):

1. **Clean pass**: every item runs once with no mutant active (through mutmut's trampolines). It fails the
   step if any item fails, warms every import and cache the children inherit, and measures each item's CPU
   seconds (the estimate a mutant's bound is derived from).
2. **Forced failure**: one child runs with mutmut's ``fail`` mutant, which every trampoline turns into an
   exception; if its item passes, the trampolines are not in the code the tests run, and the step stops.
3. **Mutants**: up to ``--children`` children at a time, each forked from the session with the items
   collected. A child activates its mutant, empties ``gateway_core``'s ``lru_cache``\\ s (the clean pass
   filled them with the original code's results), and runs the mutant's items (chosen by
   :mod:`scripts.mutation_prepare`: those that execute the mutated code) with pytest's own
   ``runtestprotocol``, stopping at the first failure. Items that killed earlier mutants of the same
   function run first, the rest cheapest first. The verdict comes back as the exit status, the killing
   item through a pipe. Failure reports are one line (:func:`short_failure_reports`).

A child's CPU time is bounded (``RLIMIT_CPU``) by :data:`CPU_FACTOR` times its items' CPU in the clean pass
plus :data:`CPU_CONSTANT`: a mutant that spins (a loop that no longer ends) dies of ``SIGXCPU`` and counts as
``timeout`` (detected). The bound is CPU time, not wall time, so a loaded machine does not turn slow
children into timeouts; a wall-clock bound (:data:`WALL_FACTOR`) only catches a child that blocks.
Mutants run in a fixed pseudo-random order, so a run stopped by ``--budget`` has checked an unbiased
sample. Results go into mutmut's meta files (``mutmut results`` / ``mutmut show`` read them) and
``mutants/fz-results.json`` (verdict, killing item, wall and CPU seconds per mutant).
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import math
import os
import random
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.mutation_prepare import PYTEST_ARGS, SELECTION

RESULTS = Path("mutants") / "fz-results.json"
CPU_FACTOR = 3.0
"""A mutant may take this many times its items' CPU in the clean pass before it is a timeout: it runs the
same items (the clean pass also paid first-use costs), and CPU time barely moves with load; 3x leaves room
for a mutant that only makes the code somewhat slower. (mutmut's own bound, 15 times the estimate plus 1 s
of wall time, let every spinning mutant hold a core for ~28 s on this machine.)"""
CPU_CONSTANT = 3.0
"""Seconds added to every CPU bound: the child's own start, and items measured at a few milliseconds."""
WALL_FACTOR = 20.0
"""A child still running after this many times its CPU bound (plus a minute) of wall time is blocked, not
busy (at load 15 on 2 cores a busy child still gets ~1/8 of a core); it is killed and counted as a
timeout."""
KILLERS_KEPT = 4
"""Per function, the items that killed its latest mutants are tried first (most recent first)."""
SAVE_EVERY = 20.0
"""Seconds between two saves of the meta files (a run stopped from outside keeps what it had)."""
EXIT_TIMEOUT = 36
"""mutmut's exit code for ``timeout``. The others: 0 survived, 1 killed, 3 killed by an error outside a test
item, 33 no tests, a negative signal number for a child that died of another signal (``-11``: segfault)."""


@dataclass(slots=True)
class Running:
    name: str
    pid: int
    pipe: int
    started: float
    deadline: float
    estimate: float


@dataclass(slots=True)
class Tally:
    """Verdicts so far, by mutmut exit code."""

    total: int
    counts: dict[int, int] = field(default_factory=dict)

    def add(self, code: int) -> None:
        self.counts[code] = self.counts.get(code, 0) + 1

    def line(self, elapsed: float) -> str:
        c = self.counts
        done = sum(c.values())
        killed, timeout, survived, none = (
            c.get(1, 0) + c.get(3, 0),
            c.get(EXIT_TIMEOUT, 0),
            c.get(0, 0),
            c.get(33, 0),
        )
        other = done - killed - timeout - survived - none
        return (
            f"{done}/{self.total} mutants in {elapsed:.0f} s: killed {killed}, timeout {timeout}, "
            f"survived {survived}, no tests {none}, other {other}"
        )


def order_items(items: list[int], killers: list[int], seconds: list[float]) -> list[int]:
    """The order a mutant's items run in: earlier killers of the function first, then cheapest first."""
    chosen = set(items)
    first = [i for i in killers if i in chosen]
    rest = sorted(chosen.difference(first), key=lambda i: (seconds[i], i))
    return first + rest


def cpu_bound(estimate: float) -> int:
    """The CPU seconds a child may use (``RLIMIT_CPU`` soft limit)."""
    return math.ceil(CPU_FACTOR * estimate + CPU_CONSTANT)


def status_of(wait_status: int) -> int:
    """mutmut's exit code for a child's wait status (see :data:`EXIT_TIMEOUT`)."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return EXIT_TIMEOUT if sig in (signal.SIGXCPU, signal.SIGKILL) else -sig
    return os.waitstatus_to_exitcode(wait_status)


def function_of(name: str) -> str:
    """``module.x_func__mutmut_3`` -> ``module.x_func`` (killers are remembered per function)."""
    return name.partition("__mutmut_")[0]


def short_failure_reports() -> None:
    """A failing item's report is one line (no child prints it). pytest's traceback report, which Hypothesis
    also builds for a failure it finds, parses the whole source file of every frame, and a mutated file holds
    every mutant of its functions (tens of thousands of lines): that took ~3 s per killed mutant. Nor does
    Hypothesis write a patch of the test module with the failing example (libcst, ~0.3 s)."""
    from _pytest import nodes, python

    def short(self: Any, excinfo: Any, style: Any = None, **_: Any) -> str:
        try:
            return f"{excinfo.typename}: {str(excinfo.value)[:200]}"
        except Exception:
            return "an exception"

    nodes.Node._repr_failure_py = short  # type: ignore[method-assign]
    python.Function.repr_failure = short  # type: ignore[method-assign]
    try:
        import hypothesis.extra._patching as patching

        patching.get_patch_for = lambda *args, **kwargs: None
    except ImportError:
        pass


def empty_caches() -> None:
    """Every ``lru_cache`` of ``gateway_core`` starts empty (the clean pass filled them)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("gateway_core") and module is not None:
            for value in list(vars(module).values()):
                clear = getattr(value, "cache_clear", None)
                if callable(clear):
                    clear()


class Judge:
    """The pytest plugin that replaces the run loop (see the module docstring)."""

    def __init__(
        self, selection: dict[str, Any], children: int, stop_at: float, only: list[str], verbose: bool
    ):
        self.selection = selection
        self.children = children
        self.stop_at = stop_at
        self.only = only
        self.verbose = verbose
        self.root = Path.cwd()
        self.order: list[Any] = []
        self.seconds: list[float] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.killers: dict[str, list[int]] = {}
        self.index = {n: i for i, n in enumerate(selection["items"])}
        self.failed = ""

    # --- the session ------------------------------------------------------------------------------------

    def pytest_runtestloop(self, session: Any) -> bool:
        from _pytest.runner import runtestprotocol
        from mutmut.mutation.trampoline import set_mutant_under_test

        by_id = {item.nodeid: item for item in session.items}
        missing = [n for n in self.selection["items"] if n not in by_id]
        if missing:
            self.failed = f"{len(missing)} test items of the coverage run not collected, e.g. {missing[0]}"
            return True
        self.order = [by_id[n] for n in self.selection["items"]]
        set_mutant_under_test("")
        started = time.process_time()
        for i, item in enumerate(self.order):
            t0 = time.process_time()
            nxt = self.order[i + 1] if i + 1 < len(self.order) else None
            if any(r.failed for r in runtestprotocol(item, nextitem=nxt, log=False)):
                self.failed = f"clean pass: {item.nodeid} fails without any mutant"
                return True
            self.seconds.append(time.process_time() - t0)
        took = time.process_time() - started
        print(f"\nmutation run: clean pass of {len(self.order)} items, {took:.1f} s of CPU")
        short_failure_reports()
        probe = next((v["items"][:1] for v in self.selection["mutants"].values() if v["items"]), None)
        if probe is not None:
            pid, pipe = self._fork("fail", probe)
            os.close(pipe)
            if status_of(os.waitpid(pid, 0)[1]) == 0:
                self.failed = "the forced failure passed: the trampolines are not active"
                return True
        gc.collect()
        gc.freeze()  # the children inherit a heap the collector leaves alone (fewer pages copied)
        self._judge_all()
        return True

    # --- one child --------------------------------------------------------------------------------------

    def _fork(self, name: str, indices: list[int]) -> tuple[int, int]:
        """Fork a child judging mutant ``name`` with the items ``indices``: its pid, its pipe's read end."""
        cpu = cpu_bound(sum(self.seconds[i] for i in indices))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            self._child(name, indices, w, cpu)
        os.close(w)
        return pid, r

    def _child(self, name: str, indices: list[int], pipe: int, cpu: int) -> None:
        """In the forked child: run the items under the mutant; never returns."""
        code, killer = 0, None
        try:
            from _pytest.runner import runtestprotocol
            from mutmut.mutation.trampoline import set_mutant_under_test

            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            if self.verbose:
                print(f"{name}:", file=sys.stderr)
            else:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
            factory = getattr(self.order[0].config, "_tmp_path_factory", None)
            base = Path(tempfile.gettempdir()) / f"fz-mutant-{os.getpid()}"
            if factory is not None:  # each child its own tmp_path root, removed when it is done
                factory._basetemp = None
                factory._given_basetemp = base
            set_mutant_under_test(name)
            empty_caches()
            for k, i in enumerate(indices):
                nxt = self.order[indices[k + 1]] if k + 1 < len(indices) else None
                t0 = time.process_time()
                failed = any(r.failed for r in runtestprotocol(self.order[i], nextitem=nxt, log=False))
                if self.verbose:
                    took = time.process_time() - t0
                    print(
                        f"  {took:7.3f} s {'FAILED' if failed else 'passed'} {self.order[i].nodeid}",
                        file=sys.stderr,
                    )
                if failed:
                    code, killer = 1, self.order[i].nodeid
                    break
            shutil.rmtree(base, ignore_errors=True)
        except BaseException as e:  # an error outside a test item (a mutant can raise anything)
            code, killer = 3, f"{type(e).__name__} outside a test item"
        try:
            os.write(pipe, json.dumps({"killer": killer}).encode())
        finally:
            os._exit(code)

    # --- all mutants ------------------------------------------------------------------------------------

    def _judge_all(self) -> None:
        from mutmut.mutation.data import SourceFileMutationData

        files = self.selection["files"]
        meta = {}
        for f in files:
            m = SourceFileMutationData(path=f)
            m.meta_path = self.root / m.meta_path  # the session runs in mutants/
            m.load()
            meta[f] = m
        mutants = self.selection["mutants"]
        if self.only:
            todo = sorted(n for n in mutants if any(fnmatch.fnmatchcase(n, p) for p in self.only))
        else:  # the mutants without a verdict (all of them after a prepare; the rest of a stopped run)
            verdicts = {n: c for m in meta.values() for n, c in m.exit_code_by_key.items()}
            todo = sorted(n for n in mutants if verdicts.get(n) is None)
        random.Random(0).shuffle(todo)
        todo.reverse()  # popped from the end
        tally = Tally(len(todo))
        running: dict[int, Running] = {}
        started = time.monotonic()

        def record(name: str, code: int, wall: float, cpu: float, est: float, killer: str | None) -> None:
            m = meta[files[mutants[name]["file"]]]
            m.exit_code_by_key[name] = code
            m.durations_by_key[name] = round(wall, 3)
            m.estimated_time_of_tests_by_mutant[name] = round(est, 3)
            r = {"status": code, "wall": round(wall, 3), "cpu": round(cpu, 3), "killer": killer}
            self.results[name] = r
            tally.add(code)

        last_save = last_print = started
        try:
            while todo or running:
                now = time.monotonic()
                while todo and len(running) < self.children and now < self.stop_at:
                    name = todo.pop()
                    items = mutants[name]["items"]
                    if not items:
                        record(name, 33, 0.0, 0.0, 0.0, None)
                        continue
                    indices = order_items(items, self.killers.get(function_of(name), []), self.seconds)
                    estimate = sum(self.seconds[i] for i in indices)
                    pid, pipe = self._fork(name, indices)
                    deadline = now + WALL_FACTOR * cpu_bound(estimate) + 60
                    running[pid] = Running(name, pid, pipe, now, deadline, estimate)
                if now >= self.stop_at and todo:
                    print(f"mutation run: budget reached, {len(todo)} mutants not checked", flush=True)
                    todo.clear()
                    break
                if not running:
                    break
                wait = max(0.0, min(min(j.deadline for j in running.values()) - now, self.stop_at - now, 5.0))
                ready, _, _ = select.select([j.pipe for j in running.values()], [], [], wait)
                for job in [j for j in running.values() if j.pipe in ready]:
                    data = b""
                    while chunk := os.read(job.pipe, 65536):
                        data += chunk
                    _, st, usage = os.wait4(job.pid, 0)
                    code = status_of(st)
                    os.close(job.pipe)
                    del running[job.pid]
                    killer = json.loads(data).get("killer") if data else None
                    cpu = usage.ru_utime + usage.ru_stime
                    record(job.name, code, time.monotonic() - job.started, cpu, job.estimate, killer)
                    if code == 1 and killer in self.index:
                        self._remember(job.name, self.index[killer])
                now = time.monotonic()
                for job in running.values():
                    if now > job.deadline:
                        os.kill(job.pid, signal.SIGKILL)
                if now - last_save > SAVE_EVERY and not self.only:
                    for m in meta.values():
                        m.save()
                    last_save = now
                if now - last_print > 30:
                    print(f"mutation run: {tally.line(now - started)}", flush=True)
                    last_print = now
        finally:  # the budget, or stopped from outside (SIGTERM, Ctrl-C): no child outlives the run
            for job in running.values():
                os.kill(job.pid, signal.SIGKILL)
                os.waitpid(job.pid, 0)
                os.close(job.pipe)
            if not self.only:
                for m in meta.values():
                    m.save()
        if self.only:  # a look at a few mutants: printed, the group's results left as they are
            from mutmut.stats import status_by_exit_code

            for name, r in sorted(self.results.items()):
                status = status_by_exit_code[r["status"]]
                line = f"{name}: {status} ({r['wall']} s, {r['cpu']} s of CPU) {r['killer'] or ''}"
                print(f"mutation run: {line}", flush=True)
            return
        (self.root / RESULTS).write_text(json.dumps(self.results, indent=1, sort_keys=True), encoding="utf-8")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(f"mutation run: {tally.line(time.monotonic() - started)}", flush=True)
        print(f"mutation run: the children used {usage.ru_utime + usage.ru_stime:.0f} s of CPU", flush=True)

    def _remember(self, name: str, item: int) -> None:
        ks = self.killers.setdefault(function_of(name), [])
        if item in ks:
            ks.remove(item)
        ks.insert(0, item)
        del ks[KILLERS_KEPT:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="judge the mutants of a group's copy (see the module docstring)")
    ap.add_argument("--children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--budget", type=float, default=1500.0, help="seconds before no more mutants are started")
    ap.add_argument("--verbose", action="store_true", help="children keep their output and time each item")
    ap.add_argument("only", nargs="*", help="judge only the mutants matching these patterns (fnmatch)")
    args = ap.parse_args(argv)
    stop_at = time.monotonic() + args.budget
    import pytest
    from mutmut.configuration import config
    from mutmut.utils.file_utils import setup_source_paths

    selection = json.loads(SELECTION.read_text(encoding="utf-8"))
    tests = config().pytest_add_cli_args_test_selection
    setup_source_paths()
    os.environ["PY_IGNORE_IMPORTMISMATCH"] = "1"
    judge = Judge(selection, args.children, stop_at, args.only, args.verbose)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    os.chdir("mutants")
    code = pytest.main([*PYTEST_ARGS, "-s", *tests], plugins=[judge])
    if judge.failed:
        print(f"mutation run: FAILED: {judge.failed}", flush=True)
        return 1
    return 0 if code in (0, 5) else int(code)


if __name__ == "__main__":
    sys.exit(main())
