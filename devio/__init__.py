"""The development tools on real sockets: the IO shells around the pure dev components.

- :mod:`devio.portal`: ``firezone-dev-portal``, the dev portal (:mod:`devportal`) over real WebSockets,
  with an admin API and the long-polled client feed;
- :mod:`devio.relay`: ``firezone-dev-relay``, the dev relay (:class:`devpeers.relay.DevRelay`) on UDP
  sockets;
- :mod:`devio.client`: ``python -m devio.client``, the dev client (:class:`devpeers.client.DevClient`)
  with a TUN device and a UDP socket, so that ordinary programs use the tunnel.

They are what ``e2e`` starts inside network namespaces next to the real ``firezone-gateway``, and what
the IO tests talk to. This package may import ``gateway_core``, ``gateway_io``, ``devportal`` and
``devpeers``; nothing in the production packages imports it, and it is not part of the production wheel.
These are asyncio programs (the ``websockets`` server and plain ``asyncio`` datagram endpoints): unlike the
gateway's own IO layer they need no anyio structure, being single-purpose dev processes.
"""
