"""What one probe or DNS query of the stateful harness must produce at the client, checked exactly.

:func:`matches` says whether the records a client got for one probe are exactly what one predicted
outcome means, once: echo reply / UDP echo / SYN-ACK + response from the address the client used (the
proxy IP for the DNS resource, the gateway's tunnel address for the gateway itself), ICMP prohibited or
port unreachable quoting the probe, RST, or nothing. :func:`expect_dns` checks DNS answers against the
model's prediction (rcode, source, records). Key events seen here (SERVFAIL, REFUSED) are counted in
``coverage``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from devpeers.client_types import DnsAnswer, EchoReply, IcmpErrorReceived, Received, TcpReceived, UdpReceived
from gateway_core.addr import IPAddress
from gateway_core.wire.ip import TCP_ACK, TCP_RST, TCP_SYN
from sim.reference import DnsPrediction, Outcome
from sim.stateful.scene import InvariantError


def describe(got: Sequence[Received]) -> str:
    return "nothing" if not got else str(list(got))


def matches(
    outcome: Outcome,
    proto: str,
    dst: IPAddress,
    seq: int,
    sport: int,
    payload: bytes,
    got: Sequence[Received],
    lossy: bool = False,
) -> bool:
    """Whether ``got`` (everything the client received for one probe) is exactly ``outcome``; with
    ``lossy`` an answer may be missing (all of it, or the second segment of a TCP exchange)."""
    v6 = dst.version == 6
    if outcome is Outcome.NOTHING or (lossy and not got):
        return not got
    if lossy and proto == "tcp" and outcome is Outcome.REPLY and len(got) == 1:
        r = got[0]
        return isinstance(r, TcpReceived) and r.src == dst and r.flags == TCP_SYN | TCP_ACK
    if outcome in (Outcome.PROHIBITED, Outcome.PORT_UNREACHABLE, Outcome.UNREACHABLE):
        code = (1, 1) if v6 else (3, 13)
        if outcome is Outcome.PORT_UNREACHABLE:
            code = (1, 4) if v6 else (3, 3)
        elif outcome is Outcome.UNREACHABLE:
            code = (1, 3) if v6 else (3, 0)
        return (
            len(got) == 1
            and isinstance(got[0], IcmpErrorReceived)
            and (got[0].icmp_type, got[0].code) == code
            and got[0].inner_dst == dst
            and (got[0].inner_seq == seq if proto == "icmp" else got[0].inner_sport == sport)
        )
    if outcome is Outcome.RESET:
        rr = got[0] if len(got) == 1 else None
        return (
            isinstance(rr, TcpReceived) and rr.src == dst and rr.dport == sport and bool(rr.flags & TCP_RST)
        )
    if proto == "icmp":
        r0 = got[0] if len(got) == 1 else None
        return isinstance(r0, EchoReply) and r0.src == dst and r0.seq == seq
    if proto == "udp":
        r1 = got[0] if len(got) == 1 else None
        return isinstance(r1, UdpReceived) and r1.src == dst and (r1.dport, r1.payload) == (sport, payload)
    tcp = [r for r in got if isinstance(r, TcpReceived) and r.src == dst and r.dport == sport]
    shape = [(r.flags, r.payload) for r in tcp]
    return len(got) == 2 and shape == [(TCP_SYN | TCP_ACK, b""), (TCP_ACK, b"re:" + payload)]


def expect_dns(
    coverage: Counter[str],
    c: int,
    name: str,
    rtype: str,
    pred: DnsPrediction,
    got: Sequence[Received],
    lossy: bool = False,
) -> None:
    """``got`` (the client's DNS answers to this one query) is exactly what ``pred`` says; with ``lossy``
    an answer that had to cross the network may be missing."""
    what = f"client-{c} DNS {name} {rtype}: expected {pred.rcode} {pred.records} ({pred.source})"
    if lossy and pred.source != "local" and not got:
        return
    if pred.rcode == "none":
        if got:
            raise InvariantError(f"{what}, got {got}")
        return
    if len(got) != 1 or not isinstance(got[0], DnsAnswer):
        raise InvariantError(f"{what} exactly once, got {got}")
    ans = got[0]
    if ans.rcode != pred.rcode or ans.source != pred.source or ans.name != name or ans.rtype != rtype:
        raise InvariantError(f"{what}, got {ans}")
    if pred.source in ("gateway", "tunnel") and ans.records != pred.records:
        raise InvariantError(f"{what}, got records {ans.records}")
    if pred.source == "local" and pred.rcode == "NOERROR" and len(ans.records) != 4:
        raise InvariantError(f"{what} (4 proxy IPs), got {ans.records}")
    if ans.rcode == "SERVFAIL":
        coverage["event:servfail"] += 1
    if ans.rcode == "REFUSED":
        coverage["event:refused"] += 1
