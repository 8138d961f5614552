"""Run one target under atheris: ``python -m fuzz.run NAME [libFuzzer flags and corpus directories]``.

Imports the target inside ``atheris.instrument_imports`` restricted to the target's packages, so only
the code under test reports coverage; nothing under test may be imported before (hence no import of
:mod:`fuzz.cli` or the project's packages here). The flags are libFuzzer's (``-runs=N``,
``-max_total_time=S``, ``-seed=N``, ``-artifact_prefix=DIR/``, corpus directories: the first one receives
new inputs).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

import atheris

from fuzz import logcheck
from fuzz.targets import TARGETS


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(
            f"usage: python -m fuzz.run TARGET [libFuzzer flags] [corpus dirs]; targets: {', '.join(TARGETS)}"
        )
    spec = TARGETS[argv[1]]
    logcheck.install()
    with atheris.instrument_imports(include=list(spec.instrument)):
        module = importlib.import_module(spec.module)
    one_input: Callable[[bytes], None] = module.test_one_input
    atheris.Setup([argv[0], *argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
