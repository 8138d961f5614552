"""The p2p control protocol (``gateway_core/policy/p2p_control.py``): on any packet ``is_control_packet``
never raises, and ``parse_control_packet`` / ``gateway_read_control`` return or raise ``DecodeError``; on
any payload ``decode_assigned_ips`` / ``decode_domain_status`` return or raise ``DecodeError``; decoded
messages round-trip through their encoders, and a control packet rebuilt from its event and payload
parses back to the same.
"""

from __future__ import annotations

from gateway_core.errors import DecodeError
from gateway_core.policy import p2p_control as p


def test_one_input(data: bytes) -> None:
    control = p.is_control_packet(data)
    try:
        cp = p.parse_control_packet(data)
    except DecodeError:
        assert not control
        cp = None
    try:
        p.gateway_read_control(data)
    except DecodeError:
        pass
    if cp is not None and len(cp.payload) <= p.MAX_PAYLOAD:
        assert p.parse_control_packet(p.build_control_packet(cp.event, cp.payload)) == cp
    payload = cp.payload if cp is not None else data
    try:
        ips = p.decode_assigned_ips(payload)
    except DecodeError:
        pass
    else:
        assert p.decode_assigned_ips(p.encode_assigned_ips(ips)) == ips
    try:
        status = p.decode_domain_status(payload)
    except DecodeError:
        pass
    else:
        assert p.decode_domain_status(p.encode_domain_status(status)) == status
