"""Lab testing rules: metric values and units, testing panels, result status, lot lab status.

Everything here is pure. Metric values are the contract's decimal strings (at most 12 integer
and 4 fractional digits) parsed into exact :class:`~decimal.Decimal` values; unit conversions
between mass fractions are exact powers of ten, so comparing a value with a limit in another
unit never rounds.

The status of a result is computed, never trusted: each metric's reported outcome is checked
against the applicable limit (the stricter of the one reported and the panel's), and the overall
status follows from the metrics and the panel the jurisdiction requires for the product type.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from seedline_server.domain.errors import (
    DestructionPending,
    FieldViolation,
    InvalidArgument,
    InvalidStateTransition,
    ResourceLocked,
)
from seedline_server.domain.lot import LabStatus

# The contract's value pattern: 1-12 integer digits, optionally up to 4 decimal places.
_VALUE = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,4})?$")
MAX_PLACES = 4


class MetricType(enum.Enum):
    """Values match ``seedline.lab.v1.LabMetricType``."""

    GENERAL = 1
    CANNABINOID = 2
    TERPENE = 3
    PESTICIDE = 4
    HEAVY_METAL = 5
    SOLVENT = 6
    MICROBE = 7
    MYCOTOXIN = 8
    FOREIGN_MATTER = 9


class LabUnit(enum.Enum):
    """Values match ``seedline.lab.v1.LabUnit``."""

    UNSPECIFIED = 0
    PERCENT = 1
    MILLIGRAM_PER_GRAM = 2
    PPM = 3
    PPB = 4
    MICROGRAM_PER_GRAM = 5
    MICROGRAM_PER_KILOGRAM = 6
    CFU_PER_GRAM = 7
    WATER_ACTIVITY = 8
    BOOLEAN = 9
    UNITLESS = 10


class MetricStatus(enum.Enum):
    """Values match ``seedline.lab.v1.LabMetricStatus``."""

    PASS = 1
    FAIL = 2
    NOT_DETECTED = 3
    NOT_REQUIRED = 4
    NOT_TESTED = 5
    NOT_APPLICABLE = 6


class ResultStatus(enum.Enum):
    """Values match ``seedline.lab.v1.LabResultStatus``."""

    PASS = 1
    FAIL = 2
    INCOMPLETE = 3


class ResultState(enum.Enum):
    """Values match ``seedline.lab.v1.LabResultState``."""

    ACTIVE = 1
    VOID_PENDING = 2
    VOIDED = 3


class SamplePurpose(enum.Enum):
    """Values match ``seedline.lab.v1.SamplePurpose``."""

    COMPLIANCE = 1
    RETEST = 2
    RESEARCH = 3


class SampleStatus(enum.Enum):
    """Values match ``seedline.lab.v1.SampleStatus``."""

    ACTIVE = 1
    TESTED = 2
    DESTROYED = 3
    VOIDED = 4


# Purposes whose samples and results decide a lot's lab status.
COMPLIANCE_PURPOSES = frozenset({SamplePurpose.COMPLIANCE, SamplePurpose.RETEST})

# Short codes (OpenTHC ``uom`` style) used in panel files and messages.
UNIT_CODES: dict[str, LabUnit] = {
    "pct": LabUnit.PERCENT,
    "mg/g": LabUnit.MILLIGRAM_PER_GRAM,
    "ppm": LabUnit.PPM,
    "ppb": LabUnit.PPB,
    "ug/g": LabUnit.MICROGRAM_PER_GRAM,
    "ug/kg": LabUnit.MICROGRAM_PER_KILOGRAM,
    "cfu/g": LabUnit.CFU_PER_GRAM,
    "aw": LabUnit.WATER_ACTIVITY,
    "bool": LabUnit.BOOLEAN,
    "unitless": LabUnit.UNITLESS,
}
_CODE_OF = {unit: code for code, unit in UNIT_CODES.items()}


def unit_code(unit: LabUnit) -> str:
    """The short code of ``unit`` (``pct``, ``ppm``, ...)."""
    return _CODE_OF.get(unit, "unspecified")


# Mass fractions, as the exact fraction one unit stands for: values in these units compare and
# convert exactly (multiplying by a power of ten never rounds a 16-digit decimal).
_FRACTION: dict[LabUnit, Decimal] = {
    LabUnit.PERCENT: Decimal("1E-2"),
    LabUnit.MILLIGRAM_PER_GRAM: Decimal("1E-3"),
    LabUnit.PPM: Decimal("1E-6"),
    LabUnit.MICROGRAM_PER_GRAM: Decimal("1E-6"),
    LabUnit.PPB: Decimal("1E-9"),
    LabUnit.MICROGRAM_PER_KILOGRAM: Decimal("1E-9"),
}
MASS_FRACTIONS = frozenset(_FRACTION)
_TRACE = frozenset({LabUnit.PPM, LabUnit.PPB, LabUnit.MICROGRAM_PER_GRAM, LabUnit.MICROGRAM_PER_KILOGRAM})

# The units each metric type may be reported in.
UNITS_BY_TYPE: dict[MetricType, frozenset[LabUnit]] = {
    MetricType.GENERAL: frozenset(
        {LabUnit.PERCENT, LabUnit.WATER_ACTIVITY, LabUnit.BOOLEAN, LabUnit.UNITLESS}
    ),
    MetricType.CANNABINOID: frozenset({LabUnit.PERCENT, LabUnit.MILLIGRAM_PER_GRAM}),
    MetricType.TERPENE: frozenset(
        {LabUnit.PERCENT, LabUnit.MILLIGRAM_PER_GRAM, LabUnit.PPM, LabUnit.MICROGRAM_PER_GRAM}
    ),
    MetricType.PESTICIDE: _TRACE,
    MetricType.HEAVY_METAL: _TRACE,
    MetricType.SOLVENT: _TRACE,
    MetricType.MYCOTOXIN: _TRACE,
    MetricType.MICROBE: frozenset({LabUnit.CFU_PER_GRAM, LabUnit.BOOLEAN}),
    MetricType.FOREIGN_MATTER: frozenset({LabUnit.PERCENT, LabUnit.BOOLEAN}),
}

_ONE = Decimal(1)


def show(value: Decimal) -> str:
    """A value for messages: plain notation, no exponent, no trailing zeros (``200``, ``0.2``)."""
    return f"{value.normalize():f}"


def parse_value(text: str) -> Decimal:
    """An exact value from a contract decimal string; ValueError names what is wrong.

    At most 12 integer digits and :data:`MAX_PLACES` decimal places, no sign or exponent (the
    contract's pattern; checked here again so the rules never depend on the transport).
    """
    if not _VALUE.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a plain decimal with at most 12 integer digits and {MAX_PLACES} decimal places"
        )
    return Decimal(text)


def upper_bound(unit: LabUnit) -> Decimal | None:
    """The largest value a unit admits: 100 % as a mass fraction, 1 for aw and booleans."""
    fraction = _FRACTION.get(unit)
    if fraction is not None:
        return _ONE / fraction  # exact: 100, 1000, 10^6 or 10^9
    if unit in (LabUnit.WATER_ACTIVITY, LabUnit.BOOLEAN):
        return _ONE
    return None


def convert(value: Decimal, source: LabUnit, target: LabUnit) -> Decimal | None:
    """``value`` in ``source`` expressed in ``target`` exactly, or None when they do not convert."""
    if source is target:
        return value
    if source in _FRACTION and target in _FRACTION:
        return value * _FRACTION[source] / _FRACTION[target]
    return None


@dataclass(frozen=True)
class MetricInfo:
    """What the server knows about a lab metric (one row of the reference data)."""

    id: str
    name: str
    type: MetricType | None
    default_uom: LabUnit = LabUnit.UNSPECIFIED
    superseded_by: str = ""

    @property
    def resource(self) -> str:
        """``labMetrics/{id}``."""
        return metric_name(self.id)

    def allowed_units(self) -> frozenset[LabUnit]:
        """Units this metric may be reported in (water activity only for aw metrics, and back)."""
        if self.type is None:
            return frozenset()
        if self.default_uom is LabUnit.WATER_ACTIVITY:
            return frozenset({LabUnit.WATER_ACTIVITY})
        return UNITS_BY_TYPE[self.type] - {LabUnit.WATER_ACTIVITY}


def metric_name(metric_id: str) -> str:
    """``labMetrics/{id}``."""
    return f"labMetrics/{metric_id}"


@dataclass(frozen=True)
class Reported:
    """One metric of a result as the laboratory reported it (strings as on the wire)."""

    metric_id: str
    status: MetricStatus
    uom: LabUnit = LabUnit.UNSPECIFIED
    qom: str = ""
    lod: str = ""
    loq: str = ""
    limit: str = ""


_VALUE_FIELDS = ("qom", "lod", "loq", "limit")


@dataclass(frozen=True)
class Measured:
    """A reported metric whose values passed :func:`check_metrics`, parsed."""

    index: int
    info: MetricInfo
    reported: Reported
    qom: Decimal | None
    limit: Decimal | None


def _describe(info: MetricInfo | None, metric_id: str) -> str:
    if info is None:
        return metric_name(metric_id)
    kind = f", a {info.type.name}" if info.type is not None else ""
    return f"{info.resource} ({info.name}{kind})"


def check_metrics(
    reported: Sequence[Reported], known: Mapping[str, MetricInfo], prefix: str = "lab_result.metrics"
) -> list[Measured]:
    """Check every reported metric; raise one INVALID_ARGUMENT listing every problem.

    Each violation's path is ``{prefix}[i].<field>`` and its description names the metric id.
    """
    problems: list[FieldViolation] = []
    out: list[Measured] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(reported):
        path = f"{prefix}[{i}]"
        info = known.get(item.metric_id)
        label = _describe(info, item.metric_id)
        if item.metric_id in seen:
            problems.append(
                FieldViolation(
                    f"{path}.lab_metric", f"{label} is already reported at metrics[{seen[item.metric_id]}]"
                )
            )
            continue
        seen[item.metric_id] = i
        if info is None:
            problems.append(
                FieldViolation(f"{path}.lab_metric", f"unknown lab metric {label}: see ListLabMetrics")
            )
            continue
        if info.superseded_by:
            problems.append(
                FieldViolation(
                    f"{path}.lab_metric",
                    f"{label} is superseded by {metric_name(info.superseded_by)}; report it under that id",
                )
            )
            continue
        values: dict[str, Decimal | None] = {}
        for name in _VALUE_FIELDS:
            text = getattr(item, name)
            try:
                values[name] = parse_value(text) if text else None
            except ValueError as exc:
                problems.append(FieldViolation(f"{path}.{name}", f"{label}: {exc}"))
                values[name] = None
        present = [n for n in _VALUE_FIELDS if getattr(item, n)]
        if item.uom is LabUnit.UNSPECIFIED:
            if present:
                problems.append(
                    FieldViolation(f"{path}.uom", f"{label}: uom is required with {', '.join(present)}")
                )
        elif item.uom not in info.allowed_units():
            allowed = ", ".join(unit_code(u) for u in sorted(info.allowed_units(), key=lambda u: u.value))
            problems.append(
                FieldViolation(
                    f"{path}.uom",
                    f"{label} must be reported in one of {allowed}, not {unit_code(item.uom)}",
                )
            )
        else:
            bound = upper_bound(item.uom)
            for name in _VALUE_FIELDS:
                value = values[name]
                if bound is not None and value is not None and value > bound:
                    problems.append(
                        FieldViolation(
                            f"{path}.{name}",
                            f"{label}: {getattr(item, name)} {unit_code(item.uom)} is outside "
                            f"0..{show(bound)}"
                            + (" (more than 100 %)" if item.uom in MASS_FRACTIONS else ""),
                        )
                    )
            if item.uom is LabUnit.BOOLEAN and item.qom not in ("", "0", "1"):
                problems.append(FieldViolation(f"{path}.qom", f"{label}: a boolean qom is 0 or 1"))
        if item.status is MetricStatus.NOT_TESTED and item.qom:
            problems.append(FieldViolation(f"{path}.qom", f"{label}: a NOT_TESTED metric carries no qom"))
        lod, loq = values["lod"], values["loq"]
        if lod is not None and loq is not None and lod > loq:
            problems.append(FieldViolation(f"{path}.lod", f"{label}: lod {lod} exceeds loq {loq}"))
        out.append(Measured(i, info, item, values["qom"], values["limit"]))
    if problems:
        raise InvalidArgument(_summary(problems), problems)
    return out


def _summary(problems: Sequence[FieldViolation]) -> str:
    first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"invalid lab result metric: {first.field}: {first.description}{more}"


# --- testing panels ------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelMetric:
    """A metric a panel requires, with its limit (the highest value that passes), if any."""

    metric_id: str
    limit: Decimal | None = None
    uom: LabUnit = LabUnit.UNSPECIFIED


@dataclass(frozen=True)
class Panel:
    """Which metrics a jurisdiction requires for some product types, and their limits.

    ``jurisdiction`` is an ISO 3166-2 code or ``*``; ``product_types`` holds OpenTHC product
    type ULIDs or ``*``.
    """

    id: str
    jurisdiction: str
    product_types: tuple[str, ...]
    metrics: tuple[PanelMetric, ...]
    description: str = ""

    def specificity(self, jurisdiction: str, product_type: str) -> int | None:
        """How closely the panel matches (higher is closer), or None when it does not apply."""
        if self.jurisdiction not in (jurisdiction, "*"):
            return None
        if product_type in self.product_types:
            by_type = 1
        elif "*" in self.product_types:
            by_type = 0
        else:
            return None
        return (2 if self.jurisdiction != "*" else 0) + by_type

    def find(self, metric_id: str) -> PanelMetric | None:
        """The panel's entry for a metric."""
        return next((m for m in self.metrics if m.metric_id == metric_id), None)


class PanelError(ValueError):
    """A panel file breaks the format; the message says where."""


_JURISDICTION = re.compile(r"^(\*|[A-Z]{2}-[A-Z0-9]{1,3})$")
_PRODUCT_TYPE = re.compile(r"^(\*|[0-9A-Z]{26})$")
_METRIC_ID = re.compile(r"^[0-9A-Z]{26}$")
_PANEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Panels:
    """The configured panels; every (jurisdiction, product type) resolves to exactly one."""

    panels: tuple[Panel, ...]
    source: str = ""

    def select(self, jurisdiction: str, product_type: str) -> Panel:
        """The most specific panel: jurisdiction before product type, ``*`` last."""
        best: tuple[int, Panel] | None = None
        for panel in self.panels:
            score = panel.specificity(jurisdiction, product_type)
            if score is not None and (best is None or score > best[0]):
                best = (score, panel)
        assert best is not None, "the loader guarantees a */* panel"
        return best[1]

    def metric_ids(self) -> set[str]:
        """Every metric id any panel names."""
        return {m.metric_id for p in self.panels for m in p.metrics}


def load_panels(data: Any, source: str = "") -> Panels:
    """Parse and check a panel document (see ``store/reference/lab-panels.json``).

    Raises:
        PanelError: the document breaks the format, two panels claim the same (jurisdiction,
            product type), or no ``*``/``*`` panel exists to cover everything else.

    """
    where = source or "panel file"
    if not isinstance(data, dict) or not isinstance(data.get("panels"), list):
        raise PanelError(f"{where}: expected an object with a 'panels' list")
    panels: list[Panel] = []
    claimed: dict[tuple[str, str], str] = {}
    for n, raw in enumerate(data["panels"]):
        at = f"{where}: panels[{n}]"
        if not isinstance(raw, dict):
            raise PanelError(f"{at}: expected an object")
        pid = raw.get("id")
        if not isinstance(pid, str) or not _PANEL_ID.fullmatch(pid):
            raise PanelError(f"{at}.id: a short name of letters, digits, '.', '_' or '-' is required")
        jurisdiction = raw.get("jurisdiction")
        if not isinstance(jurisdiction, str) or not _JURISDICTION.fullmatch(jurisdiction):
            raise PanelError(f"{at}.jurisdiction: an ISO 3166-2 code such as US-CO, or '*'")
        types = raw.get("product_types", ["*"])
        if (
            not isinstance(types, list)
            or not types
            or not all(isinstance(t, str) and _PRODUCT_TYPE.fullmatch(t) for t in types)
        ):
            raise PanelError(f"{at}.product_types: a non-empty list of product type ULIDs or '*'")
        metrics_raw = raw.get("metrics", [])
        if not isinstance(metrics_raw, list):
            raise PanelError(f"{at}.metrics: expected a list")
        metrics: list[PanelMetric] = []
        for k, m in enumerate(metrics_raw):
            metrics.append(_panel_metric(m, f"{at}.metrics[{k}]"))
        if len({m.metric_id for m in metrics}) != len(metrics):
            raise PanelError(f"{at}.metrics: a metric is listed twice")
        for t in types:
            key = (jurisdiction, t)
            if key in claimed:
                raise PanelError(
                    f"{at}: panels {claimed[key]!r} and {pid!r} both cover jurisdiction {jurisdiction} "
                    f"and product type {t}"
                )
            claimed[key] = pid
        description = raw.get("description", "")
        panels.append(
            Panel(pid, jurisdiction, tuple(types), tuple(metrics), str(description) if description else "")
        )
    if len({p.id for p in panels}) != len(panels):
        raise PanelError(f"{where}: panel ids must be unique")
    if ("*", "*") not in claimed:
        raise PanelError(f"{where}: a panel with jurisdiction '*' and product type '*' is required")
    return Panels(tuple(panels), source)


def _panel_metric(raw: Any, at: str) -> PanelMetric:
    if not isinstance(raw, dict):
        raise PanelError(f"{at}: expected an object")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not _METRIC_ID.fullmatch(metric):
        raise PanelError(f"{at}.metric: an OpenTHC lab metric ULID is required")
    limit_raw = raw.get("limit")
    uom_raw = raw.get("uom")
    if limit_raw is None:
        if uom_raw is not None:
            raise PanelError(f"{at}.uom: only meaningful with a limit")
        return PanelMetric(metric)
    try:
        limit = parse_value(str(limit_raw))
    except ValueError as exc:
        raise PanelError(f"{at}.limit: {exc}") from exc
    if uom_raw not in UNIT_CODES:
        raise PanelError(f"{at}.uom: one of {', '.join(UNIT_CODES)} is required with a limit")
    uom = UNIT_CODES[uom_raw]
    bound = upper_bound(uom)
    if bound is not None and limit > bound:
        raise PanelError(f"{at}.limit: {show(limit)} {uom_raw} is outside 0..{show(bound)}")
    return PanelMetric(metric, limit, uom)


def check_panels_against(panels: Panels, known: Mapping[str, MetricInfo]) -> None:
    """Raise PanelError unless every panel metric is a known, current metric in a fitting unit."""
    for panel in panels.panels:
        for m in panel.metrics:
            info = known.get(m.metric_id)
            at = f"{panels.source or 'panel file'}: panel {panel.id!r}, metric {m.metric_id}"
            if info is None:
                raise PanelError(f"{at}: unknown lab metric")
            if info.superseded_by:
                raise PanelError(f"{at}: superseded by {info.superseded_by}")
            if m.limit is not None and m.uom not in info.allowed_units():
                raise PanelError(f"{at}: {info.name} cannot be measured in {unit_code(m.uom)}")


# --- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """The computed outcome of a result under a panel."""

    status: ResultStatus
    panel: str
    missing: tuple[str, ...] = ()
    failed: tuple[str, ...] = field(default=())


PASSING = frozenset({MetricStatus.PASS, MetricStatus.NOT_DETECTED})


def _applicable_limit(m: Measured, panel: Panel, problems: list[FieldViolation], path: str) -> Decimal | None:
    """The stricter of the reported limit and the panel's (in the reported unit)."""
    limits = [m.limit] if m.limit is not None else []
    required = panel.find(m.info.id)
    if required is not None and required.limit is not None and m.qom is not None:
        converted = convert(required.limit, required.uom, m.reported.uom)
        if converted is None and m.reported.uom is LabUnit.BOOLEAN and required.limit == 0:
            # "Not detected" in any unit is presence/absence: absent (0) passes, present fails.
            converted = Decimal(0)
        if converted is None:
            problems.append(
                FieldViolation(
                    f"{path}.uom",
                    f"{_describe(m.info, m.info.id)}: panel {panel.id!r} limits it in "
                    f"{unit_code(required.uom)}, which {unit_code(m.reported.uom)} does not convert to",
                )
            )
        else:
            limits.append(converted)
    return min(limits) if limits else None


def evaluate(measured: Sequence[Measured], panel: Panel, prefix: str = "lab_result.metrics") -> Evaluation:
    """Check each metric's outcome against its limit and compute the result's status.

    Raises:
        InvalidArgument: a reported outcome contradicts the values (e.g. a PASS over the limit),
            listing every such metric.

    """
    problems: list[FieldViolation] = []
    outcome: dict[str, MetricStatus] = {}
    failed: list[str] = []
    for m in measured:
        path = f"{prefix}[{m.index}]"
        label = _describe(m.info, m.info.id)
        status = m.reported.status
        limit = _applicable_limit(m, panel, problems, path)
        unit = unit_code(m.reported.uom)
        if m.qom is not None and limit is not None:
            over = m.qom > limit
            if status is MetricStatus.PASS and over:
                problems.append(
                    FieldViolation(
                        f"{path}.status",
                        f"{label}: reported PASS but qom {m.reported.qom} {unit} exceeds the limit "
                        f"{show(limit)} {unit}",
                    )
                )
            elif status is MetricStatus.FAIL and not over:
                problems.append(
                    FieldViolation(
                        f"{path}.status",
                        f"{label}: reported FAIL but qom {m.reported.qom} {unit} is within the limit "
                        f"{show(limit)} {unit}",
                    )
                )
            elif status is MetricStatus.NOT_DETECTED and over:
                problems.append(
                    FieldViolation(
                        f"{path}.status",
                        f"{label}: reported NOT_DETECTED but qom {m.reported.qom} {unit} exceeds the limit "
                        f"{show(limit)} {unit}",
                    )
                )
        required = panel.find(m.info.id)
        if (
            status is MetricStatus.PASS
            and m.qom is None
            and required is not None
            and required.limit is not None
        ):
            problems.append(
                FieldViolation(
                    f"{path}.qom",
                    f"{label}: panel {panel.id!r} limits it to {show(required.limit)} "
                    f"{unit_code(required.uom)}; a PASS needs the measured qom",
                )
            )
        outcome[m.info.id] = status
        if status is MetricStatus.FAIL:
            failed.append(m.info.id)
    if problems:
        raise InvalidArgument(_summary(problems), problems)
    missing = tuple(
        metric_name(r.metric_id) for r in panel.metrics if outcome.get(r.metric_id) not in PASSING
    )
    if failed:
        status_ = ResultStatus.FAIL
    elif missing:
        status_ = ResultStatus.INCOMPLETE
    else:
        status_ = ResultStatus.PASS
    return Evaluation(status_, panel.id, missing if status_ is ResultStatus.INCOMPLETE else (), tuple(failed))


def check_claimed(
    claimed: ResultStatus | None, computed: Evaluation, field_path: str = "lab_result.status"
) -> None:
    """Refuse a client-supplied overall status that differs from the computed one."""
    if claimed is None or claimed is computed.status:
        return
    why = {
        ResultStatus.FAIL: f"metrics {', '.join(metric_name(f) for f in computed.failed)} are FAIL",
        ResultStatus.INCOMPLETE: f"panel {computed.panel!r} still needs {', '.join(computed.missing)}",
        ResultStatus.PASS: f"no metric failed and panel {computed.panel!r} is complete",
    }[computed.status]
    raise InvalidArgument(
        f"lab_result.status says {claimed.name} but the metrics give {computed.status.name}: {why}",
        [
            FieldViolation(
                field_path,
                f"contradicts the computed status {computed.status.name} ({why}); leave it unspecified "
                "to accept the computed status",
            )
        ],
    )


# --- lot lab status --------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """An active compliance result that may govern a lot's lab status."""

    name: str
    status: ResultStatus
    test_time: datetime
    id: str


def lot_lab_status(
    base: LabStatus, candidates: Iterable[Candidate], sample_pending: bool
) -> tuple[LabStatus, str]:
    """A lot's lab status and governing result name.

    The newest (by test time, then id) PASS or FAIL result decides; INCOMPLETE results decide
    nothing. Without one, a compliance sample at the lab makes the lot SAMPLED; otherwise it
    falls back to what its product type needs (``base``: REQUIRED or NOT_REQUIRED).
    """
    conclusive = [c for c in candidates if c.status in (ResultStatus.PASS, ResultStatus.FAIL)]
    if conclusive:
        newest = max(conclusive, key=lambda c: (c.test_time, c.id))
        return (LabStatus.PASSED if newest.status is ResultStatus.PASS else LabStatus.FAILED), newest.name
    if sample_pending:
        return LabStatus.SAMPLED, ""
    return base, ""


# --- lifecycles ------------------------------------------------------------------------------


def check_sample_active(status: SampleStatus, action: str) -> None:
    """Raise unless the sample is ACTIVE (untested, with the laboratory)."""
    if status is SampleStatus.ACTIVE:
        return
    if status is SampleStatus.TESTED:
        raise InvalidStateTransition(
            f"cannot {action}: the sample is TESTED (it has a lab result)", metadata={"status": status.name}
        )
    raise ResourceLocked(
        f"cannot {action}: the sample is {status.name} and locked", metadata={"status": status.name}
    )


def check_sample_destroyable(status: SampleStatus) -> None:
    """Raise unless the sample may be destroyed (ACTIVE or TESTED)."""
    if status in (SampleStatus.ACTIVE, SampleStatus.TESTED):
        return
    raise ResourceLocked(
        f"cannot destroy: the sample is {status.name} and locked", metadata={"status": status.name}
    )


def check_result_active(state: ResultState, action: str) -> None:
    """Raise unless the result is ACTIVE: pending void → DESTRUCTION_PENDING, voided → locked."""
    if state is ResultState.ACTIVE:
        return
    if state is ResultState.VOID_PENDING:
        raise DestructionPending(
            f"cannot {action}: the lab result has a pending void; confirm or cancel it first",
            metadata={"state": state.name},
        )
    raise ResourceLocked(
        f"cannot {action}: the lab result is VOIDED and locked", metadata={"state": state.name}
    )


def check_void_confirmable(state: ResultState) -> None:
    """Raise unless a void is pending (step two of VoidLabResult)."""
    if state is ResultState.VOID_PENDING:
        return
    if state is ResultState.VOIDED:
        raise ResourceLocked("the lab result is already VOIDED and locked", metadata={"state": state.name})
    raise InvalidStateTransition(
        "no void is pending: request it first (confirm false, with a reason)", metadata={"state": state.name}
    )


def check_void_cancellable(state: ResultState) -> None:
    """Raise INVALID_STATE_TRANSITION unless a void is pending."""
    if state is not ResultState.VOID_PENDING:
        raise InvalidStateTransition(
            f"nothing to cancel: the lab result has no pending void (it is {state.name})",
            metadata={"state": state.name},
        )
