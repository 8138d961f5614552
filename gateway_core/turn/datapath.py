"""The allocation's data path: ChannelData and Send/Data indications to and from the relay.

Stateless helpers mixed into :class:`gateway_core.turn.allocation.Allocation` (kept apart to keep that
module small); all state (channels, active socket, relayed addresses) lives in the allocation.
"""

from __future__ import annotations

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Transmit
from gateway_core.contract import advance
from gateway_core.errors import DecodeError, DropReason
from gateway_core.stats import Stats
from gateway_core.turn.channels import Channels
from gateway_core.turn.types import RelaySocket
from gateway_core.wire import turn as tw
from gateway_core.wire.stun import StunMessage


class DataPath:
    """Data-path methods of :class:`~gateway_core.turn.allocation.Allocation`."""

    server: RelaySocket
    channels: Channels
    stats: Stats
    _now: Instant
    _active: SocketAddr | None

    def relayed_address(self, version: int) -> SocketAddr | None:
        raise NotImplementedError

    def bind_channel(self, peer: SocketAddr, now: Instant) -> None:
        raise NotImplementedError

    def _tid(self) -> bytes:
        raise NotImplementedError

    def decapsulate(
        self, from_: SocketAddr, channel: int, payload: bytes, now: Instant
    ) -> tuple[SocketAddr, bytes, SocketAddr] | None:
        """ChannelData from the relay: ``(peer, payload, our relayed address)`` or ``None`` (drop)."""
        if not self.server.matches(from_):
            return None
        peer = self.channels.receive(channel, now)
        if peer is None:
            self.stats.drop(DropReason.TURN_UNKNOWN_CHANNEL)
            return None
        ours = self.relayed_address(peer.ip.version)
        if ours is None:
            return None
        return peer, payload, ours

    def decapsulate_indication(
        self, from_: SocketAddr, msg: StunMessage
    ) -> tuple[SocketAddr, bytes, SocketAddr] | None:
        """A Data indication from the relay (standard servers), same result as :meth:`decapsulate`."""
        if not self.server.matches(from_):
            return None
        try:
            peer, data = tw.parse_data_indication(msg)
        except DecodeError:
            self.stats.drop(DropReason.TURN_MALFORMED)
            return None
        ours = self.relayed_address(peer.ip.version)
        return None if ours is None else (peer, data, ours)

    def encapsulate(self, peer: SocketAddr, payload: bytes, now: Instant, ecn: int = 0) -> Transmit | None:
        """ChannelData to ``peer`` via the relay (with the ECN bits ``ecn``); without a channel, start
        binding one and drop."""
        self._now = advance(self._now, now)
        if self._active is None:
            return None
        number = self.channels.connected(peer, now)
        if number is None:
            number = self.channels.inflight(peer, now)
        if number is None:
            self.bind_channel(peer, now)
            return None
        return Transmit(None, self._active, tw.encode_channel_data(number, payload), ecn)

    def send_indication(self, peer: SocketAddr, payload: bytes) -> Transmit | None:
        """A Send indication (standard servers; needs a permission for ``peer``'s IP)."""
        if self._active is None:
            return None
        return Transmit(None, self._active, tw.send_indication(self._tid(), peer, payload).encode())
