"""The two distributions of decision 0104, built as wheels from a copy of the sources (offline).

The production wheel (``pyproject.toml``) holds ``gateway_core`` and ``gateway_io`` and the
``firezone-gateway`` console script, nothing of the dev tools; the dev tools' wheel
(``packaging/devtools/pyproject.toml``) holds the simulator, the dev portal, the dev peers, their IO and
the e2e demo with their console scripts, and none of the production packages.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION = {"gateway_core", "gateway_io"}
DEV_TOOLS = {"sim", "devportal", "devpeers", "devio", "e2e"}
PRODUCTION_SCRIPTS = {"firezone-gateway": "gateway_io.cli:main"}
DEV_SCRIPTS = {
    "firezone-sim": "sim.cli:main",
    "firezone-dev-portal": "devio.portal:main",
    "firezone-dev-relay": "devio.relay:main",
    "firezone-e2e": "e2e.demo:main",
}


def _source_copy(dst: Path) -> Path:
    """The project files a build reads, and every top-level package, copied to ``dst``."""
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    (dst / "packaging" / "devtools").mkdir(parents=True)
    shutil.copy2(ROOT / "packaging/devtools/pyproject.toml", dst / "packaging/devtools/pyproject.toml")
    skip = shutil.ignore_patterns("__pycache__", "node_modules", "*.egg-info")
    for path in sorted(ROOT.iterdir()):
        if path.is_dir() and (path / "__init__.py").is_file():
            shutil.copytree(path, dst / path.name, ignore=skip)
    return dst


def _wheel(project: Path, out: Path) -> zipfile.ZipFile:
    before = set(out.glob("*.whl"))
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [*pip, "-w", str(out), str(project)],
        check=True,
        capture_output=True,
        cwd=project,
    )
    (built,) = set(out.glob("*.whl")) - before
    return zipfile.ZipFile(built)


def _top_levels(wheel: zipfile.ZipFile) -> set[str]:
    return {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}


def _scripts(wheel: zipfile.ZipFile) -> dict[str, str]:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    return dict(parser["console_scripts"]) if parser.has_section("console_scripts") else {}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, zipfile.ZipFile]:
    src = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheels")
    return _wheel(src, out), _wheel(src / "packaging" / "devtools", out)


def test_production_wheel_ships_the_core_and_the_daemon_only(
    wheels: tuple[zipfile.ZipFile, zipfile.ZipFile],
) -> None:
    prod, _ = wheels
    names = set(prod.namelist())
    assert _top_levels(prod) == PRODUCTION
    assert {"gateway_core/__init__.py", "gateway_core/py.typed", "gateway_io/cli.py"} <= names
    assert not any(n.split("/")[0] in DEV_TOOLS for n in names)
    assert _scripts(prod) == PRODUCTION_SCRIPTS


def test_dev_tools_wheel_ships_the_dev_tools_and_no_production_package(
    wheels: tuple[zipfile.ZipFile, zipfile.ZipFile],
) -> None:
    _, dev = wheels
    names = set(dev.namelist())
    assert _top_levels(dev) == DEV_TOOLS
    expected = {"sim/cli.py", "devpeers/client.py", "devio/portal.py", "e2e/demo.py", "devportal/portal.py"}
    assert expected <= names
    assert _scripts(dev) == DEV_SCRIPTS
    for target in DEV_SCRIPTS.values():
        module = target.partition(":")[0]
        assert module.replace(".", "/") + ".py" in names, target
