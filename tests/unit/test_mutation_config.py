"""The mutation check's configuration and its pure parts (``make mutation``: ``scripts/mutation*.py``).

The rule that keeps exception messages out of the mutants (``do_not_mutate_patterns``) may only match
``raise`` statements whose exception carries nothing but its message: this is checked on the source of
every mutated package, so a new ``raise`` of another shape cannot slip a real mutant out of the count.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
from pathlib import Path

import pytest

from scripts.mutation import GROUPS
from scripts.mutation_prepare import LABEL_ARGUMENT, MutantSite, equivalent_by_construction, items_for
from scripts.mutation_runner import CPU_CONSTANT, CPU_FACTOR, Tally, cpu_bound, order_items, status_of
from scripts.mutation_score import counts

ROOT = Path(__file__).resolve().parents[2]
MUTATED = ("gateway_core/policy", "gateway_core/wire", "gateway_core/dns")
MESSAGE_ONLY = {"DecodeError", "UnsupportedIcmpError", "PatternError", "UsageError", "ValueError"}
"""Exceptions of the mutated packages whose only argument is a message: nothing reads it but a log line or a
traceback (the core catches ``DecodeError`` at its boundaries and counts a ``DropReason``; ``UsageError`` and
``ValueError`` are bugs of the caller; ``PatternError`` is logged by ``dns.patterns._compiled``)."""


def _config(group: str) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read_string(GROUPS[group])
    return cfg


def _patterns() -> list[re.Pattern[str]]:
    return [re.compile(p) for p in _config("policy").get("mutmut", "do_not_mutate_patterns").split("\n") if p]


def _is_message(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.IfExp):
        return _is_message(node.body) and _is_message(node.orelse)
    return False


def test_the_repository_setup_cfg_is_the_policy_group() -> None:
    """``mutmut`` run at the top of the tree does the policy group: the same options as the script's. (In a
    group's copy, where ``scripts/mutation.py`` sets ``FZ_MUTATION_GROUP``, it is that group's.)"""
    ours = configparser.ConfigParser()
    ours.read(ROOT / "setup.cfg")
    group = os.environ.get("FZ_MUTATION_GROUP", "policy")
    assert dict(ours["mutmut"]) == dict(_config(group)["mutmut"])
    assert _config("wire-dns").get("mutmut", "only_mutate").split() == [
        "gateway_core/wire/*",
        "gateway_core/dns/*",
    ]
    assert "tests/sim/test_stateful.py::" in _config("policy").get(
        "mutmut", "pytest_add_cli_args_test_selection"
    )


def test_excluded_lines_are_logging_calls_or_raises_of_a_message_only() -> None:
    """Every line a pattern excludes is a logging call or a one-line ``raise`` of a message-only exception
    whose arguments are string literals (f-strings included); and the patterns find every such raise."""
    patterns = _patterns()
    excluded_raises = 0
    for package in MUTATED:
        for path in sorted((ROOT / package).glob("*.py")):
            source = path.read_text(encoding="utf-8")
            lines = source.splitlines()
            raises = {n.lineno: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Raise)}
            for lineno, line in enumerate(lines, 1):
                if not any(p.search(line) for p in patterns):
                    continue
                if re.match(r"\s*log(ger)?\.", line):
                    continue
                node = raises.get(lineno)
                assert node is not None, f"{path.name}:{lineno}: excluded but not a raise statement"
                assert node.end_lineno == lineno, f"{path.name}:{lineno}: a raise over several lines"
                exc = node.exc
                assert isinstance(exc, ast.Call) and isinstance(exc.func, ast.Name), f"{path.name}:{lineno}"
                assert exc.func.id in MESSAGE_ONLY and not exc.keywords, f"{path.name}:{lineno}"
                assert all(_is_message(a) for a in exc.args), f"{path.name}:{lineno}: not only a message"
                assert node.cause is None or isinstance(node.cause, ast.Name | ast.Constant)
                assert line[: node.col_offset].strip() == "", f"{path.name}:{lineno}: code before the raise"
                excluded_raises += 1
            for lineno, node in raises.items():
                exc = node.exc
                if (
                    isinstance(exc, ast.Call)
                    and isinstance(exc.func, ast.Name)
                    and exc.func.id in MESSAGE_ONLY
                ):
                    assert any(p.search(lines[lineno - 1]) for p in patterns), f"{path.name}:{lineno}: missed"
    assert (
        excluded_raises > 150
    )  # the order of magnitude of today's raises (a pattern that matches none fails)


def test_a_mutant_needs_the_items_that_execute_its_lines() -> None:
    by_line = {10: {0, 3}, 11: {3}, 12: {5}, 20: {7}}
    assert items_for(MutantSite(frozenset({11, 12}), (10, 20)), by_line) == [3, 5]
    assert items_for(MutantSite(frozenset({13}), (10, 20)), by_line) == []
    # In the signature (a default value): every item that runs the function's body.
    assert items_for(MutantSite(None, (10, 20)), by_line) == [0, 3, 5, 7]


def test_items_run_earlier_killers_first_then_cheapest_first() -> None:
    seconds = [0.5, 0.1, 0.3, 0.2]
    assert order_items([0, 1, 2, 3], [], seconds) == [1, 3, 2, 0]
    assert order_items([0, 1, 2, 3], [2, 9, 0], seconds) == [2, 0, 1, 3]
    assert order_items([1, 3], [2], seconds) == [1, 3]


def test_cpu_bound_and_exit_statuses() -> None:
    assert cpu_bound(0.0) == int(CPU_CONSTANT)
    assert cpu_bound(2.0) >= CPU_FACTOR * 2.0 + CPU_CONSTANT
    assert status_of(0) == 0 and status_of(1 << 8) == 1
    assert status_of(24) == 36 and status_of(9) == 36  # SIGXCPU (the CPU bound), SIGKILL: timeout
    assert status_of(11) == -11  # SIGSEGV: segfault
    tally = Tally(5)
    for code in (1, 1, 0, 36, 33):
        tally.add(code)
    assert tally.line(3.0) == "5/5 mutants in 3 s: killed 2, timeout 1, survived 1, no tests 1, other 0"


def test_score_counts_the_results_file(tmp_path: Path) -> None:
    f = tmp_path / "r.txt"
    f.write_text(
        "    a.x_f__mutmut_1: killed\n    a.x_f__mutmut_2: survived\n    a.x_g__mutmut_1: no tests\n"
    )
    assert counts(str(f)) == {"killed": 1, "survived": 1, "no tests": 1}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_each_group_mutates_only_its_packages(group: str) -> None:
    cfg = _config(group)["mutmut"]
    assert cfg["source_paths"] == "gateway_core"
    assert cfg.getboolean("mutate_only_covered_lines")


# --- mutants left out as equivalent by construction (scripts/mutation_prepare.py) -------------------------

LABEL_SOURCES = {
    "_object": "gateway_core/policy/p2p_control.py",
    "_get": "gateway_core/policy/p2p_control.py",
    "decode_domain_name": "gateway_core/policy/p2p_control.py",
    "_ip": "gateway_core/policy/p2p_control.py",
    "decode_uuid": "gateway_core/portal/model.py",  # gateway_core.policy.resources: decode_uuid = parse_uuid
    "string": "gateway_core/portal/model.py",
}
DEFINED_AS = {"decode_uuid": "parse_uuid"}


def _function(path: str, name: str) -> ast.FunctionDef:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _label_uses_are_messages(fn: ast.FunctionDef) -> list[str]:
    """Uses of ``what`` in ``fn`` other than inside an f-string of a ``raise`` or as the label argument of
    another label function (with or without more text around it, in an f-string)."""
    allowed: set[int] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Raise):
            allowed |= {id(n) for n in ast.walk(node)}
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in LABEL_ARGUMENT
        ):
            position = LABEL_ARGUMENT[node.func.id]
            if len(node.args) > position:
                allowed |= {id(n) for n in ast.walk(node.args[position])}
    return [
        f"{fn.name}:{n.lineno}"
        for n in ast.walk(fn)
        if isinstance(n, ast.Name) and n.id == "what" and isinstance(n.ctx, ast.Load) and id(n) not in allowed
    ]


@pytest.mark.parametrize("name", sorted(LABEL_ARGUMENT))
def test_label_arguments_only_name_a_field_in_a_message(name: str) -> None:
    """The ``message label`` rule: the argument at that position is the parameter ``what``, and ``what``
    is only read in an exception's message or passed on as the label of another such function."""
    fn = _function(LABEL_SOURCES[name], DEFINED_AS.get(name, name))
    assert fn.args.args[LABEL_ARGUMENT[name]].arg == "what"
    assert _label_uses_are_messages(fn) == []


DEADLINE_REASON_READERS = {
    ("gateway_core/contract.py", "earliest"),  # a tie at the same instant goes to the smaller reason
    ("gateway_core/contract.py", "earliest_exact"),  # likewise
    ("gateway_core/gateway.py", "_at_least_now"),  # passed on into a Deadline
    ("gateway_core/node/node.py", "_finish"),  # passed on
    ("gateway_core/node/node.py", "stale_kept_deadlines"),  # a message for the contract checker
    ("gateway_core/policy/peers.py", "poll_timeout"),  # passed on
    ("gateway_core/policy/peers.py", "_want_utc"),  # passed on
    ("gateway_core/portal/channel.py", "poll_timeout"),  # passed on
    ("gateway_core/turn/allocation.py", "poll_timeout"),  # a (time, reason) candidate: the earliest wins
    # Not a Deadline's: the DropReason of HandshakeRejected (the WireGuard code is not mutated).
    ("gateway_core/wireguard/noise.py", "consume_cookie_reply"),
    ("gateway_core/wireguard/peer.py", "_handle_control"),
    ("gateway_core/wireguard/peer.py", "handle_handshake"),
}


def test_a_deadline_reason_is_read_only_to_break_ties_and_to_be_passed_on() -> None:
    """The ``deadline reason`` rule: nothing in the core branches on a reason's text (a new reader of
    ``.reason`` must be looked at, and the rule kept or dropped)."""
    readers = set()
    for path in sorted((ROOT / "gateway_core").rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for n in ast.walk(fn):
                    if isinstance(n, ast.Attribute) and n.attr == "reason" and isinstance(n.ctx, ast.Load):
                        readers.add((str(path.relative_to(ROOT)), fn.name))
    assert readers <= DEADLINE_REASON_READERS, readers - DEADLINE_REASON_READERS


def _mutations(source: str) -> list[tuple[str, str | None]]:
    """Every mutmut mutation of the one-statement function ``source``, as (mutated code, rule or None)."""
    import libcst as cst
    from libcst.metadata import MetadataWrapper, ParentNodeProvider
    from mutmut.mutation import mutators

    wrapper = MetadataWrapper(cst.parse_module(source))
    parents = wrapper.resolve(ParentNodeProvider)
    out = []
    for node in parents:
        for kind, operator in mutators.mutation_operators:
            if isinstance(node, kind):
                for mutated in operator(node):
                    code = cst.Module([]).code_for_node(mutated)
                    out.append((code, equivalent_by_construction(node, mutated, parents)))
    return out


def test_the_rules_on_each_kind_of_mutant() -> None:
    rules = dict(_mutations('def f(o):\n    return _get(o, "status", "domain_status")\n'))
    assert rules['"XXdomain_statusXX"'] == rules['"DOMAIN_STATUS"'] == "message label"
    assert rules['_get(o, "status", None)'] == "message label"
    assert rules['_get(o, "status", )'] == "message label"
    assert rules['"XXstatusXX"'] is None  # the key is behaviour
    assert rules['_get(o, None, "domain_status")'] is None
    assert rules['_get(o, "domain_status")'] is None
    rules = dict(_mutations('def f(v, what="domain"):\n    return g(v, "x")\n'))
    assert rules['"XXdomainXX"'] == "message label" and rules['"XXxXX"'] is None
    rules = dict(_mutations('def f(t):\n    return Deadline(max(t, 1), "nat expiry")\n'))
    assert rules['"NAT EXPIRY"'] == "deadline reason"
    assert rules["Deadline(max(t, 1), None)"] is None  # None against a str in a tie raises
    assert rules["2"] is None  # the number in max(t, 1)
