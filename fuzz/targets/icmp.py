"""ICMP errors read from the TUN (``gateway_core/wire/icmp.py``): ``parse_icmp_error`` returns ``None``,
an :class:`IcmpError`, or raises ``DecodeError`` (``UnsupportedIcmpError`` included), on any bytes.

For a parsed error the translation the gateway performs (re-addressed to a proxy IP and a client, the
quoted packet rewritten) succeeds and yields a packet that ``validate`` accepts unless the quoted
packet makes it too large, and that parses back as an ICMP error of the same type and code quoting the
rewritten destination and port.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from gateway_core.errors import DecodeError
from gateway_core.wire import icmp, ip

PROXY4, CLIENT4 = IPv4Address("100.96.0.1"), IPv4Address("100.64.0.2")
PROXY6, CLIENT6 = IPv6Address("fd00:2021:1111:8000::1"), IPv6Address("fd00:2021:1111::2")


def test_one_input(data: bytes) -> None:
    try:
        err = icmp.parse_icmp_error(data)
    except DecodeError:
        return
    if err is None:
        return
    assert err.version == data[0] >> 4
    assert 0 <= err.inner_sport <= 0xFFFF and 0 <= err.inner_dport <= 0xFFFF
    icmp.is_prohibited(err)
    proxy, client = (PROXY4, CLIENT4) if err.version == 4 else (PROXY6, CLIENT6)
    port = (err.inner_sport * 7 + 1) & 0xFFFF
    out = icmp.translate_icmp_error(err, proxy, port, client)
    if ip.validate(out) is not None:
        return  # too large (a long quote) or a quote etherparse would not accept either; dropped later
    back = icmp.parse_icmp_error(out)
    assert back is not None
    assert (back.icmp_type, back.code) == (err.icmp_type, err.code)
    assert back.inner_dst == proxy
    assert back.inner_sport == port
