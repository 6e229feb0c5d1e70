"""Exact quantities: parsing, unit conversion and the one rounding rule.

Weights are stored in grams and volumes in liters, rounded half-even to 4 decimal places
(OpenTHC stores 4 places); counts are whole. Conversion factors are exact (the avoirdupois pound
is defined as 453.59237 g; the US fluid ounce as 29.5735295625 ml), so the only loss is the
single rounding to 0.0001 at the boundary.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal

from seedline_server.domain.errors import FieldViolation, InvalidArgument, UnitMismatch

SCALE = Decimal("0.0001")
# The largest amount stored: what the contract's value pattern (12 integer digits) can carry
# back, so every stored amount can be answered and sent again. 10^12 g is a million tonnes.
MAX_AMOUNT = Decimal("999999999999.9999")
# Wide enough for any product of stored amounts (24 digits by 24 digits): no context rounding.
_EXACT = Context(prec=64)
_VALUE = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")


class Dimension(enum.Enum):
    """What a unit measures."""

    WEIGHT = "weight"
    VOLUME = "volume"
    COUNT = "count"


class Unit(enum.Enum):
    """Accepted units; values match ``seedline.type.v1.Unit`` numbers."""

    GRAM = 1
    MILLIGRAM = 2
    KILOGRAM = 3
    POUND = 4
    OUNCE = 5
    LITER = 6
    MILLILITER = 7
    FLUID_OUNCE = 8
    EACH = 9


# unit -> (dimension, factor to the storage unit)
_FACTORS: dict[Unit, tuple[Dimension, Decimal]] = {
    Unit.GRAM: (Dimension.WEIGHT, Decimal(1)),
    Unit.MILLIGRAM: (Dimension.WEIGHT, Decimal("0.001")),
    Unit.KILOGRAM: (Dimension.WEIGHT, Decimal(1000)),
    Unit.POUND: (Dimension.WEIGHT, Decimal("453.59237")),
    Unit.OUNCE: (Dimension.WEIGHT, Decimal("28.349523125")),
    Unit.LITER: (Dimension.VOLUME, Decimal(1)),
    Unit.MILLILITER: (Dimension.VOLUME, Decimal("0.001")),
    Unit.FLUID_OUNCE: (Dimension.VOLUME, Decimal("0.0295735295625")),
    Unit.EACH: (Dimension.COUNT, Decimal(1)),
}

STORAGE_UNIT = {Dimension.WEIGHT: Unit.GRAM, Dimension.VOLUME: Unit.LITER, Dimension.COUNT: Unit.EACH}


def dimension_of(unit: Unit) -> Dimension:
    """Return what ``unit`` measures."""
    return _FACTORS[unit][0]


@dataclass(frozen=True, order=False)
class Quantity:
    """An exact amount in a storage unit (g, l or ea), already rounded."""

    amount: Decimal
    dimension: Dimension

    @property
    def unit(self) -> Unit:
        """The storage unit of this quantity."""
        return STORAGE_UNIT[self.dimension]

    def __add__(self, other: Quantity) -> Quantity:
        self._same(other)
        return Quantity(self.amount + other.amount, self.dimension)

    def __sub__(self, other: Quantity) -> Quantity:
        self._same(other)
        return Quantity(self.amount - other.amount, self.dimension)

    def _same(self, other: Quantity) -> None:
        if other.dimension is not self.dimension:
            raise UnitMismatch(f"cannot combine a {self.dimension.value} with a {other.dimension.value}")

    def to(self, unit: Unit) -> Decimal:
        """Express this quantity in ``unit`` exactly (no rounding)."""
        dim, factor = _FACTORS[unit]
        if dim is not self.dimension:
            raise UnitMismatch(f"cannot express a {self.dimension.value} in {unit.name.lower()}")
        return self.amount / factor

    def text(self) -> str:
        """The amount as a fixed-point string with 4 places (0 places for counts)."""
        if self.dimension is Dimension.COUNT:
            return str(self.amount.quantize(Decimal(1), context=_EXACT))
        return str(self.amount.quantize(SCALE, context=_EXACT))


def round_storage(amount: Decimal) -> Decimal:
    """Apply the one rounding rule: half-even to 4 decimal places."""
    return amount.quantize(SCALE, rounding=ROUND_HALF_EVEN, context=_EXACT)


def exact_product(*factors: Decimal) -> Decimal:
    """The exact product of ``factors`` (no 28-digit context rounding)."""
    out = Decimal(1)
    for f in factors:
        out = _EXACT.multiply(out, f)
    return out


def check_storable(amount: Decimal, what: str) -> None:
    """Raise INVALID_ARGUMENT when ``amount`` exceeds :data:`MAX_AMOUNT`."""
    if amount > MAX_AMOUNT:
        raise InvalidArgument(
            f"{what} would be {amount}, above the largest amount stored ({MAX_AMOUNT})",
            [FieldViolation(what, f"must not exceed {MAX_AMOUNT} in the storage unit")],
        )


def parse(value: str, unit: Unit) -> Quantity:
    """Parse a decimal string in ``unit`` into a storage quantity.

    Raises:
        UnitMismatch: a count that is not whole.
        ValueError: a malformed value (the contract's pattern normally catches it first).

    """
    if not _VALUE.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain decimal number")
    dim, factor = _FACTORS[unit]
    raw = Decimal(value)
    if dim is Dimension.COUNT:
        if raw != raw.to_integral_value():
            raise UnitMismatch(f"a count must be a whole number, got {value}")
        return Quantity(raw.quantize(Decimal(1)), dim)
    # The exact product has up to 34 significant digits: multiply without the default 28-digit
    # context rounding, so the only rounding is round_storage (no double rounding).
    stored = round_storage(_EXACT.multiply(raw, factor))
    if stored > MAX_AMOUNT:
        raise ValueError(
            f"{value} {unit.name.lower()} is {stored} in the storage unit, above the largest amount "
            f"stored ({MAX_AMOUNT})"
        )
    return Quantity(stored, dim)
