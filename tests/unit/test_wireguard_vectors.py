"""WireGuard primitives and the full handshake against published vectors (RFC 7748, RFC 8439,
draft-irtf-cfrg-xchacha, RFC 7693, wireguard-go's KDF test)."""

from __future__ import annotations

import hashlib
import hmac
from ipaddress import IPv4Address

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gateway_core.clock import Instant
from gateway_core.entropy import SeededEntropy
from gateway_core.wireguard import crypto
from gateway_core.wireguard.messages import (
    decode_cookie_reply,
    decode_initiation,
    decode_response,
)
from gateway_core.wireguard.noise import Handshake, identify_initiator
from gateway_core.wireguard.ratelimit import RateLimiter

h = bytes.fromhex


class FixedEntropy:
    """Returns the given byte strings in order (for vectors with fixed ephemeral keys)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    def random_bytes(self, n: int) -> bytes:
        chunk = self.chunks.pop(0)
        assert len(chunk) == n
        return chunk

    def randbelow(self, n: int) -> int:
        return 0


S_I_PRIV = h("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
S_R_PRIV = h("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
E_I_PRIV = h("404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f")
E_R_PRIV = h("606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f")
PSK = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
WALL_NS = 1_700_000_000 * 1_000_000_000 + 123_456_789

INITIATION = h(
    "010000000156341279a631eede1bf9c98f12032cdeadd0e7a079398fc786b88c"
    "c846ec89af85a51af0225eb421886af8f54fb31289d49dcd82b0f6f3279d40d7"
    "cff913fece0c64ad226eef3320755b393b72f16842c8d7ee78a74e937e3f2aad"
    "88af21d45971caeefbfe81a3349a87e200e5d259ca527d585ce7f767a487e59e"
    "34ea438a00000000000000000000000000000000"
)
RESPONSE = h(
    "0200000001efcdab01563412675dd574ed7789310b3d2e7681f3790b466c773b"
    "1521fecf36577958371ea52fc829ea14c32569183a4c62afce0caacfb0635a4e"
    "62fe6b3a225151a3bb1f9baf00000000000000000000000000000000"
)
T1 = h("f26d13be8f8fe7fe36805b47503285e73bcb2fc6fe3ef37834e5f6128ad8cf50")
T2 = h("083bdab92ffb8da7ab5063bb2d96de2b7e09008d8e07bcf96ac25c340a778665")
KEEPALIVE = h("0400000001efcdab0000000000000000c05b5687dc9e973b4033587e96b81434")
IP_PACKET = h("4500001d0000400040110000646000010a000001003500350009000058")
RESPONDER_DATA = h(
    "0400000001563412000000000000000043d83f911f43b3dc9dbebb7c2ec523a2"
    "80d6cc02b9bf1efb79c960283bd6331b049c81cc456b1125301a54ced3"
)
COOKIE = h("4d9112f99e78df1f536cb4687756790f")
COOKIE_REPLY = h(
    "0300000001563412c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7"
    "b9ce6504b2b73599cf5905c548fe2a1b43a2e5a48efb6c07cda2731d2b70b242"
)
NEXT_INITIATION = h(
    "010000000256341279a631eede1bf9c98f12032cdeadd0e7a079398fc786b88c"
    "c846ec89af85a51af0225eb421886af8f54fb31289d49dcd82b0f6f3279d40d7"
    "cff913fece0c64ad226eef3320755b393b72f16842c8d7ee78a74e937e3f2aad"
    "88af21d7d19a23d808137beeeaf5c13a42eca5a851d12b58bc4de04c81f6810a"
    "8992dca167e7278ebaac16c5adccd510ef1886d3"
)


def test_construction_constants() -> None:
    assert h("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36") == crypto.C0
    assert h("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3") == crypto.H0


def test_kdf_vector_wireguard_go() -> None:
    # wireguard-go device/kdf_test.go TestKDF, key "test-key", input "test-input".
    key, data = b"test-key", b"test-input"
    t1 = h("6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633")
    t2 = h("df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a")
    t3 = h("fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24")
    assert crypto.kdf1(key, data) == t1
    assert crypto.kdf2(key, data) == (t1, t2)
    assert crypto.kdf3(key, data) == (t1, t2, t3)


def test_hmac_matches_stdlib_hmac_blake2s() -> None:
    assert crypto.hmac_(b"k" * 40, b"data") == hmac.new(b"k" * 40, b"data", hashlib.blake2s).digest()


def test_hchacha20_vector_draft_xchacha() -> None:
    key = bytes(range(32))
    inp = h("000000090000004a0000000031415927")
    assert crypto.hchacha20(key, inp) == h("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")


def test_xchacha_pynacl_agrees_with_hchacha_construction() -> None:
    key, n24, pt, ad = bytes(range(32)), bytes(range(100, 124)), b"sixteen byte msg", b"ad"
    sealed = crypto.xaead_encrypt(key, n24, pt, ad)
    assert sealed == crypto.xaead_encrypt_hchacha(key, n24, pt, ad)
    assert crypto.xaead_decrypt(key, n24, sealed, ad) == pt


def test_x25519_public_keys() -> None:
    assert crypto.public_key(S_I_PRIV) == h(
        "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f"
    )
    assert crypto.public_key(S_R_PRIV) == h(
        "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254"
    )


def test_tai64n_uses_boringtun_base() -> None:
    assert crypto.tai64n(WALL_NS) == h("400000006553f125075bcd15")


def _pair() -> tuple[Handshake, Handshake]:
    s_i_pub, s_r_pub = crypto.public_key(S_I_PRIV), crypto.public_key(S_R_PRIV)
    ini = Handshake(S_I_PRIV, s_r_pub, PSK, 0x123456, Instant(0), WALL_NS)
    res = Handshake(S_R_PRIV, s_i_pub, PSK, 0xABCDEF, Instant(0), 0)
    return ini, res


def test_full_handshake_vector() -> None:
    ini, res = _pair()
    init = ini.create_initiation(Instant(0), FixedEntropy(E_I_PRIV))
    assert init == INITIATION
    assert identify_initiator(S_R_PRIV, init) == (0x12345601, crypto.public_key(S_I_PRIV))
    response, r_session = res.consume_initiation(Instant(0), decode_initiation(init), FixedEntropy(E_R_PRIV))
    assert response == RESPONSE
    i_session = ini.consume_response(Instant(0), decode_response(response))
    # T1: initiator sends / responder receives; T2 the other way.
    probe = b"probe"
    n = crypto.nonce(7)
    assert i_session.sender.encrypt(n, probe, None) == ChaCha20Poly1305(T1).encrypt(n, probe, None)
    assert r_session.sender.encrypt(n, probe, None) == ChaCha20Poly1305(T2).encrypt(n, probe, None)
    assert (i_session.local_index, i_session.peer_index) == (0x12345601, 0xABCDEF01)
    keepalive = b"\x04\0\0\0" + (0xABCDEF01).to_bytes(4, "little") + bytes(8)
    keepalive += i_session.sender.encrypt(crypto.nonce(0), b"", None)
    assert keepalive == KEEPALIVE
    data = b"\x04\0\0\0" + (0x12345601).to_bytes(4, "little") + bytes(8)
    data += r_session.sender.encrypt(crypto.nonce(0), IP_PACKET, None)
    assert data == RESPONDER_DATA


def test_cookie_reply_and_mac2_vector() -> None:
    ini, _ = _pair()
    init = ini.create_initiation(Instant(0), FixedEntropy(E_I_PRIV))
    limiter = RateLimiter(
        crypto.public_key(S_R_PRIV), FixedEntropy(bytes(range(0xA0, 0xB0)), bytes(32)), Instant(0)
    )
    cookie = limiter.cookie_for(IPv4Address("203.0.113.7"), Instant(0))
    assert cookie == COOKIE
    reply = limiter.cookie_reply(0x12345601, cookie, init[116:132], bytes(range(0xC0, 0xD8)))
    assert reply == COOKIE_REPLY
    ini.consume_cookie_reply(Instant(0), decode_cookie_reply(reply))
    assert ini.cookies.cookie == COOKIE
    nxt = ini.create_initiation(Instant(1), FixedEntropy(E_I_PRIV))
    assert nxt == NEXT_INITIATION
    assert nxt[116:132] == h("51d12b58bc4de04c81f6810a8992dca1")
    assert nxt[132:148] == h("67e7278ebaac16c5adccd510ef1886d3")


def test_responder_peer_answers_vector_initiation() -> None:
    """The whole tunnel (not only the handshake) accepts the vector initiation and keepalive."""
    from gateway_core.wireguard.peer import WireGuardPeer

    ent = FixedEntropy(bytes(16), bytes(32), E_R_PRIV)
    peer = WireGuardPeer(
        static_private=S_R_PRIV,
        peer_public=crypto.public_key(S_I_PRIV),
        psk=PSK,
        global_index=0xABCDEF,
        entropy=ent,
        now=Instant(0),
        wall_unix_ns=0,
    )
    assert peer.decapsulate(Instant(0), INITIATION) is None
    assert peer.poll_transmit() == RESPONSE
    assert peer.decapsulate(Instant(1), KEEPALIVE) is None
    assert peer.stats.total_drops == 0
    assert peer.encapsulate(Instant(2), IP_PACKET) == RESPONDER_DATA


def test_seeded_entropy_handshake_is_deterministic() -> None:
    def run() -> bytes:
        ini, _ = _pair()
        return ini.create_initiation(Instant(5), SeededEntropy(9))

    assert run() == run()
