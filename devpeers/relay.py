"""The dev relay: a small TURN server that behaves like Firezone's relay, or like coturn where they differ.

Theory of operation
-------------------
:meth:`DevRelay.handle` takes one datagram (``local`` = which of the server's addresses received it,
``remote`` = its sender) and returns the datagrams to send, each a ``Transmit`` whose ``src`` is the
server address it leaves from. Datagrams to the listening address (port 3478) are STUN requests or
ChannelData from clients; datagrams to a relayed address come from peers and are forwarded to the owning
client as ChannelData (if a channel is bound to that exact peer address) or, in ``coturn`` flavour, as a
Data indication if a permission exists for the peer's IP. A host binds a socket for every address of
:meth:`DevRelay.relayed_addresses`.

Firezone flavour: credentials ``expiry:salt`` / base64-no-pad(SHA-256(expiry:secret:salt)); missing
USERNAME/NONCE/MESSAGE-INTEGRITY -> 401, unknown or used-up nonce -> 438, bad integrity or expired -> 401;
every challenge carries REALM and a fresh NONCE and is signed with the request's username when there was
one; BINDING is never authenticated nor signed; lifetime min(requested, 3600) default 600; dual-stack with
ADDITIONAL-ADDRESS-FAMILY; no Send indications. coturn flavour: TURN REST passwords, a signed request
without NONCE gets an unsigned 400, challenges are unsigned, CreatePermission and Send/Data indications
work; an ALLOCATE on a 5-tuple that has an allocation gets an unsigned 437 before any authentication, a
request from another username than the allocation's gets an unsigned 441, and a deleted allocation keeps
its 5-tuple for another second (coturn 4.6.1, measured: decision 0020, "Rotated credentials"). Dual
allocations as coturn 4.6.1 grants them (decision 0171): ADDITIONAL-ADDRESS-FAMILY is read at the draft
codepoint 0x8032 only (RFC 8656's 0x8000 is ignored, so such a request gets the default IPv4); a family it
has no relay address for is answered as ``0.0.0.0:0`` / ``[::]:0``; with ``dual=False`` (coturn with
``external-ip``) a dual request gets 440.
Firezone's own relay is ``rust/relay/server/src/server.rs``. Pure: time comes in as ``now``, ports and
nonces from an injected ``Entropy``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import KeysView
from dataclasses import dataclass, field
from ipaddress import ip_address

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.commands import Transmit
from gateway_core.entropy import Entropy
from gateway_core.errors import DecodeError
from gateway_core.turn.credentials import coturn_rest_password, firezone_password
from gateway_core.wire import stun
from gateway_core.wire import turn as tw
from gateway_core.wire.stun import Attr, Class, Method, StunMessage

LOG_KEPT = 256
"""Requests kept in :attr:`DevRelay.log` (enough to read the last seconds of a run)."""
_METHODS = frozenset(Method)

NONCE_USES = 10_000
"""Firezone relay: a nonce is valid for 10 000 requests."""
DEFAULT_LIFETIME = 600
"""Firezone relay default allocation lifetime in seconds (and RFC 8656's)."""
MAX_LIFETIME = 3600
"""Firezone relay cap on the requested lifetime."""
COTURN_RELEASE_DELAY = secs(1)
"""coturn flavour: a deleted allocation's 5-tuple is released on coturn's next timer tick (~1 s)."""
CHANNEL_LIFETIME = secs(600)
PERMISSION_LIFETIME = secs(300)
"""RFC 8656 permission lifetime (coturn flavour)."""
CHANNEL_QUARANTINE = secs(300)
"""RFC 8656 §12: a channel's number and peer stay tied 5 min past its lifetime."""
PORT_MIN = 49152
PORT_COUNT = 16384
"""Relayed ports are drawn from 49152-65535, the IANA dynamic range and Firezone's relay default
(``--lowest-port``/``--highest-port``); at most that many allocations can hold a port at once."""


@dataclass(slots=True)
class RelayAllocation:
    client: SocketAddr
    relayed: list[SocketAddr]
    expires_at: int
    username: str
    channels: dict[int, tuple[SocketAddr, int]] = field(default_factory=dict)
    permissions: dict[str, int] = field(default_factory=dict)


def _forget_expired(alloc: RelayAllocation, now: Instant) -> None:
    """Drop the channels past their lifetime and quarantine and the expired permissions: every lookup
    ignores them already, and an allocation that lives for hours while its peers roam would keep them all."""
    alloc.channels = {n: (p, exp) for n, (p, exp) in alloc.channels.items() if now < exp + CHANNEL_QUARANTINE}
    alloc.permissions = {ip: exp for ip, exp in alloc.permissions.items() if now < exp}


class DevRelay:
    """See the module docstring."""

    def __init__(
        self,
        listen: list[SocketAddr],
        relay_ips: list[SocketAddr],
        secret: str,
        entropy: Entropy,
        *,
        flavour: str = "firezone",
        realm: str = "firezone",
        wall_clock_secs: int = 1_700_000_000,
        dual: bool = True,
    ) -> None:
        self.listen = listen
        self.relay_ips = relay_ips
        self.secret = secret
        self.flavour = flavour
        self.realm = realm
        self.wall_clock_secs = wall_clock_secs
        self.dual = dual
        """coturn flavour: whether it grants dual allocations (coturn refuses them with ``external-ip``)."""
        self._entropy = entropy
        self._nonces: dict[str, int] = {}
        self.allocations: dict[SocketAddr, RelayAllocation] = {}
        self._by_relayed: dict[SocketAddr, RelayAllocation] = {}
        self._releasing: dict[SocketAddr, int] = {}
        """coturn flavour: 5-tuples of deleted allocations and when they become free."""
        self._expiries: list[tuple[int, int, SocketAddr]] = []
        """``(expires_at, seq, client)`` per allocation and refresh (a heap; stale entries are skipped):
        Firezone's relay frees expired allocations on its timer, this one at the next datagram after."""
        self._seq = 0
        self.drop_all = False
        self.log: deque[tuple[str, str]] = deque(maxlen=LOG_KEPT)
        """The latest requests (method, source), for reading a run by hand; a ring, so a relay that runs
        for simulated hours holds no more than a run of seconds."""

    def relayed_addresses(self) -> KeysView[SocketAddr]:
        """The relayed addresses of the live allocations (a host binds a socket for each)."""
        return self._by_relayed.keys()

    # -- credentials --

    def password_for(self, username: str) -> str | None:
        if self.flavour == "coturn":
            return coturn_rest_password(self.secret, username)
        expiry, sep, salt = username.partition(":")
        if not sep or not expiry.isdigit():
            return None
        return firezone_password(int(expiry), self.secret, salt)

    def _expired(self, username: str) -> bool:
        expiry = username.partition(":")[0]
        return not expiry.isdigit() or int(expiry) < self.wall_clock_secs

    def _new_nonce(self) -> str:
        n = self._entropy.random_bytes(16).hex()
        nonce = f"{n[:8]}-{n[8:12]}-{n[12:16]}-{n[16:20]}-{n[20:]}"
        self._nonces[nonce] = NONCE_USES
        return nonce

    # -- entry point --

    def _expire(self, now: Instant) -> None:
        """Free the allocations whose lifetime has run out (a client that roamed away never refreshes or
        deletes its old one)."""
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, _, client = heapq.heappop(heap)
            alloc = self.allocations.get(client)
            if alloc is not None and now >= alloc.expires_at:
                self._free(alloc)

    def _expires(self, alloc: RelayAllocation) -> None:
        self._seq += 1
        heapq.heappush(self._expiries, (alloc.expires_at, self._seq, alloc.client))

    def handle(self, now: Instant, local: SocketAddr, remote: SocketAddr, data: bytes) -> list[Transmit]:
        if self.drop_all:
            return []
        self._expire(now)
        if local in self._by_relayed:
            return self._from_peer(now, self._by_relayed[local], local, remote, data)
        if local not in self.listen:
            return []
        if data[:1] and 0x40 <= data[0] <= 0x7F:
            return self._channel_data(now, local, remote, data)
        try:
            msg = stun.decode(data)
        except DecodeError:
            return []
        if msg.cls == Class.INDICATION and msg.method == Method.SEND:
            return self._send_indication(now, remote, msg)
        if msg.cls != Class.REQUEST:
            return []
        self.log.append((Method(msg.method).name if msg.method in _METHODS else str(msg.method), str(remote)))
        if msg.method == Method.BINDING:
            r = StunMessage(Method.BINDING, Class.SUCCESS, msg.transaction_id)
            r.add_xor_address(Attr.XOR_MAPPED_ADDRESS, remote)
            return [Transmit(local, remote, r.encode())]
        return self._authenticated(now, local, remote, msg)

    def _reply(
        self, local: SocketAddr, remote: SocketAddr, r: StunMessage, key: bytes | None
    ) -> list[Transmit]:
        return [Transmit(local, remote, r.encode(key, fingerprint=self.flavour == "coturn"))]

    def _error(
        self, req: StunMessage, code: int, key: bytes | None, local: SocketAddr, remote: SocketAddr
    ) -> list[Transmit]:
        r = StunMessage(req.method, Class.ERROR, req.transaction_id)
        r.add_error(code, "error")
        if code in (401, 438):
            r.add_text(Attr.REALM, self.realm).add_text(Attr.NONCE, self._new_nonce())
        return self._reply(local, remote, r, key)

    def _authenticated(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, msg: StunMessage
    ) -> list[Transmit]:
        username = msg.text(Attr.USERNAME)
        nonce = msg.text(Attr.NONCE)
        password = self.password_for(username) if username is not None else None
        key = stun.long_term_key(username, self.realm, password) if username and password else None
        coturn = self.flavour == "coturn"
        if coturn and msg.method == Method.ALLOCATE and self._taken(now, remote):
            return self._error(msg, 437, None, local, remote)  # coturn checks this before authenticating
        if coturn and msg.integrity_at is not None and nonce is None:
            return self._error(msg, 400, None, local, remote)
        sign = None if coturn else key
        if msg.integrity_at is None or username is None or nonce is None:
            return self._error(msg, 401, sign, local, remote)
        uses = self._nonces.get(nonce)
        if not uses:
            return self._error(msg, 438, sign, local, remote)
        self._nonces[nonce] = uses - 1
        if key is None or not msg.verify_integrity(key) or self._expired(username):
            return self._error(msg, 401, sign, local, remote)
        alloc = self.allocations.get(remote)
        if alloc is not None and now >= alloc.expires_at:
            self._free(alloc)
            alloc = None
        if coturn and alloc is not None and alloc.username != username:
            return self._error(msg, 441, None, local, remote)  # RFC 8656 §7.2: not this allocation's user
        if msg.method == Method.ALLOCATE:
            return self._allocate(now, local, remote, msg, alloc, key, username)
        if alloc is None:
            return self._error(msg, 437, key, local, remote)
        r = StunMessage(msg.method, Class.SUCCESS, msg.transaction_id)
        if msg.method == Method.REFRESH:
            life = msg.u32(Attr.LIFETIME)
            life = DEFAULT_LIFETIME if life is None else min(life, MAX_LIFETIME)
            if life == 0:
                self._free(alloc)
                if coturn:
                    self._releasing[remote] = now + COTURN_RELEASE_DELAY
            else:
                alloc.expires_at = now + secs(life)
                self._expires(alloc)
            r.add_u32(Attr.LIFETIME, life)
        elif msg.method == Method.CHANNEL_BIND:
            peer, number = msg.address(Attr.XOR_PEER_ADDRESS), msg.channel_number()
            if peer is None or number is None or not tw.CHANNEL_MIN <= number <= tw.CHANNEL_MAX:
                return self._error(msg, 400, key, local, remote)
            _forget_expired(alloc, now)
            for n, (p, exp) in alloc.channels.items():
                if now < exp + CHANNEL_QUARANTINE and ((n == number) != (p == peer)):
                    return self._error(msg, 400, key, local, remote)
            alloc.channels[number] = (peer, now + CHANNEL_LIFETIME)
            alloc.permissions[str(peer.ip)] = now + PERMISSION_LIFETIME
        elif msg.method == Method.CREATE_PERMISSION:
            _forget_expired(alloc, now)
            for peer in msg.addresses(Attr.XOR_PEER_ADDRESS):
                alloc.permissions[str(peer.ip)] = now + PERMISSION_LIFETIME
        else:
            return self._error(msg, 400, key, local, remote)
        return self._reply(local, remote, r, key)

    def _allocate(
        self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        msg: StunMessage,
        alloc: RelayAllocation | None,
        key: bytes,
        username: str,
    ) -> list[Transmit]:
        if alloc is not None:
            return self._error(msg, 437, key, local, remote)
        if msg.get(Attr.REQUESTED_TRANSPORT) != tw.encode_requested_transport():
            return self._error(msg, 400, key, local, remote)
        want = {4}
        coturn = self.flavour == "coturn"
        req = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        add = msg.get(Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT if coturn else Attr.ADDITIONAL_ADDRESS_FAMILY)
        if req is not None and add is not None:
            return self._error(msg, 400, key, local, remote)
        if req is not None:
            want = {4 if req[0] == stun.FAMILY_IPV4 else 6}
        if add is not None:
            if add[0] != stun.FAMILY_IPV6:
                return self._error(msg, 400, key, local, remote)
            if coturn and not self.dual:
                return self._error(msg, 440, key, local, remote)
            want.add(6)
        port = self._free_port()
        if port is None:
            return self._error(msg, 508, key, local, remote)  # RFC 8656 Insufficient Capacity
        relayed = [SocketAddr(a.ip, port) for a in self.relay_ips if a.ip.version in want]
        if not relayed:
            return self._error(msg, 440, key, local, remote)
        missing = want - {a.ip.version for a in relayed} if coturn else set()
        life = msg.u32(Attr.LIFETIME)
        life = DEFAULT_LIFETIME if life is None else min(life, MAX_LIFETIME)
        alloc = RelayAllocation(remote, relayed, now + secs(life), username)
        self.allocations[remote] = alloc
        self._expires(alloc)
        for a in relayed:
            self._by_relayed[a] = alloc
        r = StunMessage(Method.ALLOCATE, Class.SUCCESS, msg.transaction_id)
        for a in sorted(relayed, key=lambda a: a.ip.version):
            r.add_xor_address(Attr.XOR_RELAYED_ADDRESS, a)
        for v in sorted(missing):  # coturn's placeholder for a family it could not allocate
            r.add_xor_address(
                Attr.XOR_RELAYED_ADDRESS, SocketAddr(ip_address("::" if v == 6 else "0.0.0.0"), 0)
            )
        r.add_xor_address(Attr.XOR_MAPPED_ADDRESS, remote)
        r.add_u32(Attr.LIFETIME, life)
        return self._reply(local, remote, r, key)

    def _free_port(self) -> int | None:
        """A random relayed port no allocation holds (on any address), or ``None`` when all are held.

        Drawn again until free, as Firezone's relay does (``create_new_allocation`` in
        ``rust/relay/server/src/server.rs``): a port drawn once and used twice would route the first
        allocation's peer traffic to the second (the stateful test's nightly run found it). A free first
        draw costs one draw as before, so runs without a collision keep their entropy stream."""
        held = {a.port for a in self._by_relayed}
        if len(held) >= PORT_COUNT:
            return None
        while True:
            port = PORT_MIN + self._entropy.randbelow(PORT_COUNT)
            if port not in held:
                return port

    def _taken(self, now: Instant, remote: SocketAddr) -> bool:
        alloc = self.allocations.get(remote)
        if alloc is not None and now < alloc.expires_at:
            return True
        if now < self._releasing.get(remote, 0):
            return True
        self._releasing.pop(remote, None)
        return False

    def _free(self, alloc: RelayAllocation) -> None:
        self.allocations.pop(alloc.client, None)
        for a in alloc.relayed:
            self._by_relayed.pop(a, None)

    # -- data --

    def _channel_data(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, data: bytes
    ) -> list[Transmit]:
        alloc = self.allocations.get(remote)
        try:
            number, payload = tw.decode_channel_data(data, exact=False)
        except DecodeError:
            return []
        if alloc is None or number not in alloc.channels:
            return []
        peer, exp = alloc.channels[number]
        src = next((a for a in alloc.relayed if a.ip.version == peer.ip.version), None)
        if now >= exp or src is None:
            return []
        return [Transmit(src, peer, payload)]

    def _send_indication(self, now: Instant, remote: SocketAddr, msg: StunMessage) -> list[Transmit]:
        alloc = self.allocations.get(remote)
        if self.flavour != "coturn" or alloc is None:
            return []
        try:
            peer, payload = tw.parse_data_indication(msg)
        except DecodeError:
            return []
        src = next((a for a in alloc.relayed if a.ip.version == peer.ip.version), None)
        if src is None or alloc.permissions.get(str(peer.ip), 0) <= now:
            return []
        return [Transmit(src, peer, payload)]

    def _from_peer(
        self, now: Instant, alloc: RelayAllocation, local: SocketAddr, peer: SocketAddr, data: bytes
    ) -> list[Transmit]:
        listen = next((a for a in self.listen if a.ip.version == alloc.client.ip.version), self.listen[0])
        for number, (p, exp) in sorted(alloc.channels.items()):
            if p == peer and now < exp:
                return [Transmit(listen, alloc.client, tw.encode_channel_data(number, data))]
        if self.flavour == "coturn" and alloc.permissions.get(str(peer.ip), 0) > now:
            ind = tw.data_indication(self._entropy.random_bytes(12), peer, data)
            return [Transmit(listen, alloc.client, ind.encode())]
        return []
