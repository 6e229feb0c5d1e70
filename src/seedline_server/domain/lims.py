"""Reading a lab result a LIMS publishes: the OpenTHC lab-result object, checked field by field.

The event a LIMS pushes is ``{"type": "lab_result.published", "id": …, "created": <unix>,
"data": <OpenTHC Lab_Result>}``. Of the result Seedline needs:

- ``lab_sample.id``: the Seedline sample the laboratory tested (the id Seedline registered the
  sample under) — or, for results not tied to a sample, ``inventory.id`` / ``lot_list[].id``;
- ``metric_list[]``: ``id`` (an OpenTHC lab-metric ULID), ``status`` (``pass``, ``fail``, ``nd``,
  ``na``, ``nr``, ``nt``), ``uom`` (OpenTHC's unit codes) and the numbers ``qom``, ``lod``,
  ``loq``, ``limit`` as JSON numbers or decimal strings;
- ``created_at`` or ``test_at`` (RFC 3339) for when it was tested; ``coa`` (a URL) if any.

Every problem is reported with the JSON path of the field, all at once, so a laboratory can fix
its export in one round. Values must be finite decimals with at most 4 places (OpenTHC's
precision), never negative, and percentages at most 100: a value outside physical range is a
broken export, not a failed test. Whether the results pass is judged later by the lab rules
(:mod:`seedline_server.domain.lab`), exactly as for results entered through the API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from seedline_server.domain.errors import FieldViolation, InvalidArgument
from seedline_server.domain.lab import LabUnit, MetricStatus, Reported

__all__ = ["EVENT_TYPE", "PublishedResult", "parse_event"]

EVENT_TYPE = "lab_result.published"
_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
# OpenTHC's lab metric ids look like ULIDs but use every upper-case letter (018NY6XC00LM...).
_METRIC_ID = re.compile(r"^[0-9A-Z]{26}$")
_STATUS = {
    "pass": MetricStatus.PASS,
    "fail": MetricStatus.FAIL,
    "nd": MetricStatus.NOT_DETECTED,
    "na": MetricStatus.NOT_APPLICABLE,
    "nr": MetricStatus.NOT_REQUIRED,
    "nt": MetricStatus.NOT_TESTED,
}
_UNITS = {
    "pct": LabUnit.PERCENT,
    "%": LabUnit.PERCENT,
    "mg/g": LabUnit.MILLIGRAM_PER_GRAM,
    "ppm": LabUnit.PPM,
    "ppb": LabUnit.PPB,
    "ug/g": LabUnit.MICROGRAM_PER_GRAM,
    "ugkg": LabUnit.MICROGRAM_PER_KILOGRAM,
    "ug/kg": LabUnit.MICROGRAM_PER_KILOGRAM,
    "cfu/g": LabUnit.CFU_PER_GRAM,
    "aw": LabUnit.WATER_ACTIVITY,
    "bool": LabUnit.BOOLEAN,
    "": LabUnit.UNITLESS,
}
_MAX_METRICS = 500
_MAX_VALUE = Decimal("1e12")


@dataclass(frozen=True)
class PublishedResult:
    """A published lab result, checked."""

    event_id: str
    remote_id: str
    sample_id: str
    lot_ids: tuple[str, ...]
    test_time: datetime
    metrics: tuple[Reported, ...]
    coa_url: str


def _number(value: Any, path: str, problems: list[FieldViolation], *, percent: bool) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        problems.append(FieldViolation(path, "must be a number"))
        return ""
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        problems.append(FieldViolation(path, f"{value!r} is not a number"))
        return ""
    if not d.is_finite():
        problems.append(FieldViolation(path, "must be finite"))
        return ""
    if d < 0:
        problems.append(FieldViolation(path, "must not be negative"))
        return ""
    if d >= _MAX_VALUE or (percent and d > 100):
        problems.append(
            FieldViolation(path, "is outside the physical range" + (" (0..100 %)" if percent else ""))
        )
        return ""
    q = d.quantize(Decimal("0.0001"))
    if q != d:
        problems.append(FieldViolation(path, "has more than 4 decimal places"))
        return ""
    return f"{q:f}"


def _time(value: Any, path: str, problems: list[FieldViolation]) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        problems.append(FieldViolation(path, "must be an RFC 3339 time"))
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _id(obj: Any) -> str:
    return str(obj.get("id", "")) if isinstance(obj, dict) else ""


def parse_event(event: Any, *, event_id: str, now: datetime) -> PublishedResult:
    """Check a ``lab_result.published`` event; raises INVALID_ARGUMENT naming every bad field."""
    problems: list[FieldViolation] = []
    if not isinstance(event, dict):
        raise InvalidArgument("the event must be a JSON object", [FieldViolation("body", "not an object")])
    if event.get("type") != EVENT_TYPE:
        problems.append(FieldViolation("type", f"must be {EVENT_TYPE!r}"))
    if str(event.get("id", "")) != event_id:
        problems.append(FieldViolation("id", "must equal the Seedline-Event-Id header"))
    data = event.get("data")
    if not isinstance(data, dict):
        problems.append(FieldViolation("data", "must be an OpenTHC lab result object"))
        raise InvalidArgument("the published lab result is malformed", problems)
    sample_id = _id(data.get("lab_sample"))
    lot_ids = [_id(data.get("inventory"))] if data.get("inventory") else []
    lot_ids += [_id(x) for x in data.get("lot_list") or [] if isinstance(x, dict)]
    lot_ids = [x for x in lot_ids if x]
    if sample_id and not _ULID.fullmatch(sample_id):
        problems.append(FieldViolation("data.lab_sample.id", "must be the ULID of a Seedline sample"))
    for i, lot in enumerate(lot_ids):
        if not _ULID.fullmatch(lot):
            problems.append(FieldViolation(f"data.lot_list[{i}].id", "must be the ULID of a Seedline lot"))
    if not sample_id and not lot_ids:
        problems.append(FieldViolation("data.lab_sample.id", "name the tested sample (or the lots)"))
    raw = data.get("metric_list")
    if not isinstance(raw, list) or not raw:
        problems.append(FieldViolation("data.metric_list", "must list at least one metric"))
        raw = []
    if len(raw) > _MAX_METRICS:
        problems.append(FieldViolation("data.metric_list", f"at most {_MAX_METRICS} metrics"))
        raw = []
    metrics: list[Reported] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        path = f"data.metric_list[{i}]"
        if not isinstance(item, dict):
            problems.append(FieldViolation(path, "must be an object"))
            continue
        mid = str(item.get("id", ""))
        if not _METRIC_ID.fullmatch(mid):
            problems.append(FieldViolation(f"{path}.id", "must be an OpenTHC lab metric id (26 characters)"))
            continue
        if mid in seen:
            problems.append(FieldViolation(f"{path}.id", "is listed twice"))
            continue
        seen.add(mid)
        status = _STATUS.get(str(item.get("status", "")).lower())
        if status is None:
            problems.append(FieldViolation(f"{path}.status", f"must be one of {', '.join(_STATUS)}"))
            continue
        uom = _UNITS.get(str(item.get("uom") or "").lower())
        if uom is None:
            problems.append(FieldViolation(f"{path}.uom", f"unknown unit {item.get('uom')!r}"))
            continue
        percent = uom is LabUnit.PERCENT
        values = {
            k: _number(item.get(k), f"{path}.{k}", problems, percent=percent)
            for k in ("qom", "lod", "loq", "limit")
        }
        metrics.append(Reported(metric_id=mid, status=status, uom=uom, **values))
    when = _time(data.get("test_at") or data.get("created_at"), "data.created_at", problems) or now
    if when > now:
        problems.append(FieldViolation("data.created_at", "is in the future"))
    coa = data.get("coa") if isinstance(data.get("coa"), str) else ""
    if problems:
        raise InvalidArgument(f"the published lab result has {len(problems)} problem(s)", problems)
    return PublishedResult(
        event_id=event_id,
        remote_id=str(data.get("id", "")),
        sample_id=sample_id,
        lot_ids=tuple(lot_ids),
        test_time=when,
        metrics=tuple(metrics),
        coa_url=str(coa or ""),
    )
