"""Simulated components and the hosts that put them into the world: echo servers and pingers, WireGuard
and ICE endpoints, the dev relay's host (``connectivity``), the upstream DNS server, resources and the
gateway's host. The dev client and the dev relay themselves are the pure :mod:`devpeers` package; the
client's host and its portal signalling are :mod:`sim.client_portal`."""
