"""TURN long-term authentication of one allocation: the credentials, the server's nonce, and the rotated-away
credentials that may still own our 5-tuple.

Theory of operation. The realm is ``firezone`` for every Firezone relay. Every request but BINDING is signed
on every (re)send (:meth:`LongTermAuth.sign`): USERNAME, REALM, NONCE once the server gave one, and
MESSAGE-INTEGRITY with the MD5 key of the credentials. A 401 or 438 challenge carrying a nonce updates it
and the request is sent again (:meth:`LongTermAuth.take_challenge`); a 401 to a request that carried a
nonce means the credentials are dead (:meth:`LongTermAuth.refuse`: the allocation cannot be used again).

Two relay flavours are told apart by how they authenticate
(``docs/decisions/0020-turn-client-firezone-and-rfc-relays.md``): the Firezone relay answers the first,
nonce-less request with a *signed* 401 carrying a nonce; a standard RFC 8656 server (coturn) answers it
with an unsigned 400, and its 401/438 challenges are unsigned. So :meth:`LongTermAuth.authentic` accepts,
besides a response with a valid MESSAGE-INTEGRITY, an unsigned 401/438 that carries a NONCE, an unsigned
437 to ALLOCATE or to a delete signed with stale credentials (coturn checks the 5-tuple before the
credentials; :attr:`LongTermAuth.standard_server` is then set), and an unsigned 400 to a first, signed,
nonce-less ALLOCATE. Any other unsigned response is ignored.

Stale credentials (:class:`~gateway_core.turn.types.StaleCredentials`) are those of the allocation this
one replaces after the relay's credentials rotated: coturn lets only an allocation's own username delete
it, so the delete of an allocation that holds our 5-tuple is signed with them
(:meth:`LongTermAuth.take_stale_challenge`), and they are dropped once that is done or cannot be done.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway_core.turn.types import PendingRequest, StaleCredentials
from gateway_core.wire import stun
from gateway_core.wire.stun import Attr, Class, Method, StunMessage


class LongTermAuth:
    """See the module docstring."""

    __slots__ = ("key", "nonce", "password", "realm", "stale", "stale_key", "standard_server", "username")

    def __init__(self, username: str, password: str, realm: str, stale: StaleCredentials | None) -> None:
        self.username = username
        self.password = password
        self.realm = realm
        self.key: bytes | None = stun.long_term_key(username, realm, password)
        """``None`` once the server refused the credentials."""
        self.nonce: str | None = None
        self.stale = stale
        """Rotated-away credentials whose allocation may still hold our 5-tuple (until it is deleted)."""
        self.stale_key = stun.long_term_key(stale.username, realm, stale.password) if stale else None
        self.standard_server = False
        """The server authenticates like coturn (decision 0020), not like the Firezone relay."""

    def matches(self, username: str, password: str) -> bool:
        """Whether these are our credentials and the server has not refused them."""
        return self.key is not None and (self.username, self.password) == (username, password)

    def handover(self, allocated: bool) -> StaleCredentials | None:
        """Credentials whose allocation may exist on the server, for an allocation replacing this one."""
        if self.stale is not None and not allocated:
            return self.stale
        if self.key is None or self.nonce is None:
            return None
        return StaleCredentials(self.username, self.password, self.nonce)

    def sign(
        self, template: StunMessage, p: PendingRequest, new_tid: Callable[[], bytes]
    ) -> tuple[bytes, bytes] | None:
        """``(transaction id, datagram)``: ``template`` with a fresh id, signed with our credentials (or the
        stale ones for ``p.stale``); ``None`` when there is nothing to sign with (no id is drawn then)."""
        stale = self.stale if p.stale else None
        key = self.stale_key if stale else self.key
        if key is None or (p.stale and stale is None):
            return None
        user, nonce = (stale.username, stale.nonce) if stale else (self.username, self.nonce)
        tid = new_tid()
        m = template.with_transaction_id(tid)
        m.add_text(Attr.USERNAME, user).add_text(Attr.REALM, self.realm)
        if nonce is not None:
            m.add_text(Attr.NONCE, nonce)
        p.sent_nonce = nonce is not None
        return tid, m.encode(key)

    def authentic(self, msg: StunMessage, p: PendingRequest) -> bool:
        """Whether the response ``msg`` to the signed request ``p`` may change anything (see the module
        docstring for the unsigned answers of standard servers that are accepted)."""
        key = self.stale_key if p.stale else self.key
        if key is not None and msg.verify_integrity(key):
            return True
        if msg.cls != Class.ERROR:
            return False
        err = msg.error_code()
        code = err[0] if err else 0
        if code in (401, 438) and msg.has(Attr.NONCE):
            return True  # the challenges of standard servers are not signed (RFC 8489)
        if code == 437 and (p.stale or p.template.method == Method.ALLOCATE):
            # coturn answers an ALLOCATE on a taken 5-tuple before authenticating it (unsigned); the
            # Firezone relay authenticates first and signs. The allocation bounds how often it acts on it.
            self.standard_server = True
            return True
        return code == 400 and not p.sent_nonce and not p.plain and p.template.method == Method.ALLOCATE

    def refuse(self) -> None:
        """The server refused the credentials (a 401 although we sent its nonce)."""
        self.key = None

    def take_challenge(self, msg: StunMessage) -> bool:
        """A 401/438 (in our realm) to a request signed with our credentials: keep its nonce; whether to
        send the request again."""
        nonce = msg.text(Attr.NONCE)
        if nonce is None and self.nonce is None:
            return False  # resending would get the same answer
        if nonce is not None:
            self.nonce = nonce
        return True

    def take_stale_challenge(self, msg: StunMessage, code: int, p: PendingRequest) -> bool:
        """An error to a delete signed with the stale credentials: whether to send it again (a challenge
        with a nonce); otherwise the stale credentials are dropped (nothing left to delete, or they
        cannot delete it)."""
        nonce = msg.text(Attr.NONCE)
        challenge = code == 438 or (code == 401 and not p.sent_nonce)
        if challenge and self.stale and nonce and msg.text(Attr.REALM) in (None, self.realm):
            self.stale.nonce = nonce
            return True
        self.stale = None
        return False

    def other_realm(self, msg: StunMessage) -> str | None:
        """The realm of a challenge when it is not ours (the challenge is then ignored), else ``None``."""
        realm = msg.text(Attr.REALM)
        return realm if realm is not None and realm != self.realm else None
