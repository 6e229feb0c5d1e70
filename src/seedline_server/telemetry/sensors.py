"""Use cases of sensors: register, read, list, change, delete (audited like other resources)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select

from seedline_server.domain.errors import FieldViolation, InvalidArgument, InvalidUpdateMask, NotFound
from seedline_server.service import filters, registry
from seedline_server.service.uow import UnitOfWork, new_id, now
from seedline_server.store import models
from seedline_server.store.telemetry_models import Sensor
from seedline_server.telemetry import ranges

# SensorStatus numbers (seedline.telemetry.v1).
NEVER_REPORTED, REPORTING, STALE = 1, 2, 3
MUTABLE = {"display_name", "section", "reporting_interval"}


def sensor_name(license_id: str, sensor_id: str) -> str:
    """``licenses/{license}/sensors/{sensor}``."""
    return f"licenses/{license_id}/sensors/{sensor_id}"


def status_of(row: Sensor, at: datetime) -> int:
    """Whether the sensor reports as expected (stale after 3 silent intervals)."""
    if row.last_observe_time is None:
        return NEVER_REPORTED
    silent = (at - row.last_observe_time).total_seconds()
    return STALE if silent > 3 * row.reporting_interval_seconds else REPORTING


@dataclass(frozen=True)
class NewSensor:
    """Fields of a sensor to register."""

    section_id: str
    display_name: str
    metric: int
    unit: int
    reporting_interval_seconds: int


async def _check_section(uow: UnitOfWork, license_id: str, section_id: str) -> None:
    await registry.get_scoped(uow, models.Section, license_id, section_id, "section", "sections")


def _check_unit(metric: int, unit: int) -> None:
    if not ranges.fits(metric, unit):
        raise InvalidArgument(
            "unit is not a unit of the metric",
            [FieldViolation("sensor.unit", "unit is not a unit of the metric (see Metric)")],
        )


async def create_sensor(uow: UnitOfWork, license_id: str, new: NewSensor) -> Sensor:
    """Register a sensor in a section of the license."""
    await registry.get_license(uow, license_id)
    await _check_section(uow, license_id, new.section_id)
    _check_unit(new.metric, new.unit)
    t = now()
    row = Sensor(
        id=new_id(),
        license_id=license_id,
        section_id=new.section_id,
        display_name=new.display_name,
        metric=new.metric,
        unit=new.unit,
        reporting_interval_seconds=new.reporting_interval_seconds,
        status=0,
        last_observe_time=None,
        create_time=t,
        update_time=t,
        version=1,
        delete_time=None,
    )
    uow.session.add(row)
    await uow.session.flush()
    await uow.audit(
        license_id=license_id,
        resource=sensor_name(license_id, row.id),
        action="CREATE",
        before=None,
        after=registry.snapshot(row),
    )
    return row


async def get_sensor(uow: UnitOfWork, license_id: str, sensor_id: str, *, lock: bool = False) -> Sensor:
    """A live sensor of the license, or NOT_FOUND."""
    stmt = select(Sensor).where(Sensor.id == sensor_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await uow.session.scalars(stmt)).first()
    if row is None or row.license_id != license_id or row.delete_time is not None:
        raise NotFound("sensor", sensor_name(license_id, sensor_id))
    return row


_FILTER_FIELDS = {"section", "metric", "status"}


def parse_filter(
    text: str, metric_names: dict[str, int], status_names: dict[str, int]
) -> list[tuple[str, str, Any]]:
    """An AIP-160 subset: ``section``, ``metric`` or ``status`` with ``=`` / ``!=``, joined with ``AND``."""
    out: list[tuple[str, str, Any]] = []
    for field, op, raw in filters.terms(text):
        if field not in _FILTER_FIELDS or op not in {"=", "!="}:
            raise filters.violation(f"use section, metric or status with = or != (not {field} {op})")
        value: Any = raw
        if field == "metric":
            value = filters.enum_number(raw, metric_names, "METRIC_", field)
        elif field == "status":
            value = filters.enum_number(raw, status_names, "SENSOR_STATUS_", field)
        out.append((field, op, value))
    return out


async def list_sensors(
    uow: UnitOfWork, license_id: str, clauses: list[tuple[str, str, Any]], size: int, token: str, flt: str
) -> registry.Page[Sensor]:
    """A page of the license's live sensors ordered by id (status is filtered after loading)."""
    stmt: Select[Any] = select(Sensor).where(Sensor.license_id == license_id, Sensor.delete_time.is_(None))
    status_clauses = []
    for field, op, value in clauses:
        if field == "section":
            section_id = value.rpartition("/")[2]
            stmt = stmt.where(
                Sensor.section_id == section_id if op == "=" else Sensor.section_id != section_id
            )
        elif field == "metric":
            stmt = stmt.where(Sensor.metric == value if op == "=" else Sensor.metric != value)
        else:
            status_clauses.append((op, value))
    if status_clauses:
        at = now()
        rows = list((await uow.session.scalars(stmt.order_by(Sensor.id))).all())
        keep = [r for r in rows if all((status_of(r, at) == v) == (op == "=") for op, v in status_clauses)]
        ids = [r.id for r in keep]
        if not ids:
            return registry.Page([], "")
        stmt = select(Sensor).where(Sensor.id.in_(ids))
    return await registry.list_page(uow, stmt, Sensor.id, size, token, {"license": license_id, "filter": flt})


@dataclass(frozen=True)
class SensorChanges:
    """The mutable fields of a sensor as sent."""

    display_name: str
    section_id: str
    reporting_interval_seconds: int | None
    metric: int = 0  # immutable: must be unset or unchanged
    unit: int = 0  # immutable: must be unset or unchanged


async def update_sensor(
    uow: UnitOfWork,
    license_id: str,
    sensor_id: str,
    changes: SensorChanges,
    mask: list[str],
    given_etag: str,
) -> Sensor:
    """Change display_name / section / reporting_interval under optimistic concurrency."""
    row = await get_sensor(uow, license_id, sensor_id, lock=True)
    registry.check_etag(given_etag, row.id, row.version)
    paths = list(mask) or sorted(MUTABLE)
    if paths == ["*"]:
        paths = sorted(MUTABLE)
    bad = [p for p in paths if p not in MUTABLE]
    if bad:
        raise InvalidUpdateMask(
            f"update_mask names fields that cannot be updated: {', '.join(bad)} "
            f"(mutable: {', '.join(sorted(MUTABLE))})"
        )
    for field, given, stored in (("metric", changes.metric, row.metric), ("unit", changes.unit, row.unit)):
        if given and given != stored:
            raise InvalidArgument(
                f"sensor.{field} is immutable; register another sensor instead",
                [FieldViolation(f"sensor.{field}", "immutable")],
            )
    before = registry.snapshot(row)
    if "display_name" in paths:
        if not changes.display_name.strip():
            raise InvalidArgument(
                "display_name cannot be empty", [FieldViolation("sensor.display_name", "must not be empty")]
            )
        row.display_name = changes.display_name
    if "section" in paths:
        await _check_section(uow, license_id, changes.section_id)
        row.section_id = changes.section_id
    if "reporting_interval" in paths:
        if changes.reporting_interval_seconds is None:
            raise InvalidArgument(
                "reporting_interval is required",
                [FieldViolation("sensor.reporting_interval", "must be set when updated")],
            )
        row.reporting_interval_seconds = changes.reporting_interval_seconds
    row.version += 1
    row.update_time = now()
    await uow.audit(
        license_id=license_id,
        resource=sensor_name(license_id, row.id),
        action="UPDATE",
        before=before,
        after=registry.snapshot(row),
    )
    return row


async def delete_sensor(uow: UnitOfWork, license_id: str, sensor_id: str, given_etag: str) -> None:
    """Delete a sensor: later readings are refused; its stored readings stay."""
    from seedline_server.service.alerts import check_sensor_unused  # alerts build on sensors

    row = await get_sensor(uow, license_id, sensor_id, lock=True)
    registry.check_etag(given_etag, row.id, row.version)
    await check_sensor_unused(uow, license_id, row.id)  # the contract: not while a rule names it
    before = registry.snapshot(row)
    row.delete_time = now()
    row.version += 1
    row.update_time = row.delete_time
    await uow.audit(
        license_id=license_id,
        resource=sensor_name(license_id, row.id),
        action="DELETE",
        before=before,
        after=None,
    )
