"""A test DNS responder built on the layer-4 servers: answers every query from a tiny fixed zone.

- ``A`` questions get ``192.0.2.53``; ``AAAA`` get ``2001:db8::53``;
- ``TXT`` questions get one string naming the transport and the server's address (``"udp 127.0.0.1 5353"``),
  and names starting with ``big.`` get 20 strings of 100 bytes (a response of more than 2000 bytes, too
  large for plain UDP, used over TCP);
- ``SRV`` questions get ``10 5 8080 www.fz.test.``;
- anything else gets NOERROR with no answer.
"""

from __future__ import annotations

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from gateway_io.dns_server import DnsQuery

BIG_TXT_STRINGS = 20
BIG_TXT_LEN = 100


def answer(query: DnsQuery) -> bytes:
    """The wire response to ``query`` (see the module docstring)."""
    msg = dns.message.from_wire(query.message)
    resp = dns.message.make_response(msg)
    q = msg.question[0]
    name = q.name
    if q.rdtype == dns.rdatatype.A:
        resp.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.53"))
    elif q.rdtype == dns.rdatatype.AAAA:
        resp.answer.append(dns.rrset.from_text(name, 60, "IN", "AAAA", "2001:db8::53"))
    elif q.rdtype == dns.rdatatype.TXT:
        if name.labels[0] == b"big":
            text = " ".join(f'"{i:03d}{"x" * (BIG_TXT_LEN - 3)}"' for i in range(BIG_TXT_STRINGS))
        else:
            text = f'"{query.transport} {query.local[0]} {query.local[1]}"'
        resp.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", text))
    elif q.rdtype == dns.rdatatype.SRV:
        resp.answer.append(dns.rrset.from_text(name, 60, "IN", "SRV", "10 5 8080 www.fz.test."))
    return resp.to_wire(max_size=65535)
