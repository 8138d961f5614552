"""The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

Full checksum: the ones'-complement sum of the data as big-endian 16-bit words (odd length padded with one
zero byte), complemented. We compute the sum without a Python loop: since ``2**16 == 1 (mod 0xFFFF)``, the
integer value of the whole buffer is congruent to the sum of its 16-bit words modulo ``0xFFFF``. The
end-around-carry sum of words that are not all zero lies in ``1..0xFFFF``, so the residue ``0`` maps to
``0xFFFF`` unless every word is zero (then the sum is ``0``).

Incremental update (RFC 1624 eqn. 3): ``HC' = ~(~HC + ~m + m')`` where ``m`` is the old and ``m'`` the new
value of the changed words. Computed with end-around carry, the result equals a full recomputation for
any buffer whose old checksum was correct and whose new contents are not all zero (``~m`` is never ``+0``
here, so the sum lies in ``1..0xFFFF`` exactly like a full sum of non-zero data). Packets never are all
zero: the IP header and the pseudo-header carry a version, a protocol or an address.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from gateway_core.errors import DecodeError

# Why: the modulus that makes "integer value" and "sum of 16-bit words" agree (2**16 - 1).
_M = 0xFFFF


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The ones'-complement (end-around carry) sum of ``data`` as 16-bit words, plus ``initial``.

    Returns a value in ``0..0xFFFF``; ``0`` only if the data and ``initial`` are all zero.
    """
    n = len(data)
    v = int.from_bytes(data, "big")
    if n & 1:
        v <<= 8
    v += initial
    if v == 0:
        return 0
    r = v % _M
    return r if r else _M


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum of ``data`` (with an optional partial sum ``initial``, e.g. a pseudo-header)."""
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_header_sum(
    src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, proto: int, length: int
) -> int:
    """Partial sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 768/793 for IPv4, RFC 8200 §8.1 for IPv6).

    The value is congruent (mod 0xFFFF) to the ones'-complement sum; pass it as ``initial``.
    """
    if src.version != dst.version:
        raise DecodeError("pseudo-header with mixed address families")
    # Summing the address integers is congruent to summing their 16-bit words. Keep a non-zero total
    # non-zero (0xFFFF) so an all-zero segment after it still sums to "negative zero" as RFC 1071 does.
    total = int(src) + int(dst) + proto + length
    r = total % _M
    return r if r or not total else _M


def checksum_adjust(
    checksum: int, old: bytes | bytearray | memoryview, new: bytes | bytearray | memoryview
) -> int:
    """RFC 1624 eqn. 3: the checksum after the bytes ``old`` (at an even offset) were replaced by ``new``.

    ``old`` and ``new`` must have the same even length.
    """
    return checksum_adjust_int(checksum, int.from_bytes(old, "big"), int.from_bytes(new, "big"))


def checksum_adjust_int(checksum: int, old: int, new: int) -> int:
    """Like :func:`checksum_adjust` with the old and new field values given as integers.

    The field must start at an even offset of the checksummed data and span whole 16-bit words (a port,
    an IPv4 or IPv6 address, or several adjacent fields as one integer).
    """
    # ~HC + ~m + m' with end-around carry; ~m (as 0xFFFF - m mod 0xFFFF) is in 1..0xFFFF, so the total is
    # never the ambiguous +0.
    t = (~checksum & 0xFFFF) + (_M - old % _M) + new % _M
    t = (t & 0xFFFF) + (t >> 16)
    t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
