"""The gateway's messages to the portal (outbound) as typed dataclasses: the answers to ``authorize_flow``
and to the legacy ``request_connection``, and the gateway's own ICE candidates.

As the inbound ones (:mod:`gateway_core.portal.inbound`), each class knows its ``EVENT`` name, encodes
itself (``encode``) and decodes itself (``decode``, for the stub and dev portals, which read them);
:func:`gateway_core.portal.messages.decode_outbound` dispatches on the event name.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from gateway_core.portal.model import (
    IceCredentials,
    Json,
    JsonObject,
    array,
    candidate_list,
    note_unknown,
    obj,
    parse_uuid,
    req,
    string,
)


@dataclass(frozen=True, slots=True)
class FlowAuthorized:
    EVENT: ClassVar[str] = "flow_authorized"
    ref: str

    @classmethod
    def decode(cls, payload: Json) -> FlowAuthorized:
        o = obj(payload, cls.EVENT)
        note_unknown(o, ("ref",), cls.EVENT)
        return cls(string(req(o, "ref", cls.EVENT), f"{cls.EVENT}.ref"))

    def encode(self) -> JsonObject:
        return {"ref": self.ref}


@dataclass(frozen=True, slots=True)
class ConnectionReady:
    EVENT: ClassVar[str] = "connection_ready"
    ref: str
    ice_parameters: IceCredentials
    """The gateway's own (self-generated) ICE credentials for this legacy connection."""

    @classmethod
    def decode(cls, payload: Json) -> ConnectionReady:
        w = cls.EVENT
        o = obj(payload, w)
        note_unknown(o, ("ref", "gateway_payload"), w)
        gp = obj(req(o, "gateway_payload", w), f"{w}.gateway_payload")
        acc = obj(req(gp, "ConnectionAccepted", w), f"{w}.gateway_payload.ConnectionAccepted")
        return cls(
            string(req(o, "ref", w), f"{w}.ref"),
            IceCredentials.decode(req(acc, "ice_parameters", w), f"{w}.ice_parameters"),
        )

    def encode(self) -> JsonObject:
        return {
            "ref": self.ref,
            "gateway_payload": {"ConnectionAccepted": {"ice_parameters": self.ice_parameters.encode()}},
        }


@dataclass(frozen=True, slots=True)
class BroadcastIceCandidates:
    EVENT: ClassVar[str] = "broadcast_ice_candidates"
    client_ids: tuple[uuid.UUID, ...]
    candidates: tuple[str, ...]

    @classmethod
    def decode(cls, payload: Json) -> BroadcastIceCandidates:
        o = obj(payload, cls.EVENT)
        note_unknown(o, ("client_ids", "candidates"), cls.EVENT)
        return cls(_client_ids(o, cls.EVENT), candidate_list(o, cls.EVENT))

    def encode(self) -> JsonObject:
        return {"client_ids": [str(i) for i in self.client_ids], "candidates": list(self.candidates)}


@dataclass(frozen=True, slots=True)
class BroadcastInvalidatedIceCandidates:
    EVENT: ClassVar[str] = "broadcast_invalidated_ice_candidates"
    client_ids: tuple[uuid.UUID, ...]
    candidates: tuple[str, ...]

    @classmethod
    def decode(cls, payload: Json) -> BroadcastInvalidatedIceCandidates:
        o = obj(payload, cls.EVENT)
        note_unknown(o, ("client_ids", "candidates"), cls.EVENT)
        return cls(_client_ids(o, cls.EVENT), candidate_list(o, cls.EVENT))

    def encode(self) -> JsonObject:
        return {"client_ids": [str(i) for i in self.client_ids], "candidates": list(self.candidates)}


def _client_ids(o: Mapping[str, Json], what: str) -> tuple[uuid.UUID, ...]:
    ids = array(req(o, "client_ids", what), f"{what}.client_ids")
    return tuple(parse_uuid(i, f"{what}.client_ids[{n}]") for n, i in enumerate(ids))


OutboundMessage = (
    FlowAuthorized | ConnectionReady | BroadcastIceCandidates | BroadcastInvalidatedIceCandidates
)
"""Gateway -> portal."""
