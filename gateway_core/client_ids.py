"""Client ids in both forms: the node names a connection by a string, the policy a client by its UUID.

The gateway's two planes share one :class:`ClientIds`: the data plane converts a connection's name to the
UUID for every packet from a client (so the conversion is cached and, once cached, a plain dict lookup),
the TUN side and the control plane convert the other way, and the control plane forgets a client once it
is gone.
"""

from __future__ import annotations

import uuid


class ClientIds(dict[str, uuid.UUID]):
    """The node's name of a client's connection (a string) -> the client's UUID (the policy's key).

    ``ids[cid]`` makes and caches the UUID on first use, then it is a plain dict lookup (the data path
    does it for every packet); :meth:`cid` is the other way, cached too; :meth:`forget` drops a client.
    """

    __slots__ = ("_cids",)

    def __init__(self) -> None:
        super().__init__()
        self._cids: dict[uuid.UUID, str] = {}

    def __missing__(self, cid: str) -> uuid.UUID:
        client = self[cid] = uuid.UUID(cid)
        return client

    def cid(self, client: uuid.UUID) -> str:
        s = self._cids.get(client)
        if s is None:
            s = self._cids[client] = str(client)
        return s

    def forget(self, client: uuid.UUID) -> None:
        self.pop(self._cids.pop(client, ""), None)
