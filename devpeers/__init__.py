"""The development peers of a gateway: a Firezone-like client and a Firezone-like TURN relay, pure.

:class:`devpeers.client.DevClient` plays the parts of Firezone's client that a gateway sees (ICE,
WireGuard initiator, resource routing, DNS-resource proxy IPs, in-band ``assigned_ips``);
:class:`devpeers.relay.DevRelay` is a TURN server that behaves like Firezone's relay (or like coturn).
Both are sans-IO: time comes in as ``now``, randomness from an injected ``Entropy``, datagrams in and out
as values. The simulator hosts them in its virtual network (``sim``); the dev tools run them on real
sockets and a real TUN device (``devio``).

Like ``devportal``, this package imports ``gateway_core`` only (``tests/test_architecture.py`` checks it).
"""
