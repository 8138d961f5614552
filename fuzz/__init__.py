"""Coverage-guided fuzzing of every decoder and of the gateway facade, with atheris (libFuzzer for Python).

Theory of operation
-------------------
A *target* is a module of :mod:`fuzz.targets` with one function, ``test_one_input(data: bytes) -> None``,
that feeds ``data`` to one decoder (or, for ``gateway``, to a whole gateway as a sequence of operations)
and checks that decoder's contract: it returns, or raises only what it documents (``DecodeError`` and its
subclasses for the codecs); a round trip ``decode(encode(x)) == x`` holds where the codec has an encoder;
and, for the gateway, the driving contract (R4, R5, R6) after every call. Anything else escaping
``test_one_input`` (an ``IndexError``, a ``struct.error``, a failed ``assert``) is a bug: atheris saves the
input as a crash file and stops.

:mod:`fuzz.targets` (the registry) names every target with the packages whose code atheris instruments for
coverage; it imports none of them, so that :mod:`fuzz.run` can import the target *inside*
``atheris.instrument_imports`` (a module imported before is not instrumented). Targets never import atheris
at module level except for ``FuzzedDataProvider``, so the tests replay corpus files through them in-process
without instrumentation.

The seed corpus is ``fuzz/corpus/<target>/`` (small files made by :mod:`fuzz.seeds` from the unit tests'
builders and from a simulator run); libFuzzer writes what it finds into a scratch directory
(``.fuzz/corpus/<target>/``), never into the repository. ``python -m fuzz`` is the command line
(``list``, ``run``, ``all``, ``replay``, ``seeds``); ``make fuzz`` runs every target for ``FUZZ_SECONDS``
each; ``tests/fuzz/test_fuzz.py`` replays the corpus in-process and runs every target briefly under atheris
as part of ``make test``.
"""
