"""Small proto ↔ Python conversions shared by the servicers."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from seedline.type.v1 import esignature_pb2, quantity_pb2

from seedline_server.api.interceptor import current
from seedline_server.domain import quantity
from seedline_server.domain.errors import DomainError, ESignatureRequired, FieldViolation, InvalidArgument
from seedline_server.service.context import CallContext, Signature
from seedline_server.service.identity import Authenticator
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


# Set by the server: re-proves a signer's identity from the e-signature's credential.
_signatures: SignatureVerifier | None = None


class SignatureVerifier:
    """Checks that an e-signature's credential proves the caller's own identity, freshly."""

    def __init__(self, authenticator: Authenticator, max_age_seconds: float) -> None:
        self._auth = authenticator
        self._max_age = max_age_seconds

    async def verify(self, credential: str, caller: str) -> None:
        """Raise ESIGNATURE_REQUIRED unless ``credential`` freshly authenticates as ``caller``.

        A JWT must have been issued within the allowed age.
        """
        try:
            signer = await self._auth.bearer(credential)
        except DomainError as exc:
            raise ESignatureRequired("the signature credential does not prove your identity") from exc
        if signer.principal.name != caller:
            raise ESignatureRequired(
                "the signature credential proves another identity than the caller's",
                metadata={"caller": caller},
            )
        if signer.issued_at is not None and time.time() - signer.issued_at > self._max_age:
            raise ESignatureRequired(
                f"the signature credential is older than {int(self._max_age)} s; sign with a fresh one"
            )


def use_signatures(verifier: SignatureVerifier | None) -> None:
    """Install the verifier (the server does at start; None disables re-proving, for unit tests)."""
    global _signatures
    _signatures = verifier


async def signature(esig: esignature_pb2.ESignatureInput) -> Signature:
    """The e-signature of the current caller, after its credential re-proved the caller's identity.

    The signer is the authenticated principal of the call; ``credential`` must be a fresh bearer
    credential (a JWT issued moments ago, a session token or API key) of that same principal.
    """
    caller = current().principal.name
    if _signatures is not None:
        await _signatures.verify(esig.credential, caller)
    return Signature(signer=caller, meaning=esig.meaning, reason=esig.reason)
