"""A deterministic simulator: virtual clock and network driving sans-IO components.

- :mod:`sim.clock`: :class:`~sim.clock.VirtualClock` (integer ns, plus a wall clock in step).
- :mod:`sim.net`: :class:`~sim.net.Network` (routes, links, partitions, packet fates),
  :class:`~sim.net.LinkProfile`, :class:`~sim.net.NetDrop`.
- :mod:`sim.host`: :class:`~sim.host.Host` (addresses, sockets, a component) and the stream events.
- :mod:`sim.world`: :class:`~sim.world.World`, the discrete-event loop.
- :mod:`sim.contract`: the driving-contract checks and :class:`~sim.contract.ContractViolation`.
- :mod:`sim.trace`, :mod:`sim.pcap`: JSON-lines trace and pcap capture of a run.
- :mod:`sim.hosts`: simulated components (echo server, pinger); :mod:`sim.scenarios`: ready-made worlds.
- :mod:`sim.cli`: ``firezone-sim`` (also ``python -m sim``).
"""
