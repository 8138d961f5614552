"""What one probe or DNS query of the stateful harness must produce at the client, checked exactly.

Each function takes the model's prediction and every record the client got during the step (besides
domain statuses and goodbyes, which the harness checks itself) and raises :class:`InvariantError` unless
they are exactly the predicted ones, once: echo reply / UDP echo / SYN-ACK + response from the address the
client used (the proxy IP for the DNS resource), ICMP prohibited or port unreachable quoting the probe,
RST, or nothing; a DNS answer with the predicted rcode, source and records. Key events seen here (ICMP
prohibited, SERVFAIL, REFUSED) are counted in ``coverage``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from devpeers.client_types import DnsAnswer, EchoReply, IcmpErrorReceived, Received, TcpReceived, UdpReceived
from gateway_core.addr import IPAddress
from gateway_core.wire.ip import TCP_ACK, TCP_RST, TCP_SYN
from sim.reference import DnsPrediction, Outcome, Prediction
from sim.stateful.scene import InvariantError


def expect_packet(
    coverage: Counter[str],
    c: int,
    pred: Prediction,
    proto: str,
    dst: IPAddress,
    port: int,
    seq: int,
    sport: int,
    payload: bytes,
    got: Sequence[Received],
) -> None:
    what = f"client-{c} {proto} to {dst}:{port} (seq {seq}, sport {sport}): expected {pred.outcome.value}"
    v6 = dst.version == 6
    if pred.outcome is Outcome.NOTHING:
        if got:
            raise InvariantError(f"{what}, got {got}")
        return
    if pred.outcome is Outcome.PROHIBITED or pred.outcome is Outcome.PORT_UNREACHABLE:
        code = (1, 1) if v6 else (3, 13)
        if pred.outcome is Outcome.PORT_UNREACHABLE:
            code = (1, 4) if v6 else (3, 3)
        errs = [
            r
            for r in got
            if isinstance(r, IcmpErrorReceived)
            and (r.icmp_type, r.code) == code
            and r.inner_dst == dst
            and (r.inner_seq == seq if proto == "icmp" else r.inner_sport == sport)
        ]
        if len(errs) != 1 or len(got) != 1:
            raise InvariantError(f"{what} {code} exactly once, got {got}")
        if pred.outcome is Outcome.PROHIBITED:
            coverage["event:icmp_prohibited"] += 1
        return
    if pred.outcome is Outcome.RESET:
        rst = [
            r
            for r in got
            if isinstance(r, TcpReceived) and r.src == dst and r.dport == sport and r.flags & TCP_RST
        ]
        if len(rst) != 1 or len(got) != 1:
            raise InvariantError(f"{what} (RST once), got {got}")
        return
    if proto == "icmp":
        echo = [r for r in got if isinstance(r, EchoReply) and r.src == dst and r.seq == seq]
        if len(echo) != 1 or len(got) != 1:
            raise InvariantError(f"{what} (echo reply once from {dst}), got {got}")
    elif proto == "udp":
        udp = [
            r
            for r in got
            if isinstance(r, UdpReceived)
            and r.src == dst
            and (r.sport, r.dport, r.payload) == (port, sport, payload)
        ]
        if len(udp) != 1 or len(got) != 1:
            raise InvariantError(f"{what} (UDP echo once from {dst}), got {got}")
    else:
        tcp = [r for r in got if isinstance(r, TcpReceived) and r.src == dst and r.dport == sport]
        shape = [(r.flags, r.payload) for r in tcp]
        if shape != [(TCP_SYN | TCP_ACK, b""), (TCP_ACK, b"re:" + payload)] or len(got) != 2:
            raise InvariantError(f"{what} (SYN/ACK then the response once, from {dst}), got {got}")


def expect_dns(
    coverage: Counter[str], c: int, name: str, rtype: str, pred: DnsPrediction, got: Sequence[Received]
) -> None:
    what = f"client-{c} DNS {name} {rtype}: expected {pred.rcode} {pred.records} ({pred.source})"
    if pred.rcode == "none":
        if got:
            raise InvariantError(f"{what}, got {got}")
        return
    if len(got) != 1 or not isinstance(got[0], DnsAnswer):
        raise InvariantError(f"{what} exactly once, got {got}")
    ans = got[0]
    if ans.rcode != pred.rcode or ans.source != pred.source or ans.name != name or ans.rtype != rtype:
        raise InvariantError(f"{what}, got {ans}")
    if pred.source == "gateway" and ans.records != pred.records:
        raise InvariantError(f"{what}, got records {ans.records}")
    if pred.source == "local" and pred.rcode == "NOERROR" and len(ans.records) != 4:
        raise InvariantError(f"{what} (4 proxy IPs), got {ans.records}")
    if ans.rcode == "SERVFAIL":
        coverage["event:servfail"] += 1
    if ans.rcode == "REFUSED":
        coverage["event:refused"] += 1
