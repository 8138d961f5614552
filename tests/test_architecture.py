"""The import rules of the project's packages, checked with ``ast``.

- ``gateway_core`` imports nothing that does IO or reads a clock or randomness.
- ``sim`` never imports ``gateway_io``; ``gateway_io`` never imports ``sim``.
- ``gateway_core`` imports none of the dev tools; ``gateway_io`` imports none either; ``devpeers`` is pure;
  ``e2e`` does not import ``sim``; ``devio`` imports neither ``sim`` nor ``e2e``.
- No two modules of ``gateway_core`` import each other, directly or through others (any import counts,
  ``if TYPE_CHECKING:`` and function-level ones included).
- A ``match`` on ``GatewayCommand`` that misses a case is a mypy error (it ends in ``assert_never``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CORE_FORBIDDEN = frozenset(
    {
        "socket",
        "asyncio",
        "anyio",
        "select",
        "selectors",
        "threading",
        "multiprocessing",
        "time",
        "random",
        "secrets",
        "os",
        "subprocess",
        "dns.resolver",
        "dns.asyncresolver",
        "dns.query",
        "gateway_io",
        "sim",
        "e2e",
        "devpeers",
        "devportal",
        "devio",
        "bench",
        "tests",
        "fuzz",
    }
)


def _matches(module: str, forbidden: frozenset[str]) -> str | None:
    """The forbidden name that ``module`` is or lies under, if any."""
    for bad in forbidden:
        if module == bad or module.startswith(bad + "."):
            return bad
    return None


def forbidden_imports(source: str, forbidden: frozenset[str], filename: str = "<sample>") -> list[str]:
    """Every import in ``source`` that falls under ``forbidden``, as ``file:line: module``.

    Covers ``import a.b``, ``from a import b`` (also ``from dns import resolver``), and the dynamic forms
    ``__import__("x")`` and ``importlib.import_module("x")`` with a literal name.
    """
    tree = ast.parse(source, filename=filename)
    found: list[str] = []

    def check(name: str, line: int) -> None:
        if _matches(name, forbidden):
            found.append(f"{filename}:{line}: {name}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports stay inside the package
                continue
            mod = node.module or ""
            check(mod, node.lineno)
            for alias in node.names:
                check(f"{mod}.{alias.name}", node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            name = None
            if isinstance(func, ast.Name) and func.id == "__import__":
                name = "__import__"
            elif isinstance(func, ast.Attribute) and func.attr == "import_module":
                name = "import_module"
            if name and node.args and isinstance(node.args[0], ast.Constant):
                arg = node.args[0].value
                if isinstance(arg, str):
                    check(arg, node.lineno)
    return sorted(set(found))


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _scan(package: str, forbidden: frozenset[str]) -> list[str]:
    out: list[str] = []
    for path in _modules(package):
        rel = str(path.relative_to(ROOT))
        out += forbidden_imports(path.read_text(), forbidden, rel)
    return out


def test_core_is_pure() -> None:
    assert _modules("gateway_core"), "gateway_core has no modules?"
    assert _scan("gateway_core", CORE_FORBIDDEN) == []


def test_sim_does_not_import_io() -> None:
    assert _modules("sim")
    assert _scan("sim", frozenset({"gateway_io"})) == []


def test_io_does_not_import_sim() -> None:
    assert _modules("gateway_io")
    assert _scan("gateway_io", frozenset({"sim"})) == []


@pytest.mark.parametrize(
    "sample",
    [
        "import time",
        "import time as t",
        "from time import monotonic",
        "import os.path",
        "from os import urandom",
        "import random",
        "from secrets import token_bytes",
        "import socket",
        "import asyncio",
        "import anyio",
        "from dns import resolver",
        "import dns.resolver",
        "from gateway_io.driver import Driver",
        "import sim.world",
        "def f():\n    import threading\n",
        "__import__('subprocess')",
        "import importlib\nimportlib.import_module('selectors')",
    ],
)
def test_checker_catches_forbidden_sample(sample: str) -> None:
    assert forbidden_imports(sample, CORE_FORBIDDEN), sample


@pytest.mark.parametrize(
    "sample",
    [
        "import struct",
        "import hashlib",
        "from dns import message",
        "import dns.rrset",
        "from gateway_core.clock import Instant",
        "from . import clock",
        "import timeit_free_name_like_times",
        "import simplejson",
    ],
)
def test_checker_allows_pure_sample(sample: str) -> None:
    assert forbidden_imports(sample, CORE_FORBIDDEN) == [], sample


def test_adding_import_time_to_core_is_caught(tmp_path: Path) -> None:
    """A copy of a real core module with ``import time`` added fails the check."""
    original = (ROOT / "gateway_core" / "clock.py").read_text()
    assert forbidden_imports(original, CORE_FORBIDDEN) == []
    tainted = original.replace("from typing import NewType", "import time\nfrom typing import NewType")
    assert tainted != original
    line = tainted.splitlines().index("import time") + 1
    assert forbidden_imports(tainted, CORE_FORBIDDEN) == [f"<sample>:{line}: time"]


# --- The dev tools' packages (devpeers, devio, devportal, sim, e2e) ----------------------------------------
#
# gateway_core and gateway_io are the production packages; everything else is a dev tool (decision 0104).
# The rules: the production IO layer imports no dev tool; the dev peers are as pure as the core; e2e
# drives processes and never imports the simulator; the simulator never imports the real IO (its own or
# the dev tools'); and no package reaches into another package's private names.

PROJECT_PACKAGES = ("gateway_core", "gateway_io", "sim", "e2e", "devpeers", "devportal", "devio")
DEV_PACKAGES = frozenset({"sim", "e2e", "devpeers", "devportal", "devio"})
IO_FORBIDDEN = DEV_PACKAGES | {"fuzz", "bench", "tests"}
"""What ``gateway_io`` may not import: every dev tool."""
DEVPEERS_FORBIDDEN = (CORE_FORBIDDEN - {"devpeers"}) | {"devportal", "devio", "e2e"}
"""``devpeers`` is pure like the core (and needs nothing of the dev portal)."""
E2E_FORBIDDEN = frozenset({"sim"})
SIM_FORBIDDEN = frozenset({"gateway_io", "devio", "e2e"})
DEVIO_FORBIDDEN = frozenset({"sim", "e2e"})
"""``devio`` puts dev components on real IO: it may use ``gateway_io``, never the simulator or the demo."""


def test_io_imports_no_dev_tool() -> None:
    assert _scan("gateway_io", IO_FORBIDDEN) == []


def test_devpeers_is_pure() -> None:
    assert _modules("devpeers"), "devpeers has no modules?"
    assert _scan("devpeers", DEVPEERS_FORBIDDEN) == []


def test_e2e_does_not_import_sim() -> None:
    assert _modules("e2e")
    assert _scan("e2e", E2E_FORBIDDEN) == []


def test_sim_imports_neither_e2e_nor_real_io() -> None:
    assert _scan("sim", SIM_FORBIDDEN) == []


def test_devio_imports_neither_sim_nor_e2e() -> None:
    assert _modules("devio")
    assert _scan("devio", DEVIO_FORBIDDEN) == []


@pytest.mark.parametrize(
    ("forbidden", "sample"),
    [
        (IO_FORBIDDEN, "from devportal import DevPortal"),
        (IO_FORBIDDEN, "import devpeers.client"),
        (IO_FORBIDDEN, "from devio.portal import DevPortalServer"),
        (IO_FORBIDDEN, "from sim import world"),
        (IO_FORBIDDEN, "import e2e.topology"),
        (DEVPEERS_FORBIDDEN, "import asyncio"),
        (DEVPEERS_FORBIDDEN, "from time import monotonic_ns"),
        (DEVPEERS_FORBIDDEN, "import random"),
        (DEVPEERS_FORBIDDEN, "from gateway_io.udp import UdpSocket"),
        (DEVPEERS_FORBIDDEN, "from sim.world import World"),
        (DEVPEERS_FORBIDDEN, "from devio import client"),
        (E2E_FORBIDDEN, "from sim.hosts.echo import EchoServer"),
        (E2E_FORBIDDEN, "import sim"),
        (SIM_FORBIDDEN, "from e2e.topology import Topology"),
        (SIM_FORBIDDEN, "import devio.relay"),
        (SIM_FORBIDDEN, "from gateway_io import tun"),
        (DEVIO_FORBIDDEN, "from sim.world import World"),
        (DEVIO_FORBIDDEN, "import e2e.topology"),
        (CORE_FORBIDDEN, "from devpeers.client import DevClient"),
        (CORE_FORBIDDEN, "from devportal import DevPortal"),
        (CORE_FORBIDDEN, "import devio.portal"),
        (CORE_FORBIDDEN, "from e2e import checks"),
    ],
)
def test_dev_rules_catch_a_violating_sample(forbidden: frozenset[str], sample: str) -> None:
    assert forbidden_imports(sample, forbidden), sample


@pytest.mark.parametrize(
    ("forbidden", "sample"),
    [
        (IO_FORBIDDEN, "from gateway_core.portal.channel import PortalChannel"),
        (IO_FORBIDDEN, "import simple_name"),
        (DEVPEERS_FORBIDDEN, "from gateway_core.node.factory import wireguard_node"),
        (DEVPEERS_FORBIDDEN, "import dns.message"),
        (E2E_FORBIDDEN, "from gateway_core.wireguard.crypto import public_key"),
        (SIM_FORBIDDEN, "from devpeers.client import DevClient"),
        (SIM_FORBIDDEN, "from devportal import DevPortal"),
        (DEVIO_FORBIDDEN, "from gateway_io.udp import UdpSocket"),
        (DEVIO_FORBIDDEN, "from devpeers.relay import DevRelay"),
    ],
)
def test_dev_rules_allow_a_clean_sample(forbidden: frozenset[str], sample: str) -> None:
    assert forbidden_imports(sample, forbidden) == [], sample


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(source: str, package: str, filename: str = "<sample>") -> list[str]:
    """Every use in ``source`` (a module of ``package``) of another project package's private name.

    Caught: ``from other.mod import _name``, an import of a private module (``from other._mod import x``,
    ``import other._mod``), and attribute access on a name bound by an import from another package
    (``other_module._name``, ``OtherClass._name``, ``other.mod._name``). Dunder names are not private.
    """
    tree = ast.parse(source, filename=filename)
    found: list[str] = []
    bound: set[str] = set()

    def foreign(module: str) -> bool:
        top = module.split(".")[0]
        return top in PROJECT_PACKAGES and top != package

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module and foreign(node.module):
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"{filename}:{node.lineno}: {node.module}")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{filename}:{node.lineno}: {node.module}.{alias.name}")
                bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if foreign(alias.name):
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"{filename}:{node.lineno}: {alias.name}")
                    bound.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root: ast.expr = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return sorted(set(found))


@pytest.mark.parametrize("package", sorted(DEV_PACKAGES))
def test_no_private_names_across_packages(package: str) -> None:
    out: list[str] = []
    for path in _modules(package):
        out += private_imports(path.read_text(), package, str(path.relative_to(ROOT)))
    assert out == []


@pytest.mark.parametrize(
    "sample",
    [
        "from devpeers.client_resources import _Domain",
        "from sim.hosts.connectivity import NODE_PORT, _make_node",
        "from devportal._internal import helper",
        "import devportal._internal",
        "from devpeers import client\nclient._helper()",
        "import devpeers.relay\ndevpeers.relay._secret",
        "import devpeers.relay as r\nr.DevRelay._free",
        "from devpeers.relay import DevRelay\nDevRelay._taken",
    ],
)
def test_private_name_checker_catches_a_violating_sample(sample: str) -> None:
    assert private_imports(sample, "e2e"), sample


@pytest.mark.parametrize(
    "sample",
    [
        "from devpeers.client import DevClient",
        "from e2e.topology import _helper",  # its own package
        "from devpeers import __version__",
        "from collections import _private_stdlib",  # not a project package
        "from devpeers.client import DevClient\nDevClient.__name__",
        "x = object()\nx._anything",  # an instance, not an imported name: not detectable
    ],
)
def test_private_name_checker_allows_a_clean_sample(sample: str) -> None:
    assert private_imports(sample, "e2e") == [], sample


# --------------------------------------------------------------------------------------------------
# No import cycles inside gateway_core


def _module_of(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Every module of ``package`` (under ``root``) -> the modules of the package it imports.

    Every import statement counts wherever it stands: at module level, under ``if TYPE_CHECKING:``, inside
    a function. ``from a.b import c`` imports the module ``a.b.c`` if there is one, else ``a.b``; relative
    imports are resolved against the importing module.
    """
    paths = {_module_of(p, root): p for p in sorted((root / package).rglob("*.py"))}

    def known(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in paths.items():
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_pkg else 0)]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{a.name}" for a in node.names]
            for name in names:
                target = known(name)
                if target is not None and target != mod:
                    edges.add(target)
        graph[mod] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    """One cycle through each group of modules that import each other, as ``a -> b -> ... -> a``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:
        start = min(group)
        paths = {start: [start]}  # breadth-first, inside the group, back to the start
        queue = [start]
        found: list[str] | None = None
        while queue and found is None:
            v = queue.pop(0)
            for w in sorted(graph[v] & group):
                if w == start:
                    found = [*paths[v], start]
                    break
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    queue.append(w)
        assert found is not None
        cycles.append(" -> ".join(found))
    return sorted(cycles)


def test_core_has_no_import_cycles() -> None:
    graph = import_graph(ROOT, "gateway_core")
    assert "gateway_core.gateway" in graph and "gateway_core.control" in graph["gateway_core.gateway"]
    assert import_cycles(graph) == []


def test_cycle_checker_names_a_cycle_through_type_checking_and_function_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import pkg.b\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.c import X\n",
        "sub/__init__.py": "",
        "sub/c.py": "def f():\n    from pkg import a\n    return a\nX = 1\n",
        "d.py": "from . import a\nfrom .sub import c\n",
        "e.py": "from pkg.sub import c\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.d"] == {"pkg.a", "pkg.sub.c"}  # relative imports resolved, submodules found
    assert import_cycles(graph) == ["pkg.a -> pkg.b -> pkg.sub.c -> pkg.a"]
    (pkg / "sub" / "c.py").write_text("X = 1\n")
    assert import_cycles(import_graph(tmp_path, "pkg")) == []


# --------------------------------------------------------------------------------------------------
# Exhaustive matches: mypy rejects a match on GatewayCommand that misses a case


def _command_match_sample(skip: str | None) -> str:
    """A module matching on every member of ``GatewayCommand`` but ``skip``, ending in ``assert_never``."""
    from gateway_core.gateway_types import GatewayCommand

    members = [c for c in typing.get_args(GatewayCommand) if c.__name__ != skip]
    lines = ["from typing import assert_never", "", "from gateway_core.gateway_types import GatewayCommand"]
    lines += [f"from {c.__module__} import {c.__name__}" for c in members]
    lines += ["", "", "def kind(cmd: GatewayCommand) -> str:", "    match cmd:"]
    for c in members:
        lines += [f"        case {c.__name__}():", f"            return {c.__name__!r}"]
    lines += ["        case _:", "            assert_never(cmd)", ""]
    return "\n".join(lines)


def test_mypy_reports_a_missing_case_of_gateway_command(tmp_path: Path) -> None:
    (tmp_path / "complete_match.py").write_text(_command_match_sample(None))
    (tmp_path / "missing_match.py").write_text(_command_match_sample("ResolveDomain"))
    mypy = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--strict"]
    cache = ["--cache-dir", str(ROOT / ".mypy_cache"), "--no-error-summary"]  # the project's: fast
    run = subprocess.run(
        [*mypy, *cache, str(tmp_path / "complete_match.py"), str(tmp_path / "missing_match.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert run.returncode == 1, run.stdout + run.stderr
    assert len(errors) == 1, errors  # the complete match passes
    assert "missing_match.py" in errors[0] and '"ResolveDomain"; expected "Never"' in errors[0], errors
