"""IP parsers (``gateway_core/wire/ip.py``): every accessor on any bytes returns or raises ``DecodeError``,
and they agree with each other.

Contract checked: ``validate`` never raises and says ``None`` only for a packet the data path can read
(``parse_ip``, ``src_dst``, ``l4_info`` and ``five_tuple`` then succeed, the latter unless it is a
fragment); ``locate_l4`` and ``parse_ip`` agree on the version, protocol and transport offset; a parsed
UDP/TCP/ICMP header lies within the packet.
"""

from __future__ import annotations

from gateway_core.errors import DecodeError
from gateway_core.wire import ip


def test_one_input(data: bytes) -> None:
    reason = ip.validate(data)
    try:
        version = ip.ip_version(data)
    except DecodeError:
        version = None
    try:
        located = ip.locate_l4(data)
    except DecodeError:
        located = None
    try:
        ip.locate_l4(data, lax=True)
    except DecodeError:
        pass
    try:
        parsed = ip.parse_ip(data)
    except DecodeError:
        parsed = None
    if parsed is not None:
        assert located is not None, "parse_ip accepted what locate_l4 refused"
        assert version == parsed.version == located[0]
    if reason is None:
        assert parsed is not None and located is not None, "validate accepted an unparsable packet"
        ip.src_dst(data)
        _, off, end = ip.l4_info(data)
        assert 0 <= off <= end <= len(data)
        if not located[4]:
            ip.five_tuple(data)
            try:
                ip.l4_checksum_ok(data)
            except DecodeError:
                pass
    for parser in (ip.parse_udp, ip.parse_tcp, ip.parse_icmp):
        try:
            parser(data)
        except DecodeError:
            pass
    try:
        ip.parse_ipv4(data)
    except DecodeError:
        pass
    try:
        ip.parse_ipv6(data)
    except DecodeError:
        pass
