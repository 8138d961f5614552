"""STUN messages (``gateway_core/wire/stun.py``): ``decode`` returns a message or raises ``DecodeError``;
every accessor on a decoded message (text, integers, addresses, error code, channel number, integrity and
fingerprint checks) returns or raises ``DecodeError``; re-encoding the decoded attributes and decoding
again gives the same method, class, transaction id and attributes; ``is_stun`` holds for every message
``decode`` accepts whose first byte is in the demultiplexing range.
"""

from __future__ import annotations

from gateway_core.errors import DecodeError
from gateway_core.wire import stun
from gateway_core.wire.stun import Attr

KEY = stun.long_term_key("user", "realm", "password")


def _read_all(msg: stun.StunMessage) -> None:
    for attr, _ in msg.attributes:
        for reader in (msg.text, msg.u32, msg.u64, msg.address, msg.addresses):
            try:
                reader(attr)
            except DecodeError:
                pass
    for extra in (msg.error_code, msg.channel_number):
        try:
            extra()
        except DecodeError:
            pass
    msg.has(Attr.USE_CANDIDATE)
    msg.verify_integrity(KEY)
    msg.verify_integrity_sha256(KEY)
    msg.verify_fingerprint()


def test_one_input(data: bytes) -> None:
    try:
        msg = stun.decode(data)
    except DecodeError:
        return
    if data[0] < 4:  # the demultiplexing range (RFC 7983); decode also takes other 14-bit types
        assert stun.is_stun(data), "decode accepted what is_stun refuses"
    _read_all(msg)
    again = stun.StunMessage(msg.method, msg.cls, msg.transaction_id, list(msg.attributes)).encode()
    back = stun.decode(again)
    assert (back.method, back.cls, back.transaction_id) == (msg.method, msg.cls, msg.transaction_id)
    assert back.attributes == msg.attributes
    signed = stun.decode(
        stun.StunMessage(msg.method, msg.cls, msg.transaction_id, list(msg.attributes)).encode(
            KEY, fingerprint=True
        )
    )
    if not any(
        a in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT)
        for a, _ in msg.attributes
    ):
        assert signed.verify_integrity(KEY) and signed.verify_fingerprint()
