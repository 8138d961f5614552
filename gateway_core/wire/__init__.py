"""Stateless wire codecs: bytes <-> typed values, no state and no time.

- :mod:`gateway_core.wire.checksum`: the Internet checksum, full and incremental (RFC 1071/1624).
- :mod:`gateway_core.wire.ip`: IPv4/IPv6/UDP/TCP/ICMP parsers, builders and data-path accessors
  (re-exporting the builders of :mod:`gateway_core.wire.ipbuild` and constants of
  :mod:`gateway_core.wire.ipconst`).
- :mod:`gateway_core.wire.icmp`: ICMP errors the gateway sends and those it receives from the TUN.
- :mod:`gateway_core.wire.rewrite`: in-place NAT rewriting with incremental checksum fix-up, ECN merge.
- :mod:`gateway_core.wire.stun`, :mod:`gateway_core.wire.turn`: STUN messages and TURN/ChannelData.
"""
