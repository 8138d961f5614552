"""``make mutation``, step 1 of a group: coverage per test item, the mutants, and which items each one needs.

Run by :mod:`scripts.mutation` in a group's copy of the tree (``build/mutation/<group>``, whose ``setup.cfg``
holds the group's mutmut configuration), as ``python scripts/mutation_prepare.py``. It does what ``mutmut
run`` does before it tests a mutant, with three differences:

1. **Coverage per test item.** The selected tests run once under coverage.py (only the files to mutate are
   traced), with a coverage context per test item, in ``--children`` parts side by side (every part collects
   all items and runs every n-th); this gives both the lines to mutate (mutmut's
   ``mutate_only_covered_lines``) and, for every line, the items that executed it. No statistics run and no
   clean run: the runner's clean pass is the one run of the tests with the trampolines in place.
2. **A mutant needs only the items that execute it.** The mutants are generated with mutmut's own code
   (operators, trampolines, ``do_not_mutate_patterns``, meta files), and each is mapped to the source lines
   of its mutated node and of the statement holding it: an item that executes none of these lines runs the
   same code with or without the mutant, so it cannot kill it and is not run for it (mutmut itself runs every
   item that calls the function). A mutant in a function's signature (a default value) is used wherever the
   function is called without that argument, so it gets every item that runs the function's body.

3. **Equivalent by construction, left out** (:func:`equivalent_by_construction`): mutations that can only
   change a message label or a deadline's reason text are dropped before mutmut writes the mutated file.

Writes ``mutants/fz-selection.json``: the items in collection order, their CPU seconds under coverage, for
each mutant the indices of its items, and how many mutants each rule left out. :mod:`scripts.mutation_runner`
judges them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SELECTION = Path("mutants") / "fz-selection.json"
"""What this step hands to :mod:`scripts.mutation_runner` (relative to the group's copy)."""
PYTEST_ARGS = ("--rootdir=.", "-p", "no:cacheprovider", "-p", "no:randomly", "-q", "-x", "--tb=short")
"""Every pytest session of the mutation check: no cache, no random order, stop at the first failure."""


LABEL_ARGUMENT = {"_object": 1, "_get": 2, "decode_domain_name": 1, "_ip": 1, "decode_uuid": 1, "string": 1}
"""Functions whose argument at this position (always the parameter ``what``) only names the field in the
text of the ``DecodeError`` they raise (``tests/unit/test_mutation_config.py`` checks the source of each):
a mutant that changes only that argument (or the parameter's default) changes only a message."""


def equivalent_by_construction(original: Any, mutated: Any, parents: Any) -> str | None:
    """Why a mutation (libcst nodes before and after, and the parent of each original node) cannot change
    behaviour, or ``None``. The rules, each checked by ``tests/unit/test_mutation_config.py``:

    - ``message label``: it changes, replaces with ``None`` or removes the ``what`` argument of a
      :data:`LABEL_ARGUMENT` function, or changes the default of a parameter ``what``;
    - ``deadline reason``: it changes the text of the reason of a ``Deadline(at, reason)``, a label for
      traces (a tie between two deadlines at the same instant goes to the smaller reason, and every
      component serves all that is due whichever reason won). Not ``None``: that would raise in a tie.

    (Exception messages themselves are left out by ``do_not_mutate_patterns``, logging calls likewise.)
    """
    import libcst as cst

    if isinstance(original, cst.BaseString):
        parent = parents.get(original)
        if isinstance(parent, cst.Param) and parent.name.value == "what":
            return "message label"
        if isinstance(parent, cst.Arg):
            call = parents.get(parent)
            if isinstance(call, cst.Call) and isinstance(call.func, cst.Name):
                index = list(call.args).index(parent)
                if _is_label(call, index):
                    return "message label"
                if (
                    call.func.value == "Deadline"
                    and isinstance(mutated, cst.BaseString)
                    and _is_reason(call, index)
                ):
                    return "deadline reason"
        return None
    if (
        isinstance(original, cst.Call)
        and isinstance(mutated, cst.Call)
        and isinstance(original.func, cst.Name)
    ):
        changed = _changed_argument(list(original.args), list(mutated.args))
        if changed is not None and _is_label(original, changed):
            return "message label"
    return None


def _is_label(call: Any, index: int) -> bool:
    position = LABEL_ARGUMENT.get(call.func.value)
    if position is None:
        return False
    arg = call.args[index]
    return arg.keyword.value == "what" if arg.keyword is not None else index == position


def _is_reason(call: Any, index: int) -> bool:
    arg = call.args[index]
    return arg.keyword.value == "reason" if arg.keyword is not None else index == 1


def _changed_argument(before: list[Any], after: list[Any]) -> int | None:
    """The one argument an ``operator_arg_removal`` mutant replaced with ``None`` or removed (the other
    arguments are the same objects), or ``None`` if it is not such a mutant."""
    if len(before) == len(after):
        diff = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a is not b]
        return diff[0] if len(diff) == 1 else None
    if len(before) == len(after) + 1:
        i = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a is not b), len(after))
        return i if all(a is b for a, b in zip(before[i + 1 :], after[i:], strict=True)) else None
    return None


@dataclass(frozen=True, slots=True)
class MutantSite:
    """Where a mutant sits in the original source: ``lines`` (its node's and its statement's first line), or
    ``None`` when it is in the function's signature (then every line of ``body`` counts)."""

    lines: frozenset[int] | None
    body: tuple[int, int]


def items_for(site: MutantSite, items_by_line: dict[int, set[int]]) -> list[int]:
    """The items (indices) that execute the mutant of ``site``: any of its lines, or any line of the body."""
    lines: Iterable[int] = site.lines if site.lines is not None else range(site.body[0], site.body[1] + 1)
    out: set[int] = set()
    for line in lines:
        out |= items_by_line.get(line, set())
    return sorted(out)


# --- coverage per item (in a forked child: the step's own process must not import the code under test) --


@dataclass(slots=True)
class Coverage:
    items: list[str] = field(default_factory=list)
    """Every item of the selection, in collection order."""
    seconds: dict[int, float] = field(default_factory=dict)
    """CPU seconds of the items this part ran (under coverage), by index."""
    lines: dict[str, dict[int, set[int]]] = field(default_factory=dict)
    """Absolute file name -> line -> the indices of the items that executed it."""
    excluded: dict[str, set[int]] = field(default_factory=dict)

    def merge(self, other: Coverage) -> None:
        if self.items and other.items != self.items:
            raise RuntimeError("the parts of the coverage run collected different items")
        self.items = other.items
        self.seconds.update(other.seconds)
        for f, by_line in other.lines.items():
            mine = self.lines.setdefault(f, {})
            for line, items in by_line.items():
                mine.setdefault(line, set()).update(items)
        for f, lines in other.excluded.items():
            self.excluded.setdefault(f, set()).update(lines)


def measure(selection: list[str], files: list[str], part: int, parts: int) -> Coverage:
    """Run every ``parts``-th item of ``selection`` from the ``part``-th under coverage.py, with one context
    per item (in ``mutants/``); the parts run side by side, one per core."""
    import coverage
    import pytest

    cov = coverage.Coverage(data_file=None, include=files, branch=False)
    out = Coverage()
    index: dict[str, int] = {}

    class PerItem:
        def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
            out.items = [item.nodeid for item in items]
            index.update((n, i) for i, n in enumerate(out.items))
            mine = [item for i, item in enumerate(items) if i % parts == part]
            config.hook.pytest_deselected(items=[item for i, item in enumerate(items) if i % parts != part])
            items[:] = mine

        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> Any:
            i = index[item.nodeid]
            cov.switch_context(str(i))
            t0 = time.process_time()
            try:
                return (yield)
            finally:
                out.seconds[i] = time.process_time() - t0
                cov.switch_context("")

    cov.start()
    try:
        code = pytest.main([*PYTEST_ARGS, *selection], plugins=[PerItem()])
    finally:
        cov.stop()
    if code != 0:
        raise RuntimeError(f"the tests fail without any mutant (pytest exit code {int(code)})")
    data = cov.get_data()
    for f in files:
        by_line: dict[int, set[int]] = defaultdict(set)
        for line, contexts in (data.contexts_by_lineno(f) or {}).items():
            by_line[line] |= {int(c) for c in contexts if c}
        out.lines[f] = dict(by_line)
        try:
            out.excluded[f] = set(cov.analysis2(f)[2])
        except coverage.exceptions.CoverageException:
            out.excluded[f] = set()
    return out


def in_parallel(parts: int, run: Callable[[int], Coverage]) -> Coverage:
    """``run(part)`` for every part, each in a forked child (they import the code under test, which this
    process must not: it writes the mutants next), all at once; their results merged."""
    pipes = []
    for part in range(parts):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its result (or its error) down the pipe
            os.close(r)
            try:
                result: Any = run(part)
            except BaseException as e:
                result = RuntimeError(f"coverage part {part}: {type(e).__name__}: {e}")
            with os.fdopen(w, "wb") as f:
                pickle.dump(result, f)
            os._exit(0)
        os.close(w)
        pipes.append((pid, r))
    total = Coverage()
    errors = []
    for pid, r in pipes:
        with os.fdopen(r, "rb") as f:
            try:
                result = pickle.load(f)
            except EOFError:
                result = RuntimeError("a coverage part died")
        os.waitpid(pid, 0)
        if isinstance(result, BaseException):
            errors.append(str(result))
        else:
            total.merge(result)
    if errors:
        raise RuntimeError("; ".join(errors))
    return total


# --- the mutants, with their sites ----------------------------------------------------------------------


def mutate_file(
    path: Path, covered: set[int], excluded: set[int]
) -> tuple[dict[str, MutantSite], dict[str, int]]:
    """Write ``mutants/<path>`` with every mutant of ``path`` (mutmut's code: the same mutants, trampolines,
    meta and span files as ``mutmut run``) but those :func:`equivalent_by_construction`; return each
    mutant's site by mutant name, and how many were left out by each rule."""
    import libcst as cst
    from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider
    from mutmut.mutation.data import MutantLineSpans, SourceFileMutationData
    from mutmut.mutation.file_mutation import (
        MutationVisitor,
        _compute_mutated_function_hashes,
        combine_mutations_to_source,
    )
    from mutmut.mutation.mutators import mutation_operators
    from mutmut.mutation.pragma_handling import get_ignored_lines
    from mutmut.mutation.trampoline_templates import mangle_function_name
    from mutmut.utils.format_utils import get_mutant_name

    source = path.read_text(encoding="utf-8")
    # mutmut.mutation.file_mutation.create_mutations, keeping the wrapper for the nodes' positions.
    wrapper = MetadataWrapper(cst.parse_module(source))
    ignored = get_ignored_lines(str(path), source, wrapper, excluded)
    visitor = MutationVisitor(mutation_operators, ignored, covered)
    module = wrapper.visit(visitor)
    parents = wrapper.resolve(ParentNodeProvider)
    left_out: dict[str, int] = defaultdict(int)
    kept = []
    for m in visitor.mutations:
        why = equivalent_by_construction(m.original_node, m.mutated_node, parents)
        if why is None:
            kept.append(m)
        else:
            left_out[why] += 1
    visitor.mutations = kept
    mutated = combine_mutations_to_source(
        module, visitor.mutations, visitor.ignored_classes, visitor.ignored_functions
    )
    hashes = _compute_mutated_function_hashes(source, module, visitor.mutations)
    positions = wrapper.resolve(PositionProvider)

    class_of: dict[cst.CSTNode, str | None] = {}
    for stmt in module.body:
        if isinstance(stmt, cst.FunctionDef):
            class_of[stmt] = None
        elif isinstance(stmt, cst.ClassDef) and isinstance(stmt.body, cst.IndentedBlock):
            for method in stmt.body.body:
                class_of[method] = stmt.name.value

    def statement_of(node: cst.CSTNode) -> cst.CSTNode:
        while not isinstance(node, (cst.BaseSmallStatement, cst.BaseCompoundStatement)):
            node = parents[node]
        return node

    sites: dict[str, MutantSite] = {}
    counter: dict[cst.CSTNode, int] = defaultdict(int)
    for m in visitor.mutations:
        func = m.contained_by_top_level_function
        if not isinstance(func, cst.FunctionDef) or func not in class_of:
            continue  # mutmut makes no mutant of it either (class attributes)
        counter[func] += 1
        mangled = mangle_function_name(name=func.name.value, class_name=class_of[func])
        name = get_mutant_name(path, f"{mangled}__mutmut_{counter[func]}")
        fpos = positions[func]
        body = (positions[func.body.body[0]].start.line, fpos.end.line)
        stmt = statement_of(m.original_node)
        npos = positions[m.original_node]
        if stmt is func or npos.start.line < body[0]:
            sites[name] = MutantSite(None, body)
        else:
            lines = {positions[stmt].start.line, *range(npos.start.line, npos.end.line + 1)}
            sites[name] = MutantSite(frozenset(lines), body)
    expected = {get_mutant_name(path, n) for n in mutated.mutant_names}
    if set(sites) != expected:
        raise RuntimeError(
            f"{path}: the mutants' names do not follow mutmut's naming (another mutmut version?)"
        )

    out = Path("mutants") / path
    out.write_text(mutated.code, encoding="utf-8")
    data = SourceFileMutationData(path=path)
    data.exit_code_by_key = dict.fromkeys(sorted(expected))
    data.hash_by_function_name = dict(hashes)
    data.save()
    MutantLineSpans(path=path, span_by_function_name=mutated.line_span_by_function_name).save()
    return sites, dict(left_out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="prepare a group's copy (see the module docstring)")
    ap.add_argument("--children", type=int, default=os.cpu_count() or 2)
    children = ap.parse_args(argv).children
    from mutmut.configuration import config
    from mutmut.utils.file_utils import (
        copy_also_copy_files,
        copy_src_dir,
        setup_source_paths,
        walk_source_files,
    )

    started = time.monotonic()
    cfg = config()
    Path("mutants").mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    to_mutate = [p for p in walk_source_files() if cfg.should_mutate(p)]
    absolute = {p: str((Path("mutants") / p).absolute()) for p in to_mutate}

    def run(part: int) -> Coverage:
        os.chdir("mutants")
        return measure(cfg.pytest_add_cli_args_test_selection, sorted(absolute.values()), part, children)

    cov = in_parallel(children, run)
    print(
        f"mutation prepare: coverage of {len(cov.items)} test items in {time.monotonic() - started:.0f} s "
        f"({sum(cov.seconds.values()):.1f} s of CPU in the tests, {children} at a time)",
        flush=True,
    )
    jobs = [(p, set(cov.lines.get(absolute[p], {})), cov.excluded.get(absolute[p], set())) for p in to_mutate]
    with multiprocessing.get_context("fork").Pool(children) as pool:
        all_sites = pool.starmap(mutate_file, jobs, chunksize=1)
    mutants: dict[str, dict[str, Any]] = {}
    left_out: dict[str, int] = defaultdict(int)
    for n, (path, (sites, out)) in enumerate(zip(to_mutate, all_sites, strict=True)):
        by_line = cov.lines.get(absolute[path], {})
        for name, site in sites.items():
            mutants[name] = {"file": n, "items": items_for(site, by_line)}
        for why, count in out.items():
            left_out[why] += count
    SELECTION.write_text(
        json.dumps(
            {
                "left_out": left_out,
                "items": cov.items,
                "seconds": [cov.seconds[i] for i in range(len(cov.items))],
                "files": [str(p) for p in to_mutate],
                "mutants": mutants,
            }
        ),
        encoding="utf-8",
    )
    reached = sum(1 for v in mutants.values() if v["items"])
    print(
        f"mutation prepare: {len(mutants)} mutants in {len(to_mutate)} files ({reached} reached by a test "
        f"item), {time.monotonic() - started:.0f} s; left out as equivalent by construction: "
        f"{dict(left_out) or 'none'}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
