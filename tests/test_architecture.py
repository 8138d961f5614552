"""The import rules of ARCHITECTURE.md §1, checked with ``ast``.

- ``gateway_core`` imports nothing that does IO or reads a clock or randomness.
- ``sim`` never imports ``gateway_io``; ``gateway_io`` never imports ``sim``.
"""

from __future__ import annotations

import ast
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
