"""AuditService over gRPC (and REST through Envoy): read-only access to the audit chains."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2
from seedline.audit.v1 import audit_pb2 as pb
from seedline.audit.v1 import audit_pb2_grpc

from seedline_server.api import names
from seedline_server.api.convert import call, ts
from seedline_server.domain.audit import action_number
from seedline_server.service import audit
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import models

Ctx = grpc.aio.ServicerContext[Any, Any]
_ACTIONS = {v.name: v.number for v in pb.AuditAction.DESCRIPTOR.values if v.number}


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    out.update(value)
    return out


def event_pb(row: models.AuditEvent) -> pb.AuditEvent:
    """Wire form of a stored event (of a license: the API never shows the license-less chain)."""
    assert row.license_id is not None
    return pb.AuditEvent(
        name=audit.event_name(row.license_id, row.id),
        id=row.id,
        sequence=row.sequence,
        event_time=ts(row.event_time),
        principal=row.principal,
        request_id=row.request_id,
        method=row.method,
        resource=row.resource,
        action=action_number(row.action),  # type: ignore[arg-type]
        verb=row.action,
        before=_struct(row.before),
        after=_struct(row.after),
        previous_hash=row.prev_hash,
        hash=row.hash,
    )


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Implements seedline.audit.v1.AuditService (who may call it is the interceptor's business)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Ctx
    ) -> pb.ListAuditEventsResponse:
        license_id = names.license_id(request.parent)
        conditions = audit.parse_filter(request.filter, _ACTIONS)
        descending = request.order_by.endswith("desc")
        query = {
            "parent": license_id,
            "filter": request.filter.strip(),
            "order": "desc" if descending else "asc",
        }

        async def run(uow: UnitOfWork) -> pb.ListAuditEventsResponse:
            page = await audit.list_events(
                uow, license_id, conditions, query, descending, request.page_size, request.page_token
            )
            return pb.ListAuditEventsResponse(
                audit_events=[event_pb(r) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def GetAuditEvent(self, request: pb.GetAuditEventRequest, context: Ctx) -> pb.AuditEvent:
        license_id, event_id = names.child(request.name, "auditEvents")

        async def run(uow: UnitOfWork) -> pb.AuditEvent:
            return event_pb(await audit.get_event(uow, license_id, event_id))

        return await self._db.read(call(), run)
