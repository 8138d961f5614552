"""One way to build a WireGuard :class:`~gateway_core.node.node.Node`, for the gateway, the dev client and
the simulator.

A node needs three things around it: the handshake rate limiter (one per node, shared by every tunnel, as
snownet shares it), a factory that makes a :class:`~gateway_core.wireguard.WireGuardPeer` per connection
(seeded from its own fork of the caller's entropy, so adding a client never shifts another's randomness),
and a lookup from a handshake initiation to its initiator (one Diffie-Hellman with our key, which the node
runs only after the rate limiter passed the message). Only the wall clock and where the
node's own entropy comes from differ between callers, so those are parameters.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway_core.clock import Instant
from gateway_core.entropy import Entropy, SeededEntropy
from gateway_core.node.node import Node
from gateway_core.wireguard import WireGuardPeer
from gateway_core.wireguard.crypto import public_key
from gateway_core.wireguard.noise import InitiatorIdentifier
from gateway_core.wireguard.ratelimit import RateLimiter

WallClock = Callable[[Instant], int]
"""``now -> UTC nanoseconds since the Unix epoch`` (for the TAI64N timestamp of handshake initiations)."""


def wireguard_node(
    private_key: bytes,
    entropy: SeededEntropy,
    node_entropy: Entropy,
    now: Instant,
    wall_clock: WallClock,
    *,
    controlling: bool,
) -> Node:
    """A node whose tunnels are WireGuard peers keyed by ``private_key``.

    ``entropy`` seeds the rate limiter (fork ``"rate-limiter"``) and each tunnel (fork ``"wg-<client id>"``);
    ``node_entropy`` is the node's own (ICE credentials, transaction ids, TURN).
    """
    limiter = RateLimiter(public_key(private_key), entropy.fork("rate-limiter"), now)

    def tunnel(cid: str, remote: bytes, psk: bytes | None, index: int, t: Instant) -> WireGuardPeer:
        return WireGuardPeer(
            static_private=private_key,
            peer_public=remote,
            psk=psk,
            global_index=index,
            entropy=entropy.fork(f"wg-{cid}"),
            now=t,
            wall_unix_ns=wall_clock(t),
            rate_limiter=limiter,
        )

    return Node(
        node_entropy,
        now,
        tunnel,
        InitiatorIdentifier(private_key),
        controlling=controlling,
        rate_limiter=limiter,
    )


__all__ = ["WallClock", "wireguard_node"]
