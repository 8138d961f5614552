"""Constants of the IP codecs: header sizes, limits, protocol numbers, TCP flags, ICMP echo types."""

from __future__ import annotations

# Why: fixed header sizes of RFC 791 (without options) and RFC 8200.
IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
# Why: the TUN MTU and the largest packet the data path accepts (Firezone MAX_IP_SIZE = 1280, in
# ``rust/connlib/ip-packet/src/lib.rs``).
MAX_IP_SIZE = 1280
# Why: the usual initial TTL/hop limit of hosts (Linux default; Firezone's make.rs builders use 64 too).
DEFAULT_TTL = 64

# IANA protocol numbers (why: the wire values).
PROTO_HOPOPT = 0
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6_ROUTE = 43
PROTO_IPV6_FRAG = 44
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_IPV6_OPTS = 60

# TCP flag bits (why: RFC 9293 header layout).
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

# ICMP echo types (why: RFC 792 / RFC 4443 values).
ICMPV4_ECHO_REPLY = 0
ICMPV4_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
