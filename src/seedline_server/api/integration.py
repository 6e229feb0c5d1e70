"""IntegrationService over gRPC (and REST through Envoy).

Integrations of a license (list, create, get, update, delete), the connection test, the exchange
log, sync runs and their differences, the outbox (deliveries, dead-letter retry) and events
pushed by a remote (ReceiveIntegrationEvent). Credentials are accepted and never returned: a
response leaves ``credentials`` unset and says only whether they are stored.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import grpc
from google.protobuf import duration_pb2, empty_pb2
from seedline.integration.v1 import integration_pb2 as pb
from seedline.integration.v1 import integration_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.api import names
from seedline_server.api.convert import call, dt, replay, ts
from seedline_server.api.interceptor import validate_masked_only
from seedline_server.api.lab import load_panels
from seedline_server.config import Settings
from seedline_server.crypto import KeyRing
from seedline_server.domain.errors import FieldViolation, InvalidArgument
from seedline_server.integrations.limits import SharedLimits
from seedline_server.integrations.registry import Connectors
from seedline_server.integrations.transport import Http
from seedline_server.service import integrations as uc
from seedline_server.service.inbound import InboundReceiver
from seedline_server.service.registry import etag
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import integration_models as im

Ctx = grpc.aio.ServicerContext[Any, Any]
_DELIVERY = "licenses/{}/integrations/{}/deliveries/{}"
_HEADERS = ("seedline-signature", "seedline-event-id")


def _enum_name(prefix: str, number: int, enum: Any) -> str:
    """The stored name of an enum value (``SYNC_SCOPE_PLANTS`` → ``PLANTS``); empty for 0."""
    return str(enum.Name(number)).removeprefix(prefix) if number else ""


def _enum_value(prefix: str, stored: str, enum: Any) -> Any:
    """The wire value of a stored name (``PLANTS`` → ``SYNC_SCOPE_PLANTS``); 0 when unknown."""
    try:
        return enum.Value(prefix + stored)
    except ValueError:
        return 0


def _latency(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    out = duration_pb2.Duration()
    out.FromMilliseconds(round(seconds * 1000))
    return out


def sync_run_pb(row: im.SyncRun) -> pb.SyncRun:
    """Wire form of a sync run."""
    counts = row.counts or {}
    return pb.SyncRun(
        id=row.id,
        state=_enum_value("SYNC_RUN_STATE_", row.state, pb.SyncRunState),
        scopes=[_enum_value("SYNC_SCOPE_", s, pb.SyncScope) for s in row.scopes],
        mode=_enum_value("SYNC_MODE_", row.mode, pb.SyncMode),
        direction=_enum_value("SYNC_DIRECTION_", row.direction, pb.SyncDirection),
        counts=[
            pb.SyncScopeCounts(
                scope=_enum_value("SYNC_SCOPE_", scope, pb.SyncScope),
                pulled_count=int(c.get("pulled", 0)),
                pushed_count=int(c.get("pushed", 0)),
                unchanged_count=int(c.get("unchanged", 0)),
                failed_count=int(c.get("failed", 0)),
            )
            for scope, c in sorted(counts.items())
            if isinstance(c, dict)
        ],
        create_time=ts(row.create_time),
        start_time=ts(row.start_time),
        end_time=ts(row.end_time),
        error_detail=row.error_detail,
        difference_count=row.difference_count,
    )


def integration_pb(view: uc.View) -> pb.Integration:
    """Wire form of an integration: never its credentials, only whether they are set."""
    row = view.row
    out = pb.Integration(
        name=uc.integration_name(row.license_id, row.id),
        kind=_enum_value("INTEGRATION_KIND_", row.kind, pb.IntegrationKind),
        display_name=row.display_name,
        endpoint_uri=row.endpoint_uri,
        enabled=row.enabled,
        credentials_set=row.credentials is not None,
        credentials_update_time=ts(row.credentials_update_time),
        circuit_breaker_state=_enum_value(
            "CIRCUIT_BREAKER_STATE_", row.breaker_state, pb.CircuitBreakerState
        ),
        last_sync_time=ts(row.last_sync_time),
        latest_sync_run=sync_run_pb(view.latest_run) if view.latest_run is not None else None,
        dead_letter_count=view.dead_letters,
        create_time=ts(row.create_time),
        update_time=ts(row.update_time),
        etag=etag(row.id, row.version),
    )
    getattr(out, uc.CONFIG_FIELDS[row.kind]).CopyFrom(uc.config_message(row))
    return out


def log_pb(row: im.IntegrationLog, license_id: str) -> pb.IntegrationLog:
    """Wire form of an exchange log entry."""
    return pb.IntegrationLog(
        name=f"{uc.integration_name(license_id, row.integration_id)}/logs/{row.id}",
        direction=_enum_value("EXCHANGE_DIRECTION_", row.direction, pb.ExchangeDirection),
        endpoint=row.endpoint,
        request_id=row.request_id,
        payload_size_bytes=row.payload_size,
        payload_sha256=row.payload_sha256,
        summary=row.summary,
        status=_enum_value("EXCHANGE_STATUS_", row.status, pb.ExchangeStatus),
        exchange_time=ts(row.exchange_time),
        response_time=_latency(row.response_ms / 1000 if row.response_ms is not None else None),
        retry_count=row.retry_count,
        error_detail=row.error_detail,
        sync_run_id=row.sync_run_id or "",
    )


def delivery_pb(row: im.Delivery) -> pb.Delivery:
    """Wire form of an outbox delivery."""
    return pb.Delivery(
        name=_DELIVERY.format(row.license_id, row.integration_id, row.id),
        event_type=row.event_type,
        resource=row.resource,
        state=_enum_value("DELIVERY_STATE_", row.state, pb.DeliveryState),
        attempts=row.attempts,
        next_attempt_time=ts(row.next_attempt_time) if row.state == "PENDING" else None,
        last_error=row.last_error,
        audit_event=f"licenses/{row.license_id}/auditEvents/{row.audit_event_id}"
        if row.audit_event_id
        else "",
        create_time=ts(row.create_time),
        deliver_time=ts(row.deliver_time),
    )


def difference_pb(row: im.SyncDifference) -> pb.SyncDifference:
    """Wire form of a reconciliation difference."""
    return pb.SyncDifference(
        sync_run_id=row.sync_run_id,
        scope=_enum_value("SYNC_SCOPE_", row.scope, pb.SyncScope),
        kind=_enum_value("DIFFERENCE_KIND_", row.kind, pb.DifferenceKind),
        resource=row.resource,
        remote_id=row.remote_id,
        local_value=row.local_value,
        remote_value=row.remote_value,
    )


validate_masked_only(pb.UpdateIntegrationRequest, "integration")


def spec_of(i: pb.Integration) -> uc.Spec:
    """The use cases' view of a request's integration (the config of the kind it names)."""
    kind = _enum_name("INTEGRATION_KIND_", i.kind, pb.IntegrationKind)
    which = i.WhichOneof("config")
    return uc.Spec(
        kind=kind,
        display_name=i.display_name,
        endpoint_uri=i.endpoint_uri,
        enabled=i.enabled,
        config=getattr(i, which) if which else None,
        credentials=i.credentials if i.HasField("credentials") else None,
    )


class IntegrationServicer(integration_pb2_grpc.IntegrationServiceServicer):
    """Implements seedline.integration.v1.IntegrationService."""

    def __init__(
        self,
        db: Database,
        keyring: KeyRing,
        inbound: InboundReceiver,
        settings: Settings,
        engine: AsyncEngine,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._inbound = inbound
        self._settings = settings
        self._limits = SharedLimits(engine, f"{socket.gethostname()}:{os.getpid()}:api")
        self._engine = engine

    # --- integrations --------------------------------------------------------------------------

    async def ListIntegrations(
        self, request: pb.ListIntegrationsRequest, context: Ctx
    ) -> pb.ListIntegrationsResponse:
        license_id = names.license_id(request.parent)
        kind = _enum_name("INTEGRATION_KIND_", request.kind, pb.IntegrationKind)

        async def run(uow: UnitOfWork) -> pb.ListIntegrationsResponse:
            views, token = await uc.list_integrations(
                uow, license_id, kind, request.page_size, request.page_token
            )
            return pb.ListIntegrationsResponse(
                integrations=[integration_pb(v) for v in views], next_page_token=token
            )

        return await self._db.read(call(), run)

    async def CreateIntegration(self, request: pb.CreateIntegrationRequest, context: Ctx) -> pb.Integration:
        license_id = names.license_id(request.parent)
        spec = spec_of(request.integration)

        async def run(uow: UnitOfWork) -> pb.Integration:
            return integration_pb(await uc.create_integration(uow, self._keyring, license_id, spec))

        return await self._db.write(
            call(request.request_id), run, replay("CreateIntegration", request, pb.Integration)
        )

    async def GetIntegration(self, request: pb.GetIntegrationRequest, context: Ctx) -> pb.Integration:
        license_id, integration_id = names.child(request.name, "integrations")

        async def run(uow: UnitOfWork) -> pb.Integration:
            return integration_pb(await uc.get_integration(uow, license_id, integration_id))

        return await self._db.read(call(), run)

    async def UpdateIntegration(self, request: pb.UpdateIntegrationRequest, context: Ctx) -> pb.Integration:
        i = request.integration
        license_id, integration_id = names.child(i.name, "integrations", "integration.name")
        spec = spec_of(i)
        mask = list(request.update_mask.paths)

        async def run(uow: UnitOfWork) -> pb.Integration:
            view = await uc.update_integration(
                uow, self._keyring, license_id, integration_id, spec, mask, i.etag
            )
            return integration_pb(view)

        return await self._db.write(
            call(request.request_id), run, replay("UpdateIntegration", request, pb.Integration)
        )

    async def DeleteIntegration(self, request: pb.DeleteIntegrationRequest, context: Ctx) -> empty_pb2.Empty:
        license_id, integration_id = names.child(request.name, "integrations")

        async def run(uow: UnitOfWork) -> empty_pb2.Empty:
            await uc.delete_integration(uow, license_id, integration_id, request.etag)
            return empty_pb2.Empty()

        return await self._db.write(
            call(request.request_id), run, replay("DeleteIntegration", request, empty_pb2.Empty)
        )

    # --- the connection test and the exchange log --------------------------------------------

    async def TestIntegration(
        self, request: pb.TestIntegrationRequest, context: Ctx
    ) -> pb.TestIntegrationResponse:
        license_id, integration_id = names.child(request.name, "integrations")
        s = self._settings
        http = Http(ca_file=s.integration_ca_file, timeout=s.integration_timeout_seconds, max_connections=4)
        try:
            connectors = Connectors(self._engine, self._keyring, http, self._limits, settings=s)
            found = await uc.run_connection_test(
                self._db, call(), self._keyring, connectors, license_id, integration_id
            )
        finally:
            await http.aclose()
        report = found.report
        return pb.TestIntegrationResponse(
            reachable=report.reachable,
            authenticated=report.authenticated,
            license_visible=report.license_visible,
            latency=_latency(report.latency.total_seconds()) if report.latency is not None else None,
            detail=report.detail,
            log=f"{request.name}/logs/{found.log_id}" if found.log_id else "",
        )

    async def ListIntegrationLogs(
        self, request: pb.ListIntegrationLogsRequest, context: Ctx
    ) -> pb.ListIntegrationLogsResponse:
        license_id, integration_id = names.child(request.parent, "integrations", "parent")
        flt = uc.LogFilter(
            status=_enum_name("EXCHANGE_STATUS_", request.status, pb.ExchangeStatus),
            direction=_enum_name("EXCHANGE_DIRECTION_", request.direction, pb.ExchangeDirection),
            start=dt(request, "start_time"),
            end=dt(request, "end_time"),
            sync_run_id=request.sync_run_id,
        )

        async def run(uow: UnitOfWork) -> pb.ListIntegrationLogsResponse:
            rows, token = await uc.list_logs(
                uow, license_id, integration_id, flt, request.page_size, request.page_token
            )
            return pb.ListIntegrationLogsResponse(
                logs=[log_pb(r, license_id) for r in rows], next_page_token=token
            )

        return await self._db.read(call(), run)

    # --- sync runs -----------------------------------------------------------------------------

    async def SyncIntegration(self, request: pb.SyncIntegrationRequest, context: Ctx) -> pb.SyncRun:
        license_id, integration_id = names.child(request.name, "integrations")
        asked = uc.SyncRequest(
            scopes=tuple(_enum_name("SYNC_SCOPE_", s, pb.SyncScope) for s in request.scopes),
            mode=_enum_name("SYNC_MODE_", request.mode, pb.SyncMode),
            direction=_enum_name("SYNC_DIRECTION_", request.direction, pb.SyncDirection),
            since=dt(request, "since_time"),
        )

        async def run(uow: UnitOfWork) -> pb.SyncRun:
            return sync_run_pb(await uc.request_sync(uow, license_id, integration_id, asked))

        return await self._db.write(
            call(request.request_id), run, replay("SyncIntegration", request, pb.SyncRun)
        )

    async def ListSyncDifferences(
        self, request: pb.ListSyncDifferencesRequest, context: Ctx
    ) -> pb.ListSyncDifferencesResponse:
        license_id, integration_id = names.child(request.parent, "integrations", "parent")
        flt = uc.DifferenceFilter(
            sync_run_id=request.sync_run_id,
            kind=_enum_name("DIFFERENCE_KIND_", request.kind, pb.DifferenceKind),
        )

        async def run(uow: UnitOfWork) -> pb.ListSyncDifferencesResponse:
            rows, token = await uc.list_differences(
                uow, license_id, integration_id, flt, request.page_size, request.page_token
            )
            return pb.ListSyncDifferencesResponse(
                differences=[difference_pb(r) for r in rows], next_page_token=token
            )

        return await self._db.read(call(), run)

    # --- the outbox ----------------------------------------------------------------------------

    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: Ctx
    ) -> pb.ListDeliveriesResponse:
        license_id, integration_id = names.child(request.parent, "integrations", "parent")
        flt = uc.DeliveryFilter(state=_enum_name("DELIVERY_STATE_", request.state, pb.DeliveryState))

        async def run(uow: UnitOfWork) -> pb.ListDeliveriesResponse:
            rows, token = await uc.list_deliveries(
                uow, license_id, integration_id, flt, request.page_size, request.page_token
            )
            return pb.ListDeliveriesResponse(deliveries=[delivery_pb(r) for r in rows], next_page_token=token)

        return await self._db.read(call(), run)

    async def RetryDeadLetters(
        self, request: pb.RetryDeadLettersRequest, context: Ctx
    ) -> pb.RetryDeadLettersResponse:
        license_id, integration_id = names.child(request.name, "integrations")
        ids = []
        for n, name in enumerate(request.deliveries):
            lic, iid, did = names.parse(name, _DELIVERY, f"deliveries[{n}]")
            if (lic, iid) != (license_id, integration_id):
                raise InvalidArgument(
                    f"deliveries[{n}] is not a delivery of {request.name}",
                    [FieldViolation(f"deliveries[{n}]", f"must be under {request.name}/deliveries")],
                )
            ids.append(did)

        async def run(uow: UnitOfWork) -> pb.RetryDeadLettersResponse:
            count = await uc.retry_dead_letters(uow, license_id, integration_id, ids)
            return pb.RetryDeadLettersResponse(retried_count=count)

        return await self._db.write(
            call(request.request_id), run, replay("RetryDeadLetters", request, pb.RetryDeadLettersResponse)
        )

    # --- inbound -------------------------------------------------------------------------------

    async def ReceiveIntegrationEvent(
        self, request: pb.ReceiveIntegrationEventRequest, context: Ctx
    ) -> pb.ReceiveIntegrationEventResponse:
        metadata = context.invocation_metadata() or ()
        headers = {
            str(k).lower(): v for k, v in metadata if isinstance(v, str) and str(k).lower() in _HEADERS
        }
        return await self._inbound.receive(
            request.name, request.body.data, request.body.content_type, headers
        )


def build_servicer(
    settings: Settings, database: Database, engine: AsyncEngine, keyring: KeyRing
) -> IntegrationServicer:
    """The servicer, with the inbound receiver judging pushed lab results by the configured panels."""
    inbound = InboundReceiver(database, keyring, load_panels(settings))
    return IntegrationServicer(database, keyring, inbound, settings, engine)
