"""The pipx way of ``docs/operations.md`` ("Three ways to install"), offline and in scratch directories.

``pipx install <source tree>`` with ``PIPX_HOME``/``PIPX_BIN_DIR``/``PIPX_MAN_DIR`` (and ``HOME``) in a
temporary directory, from a copy of this repository's sources, run inside a network namespace of its own
with nothing but loopback: pip may only use ``--no-index --find-links`` to wheels repacked from the
project's own virtual environment (:mod:`tests.system.wheelhouse`: the production dependencies, the build
requirements setuptools and wheel, and the pip that pipx puts in its shared environment). The installed
``firezone-gateway --help`` must then work, and the real system's pipx directories stay as they were.

Bounded: the install gets 60 s (measured about 15 s on a quiet machine; it builds the wheel and creates two
virtual environments); the whole test stops by itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.system.io_netns import netns
from tests.system.wheelhouse import repack
from tests.test_wheels import _source_copy

pytestmark = pytest.mark.system

INSTALL_TIMEOUT = 60.0
"""Seconds ``pipx install`` may take (about 15 s measured): generous, for a busy CI machine."""
BUILD_REQUIRES = ["setuptools", "wheel"]
"""``[build-system] requires`` of pyproject.toml: pip builds the source tree in an isolated environment."""
PIPX_PIP = "pip"
"""pipx installs a recent pip (``pip >= 26.1`` for pipx 1.18) into its shared environment first."""


def _real_pipx_dirs() -> dict[str, list[str] | None]:
    """What the default pipx locations hold now (``None``: absent), to show they are not touched."""
    home = Path.home()
    places = [home / ".local/pipx", home / ".local/share/pipx", home / ".local/bin", Path("/opt/pipx")]
    return {str(p): (sorted(os.listdir(p)) if p.is_dir() else None) for p in places}


def test_pipx_installs_the_gateway_offline_from_the_source_tree(tmp_path: Path) -> None:
    pipx = Path(sys.executable).parent / "pipx"
    assert pipx.is_file(), "pipx is missing: the test extra of packaging/devtools/pyproject.toml has it"
    before = _real_pipx_dirs()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    production = [Requirement(r).name for r in metadata.distribution("firezone-gateway-py").requires or []]
    repack([*production, *BUILD_REQUIRES, PIPX_PIP], wheels)
    src = tmp_path / "src"
    src.mkdir()
    _source_copy(src)
    home, pipx_home, bin_dir = tmp_path / "home", tmp_path / "pipx", tmp_path / "bin"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PIPX_HOME": str(pipx_home),
        "PIPX_BIN_DIR": str(bin_dir),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_CACHE_DIR": "1",
    }
    with netns("fzpipx") as ns:  # loopback only: any attempt to reach an index fails
        pip_args = f"--pip-args=--no-index --find-links={wheels}"
        r = subprocess.run(
            ["ip", "netns", "exec", ns, str(pipx), "install", pip_args, str(src)],
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exe = bin_dir / "firezone-gateway"
    assert exe.resolve().is_relative_to(pipx_home / "venvs" / "firezone-gateway-py"), exe.resolve()
    out = subprocess.run(
        [str(exe), "--help"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "usage: firezone-gateway" in out.stdout and "--api-url" in out.stdout
    listed = subprocess.run(
        [str(pipx), "list", "--short"], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    assert "firezone-gateway-py 0.1.0" in listed.stdout
    # Only the production distribution: none of the dev tools came along.
    venv_bin = pipx_home / "venvs" / "firezone-gateway-py" / "bin"
    assert not (venv_bin / "firezone-sim").exists() and not (venv_bin / "firezone-e2e").exists()
    assert _real_pipx_dirs() == before
