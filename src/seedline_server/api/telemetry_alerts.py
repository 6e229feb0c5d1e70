"""The alerting RPCs of TelemetryService: alert rules, alerts, acknowledgements, WatchAlerts.

:class:`AlertRpcs` is a mixin: the TelemetryService servicer inherits it and provides
``self._db`` (the :class:`~seedline_server.service.uow.Database`) and ``self._alerts`` (the
:class:`~seedline_server.telemetry.alerts.AlertHub` fed by the ingest pipeline).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2, empty_pb2
from seedline.telemetry.v1 import telemetry_pb2 as pb

from seedline_server.api import names
from seedline_server.api.convert import call, replay, ts
from seedline_server.api.interceptor import validate_masked_only
from seedline_server.service import alerts as uses
from seedline_server.service.registry import etag, get_license
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import alert_models as am
from seedline_server.telemetry.alerts import AlertHub

Ctx = grpc.aio.ServicerContext[Any, Any]
# Enum value names the List filters accept (e.g. ``METRIC_TEMPERATURE``, ``ALERT_STATE_FIRING``).
_ENUMS = {
    v.name: v.number
    for e in (pb.Metric, pb.AlertSeverity, pb.AlertState)
    for v in e.DESCRIPTOR.values
    if v.number
}


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out


def condition_pb(license_id: str, c: Mapping[str, Any]) -> pb.AlertCondition:
    """Wire form of a condition (a rule's columns, or an alert's stored copy of them)."""
    out = pb.AlertCondition(
        metric=c["metric"],
        comparator=c["comparator"],
        unit=c["unit"],
        hold_duration=_duration(float(c["hold_seconds"])),
    )
    if c.get("section_id"):
        out.section = f"licenses/{license_id}/sections/{c['section_id']}"
    else:
        out.sensor = f"licenses/{license_id}/sensors/{c['sensor_id']}"
    for wire, column in (
        ("threshold", "threshold"),
        ("lower_bound", "lower_bound"),
        ("upper_bound", "upper_bound"),
        ("hysteresis", "hysteresis"),
    ):
        if c.get(column) is not None:
            setattr(out, wire, c[column])
    return out


def rule_pb(row: am.AlertRule) -> pb.AlertRule:
    """Wire form of an alert rule."""
    columns = {k: getattr(row, k) for k in uses.ConditionIn.__dataclass_fields__}
    return pb.AlertRule(
        name=uses.rule_name(row.license_id, row.id),
        display_name=row.display_name,
        condition=condition_pb(row.license_id, columns),
        severity=row.severity,  # type: ignore[arg-type]
        enabled=row.enabled,
        create_time=ts(row.create_time),
        update_time=ts(row.update_time),
        etag=etag(row.id, row.version),
    )


def alert_pb(row: am.Alert) -> pb.Alert:
    """Wire form of an alert."""
    lic = row.license_id
    return pb.Alert(
        name=uses.alert_name(lic, row.id),
        alert_rule=uses.rule_name(lic, row.rule_id),
        condition=condition_pb(lic, row.condition),
        severity=row.severity,  # type: ignore[arg-type]
        sensor=f"licenses/{lic}/sensors/{row.sensor_id}",
        section=f"licenses/{lic}/sections/{row.section_id}",
        state=row.state,  # type: ignore[arg-type]
        start_time=ts(row.start_time),
        end_time=ts(row.end_time),
        last_value=row.last_value,
        last_value_time=ts(row.last_value_time),
        acknowledge_time=ts(row.acknowledge_time),
        acknowledger=row.acknowledger,
        acknowledge_note=row.acknowledge_note,
        etag=etag(row.id, row.version),
    )


def condition_in(license_id: str, c: pb.AlertCondition, field: str) -> uses.ConditionIn:
    """The use-case form of a wire condition (scope names must be in ``license_id``)."""
    scope = c.WhichOneof("scope")
    return uses.ConditionIn(
        metric=c.metric,
        comparator=c.comparator,
        unit=c.unit,
        section_id=names.same_license(license_id, c.section, "sections", f"{field}.section")
        if scope == "section"
        else None,
        sensor_id=names.same_license(license_id, c.sensor, "sensors", f"{field}.sensor")
        if scope == "sensor"
        else None,
        threshold=c.threshold if c.HasField("threshold") else None,
        lower_bound=c.lower_bound if c.HasField("lower_bound") else None,
        upper_bound=c.upper_bound if c.HasField("upper_bound") else None,
        hold_seconds=c.hold_duration.ToTimedelta().total_seconds(),
        hysteresis=c.hysteresis if c.HasField("hysteresis") else None,
    )


validate_masked_only(pb.UpdateAlertRuleRequest, "alert_rule")


class AlertRpcs:
    """The alert RPCs of seedline.telemetry.v1.TelemetryService (a mixin of its servicer)."""

    _db: Database
    _alerts: AlertHub
    # Seconds without a change after which WatchAlerts sends a heartbeat (the contract's 30 s).
    heartbeat_seconds: float = 30.0

    # --- rules ---------------------------------------------------------------------------------

    async def CreateAlertRule(self, request: pb.CreateAlertRuleRequest, context: Ctx) -> pb.AlertRule:
        license_id = names.license_id(request.parent)
        r = request.alert_rule
        new = uses.NewRule(
            display_name=r.display_name,
            condition=condition_in(license_id, r.condition, "alert_rule.condition"),
            severity=r.severity,
            enabled=r.enabled,
        )

        async def run(uow: UnitOfWork) -> pb.AlertRule:
            return rule_pb(await uses.create_rule(uow, license_id, new))

        out = await self._db.write(
            call(request.request_id), run, replay("CreateAlertRule", request, pb.AlertRule)
        )
        self._alerts.rules_changed()
        return out

    async def GetAlertRule(self, request: pb.GetAlertRuleRequest, context: Ctx) -> pb.AlertRule:
        license_id, rule_id = names.child(request.name, "alertRules")

        async def run(uow: UnitOfWork) -> pb.AlertRule:
            return rule_pb(await uses.get_rule(uow, license_id, rule_id))

        return await self._db.read(call(), run)

    async def ListAlertRules(
        self, request: pb.ListAlertRulesRequest, context: Ctx
    ) -> pb.ListAlertRulesResponse:
        license_id = names.license_id(request.parent)
        conditions = uses.rule_filter(request.filter, license_id, _ENUMS)

        async def run(uow: UnitOfWork) -> pb.ListAlertRulesResponse:
            page = await uses.list_rules(
                uow, license_id, conditions, request.filter.strip(), request.page_size, request.page_token
            )
            return pb.ListAlertRulesResponse(
                alert_rules=[rule_pb(r) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def UpdateAlertRule(self, request: pb.UpdateAlertRuleRequest, context: Ctx) -> pb.AlertRule:
        r = request.alert_rule
        license_id, rule_id = names.child(r.name, "alertRules", "alert_rule.name")
        changes = uses.RuleChanges(
            display_name=r.display_name,
            condition=condition_in(license_id, r.condition, "alert_rule.condition")
            if r.HasField("condition")
            else None,
            severity=r.severity,
            enabled=r.enabled,
        )
        mask = list(request.update_mask.paths)

        async def run(uow: UnitOfWork) -> pb.AlertRule:
            return rule_pb(await uses.update_rule(uow, license_id, rule_id, changes, mask, r.etag))

        out = await self._db.write(call(), run)
        self._alerts.rules_changed()
        return out

    async def DeleteAlertRule(self, request: pb.DeleteAlertRuleRequest, context: Ctx) -> empty_pb2.Empty:
        license_id, rule_id = names.child(request.name, "alertRules")

        async def run(uow: UnitOfWork) -> empty_pb2.Empty:
            await uses.delete_rule(uow, license_id, rule_id, request.etag)
            return empty_pb2.Empty()

        out = await self._db.write(
            call(request.request_id), run, replay("DeleteAlertRule", request, empty_pb2.Empty)
        )
        self._alerts.rules_changed()
        return out

    # --- alerts --------------------------------------------------------------------------------

    async def GetAlert(self, request: pb.GetAlertRequest, context: Ctx) -> pb.Alert:
        license_id, alert_id = names.child(request.name, "alerts")

        async def run(uow: UnitOfWork) -> pb.Alert:
            return alert_pb(await uses.get_alert(uow, license_id, alert_id))

        return await self._db.read(call(), run)

    async def ListAlerts(self, request: pb.ListAlertsRequest, context: Ctx) -> pb.ListAlertsResponse:
        license_id = names.license_id(request.parent)
        conditions = uses.alert_filter(request.filter, license_id, _ENUMS)

        async def run(uow: UnitOfWork) -> pb.ListAlertsResponse:
            page = await uses.list_alerts(
                uow, license_id, conditions, request.filter.strip(), request.page_size, request.page_token
            )
            return pb.ListAlertsResponse(
                alerts=[alert_pb(a) for a in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def AcknowledgeAlert(self, request: pb.AcknowledgeAlertRequest, context: Ctx) -> pb.Alert:
        license_id, alert_id = names.child(request.name, "alerts")

        async def run(uow: UnitOfWork) -> pb.Alert:
            return alert_pb(
                await uses.acknowledge_alert(uow, license_id, alert_id, request.note, request.etag)
            )

        return await self._db.write(
            call(request.request_id), run, replay("AcknowledgeAlert", request, pb.Alert)
        )

    async def WatchAlerts(
        self, request: pb.WatchAlertsRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchAlertsResponse]:
        license_id = names.license_id(request.parent)
        rule_ids = {
            names.same_license(license_id, n, "alertRules", f"alert_rules[{i}]")
            for i, n in enumerate(request.alert_rules)
        }
        min_severity = request.min_severity

        def wanted(a: am.Alert) -> bool:
            return a.severity >= min_severity and (not rule_ids or a.rule_id in rule_ids)

        async def snapshot(uow: UnitOfWork) -> tuple[list[am.Alert], int]:
            await get_license(uow, license_id)
            return await uses.firing_alerts(uow, license_id), await uses.event_head(uow)

        watcher = self._alerts.subscribe(license_id)  # before the snapshot: no change is missed
        try:
            firing, head = await self._db.read(call(), snapshot)
            for a in firing:
                if wanted(a):
                    yield pb.WatchAlertsResponse(change=pb.ALERT_CHANGE_CURRENT, alert=alert_pb(a))
            while True:
                got = await self._alerts.next(watcher, self.heartbeat_seconds)
                if got is None:
                    yield pb.WatchAlertsResponse()
                elif got.seq > head and wanted(got.alert):
                    yield pb.WatchAlertsResponse(change=got.change, alert=alert_pb(got.alert))  # type: ignore[arg-type]
        finally:
            self._alerts.unsubscribe(watcher)
