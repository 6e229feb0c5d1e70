"""Events pushed by a remote: a LIMS publishing lab results (ReceiveIntegrationEvent).

1. **Authenticate** the raw body by its HMAC-SHA256 signature under the integration's inbound
   secret, with the timestamp within 5 minutes. Unknown or disabled integration, missing secret,
   bad or stale signature: all one UNAUTHENTICATED answer, so a caller learns nothing about which
   integrations exist. (A bad signature on a real integration is still logged for its owner.)
2. **Refuse replays**: the event id is stored (``inbound_events``) in the same transaction as its
   effects; the second delivery of an id is ALREADY_EXISTS / DUPLICATE_EVENT and changes nothing.
3. **Validate** the OpenTHC lab result (:mod:`seedline_server.domain.lims`): format, values in
   range, sample/lot matching (the sample must be this license's and sent to this LIMS's
   laboratory), and record it through the same use case as the API (panels, pass/fail, lot lab
   status).
4. **Non-conformance**: a failed result quarantines its lots (the lab rules do it); an incomplete
   required panel quarantines them too. Each quarantined lot emits ``lot.quarantined`` to the
   license's webhooks through the outbox.

Every exchange (accepted or refused) is written to the integration's log as INBOUND.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import json_format
from seedline.integration.v1 import integration_pb2 as pb
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from ulid import ULID

from seedline_server.crypto import KeyRing
from seedline_server.domain import lab as lab_rules
from seedline_server.domain import lims
from seedline_server.domain import lot as lot_rules
from seedline_server.domain.errors import (
    CredentialsInvalid,
    DomainError,
    DuplicateEvent,
    FieldViolation,
    InvalidArgument,
    ReferenceInvalid,
)
from seedline_server.integrations import signing
from seedline_server.service import inventory, lab, outbox
from seedline_server.service.context import CallContext, Principal
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import integration_models as im
from seedline_server.store import models

__all__ = ["InboundReceiver"]

MAX_BODY = 4 * 1024 * 1024
_REFUSED = (
    "the event could not be authenticated (unknown integration, or a missing, stale or wrong signature)"
)


@dataclass(frozen=True)
class _Target:
    license_id: str
    integration_id: str
    lab_license_id: str
    secret: bytes


def _split(name: str) -> tuple[str, str]:
    parts = name.split("/")
    return parts[1], parts[3]


class InboundReceiver:
    """Receives events pushed to ReceiveIntegrationEvent."""

    def __init__(self, database: Database, keyring: KeyRing, panels: lab_rules.Panels) -> None:
        self._db = database
        self._keyring = keyring
        self._panels = panels

    async def _target(self, name: str) -> tuple[str | None, _Target | None]:
        """(integration id if it exists, the target if it can receive) for ``name``."""
        license_id, integration_id = _split(name)
        ctx = CallContext(principal=Principal("system", "SYSTEM"), method="seedline.inbound.Load")

        async def load(uow: UnitOfWork) -> tuple[str | None, _Target | None]:
            row = await uow.session.get(im.Integration, integration_id)
            if row is None or row.license_id != license_id:
                return None, None
            if row.kind != "LIMS" or not row.enabled or row.credentials is None:
                return row.id, None
            creds = pb.Credentials.FromString(self._keyring.open(row.credentials, name.encode()))
            secret = creds.lims.webhook_signing_secret
            config = json_format.ParseDict(row.config or {}, pb.LimsConfig(), ignore_unknown_fields=True)
            lab_id = (
                await uow.session.scalars(
                    select(models.License.id).where(
                        models.License.license_number == config.lab_license_number
                    )
                )
            ).first()
            if not secret or lab_id is None:
                return row.id, None
            return row.id, _Target(license_id, row.id, lab_id, secret.encode())

        return await self._db.read(ctx, load)

    async def _log(
        self,
        integration_id: str,
        event_id: str,
        body: bytes,
        status: str,
        summary: str,
        error: str,
        started: float,
    ) -> None:
        ctx = CallContext(principal=Principal("system", "SYSTEM"), method="seedline.inbound.Log")
        t = datetime.now(UTC)

        async def write(uow: UnitOfWork) -> None:
            await uow.session.execute(
                insert(im.IntegrationLog).values(
                    id=str(ULID.from_datetime(t)),
                    integration_id=integration_id,
                    direction="INBOUND",
                    endpoint="POST :receive",
                    request_id=event_id[:128],
                    payload_size=len(body),
                    payload_sha256=hashlib.sha256(body).hexdigest(),
                    summary=summary,
                    status=status,
                    exchange_time=t,
                    response_ms=(time.perf_counter() - started) * 1000,
                    retry_count=0,
                    error_detail=error[:2000],
                    sync_run_id=None,
                )
            )

        await self._db.write(ctx, write)

    async def receive(
        self, name: str, body: bytes, content_type: str, headers: Mapping[str, str]
    ) -> pb.ReceiveIntegrationEventResponse:
        """Authenticate, de-duplicate, validate and record one pushed event."""
        started = time.perf_counter()
        integration_id, target = await self._target(name)
        event_id = headers.get(signing.EVENT_ID_HEADER.lower(), "")
        try:
            if target is None:
                raise signing.SignatureError("no receiving LIMS integration")
            signing.verify(
                target.secret, body, headers.get(signing.SIGNATURE_HEADER.lower()), now=time.time()
            )
        except signing.SignatureError as exc:
            if integration_id is not None:
                await self._log(integration_id, event_id, body, "ERROR", "refused event", str(exc), started)
            raise CredentialsInvalid(_REFUSED) from None
        assert integration_id is not None
        try:
            result = await self._record(target, name, body, content_type, event_id)
        except DomainError as exc:
            await self._log(integration_id, event_id, body, "ERROR", "refused lab result", str(exc), started)
            raise
        summary = f"lab result recorded ({len(result.quarantined_lots)} lot(s) quarantined)"
        await self._log(integration_id, event_id, body, "SUCCESS", summary, "", started)
        return result

    async def _record(
        self, target: _Target, name: str, body: bytes, content_type: str, event_id: str
    ) -> pb.ReceiveIntegrationEventResponse:
        if not event_id or len(event_id) > 128:
            raise InvalidArgument(
                "the Seedline-Event-Id header is required (1-128 characters)",
                [FieldViolation("seedline-event-id", "required")],
            )
        if len(body) > MAX_BODY:
            raise InvalidArgument("the event is larger than 4 MiB", [FieldViolation("body", "too large")])
        if content_type and not content_type.lower().startswith("application/json"):
            raise InvalidArgument(
                "the event must be application/json", [FieldViolation("body.content_type", "not JSON")]
            )
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument(
                "the event is not valid JSON", [FieldViolation("body", "not JSON")]
            ) from None
        published = lims.parse_event(doc, event_id=event_id, now=datetime.now(UTC))
        ctx = CallContext(
            principal=Principal(name, "INTEGRATION"),
            method="seedline.integration.v1.IntegrationService/ReceiveIntegrationEvent",
            request_id=event_id,
        )

        async def run(uow: UnitOfWork) -> pb.ReceiveIntegrationEventResponse:
            t = datetime.now(UTC)
            try:
                async with uow.session.begin_nested():
                    await uow.session.execute(
                        insert(im.InboundEvent).values(
                            integration_id=target.integration_id,
                            event_id=event_id,
                            receive_time=t,
                            result={"remote_id": published.remote_id},
                        )
                    )
            except IntegrityError:
                raise DuplicateEvent(
                    f"event {event_id} was already received; the repeat changed nothing",
                    metadata={"event_id": event_id},
                ) from None
            if published.sample_id:
                sample = await lab.get_sample(uow, target.license_id, published.sample_id)
                if sample.lab_license_id != target.lab_license_id:
                    raise ReferenceInvalid(
                        f"sample {lab.sample_name(target.license_id, sample.id)} was not sent to this LIMS's "
                        "laboratory",
                        metadata={"sample": lab.sample_name(target.license_id, sample.id)},
                    )
            view = await lab.create_result(
                uow,
                target.license_id,
                lab.NewResult(
                    lab_license_id=target.lab_license_id,
                    metrics=published.metrics,
                    test_time=published.test_time,
                    sample_id=published.sample_id,
                    lot_ids=published.lot_ids,
                ),
                self._panels,
            )
            quarantined: list[str] = []
            incomplete = view.result.status == lab_rules.ResultStatus.INCOMPLETE.value
            locked = await inventory.lock_lots(uow, target.license_id, view.lot_ids)
            for lot_id in view.lot_ids:
                lot = locked[lot_id]
                if incomplete and lot_rules.Status(lot.status) is lot_rules.Status.AVAILABLE:
                    await inventory.set_status(
                        uow, lot, lot_rules.Status.QUARANTINED, "LIMS_NONCONFORMANCE", t
                    )
                if lot_rules.Status(lot.status) is lot_rules.Status.QUARANTINED:
                    lot_name = inventory.lot_name(target.license_id, lot_id)
                    quarantined.append(lot_name)
                    await outbox.enqueue_event(
                        uow.session,
                        license_id=target.license_id,
                        event_type="lot.quarantined",
                        resource=lot_name,
                        payload={
                            "lot": lot_name,
                            "lab_result": lab.result_name(target.license_id, view.result.id),
                            "reason": "lab result incomplete" if incomplete else "lab result failed",
                            "event_id": event_id,
                        },
                        now=t,
                    )
            return pb.ReceiveIntegrationEventResponse(
                event_id=event_id,
                resources=[lab.result_name(target.license_id, view.result.id)],
                quarantined_lots=quarantined,
            )

        return await self._db.write(ctx, run)
