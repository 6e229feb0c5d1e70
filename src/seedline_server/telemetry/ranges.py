"""Physical ranges and units of the telemetry metrics (pure; no I/O).

Each metric accepts the units listed on it in the contract; values in another unit of the same
metric are converted to the sensor's unit with an affine map ``a * v + b`` (°F ↔ °C, hPa ↔ kPa).
A value outside the metric's plausible range (in the unit it was sent in) is rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# MeasurementUnit numbers (seedline.telemetry.v1).
CELSIUS, FAHRENHEIT, PERCENT, PPM, UMOL_PER_M2_S, KPA, MS_PER_CM, PH, MOL_PER_M2_DAY, MG_PER_L, HPA = range(
    1, 12
)

_UNIT_NAMES = {
    CELSIUS: "CELSIUS",
    FAHRENHEIT: "FAHRENHEIT",
    PERCENT: "PERCENT",
    PPM: "PPM",
    UMOL_PER_M2_S: "UMOL_PER_M2_S",
    KPA: "KPA",
    MS_PER_CM: "MS_PER_CM",
    PH: "PH",
    MOL_PER_M2_DAY: "MOL_PER_M2_DAY",
    MG_PER_L: "MG_PER_L",
    HPA: "HPA",
}

_TEMPERATURE = {CELSIUS: (-50.0, 150.0), FAHRENHEIT: (-58.0, 302.0)}
_PERCENTAGE = {PERCENT: (0.0, 100.0)}
_EC = {MS_PER_CM: (0.0, 50.0)}
_PH = {PH: (0.0, 14.0)}

# Metric number -> {unit: (low, high)}; the first unit listed is the metric's default unit.
_RANGES: dict[int, dict[int, tuple[float, float]]] = {
    1: _TEMPERATURE,  # air temperature
    2: _PERCENTAGE,  # relative humidity
    3: {PPM: (0.0, 100_000.0)},  # CO2
    4: {UMOL_PER_M2_S: (0.0, 5000.0)},  # PPFD
    5: {KPA: (0.0, 10.0)},  # VPD
    6: _EC,  # substrate EC
    7: _PH,  # substrate pH
    8: _PERCENTAGE,  # substrate moisture
    9: {KPA: (50.0, 110.0), HPA: (500.0, 1100.0)},  # air pressure
    10: {MOL_PER_M2_DAY: (0.0, 100.0)},  # DLI
    11: _TEMPERATURE,  # water temperature
    12: _TEMPERATURE,  # substrate temperature
    13: _EC,  # water EC
    14: _PH,  # water pH
    15: {MG_PER_L: (0.0, 50.0)},  # dissolved oxygen
}

# (from, to) -> (a, b): to = a * from + b.
_AFFINE: dict[tuple[int, int], tuple[float, float]] = {
    (FAHRENHEIT, CELSIUS): (5.0 / 9.0, -32.0 * 5.0 / 9.0),
    (CELSIUS, FAHRENHEIT): (9.0 / 5.0, 32.0),
    (HPA, KPA): (0.1, 0.0),
    (KPA, HPA): (10.0, 0.0),
}


# (metric, unit) -> (low, high): the fast path of validation.
BOUNDS: dict[tuple[int, int], tuple[float, float]] = {
    (metric, unit): bounds for metric, units in _RANGES.items() for unit, bounds in units.items()
}


def unit_name(unit: int) -> str:
    """The contract's short name of a unit (e.g. ``CELSIUS``)."""
    return _UNIT_NAMES.get(unit, f"unit {unit}")


def units_of(metric: int) -> tuple[int, ...]:
    """The units a metric accepts, its default unit first; empty for an unknown metric."""
    return tuple(_RANGES.get(metric, {}))


def fits(metric: int, unit: int) -> bool:
    """Whether ``unit`` is one of ``metric``'s units."""
    return unit in _RANGES.get(metric, {})


def default_unit(metric: int) -> int:
    """The metric's first listed unit (CELSIUS for temperatures, KPA for air pressure)."""
    return units_of(metric)[0]


def affine(from_unit: int, to_unit: int) -> tuple[float, float]:
    """(a, b) such that a value in ``to_unit`` is ``a * value + b``; raises for unrelated units."""
    if from_unit == to_unit:
        return (1.0, 0.0)
    return _AFFINE[(from_unit, to_unit)]


def convert(value: float, from_unit: int, to_unit: int) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit`` (units of the same metric)."""
    a, b = affine(from_unit, to_unit)
    return value if (a, b) == (1.0, 0.0) else a * value + b


@dataclass(frozen=True)
class Problem:
    """Why a value does not fit a metric: a RejectionReason number and a human message."""

    reason: int
    message: str


WRONG_UNIT, NON_FINITE, OUT_OF_RANGE = 3, 4, 5


def check(metric: int, unit: int, value: float) -> Problem | None:
    """None when ``value`` in ``unit`` is a plausible reading of ``metric``, else the problem."""
    ranges = _RANGES.get(metric, {})
    if unit not in ranges:
        return Problem(WRONG_UNIT, f"{unit_name(unit)} is not a unit of the sensor's metric")
    if not math.isfinite(value):
        return Problem(NON_FINITE, f"value {value} is not finite")
    low, high = ranges[unit]
    if not low <= value <= high:
        return Problem(OUT_OF_RANGE, f"value {value:g} outside {low:g}..{high:g} {unit_name(unit)}")
    return None
