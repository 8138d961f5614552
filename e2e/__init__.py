"""The end-to-end demo on real kernels: the namespace topology that runs the dev tools (the dev portal,
the dev relay and the dev client of :mod:`devio`, coturn) next to the real ``firezone-gateway`` daemon,
and the checks run through it (``firezone-e2e``).

It starts those programs as processes (console scripts and ``python -m devio.<tool>``) and talks to them
over the network and their status files; it never imports ``sim`` (``tests/test_architecture.py`` checks
it)."""
