"""Small proto ↔ Python conversions shared by the servicers."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from seedline.type.v1 import esignature_pb2, quantity_pb2

from seedline_server.api.interceptor import current
from seedline_server.domain import quantity
from seedline_server.domain.errors import FieldViolation, InvalidArgument
from seedline_server.service.context import CallContext, Signature
from seedline_server.service.uow import Replay

M = TypeVar("M", bound=Message)


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp, or None for an unset time."""
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def dt(message: Message, field: str) -> datetime | None:
    """The datetime of an optional Timestamp field (UTC), or None when unset."""
    if not message.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field)
    return value.ToDatetime(tzinfo=UTC)


def parse_quantity(q: quantity_pb2.Quantity, field: str) -> quantity.Quantity:
    """A storage quantity from the wire form; INVALID_ARGUMENT names ``field``."""
    try:
        return quantity.parse(q.value, quantity.Unit(q.unit))
    except (ValueError, KeyError) as exc:
        raise InvalidArgument(f"{field} is not a valid quantity", [FieldViolation(field, str(exc))]) from exc


def to_quantity(q: quantity.Quantity) -> quantity_pb2.Quantity:
    """The wire form of a storage quantity."""
    return quantity_pb2.Quantity(value=q.text(), unit=q.unit.value)  # type: ignore[arg-type]


def call(request_id: str = "") -> CallContext:
    """The current call's context carrying the request's idempotency key."""
    return dataclasses.replace(current(), request_id=request_id)


def replay(scope: str, request: Message, response_type: type[M]) -> Replay[M]:
    """Store/restore ``response_type`` for retries of ``request`` (AIP-155)."""
    fingerprint = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    return Replay(
        scope=scope,
        fingerprint=fingerprint,
        encode=lambda m: m.SerializeToString(),
        decode=response_type.FromString,
    )


def signature(esig: esignature_pb2.ESignatureInput) -> Signature:
    """The e-signature of the current caller.

    The signer is the authenticated principal of the call. Re-proving identity with
    ``credential`` (a fresh token or signing credential) belongs to the identity layer; until it
    exists the contract's validation only guarantees the credential is present.
    """
    return Signature(signer=current().principal.name, meaning=esig.meaning, reason=esig.reason)
