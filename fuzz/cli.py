"""``python -m fuzz``: the fuzzing command line.

- ``list``: the targets.
- ``run TARGET [libFuzzer flags]``: one target under atheris, with its seed corpus (read only) and its
  scratch corpus ``.fuzz/corpus/TARGET`` (where libFuzzer keeps what it finds); crash files go to
  ``.fuzz/crashes/``.
- ``all [--seconds S | --runs N] [--jobs J] [TARGET...]``: every target (or those named) in turn, J at a
  time, each bounded by S seconds or N executions; prints executions per target; exits 1 if any target
  failed, naming the crash files (what ``make fuzz`` runs).
- ``replay TARGET FILE...``: run saved inputs through the target in-process, without atheris (a crash
  shows its Python traceback).
- ``seeds``: regenerate ``fuzz/corpus`` (:mod:`fuzz.seeds`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "corpus"
WORK = ROOT / ".fuzz"
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"^#(\d+)\s", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Outcome:
    target: str
    returncode: int
    runs: int
    seconds: float
    log: Path


def command(target: str, flags: list[str], *, scratch: Path = WORK) -> list[str]:
    """The atheris command line for ``target``: scratch corpus first (written), seeds second (read)."""
    corpus = scratch / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    crashes = scratch / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "fuzz.run",
        target,
        f"-artifact_prefix={crashes}/{target}-",
        *flags,
        str(corpus),
        str(SEEDS / target),
    ]


def executions(log: str) -> int:
    """Executions libFuzzer reported (its closing ``Done N runs`` line, else its last status line)."""
    m = _DONE.search(log)
    if m:
        return int(m.group(1))
    counts = _STAT.findall(log)
    return int(counts[-1]) if counts else 0


def run_many(
    targets: list[str],
    flags: list[str],
    jobs: int,
    *,
    scratch: Path = WORK,
    nice: bool = False,
    report: Callable[[Outcome], None] | None = None,
    extra: dict[str, list[str]] | None = None,
) -> list[Outcome]:
    """Run ``targets`` with ``flags`` (plus ``extra[target]``), ``jobs`` at a time; each one's output
    goes to a log file."""
    logs = scratch / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(targets)
    running: list[tuple[str, subprocess.Popen[bytes], float, Path]] = []
    done: list[Outcome] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    while pending or running:
        while pending and len(running) < jobs:
            t = pending.pop(0)
            log = logs / f"{t}.log"
            cmd = command(t, [*flags, *(extra or {}).get(t, [])], scratch=scratch)
            if nice:
                cmd = ["nice", "-n", "19", *cmd]
            with log.open("wb") as out:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
            running.append((t, proc, time.monotonic(), log))
        time.sleep(0.05)
        for item in list(running):
            t, proc, start, log = item
            rc = proc.poll()
            if rc is None:
                continue
            running.remove(item)
            o = Outcome(t, rc, executions(log.read_text(errors="replace")), time.monotonic() - start, log)
            done.append(o)
            if report is not None:
                report(o)
    return done


def _print_outcome(o: Outcome) -> None:
    status = "ok" if o.returncode == 0 else f"FAILED (exit {o.returncode}, see {o.log})"
    print(f"{o.target:16} {o.runs:10} runs {o.seconds:7.1f} s  {status}", flush=True)


def replay(target: str, files: list[str]) -> int:
    from fuzz import logcheck

    logcheck.install()
    module = importlib.import_module(TARGETS[target].module)
    for f in files:
        print(f"replaying {f}", flush=True)
        module.test_one_input(Path(f).read_bytes())
    print(f"{len(files)} inputs passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz", description="Coverage-guided fuzzing with atheris.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    r = sub.add_parser("run")
    r.add_argument("target", choices=sorted(TARGETS))
    r.add_argument("flags", nargs=argparse.REMAINDER)
    a = sub.add_parser("all")
    a.add_argument("--seconds", type=int, default=None)
    a.add_argument("--runs", type=int, default=None)
    a.add_argument("--jobs", type=int, default=1)
    a.add_argument("--nice", action="store_true", help="run the targets with nice -n 19")
    a.add_argument("--scratch", type=Path, default=WORK, help="scratch corpus, logs and crashes (.fuzz)")
    a.add_argument("targets", nargs="*", metavar="TARGET", help="default: every target")
    rp = sub.add_parser("replay")
    rp.add_argument("target", choices=sorted(TARGETS))
    rp.add_argument("files", nargs="+")
    sub.add_parser("seeds")
    args = p.parse_args(argv)
    if args.cmd == "list":
        for t in TARGETS.values():
            print(f"{t.name:16} {t.summary}")
        return 0
    if args.cmd == "run":
        return subprocess.call(command(args.target, args.flags), cwd=ROOT)
    if args.cmd == "replay":
        return replay(args.target, args.files)
    if args.cmd == "seeds":
        from fuzz import seeds

        seeds.write()
        return 0
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        p.error(f"unknown targets: {', '.join(unknown)} (python -m fuzz list)")
    flags = []
    if args.seconds is not None:
        flags.append(f"-max_total_time={args.seconds}")
    if args.runs is not None:
        flags.append(f"-runs={args.runs}")
    if not flags:
        p.error("all: give --seconds or --runs")
    outcomes = run_many(
        args.targets or list(TARGETS),
        flags,
        args.jobs,
        scratch=args.scratch,
        nice=args.nice,
        report=_print_outcome,
    )
    failed = [o for o in outcomes if o.returncode != 0]
    for o in failed:
        print(f"{o.target}: crash files in {args.scratch / 'crashes'} ({o.target}-*)", file=sys.stderr)
    return 1 if failed else 0
