"""The registry of fuzz targets: name -> module and the packages atheris instruments for it.

Importing this module imports no code under test (see :mod:`fuzz`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One fuzz target: ``module`` defines ``test_one_input(data: bytes) -> None``."""

    name: str
    module: str
    instrument: tuple[str, ...]
    """Top-level packages whose functions report coverage to libFuzzer."""
    summary: str


CORE = ("gateway_core",)

TARGETS: dict[str, TargetSpec] = {
    t.name: t
    for t in (
        TargetSpec("ip", "fuzz.targets.ip", CORE, "IPv4/IPv6/UDP/TCP/ICMP parsers and validate (wire/ip.py)"),
        TargetSpec(
            "icmp", "fuzz.targets.icmp", CORE, "ICMP errors from the TUN and their translation (wire/icmp.py)"
        ),
        TargetSpec(
            "rewrite", "fuzz.targets.rewrite", CORE, "NAT rewriting, checksums, ECN merge (wire/rewrite.py)"
        ),
        TargetSpec(
            "stun", "fuzz.targets.stun", CORE, "STUN messages and attributes, round trip (wire/stun.py)"
        ),
        TargetSpec(
            "turn", "fuzz.targets.turn", CORE, "TURN classification and Data indications (wire/turn.py)"
        ),
        TargetSpec(
            "channel_data", "fuzz.targets.channel_data", CORE, "ChannelData frames, round trip (wire/turn.py)"
        ),
        TargetSpec("wg_messages", "fuzz.targets.wg_messages", CORE, "WireGuard message layouts, round trip"),
        TargetSpec(
            "wg_tunnel", "fuzz.targets.wg_tunnel", CORE, "WireGuardPeer.decapsulate on garbage and mutants"
        ),
        TargetSpec(
            "phoenix", "fuzz.targets.phoenix", CORE, "Phoenix frames and JSON (portal/phoenix.py), round trip"
        ),
        TargetSpec(
            "portal_messages",
            "fuzz.targets.portal_messages",
            CORE,
            "portal payloads (inbound/outbound, model)",
        ),
        TargetSpec(
            "dns", "fuzz.targets.dns", (*CORE, "dns"), "DNS query check and the forwarder's decisions"
        ),
        TargetSpec("p2p_control", "fuzz.targets.p2p_control", CORE, "the p2p control protocol, round trip"),
        TargetSpec(
            "gateway", "fuzz.targets.gateway", CORE, "the Gateway facade: datagrams, TUN, portal, time"
        ),
    )
}
