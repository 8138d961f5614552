"""WireGuard message layouts (``gateway_core/wireguard/messages.py``): ``message_type`` and the four
decoders return or raise ``DecodeError``; a message a decoder accepts has the type ``message_type`` names,
and encoding it gives the same bytes back.
"""

from __future__ import annotations

from gateway_core.errors import DecodeError
from gateway_core.wireguard import messages as m


def test_one_input(data: bytes) -> None:
    try:
        mtype = m.message_type(data)
    except DecodeError:
        mtype = None
    for want, decode, encode in (
        (m.MSG_INITIATION, m.decode_initiation, m.encode_initiation),
        (m.MSG_RESPONSE, m.decode_response, m.encode_response),
        (m.MSG_COOKIE_REPLY, m.decode_cookie_reply, m.encode_cookie_reply),
    ):
        try:
            msg = decode(data)
        except DecodeError:
            continue
        assert mtype == want, f"decoded as type {want} but message_type says {mtype}"
        assert encode(msg) == data  # type: ignore[arg-type]
    try:
        header = m.decode_data_header(data)
    except DecodeError:
        return
    assert mtype == m.MSG_DATA
    assert m.encode_data(header.receiver, header.counter, data[m.DATA_HEADER_LEN :]) == data
