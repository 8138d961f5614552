"""The thin IO layer: maps :mod:`gateway_core` onto a real TUN device, sockets, the portal and DNS."""
