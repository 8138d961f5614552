"""Feeding the flow tracker from the gateway's data path (datapath §11.2), only when flow logs are on.

Outbound: the key takes the inner source IP and port *before* NAT and the destination IP *after* NAT; the
domain is the one the proxy IP stood for. Inbound: the key is read from the packet as it came from the
TUN (before reverse NAT), so it matches the outbound flow's (real IP, port) pair. Packets that do not
parse as TCP/UDP are not tracked.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.errors import DecodeError
from gateway_core.policy.client import ClientPolicy
from gateway_core.policy.flows import OuterContext
from gateway_core.wire.ip import PROTO_TCP, PROTO_UDP, five_tuple, l4_info

if TYPE_CHECKING:
    from gateway_core.gateway import Gateway

_FIN, _SYN, _RST = 0x01, 0x02, 0x04


def _l4(buf: bytearray) -> tuple[int, int, int] | None:
    """``(proto, payload length, TCP flags)`` for TCP/UDP, else ``None``."""
    try:
        proto, off, end = l4_info(buf)
    except DecodeError:
        return None
    if proto == PROTO_UDP and end - off >= 8:
        return proto, end - off - 8, 0
    if proto == PROTO_TCP and end - off >= 20:
        hl = (buf[off + 12] >> 4) * 4
        return proto, max(0, end - off - hl), buf[off + 13]
    return None


def record_outbound(
    gw: Gateway,
    now: Instant,
    policy: ClientPolicy,
    rid: uuid.UUID,
    pre: bytearray,
    post: bytearray,
    local: SocketAddr,
    remote: SocketAddr,
) -> None:
    info = _l4(pre)
    auth = policy.authorizations.get(rid)
    if info is None or auth is None:
        return
    proto, plen, flags = info
    try:
        _, src, pre_dst, sport, dport = five_tuple(pre)
        _, _, dst, _, _ = five_tuple(post)
    except DecodeError:
        return
    st = policy.nat.translations.get(pre_dst)
    gw.flows.record_outbound(
        now,
        proto=proto,
        client_id=policy.client_id,
        client=policy.properties,
        resource_id=rid,
        resource_name=auth.resource.name,
        resource_address=auth.resource.address_for(dst),
        domain=None if st is None else st.domain,
        src_ip=src,
        dst_ip=dst,
        src_port=sport,
        dst_port=dport,
        payload_len=plen,
        outer=OuterContext(remote.ip, local.ip, remote.port, local.port),
        syn=bool(flags & _SYN),
        fin=bool(flags & _FIN),
        rst=bool(flags & _RST),
    )


def record_inbound(gw: Gateway, now: Instant, policy: ClientPolicy, buf: bytearray) -> None:
    info = _l4(buf)
    if info is None:
        return
    proto, plen, flags = info
    try:
        _, src, dst, sport, dport = five_tuple(buf)
    except DecodeError:
        return
    for rid in policy.authorizations.ids():
        gw.flows.record_inbound(
            now,
            proto=proto,
            client_id=policy.client_id,
            resource_id=rid,
            src_ip=src,
            dst_ip=dst,
            src_port=sport,
            dst_port=dport,
            payload_len=plen,
            fin=bool(flags & _FIN),
            rst=bool(flags & _RST),
        )
