"""End-to-end tooling on real kernels (issue 9): the project's relay and the simulated client over real
sockets, and the namespace topology that runs them next to the real ``firezone-gateway`` daemon.

This package may import ``gateway_core``, ``gateway_io``, ``sim`` and ``devportal`` (it is the one place
where the simulator's logic meets the IO layer; ``sim`` and ``gateway_io`` never import each other)."""
