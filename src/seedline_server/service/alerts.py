"""Alert use cases: rules, alerts, and the transactions of alerts opening and resolving.

Rules are created, read, listed, updated and deleted; alerts are read, listed and acknowledged;
the alert hub (:mod:`seedline_server.telemetry.alerts`) opens and resolves alerts here.

Every alert change (fired, resolved, acknowledged) appends an ``alert_events`` row and NOTIFYs
:data:`EVENTS_CHANNEL` in its transaction, so the WatchAlerts feed of every server process
hears it once it commits; openings and resolutions also enqueue ``alert.opened`` /
``alert.closed`` for the license's subscribed webhooks in that same transaction. Rule changes
NOTIFY :data:`RULES_CHANNEL` so every process reloads its rule cache.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from ulid import ULID

from seedline_server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    InvalidUpdateMask,
    NotFound,
    ReferenceInvalid,
)
from seedline_server.service import filters, outbox
from seedline_server.service.registry import Page, check_etag, get_license, list_page, snapshot
from seedline_server.service.uow import UnitOfWork, new_id, now
from seedline_server.store import alert_models as am
from seedline_server.store import models
from seedline_server.store import telemetry_models as tm
from seedline_server.telemetry import alerts as evaluator

EVENTS_CHANNEL = "seedline_alert_events"
RULES_CHANNEL = "seedline_alert_rules"

# seedline.telemetry.v1.AlertChange numbers.
CURRENT, FIRED, RESOLVED, ACKNOWLEDGED = 1, 2, 3, 4
_CONDITION_FIELDS = (
    "metric",
    "section_id",
    "sensor_id",
    "comparator",
    "threshold",
    "lower_bound",
    "upper_bound",
    "unit",
    "hold_seconds",
    "hysteresis",
)
_TIMES = ("start_time", "end_time", "last_value_time", "acknowledge_time", "create_time", "update_time")


def rule_name(license_id: str, rule_id: str) -> str:
    """``licenses/{license}/alertRules/{alert_rule}``."""
    return f"licenses/{license_id}/alertRules/{rule_id}"


def alert_name(license_id: str, alert_id: str) -> str:
    """``licenses/{license}/alerts/{alert}``."""
    return f"licenses/{license_id}/alerts/{alert_id}"


# --- conditions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConditionIn:
    """A rule's condition as given (ids parsed from resource names; exactly one scope set)."""

    metric: int
    comparator: int
    unit: int
    section_id: str | None = None
    sensor_id: str | None = None
    threshold: float | None = None
    lower_bound: float | None = None
    upper_bound: float | None = None
    hold_seconds: float = 0.0
    hysteresis: float | None = None  # None: the metric's default margin

    def columns(self) -> dict[str, Any]:
        """The AlertRule columns of the condition."""
        return {f: getattr(self, f) for f in _CONDITION_FIELDS}


def condition_of(values: Mapping[str, Any]) -> evaluator.Condition:
    """The evaluator's condition of a rule row's (or an alert's stored) condition columns."""
    return evaluator.Condition(
        evaluator.Comparator(int(values["comparator"])),
        threshold=float(values["threshold"] or 0.0),
        lower=float(values["lower_bound"] or 0.0),
        upper=float(values["upper_bound"] or 0.0),
        hold=timedelta(seconds=float(values["hold_seconds"])),
        hysteresis=evaluator.default_hysteresis(int(values["metric"]), int(values["unit"]))
        if values.get("hysteresis") is None
        else float(values["hysteresis"]),
        default_margin=values.get("hysteresis") is None,
    )


def rule_condition(rule: am.AlertRule) -> evaluator.Condition:
    """The evaluator's condition of a rule."""
    return condition_of({f: getattr(rule, f) for f in _CONDITION_FIELDS})


async def _check_scope(uow: UnitOfWork, license_id: str, cond: ConditionIn) -> None:
    """The section or sensor exists in the license (a sensor of the condition's metric)."""
    if cond.section_id is not None:
        section = await uow.session.get(models.Section, cond.section_id)
        if section is None or section.license_id != license_id:
            name = f"licenses/{license_id}/sections/{cond.section_id}"
            raise ReferenceInvalid(f"section {name} does not exist", metadata={"section": name})
        return
    assert cond.sensor_id is not None
    sensor = await uow.session.get(tm.Sensor, cond.sensor_id)
    name = f"licenses/{license_id}/sensors/{cond.sensor_id}"
    if sensor is None or sensor.license_id != license_id or sensor.delete_time is not None:
        raise ReferenceInvalid(f"sensor {name} does not exist", metadata={"sensor": name})
    if sensor.metric != cond.metric:
        raise InvalidArgument(
            f"sensor {name} does not measure the condition's metric",
            [FieldViolation("alert_rule.condition.sensor", "must be a sensor of condition.metric")],
        )


async def check_sensor_unused(uow: UnitOfWork, license_id: str, sensor_id: str) -> None:
    """Refuse (FAILED_PRECONDITION / REFERENCE_INVALID) while a live rule names the sensor.

    For DeleteSensor, which the contract refuses while an alert rule names the sensor.
    """
    r = am.AlertRule
    rule_id = await uow.session.scalar(
        select(r.id).where(r.sensor_id == sensor_id, r.delete_time.is_(None)).order_by(r.id).limit(1)
    )
    if rule_id is not None:
        name = rule_name(license_id, rule_id)
        raise ReferenceInvalid(
            f"the sensor is named by alert rule {name}; delete or change the rule first",
            metadata={"alert_rule": name},
        )


# --- rules --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewRule:
    """A rule to create."""

    display_name: str
    condition: ConditionIn
    severity: int
    enabled: bool


async def _rules_changed(uow: UnitOfWork) -> None:
    await uow.session.execute(text("SELECT pg_notify(:c, '')"), {"c": RULES_CHANNEL})


async def create_rule(uow: UnitOfWork, license_id: str, new: NewRule) -> am.AlertRule:
    """Create a rule (audited); every server process starts evaluating it once it commits."""
    await get_license(uow, license_id)
    await _check_scope(uow, license_id, new.condition)
    t = now()
    row = am.AlertRule(
        id=new_id(),
        license_id=license_id,
        display_name=new.display_name,
        **new.condition.columns(),
        severity=new.severity,
        enabled=new.enabled,
        create_time=t,
        update_time=t,
        delete_time=None,
        version=1,
    )
    uow.session.add(row)
    await uow.session.flush()
    await uow.audit(
        license_id=license_id,
        resource=rule_name(license_id, row.id),
        action="CREATE",
        before=None,
        after=snapshot(row),
    )
    await _rules_changed(uow)
    return row


async def get_rule(uow: UnitOfWork, license_id: str, rule_id: str, *, lock: bool = False) -> am.AlertRule:
    """One live rule of the license, or NOT_FOUND."""
    row = await uow.session.get(am.AlertRule, rule_id, with_for_update=lock, populate_existing=lock)
    if row is None or row.license_id != license_id or row.delete_time is not None:
        raise NotFound("alert rule", rule_name(license_id, rule_id))
    return row


async def list_rules(
    uow: UnitOfWork,
    license_id: str,
    conditions: Sequence[ColumnElement[bool]],
    filter_text: str,
    size: int,
    token: str,
) -> Page[am.AlertRule]:
    """A page of the license's live rules in id order."""
    await get_license(uow, license_id)
    r = am.AlertRule
    stmt: Select[Any] = select(r).where(r.license_id == license_id, r.delete_time.is_(None), *conditions)
    return await list_page(uow, stmt, r.id, size, token, {"parent": license_id, "filter": filter_text})


@dataclass(frozen=True)
class RuleChanges:
    """The mutable fields of a rule as given in an update (which apply is the mask's business)."""

    display_name: str
    condition: ConditionIn | None
    severity: int
    enabled: bool


_MUTABLE = {"display_name", "condition", "severity", "enabled"}


async def update_rule(
    uow: UnitOfWork, license_id: str, rule_id: str, changes: RuleChanges, mask: Sequence[str], given_etag: str
) -> am.AlertRule:
    """Change a rule; its firing alerts that no longer hold under the new rule resolve."""
    row = await get_rule(uow, license_id, rule_id, lock=True)
    check_etag(given_etag, row.id, row.version)
    paths = sorted(_MUTABLE) if not mask or list(mask) == ["*"] else list(mask)
    if "condition" in paths and changes.condition is None:
        raise InvalidArgument(
            "condition is required when updated", [FieldViolation("alert_rule.condition", "required")]
        )
    if "severity" in paths and not changes.severity:
        raise InvalidArgument(
            "severity must be set", [FieldViolation("alert_rule.severity", "must not be UNSPECIFIED")]
        )
    bad = [p for p in paths if p not in _MUTABLE]
    if bad:
        raise InvalidUpdateMask(
            f"update_mask names fields that cannot be updated: {', '.join(bad)} "
            f"(mutable: {', '.join(sorted(_MUTABLE))})"
        )
    before = snapshot(row)
    if "display_name" in paths:
        if not changes.display_name.strip():
            raise InvalidArgument(
                "display_name cannot be empty",
                [FieldViolation("alert_rule.display_name", "must not be empty")],
            )
        row.display_name = changes.display_name
    if "severity" in paths:
        row.severity = changes.severity
    if "enabled" in paths:
        row.enabled = changes.enabled
    if "condition" in paths and changes.condition is not None:
        await _check_scope(uow, license_id, changes.condition)
        for key, value in changes.condition.columns().items():
            setattr(row, key, value)
    t = now()
    row.version += 1
    row.update_time = t
    await uow.session.flush()
    await _resolve_outdated(uow, row, t)
    await uow.audit(
        license_id=license_id,
        resource=rule_name(license_id, row.id),
        action="UPDATE",
        before=before,
        after=snapshot(row),
    )
    await _rules_changed(uow)
    return row


async def delete_rule(uow: UnitOfWork, license_id: str, rule_id: str, given_etag: str) -> None:
    """Delete a rule (soft: its alerts keep naming it) and resolve its firing alerts."""
    row = await get_rule(uow, license_id, rule_id, lock=True)
    check_etag(given_etag, row.id, row.version)
    before = snapshot(row)
    t = now()
    row.delete_time = t
    row.version += 1
    row.update_time = t
    await uow.session.flush()
    for alert in await _firing_of(uow, row.id):
        await _resolve(uow, alert, t, alert.last_value, alert.last_value_time)
    await uow.audit(
        license_id=license_id,
        resource=rule_name(license_id, row.id),
        action="DELETE",
        before=before,
        after=None,
    )
    await _rules_changed(uow)


async def _firing_of(uow: UnitOfWork, rule_id: str) -> list[am.Alert]:
    a = am.Alert
    stmt = select(a).where(a.rule_id == rule_id, a.state == am.FIRING).order_by(a.id).with_for_update()
    return list((await uow.session.scalars(stmt)).all())


async def _resolve_outdated(uow: UnitOfWork, rule: am.AlertRule, t: datetime) -> None:
    """Resolve the rule's firing alerts that its new form would not keep firing."""
    cond = rule_condition(rule)
    for alert in await _firing_of(uow, rule.id):
        old_unit = int(alert.condition["unit"])
        in_scope = rule.metric == alert.condition["metric"] and (
            rule.sensor_id == alert.sensor_id if rule.sensor_id else rule.section_id == alert.section_id
        )
        if rule.enabled and in_scope and cond.meets(evaluator.convert(alert.last_value, old_unit, rule.unit)):
            continue
        await _resolve(uow, alert, t, alert.last_value, alert.last_value_time)


# --- alerts -------------------------------------------------------------------------------------


def alert_json(row: am.Alert) -> dict[str, Any]:
    """The alert's columns as JSON (times as RFC 3339 text): the event and webhook payload."""
    out: dict[str, Any] = {}
    for column in am.Alert.__table__.columns:
        value = getattr(row, column.key)
        out[column.key] = value.isoformat() if isinstance(value, datetime) else value
    return out


def alert_from_json(data: Mapping[str, Any]) -> am.Alert:
    """A detached Alert from :func:`alert_json` output (for conversion, never stored)."""
    values = dict(data)
    for key in _TIMES:
        if values.get(key) is not None:
            values[key] = datetime.fromisoformat(values[key])
    return am.Alert(**values)


async def _changed(uow: UnitOfWork, alert: am.Alert, change: int, t: datetime) -> None:
    """Log the change for the watchers (and NOTIFY them) in the current transaction."""
    uow.session.add(
        am.AlertEvent(
            license_id=alert.license_id,
            alert_id=alert.id,
            change=change,
            event_time=t,
            alert=alert_json(alert),
        )
    )
    await uow.session.flush()
    await uow.session.execute(text("SELECT pg_notify(:c, '')"), {"c": EVENTS_CHANNEL})


async def _resolve(uow: UnitOfWork, alert: am.Alert, t: datetime, value: float, value_time: datetime) -> None:
    alert.state = am.RESOLVED
    alert.end_time = t
    alert.last_value = value
    alert.last_value_time = value_time
    alert.version += 1
    alert.update_time = now()
    await uow.session.flush()
    await _changed(uow, alert, RESOLVED, alert.update_time)
    await outbox.enqueue_event(
        uow.session,
        license_id=alert.license_id,
        event_type="alert.closed",
        resource=alert_name(alert.license_id, alert.id),
        payload=alert_json(alert),
        now=alert.update_time,
    )


async def get_alert(uow: UnitOfWork, license_id: str, alert_id: str, *, lock: bool = False) -> am.Alert:
    """One alert of the license, or NOT_FOUND."""
    row = await uow.session.get(am.Alert, alert_id, with_for_update=lock, populate_existing=lock)
    if row is None or row.license_id != license_id:
        raise NotFound("alert", alert_name(license_id, alert_id))
    return row


async def list_alerts(
    uow: UnitOfWork,
    license_id: str,
    conditions: Sequence[ColumnElement[bool]],
    filter_text: str,
    size: int,
    token: str,
) -> Page[am.Alert]:
    """A page of the license's alerts in id (start) order."""
    await get_license(uow, license_id)
    a = am.Alert
    stmt: Select[Any] = select(a).where(a.license_id == license_id, *conditions)
    return await list_page(uow, stmt, a.id, size, token, {"parent": license_id, "filter": filter_text})


async def acknowledge_alert(
    uow: UnitOfWork, license_id: str, alert_id: str, note: str, given_etag: str
) -> am.Alert:
    """Record the caller's acknowledgement; a second acknowledgement changes nothing."""
    row = await get_alert(uow, license_id, alert_id, lock=True)
    if row.acknowledge_time is not None:
        return row
    check_etag(given_etag, row.id, row.version)
    before = snapshot(row)
    t = now()
    row.acknowledge_time = t
    row.acknowledger = uow.ctx.principal.name
    row.acknowledge_note = note
    row.version += 1
    row.update_time = t
    await uow.session.flush()
    await _changed(uow, row, ACKNOWLEDGED, t)
    await uow.audit(
        license_id=license_id,
        resource=alert_name(license_id, row.id),
        action="ACKNOWLEDGED",
        before=before,
        after=snapshot(row),
    )
    return row


async def firing_alerts(uow: UnitOfWork, license_id: str | None = None) -> list[am.Alert]:
    """The firing alerts of one license (or of all), in id order."""
    a = am.Alert
    stmt = select(a).where(a.state == am.FIRING)
    if license_id is not None:
        stmt = stmt.where(a.license_id == license_id)
    return list((await uow.session.scalars(stmt.order_by(a.id))).all())


# --- the hub's transactions ---------------------------------------------------------------------


async def live_rules(uow: UnitOfWork) -> list[am.AlertRule]:
    """Every enabled, undeleted rule (the evaluator's cache)."""
    r = am.AlertRule
    stmt = select(r).where(r.enabled.is_(True), r.delete_time.is_(None)).order_by(r.id)
    return list((await uow.session.scalars(stmt)).all())


@dataclass(frozen=True)
class Opening:
    """An alert the evaluator wants to open."""

    rule: am.AlertRule
    sensor_id: str
    section_id: str
    start_time: datetime
    value: float
    value_time: datetime


async def open_alert(uow: UnitOfWork, o: Opening) -> tuple[am.Alert, bool]:
    """Open the alert unless one of the rule and sensor is firing already (idempotent).

    Returns the firing alert and whether this call opened it. Only the call that opens it logs
    the change and enqueues ``alert.opened``; a concurrent opener (another process) gets the
    existing alert back.
    """
    rule = o.rule
    t = now()
    values = {
        "id": str(ULID.from_datetime(o.start_time)),  # ids sort by start time, as ListAlerts promises
        "license_id": rule.license_id,
        "rule_id": rule.id,
        "sensor_id": o.sensor_id,
        "section_id": o.section_id,
        "condition": {f: getattr(rule, f) for f in _CONDITION_FIELDS},
        "severity": rule.severity,
        "state": am.FIRING,
        "start_time": o.start_time,
        "end_time": None,
        "last_value": o.value,
        "last_value_time": o.value_time,
        "acknowledge_time": None,
        "acknowledger": "",
        "acknowledge_note": "",
        "create_time": t,
        "update_time": t,
        "version": 1,
    }
    stmt = (
        insert(am.Alert)
        .values(values)
        .on_conflict_do_nothing(index_elements=["rule_id", "sensor_id"], index_where=text("state = 1"))
        .returning(am.Alert.id)
    )
    inserted = (await uow.session.execute(stmt)).scalar()
    a = am.Alert
    row = await uow.session.scalar(
        select(a)
        .where(a.rule_id == rule.id, a.sensor_id == o.sensor_id, a.state == am.FIRING)
        .execution_options(populate_existing=True)
    )
    if row is None:  # resolved between our insert attempt and this read: nothing to adopt
        raise LookupError("the firing alert vanished")
    if inserted is None:
        return row, False
    await _changed(uow, row, FIRED, t)
    await outbox.enqueue_event(
        uow.session,
        license_id=row.license_id,
        event_type="alert.opened",
        resource=alert_name(row.license_id, row.id),
        payload=alert_json(row),
        now=t,
    )
    return row, True


async def close_alert(
    uow: UnitOfWork, rule_id: str, sensor_id: str, end_time: datetime, value: float
) -> am.Alert | None:
    """Resolve the firing alert of the rule and sensor, if there still is one (idempotent)."""
    a = am.Alert
    row = await uow.session.scalar(
        select(a)
        .where(a.rule_id == rule_id, a.sensor_id == sensor_id, a.state == am.FIRING)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if row is None:
        return None
    await _resolve(uow, row, end_time, value, end_time)
    return row


async def touch_alerts(uow: UnitOfWork, latest: Mapping[tuple[str, str], tuple[float, datetime]]) -> None:
    """Record the latest value of firing alerts (no event: the value is not a state change)."""
    a = am.Alert
    for (rule_id, sensor_id), (value, t) in latest.items():
        await uow.session.execute(
            update(a)
            .where(
                a.rule_id == rule_id, a.sensor_id == sensor_id, a.state == am.FIRING, a.last_value_time < t
            )
            .values(last_value=value, last_value_time=t)
        )


async def event_head(uow: UnitOfWork) -> int:
    """The newest alert event's seq (0 when there is none)."""
    return int(await uow.session.scalar(select(func.coalesce(func.max(am.AlertEvent.seq), 0))) or 0)


async def events_after(uow: UnitOfWork, seq: int, limit: int) -> list[am.AlertEvent]:
    """Alert events after ``seq``, oldest first."""
    e = am.AlertEvent
    stmt = select(e).where(e.seq > seq).order_by(e.seq).limit(limit)
    return list((await uow.session.scalars(stmt)).all())


async def prune_events(uow: UnitOfWork, before: datetime) -> None:
    """Drop alert events older than ``before`` (watchers only need the live tail)."""
    await uow.session.execute(delete(am.AlertEvent).where(am.AlertEvent.event_time < before))


# --- filters (AIP-160 subset) -------------------------------------------------------------------

_NAME = re.compile(
    r"licenses/([0-9A-HJKMNP-TV-Z]{26})/(sections|sensors|alertRules)/([0-9A-HJKMNP-TV-Z]{26})"
)


def _ref(value: str, license_id: str, coll: str, field: str) -> str:
    match = _NAME.fullmatch(value)
    if match is None or match[2] != coll or match[1] != license_id:
        raise filters.violation(f"{field} must be a name under licenses/{license_id}/{coll}/, got {value!r}")
    return match[3]


def _parsers(
    license_id: str, enums: Mapping[str, int]
) -> tuple[Callable[[str], Callable[[str, str], Any]], Callable[[str], Callable[[str, str], Any]]]:
    """(enum value parser by name prefix, resource name parser by collection) for filters."""

    def enum(prefix: str) -> Callable[[str, str], Any]:
        return lambda value, field: filters.enum_number(value, enums, prefix, field)

    def name(collection: str) -> Callable[[str, str], Any]:
        return lambda value, field: _ref(value, license_id, collection, field)

    return enum, name


def rule_filter(expression: str, license_id: str, enums: Mapping[str, int]) -> list[ColumnElement[bool]]:
    """SQL conditions of a ListAlertRules filter (``enums``: enum value names → numbers).

    Raises:
        InvalidArgument: the filter does not parse or names an unknown field or value.

    """
    r = am.AlertRule
    enum, name = _parsers(license_id, enums)
    return filters.conditions(
        expression,
        {
            "condition.metric": filters.matches(r.metric, enum("METRIC_")),
            "condition.section": filters.matches(r.section_id, name("sections")),
            "condition.sensor": filters.matches(r.sensor_id, name("sensors")),
            "severity": filters.matches(r.severity, enum("ALERT_SEVERITY_")),
            "enabled": filters.matches(r.enabled, filters.boolean),
        },
    )


def alert_filter(expression: str, license_id: str, enums: Mapping[str, int]) -> list[ColumnElement[bool]]:
    """SQL conditions of a ListAlerts filter (``enums``: enum value names → numbers).

    Raises:
        InvalidArgument: the filter does not parse or names an unknown field or value.

    """
    a = am.Alert
    enum, name = _parsers(license_id, enums)

    def acknowledged(op: str, value: str, field: str) -> ColumnElement[bool]:
        acked = filters.boolean(value, field)
        if op not in {"=", "!="}:
            raise filters.violation("acknowledged supports only = and !=")
        return a.acknowledge_time.is_not(None) if acked == (op == "=") else a.acknowledge_time.is_(None)

    return filters.conditions(
        expression,
        {
            "state": filters.matches(a.state, enum("ALERT_STATE_")),
            "severity": filters.matches(a.severity, enum("ALERT_SEVERITY_")),
            "alert_rule": filters.matches(a.rule_id, name("alertRules")),
            "sensor": filters.matches(a.sensor_id, name("sensors")),
            "section": filters.matches(a.section_id, name("sections")),
            "acknowledged": acknowledged,
            "start_time": lambda op, value, field: filters.compare(
                a.start_time, op, filters.timestamp(value, field), field
            ),
        },
    )
