"""A quick, allocation-free check that some bytes are at least a DNS query worth handing to the core.

The layer-4 DNS servers (``gateway_io.dns_server``) run this on every datagram and every TCP frame before
anything else sees it. It is deliberately cheaper than a full parse (the core parses the message fully with
dnspython when it decides what to do with it): it accepts a message when

- it has a whole 12-byte header,
- QR = 0 (a query, not a response),
- OPCODE = 0 (QUERY; Firezone's ``Query::parse`` only ever answers standard queries),
- QDCOUNT = 1 (Firezone requires exactly one question, ``rust/connlib/dns-types/lib.rs:54-76``),
- the question's name is a well-formed uncompressed name (labels of 1-63 bytes, 255 bytes at most, no
  compression pointer: nothing precedes the first name that a pointer could legally refer to),
- and the 4 bytes of QTYPE and QCLASS follow it.

Whatever comes after the question (answer, authority and additional records, e.g. an EDNS OPT record) is
left to the full parser. Returns the :class:`DropReason` for a rejected message, ``None`` when accepted;
never raises, whatever the bytes.
"""

from __future__ import annotations

from gateway_core.errors import DropReason

DNS_HEADER_LEN = 12
"""Size of the fixed DNS header (RFC 1035 4.1.1)."""

MAX_NAME_LEN = 255
"""Longest encoded domain name, length octets included (RFC 1035 2.3.4)."""

MAX_LABEL_LEN = 63
"""Longest label (RFC 1035 2.3.4); length octets 0x40-0xBF are reserved or pointers."""


def query_drop_reason(message: bytes | bytearray | memoryview) -> DropReason | None:
    """``None`` if ``message`` passes the quick query check of the module docstring, else why not."""
    n = len(message)
    if n < DNS_HEADER_LEN:
        return DropReason.DNS_MALFORMED
    flags = message[2]
    # QR (bit 7) must be 0 and OPCODE (bits 6-3) must be 0 (QUERY).
    if flags & 0xF8:
        return DropReason.DNS_MALFORMED
    if message[4] != 0 or message[5] != 1:
        return DropReason.DNS_MALFORMED
    pos = DNS_HEADER_LEN
    name_len = 0
    while True:
        if pos >= n:
            return DropReason.DNS_MALFORMED
        length = message[pos]
        name_len += length + 1
        if length == 0:
            pos += 1
            break
        if length > MAX_LABEL_LEN or name_len >= MAX_NAME_LEN:
            return DropReason.DNS_MALFORMED
        pos += 1 + length
    if pos + 4 > n:
        return DropReason.DNS_MALFORMED
    return None
