"""Lot rules: how products count material, which statuses allow what, mass balance.

Everything here is pure: amounts are exact :class:`~decimal.Decimal` values in storage units
(grams, liters or units), already rounded once at the boundary by
:func:`seedline_server.domain.quantity.parse`. Adding and subtracting such values is exact, so
no operation here can create or lose material; the only tolerance is the documented
:data:`TOLERANCE` used when comparing weights derived from different inputs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from seedline_server.domain.errors import (
    DestructionPending,
    FieldViolation,
    InsufficientQuantity,
    InvalidArgument,
    InvalidStateTransition,
    MassBalanceViolation,
    ReferenceInvalid,
    ResourceLocked,
    UnitMismatch,
)
from seedline_server.domain.quantity import (
    Dimension,
    Quantity,
    Unit,
    check_storable,
    dimension_of,
    exact_product,
)

# Mass balance is checked to within the storage precision: one unit of the 4th decimal place.
TOLERANCE = Decimal("0.0001")
ZERO = Decimal(0)


class Status(enum.Enum):
    """Lot lifecycle; values match ``seedline.inventory.v1.LotStatus``."""

    AVAILABLE = 1
    QUARANTINED = 2
    IN_TRANSIT = 3
    DESTRUCTION_PENDING = 4
    DESTROYED = 5
    DEPLETED = 6
    TRANSFERRED = 7


class LabStatus(enum.Enum):
    """Values match ``seedline.inventory.v1.LotLabStatus``."""

    NOT_REQUIRED = 1
    REQUIRED = 2
    SAMPLED = 3
    PASSED = 4
    FAILED = 5


class Origin(enum.Enum):
    """Values match ``seedline.inventory.v1.LotOrigin``."""

    INITIAL = 1
    RECEIVED = 2
    COLLECTION = 3
    SPLIT = 4
    CONVERSION = 5
    TRANSFER = 6


class Package(enum.Enum):
    """Values match ``seedline.license.v1.PackageType``."""

    BULK = 1
    EACH = 2
    PACK = 3


class SectionKind(enum.Enum):
    """Values match ``seedline.license.v1.SectionType``."""

    CROP = 1
    INVENTORY = 2
    QUARANTINE = 3


class AdjustReason(enum.Enum):
    """Values match ``seedline.inventory.v1.AdjustmentReason``."""

    DRYING = 1
    MOISTURE_LOSS = 2
    SCALE_VARIANCE = 3
    ENTRY_ERROR = 4
    THEFT = 5
    HANDLING_LOSS = 6
    INVENTORY_COUNT = 7
    OTHER = 8


INCREASE_REASONS = frozenset(
    {AdjustReason.SCALE_VARIANCE, AdjustReason.ENTRY_ERROR, AdjustReason.INVENTORY_COUNT, AdjustReason.OTHER}
)
# A DEPLETED lot is locked except for the correction of an error found later.
DEPLETED_CORRECTIONS = frozenset({AdjustReason.ENTRY_ERROR, AdjustReason.INVENTORY_COUNT})
# Statuses whose material may be used: split, converted, planted, sampled, moved, destroyed.
USABLE = frozenset({Status.AVAILABLE, Status.QUARANTINED})

# OpenTHC product types whose lots are plants material (seed, clone, plant, tissue): never tested.
_PLANT_TYPES = frozenset(
    {
        "018NY6XC00PT3EZZ4GN6105M64",  # Bulk Plant / Clone / Seed
        "018NY6XC00PT01KFPCEFB9G1Z2",  # Bulk Plant Tissue (base: the line above)
        "018NY6XC00PTRPPDT8NJY2MWQW",  # Bulk Plant (base: the first line)
        "018NY6XC00PTY9THKSEQ8NFS1J",  # Seed
    }
)


@dataclass(frozen=True)
class Counting:
    """How lots of a product are counted, and what one counted unit weighs or holds.

    Attributes:
        package: bulk, each or pack.
        dimension: what ``Lot.quantity`` measures (bulk: the bulk unit's; each/pack: COUNT).
        unit_size: each/pack only: the net size of one unit (a weight or a volume).
        pack_count: pack only: units per pack (1 otherwise).

    """

    package: Package
    dimension: Dimension
    unit_size: Quantity | None = None
    pack_count: int = 1

    @classmethod
    def of(
        cls, package: int, bulk_unit: int, unit_size: Decimal | None, unit_size_unit: int, pack_count: int
    ) -> Counting:
        """The counting rule of a product row."""
        kind = Package(package)
        if kind is Package.BULK:
            return cls(kind, dimension_of(Unit(bulk_unit)))
        size = None
        if unit_size is not None and unit_size_unit:
            dim = dimension_of(Unit(unit_size_unit))
            # A unit "size" in units says nothing about weight or volume.
            size = Quantity(unit_size, dim) if dim is not Dimension.COUNT else None
        return cls(kind, Dimension.COUNT, size, pack_count if kind is Package.PACK else 1)

    def net(self, amount: Decimal) -> Quantity | None:
        """Net weight (g) or volume (l) of ``amount`` counted units; None for plain counts."""
        if self.package is Package.BULK:
            return None if self.dimension is Dimension.COUNT else Quantity(amount, self.dimension)
        if self.unit_size is None:
            return None
        net = exact_product(amount, self.unit_size.amount, Decimal(self.pack_count))
        return Quantity(net, self.unit_size.dimension)

    def weight(self, amount: Decimal) -> Decimal | None:
        """Net weight in grams of ``amount`` counted units, or None when not known by weight."""
        net = self.net(amount)
        return net.amount if net is not None and net.dimension is Dimension.WEIGHT else None

    def check_fits(self, q: Quantity, field: str) -> None:
        """Raise UNIT_MISMATCH unless ``q`` is in this product's counting dimension."""
        if q.dimension is not self.dimension:
            raise UnitMismatch(
                f"{field} must be a {self.dimension.value} for this product (its lots are counted in "
                f"{self.dimension.value}), got a {q.dimension.value}",
                metadata={"field": field, "expected": self.dimension.value, "got": q.dimension.value},
            )


def lab_status_for(product_type: str) -> LabStatus:
    """Initial lab status of a new lot of ``product_type``: plant material needs no testing."""
    return LabStatus.NOT_REQUIRED if product_type in _PLANT_TYPES else LabStatus.REQUIRED


def settled(quantity: Decimal, section: SectionKind, lab: LabStatus) -> Status:
    """The status a lot in use takes: DEPLETED when empty, QUARANTINED when held, else AVAILABLE."""
    if quantity == ZERO:
        return Status.DEPLETED
    if section is SectionKind.QUARANTINE or lab is LabStatus.FAILED:
        return Status.QUARANTINED
    return Status.AVAILABLE


def check_usable(status: Status, action: str) -> None:
    """Raise unless a lot in ``status`` may be ``action``-ed (AVAILABLE or QUARANTINED)."""
    if status in USABLE:
        return
    if status is Status.DESTRUCTION_PENDING:
        raise DestructionPending(
            f"cannot {action}: the lot has a pending destruction; confirm or cancel it first"
        )
    if status in (Status.DESTROYED, Status.TRANSFERRED, Status.DEPLETED):
        raise ResourceLocked(
            f"cannot {action}: the lot is {status.name} and locked", metadata={"status": status.name}
        )
    raise InvalidStateTransition(
        f"cannot {action}: the lot is {status.name}", metadata={"status": status.name}
    )


def check_section_holds_lots(kind: SectionKind, active: bool, name: str) -> None:
    """Raise REFERENCE_INVALID unless the section is an active inventory or quarantine section."""
    if kind is SectionKind.CROP or not active:
        raise ReferenceInvalid(
            f"section {name} is not an active inventory or quarantine section",
            metadata={"section": name},
        )


def positive(q: Quantity, field: str) -> None:
    """Raise INVALID_ARGUMENT when ``q`` is zero once rounded (e.g. "0.00004" g)."""
    if q.amount <= ZERO:
        raise InvalidArgument(
            f"{field} is 0 once rounded to the storage precision; it must be greater than zero",
            [FieldViolation(field, "must be greater than zero after rounding to 4 decimal places")],
        )


def take(available: Decimal, amount: Decimal, lot: str) -> Decimal:
    """What remains after taking ``amount``; INSUFFICIENT_QUANTITY (nothing taken) if too little."""
    if amount > available:
        raise InsufficientQuantity(
            f"lot {lot} holds {available}, less than the {amount} requested",
            metadata={"lot": lot, "available": str(available), "requested": str(amount)},
        )
    return available - amount


class Change(enum.Enum):
    """How AdjustLot states the change."""

    SET = "new_quantity"
    INCREASE = "increase_by"
    DECREASE = "decrease_by"


def adjusted(
    status: Status, reason: AdjustReason, current: Decimal, change: Change, amount: Decimal, lot: str
) -> Decimal:
    """The quantity after an adjustment, or the reason it is refused (status first, then amounts)."""
    if status is Status.DEPLETED:
        if reason not in DEPLETED_CORRECTIONS:
            raise ResourceLocked(
                f"lot {lot} is DEPLETED; only an ENTRY_ERROR or INVENTORY_COUNT correction may change it",
                metadata={"status": status.name},
            )
    else:
        check_usable(status, "adjust")
    if change is Change.SET:
        new = amount
    elif change is Change.INCREASE:
        new = current + amount
    else:
        new = take(current, amount, lot)
    if new > current and reason not in INCREASE_REASONS:
        raise InvalidStateTransition(
            f"reason {reason.name} only decreases a lot; an increase needs SCALE_VARIANCE, "
            "ENTRY_ERROR, INVENTORY_COUNT or OTHER",
            metadata={"reason": reason.name},
        )
    if new == current:
        raise InvalidStateTransition(f"lot {lot} already holds {current}: nothing to adjust")
    check_storable(new, "quantity")
    return new


@dataclass(frozen=True)
class Balance:
    """The weights of a conversion, in grams."""

    consumed: Decimal
    produced: Decimal
    waste: Decimal

    @property
    def difference(self) -> Decimal:
        """Consumed minus (produced + waste): positive when material is unaccounted for."""
        return self.consumed - self.produced - self.waste


def check_balance(consumed: Iterable[Decimal], produced: Decimal, waste: Decimal) -> Balance:
    """Raise MASS_BALANCE_VIOLATION unless Σ consumed = produced + waste (within TOLERANCE)."""
    balance = Balance(sum(consumed, ZERO), produced, waste)
    if abs(balance.difference) > TOLERANCE:
        raise MassBalanceViolation(
            f"mass balance: inputs weigh {balance.consumed} g but output {balance.produced} g + waste "
            f"{balance.waste} g = {balance.produced + balance.waste} g "
            f"(difference {balance.difference} g, tolerance {TOLERANCE} g)",
            metadata={
                "consumed_g": str(balance.consumed),
                "produced_g": str(balance.produced),
                "waste_g": str(balance.waste),
                "difference_g": str(balance.difference),
            },
        )
    return balance


def check_not_more(collected: Decimal, produced: Decimal, waste: Decimal, what: str) -> None:
    """Raise MASS_BALANCE_VIOLATION when outputs plus waste exceed what was collected."""
    if produced + waste > collected:
        raise MassBalanceViolation(
            f"mass balance: {what} outputs {produced} g + waste {waste} g exceed the {collected} g collected",
            metadata={"collected_g": str(collected), "produced_g": str(produced), "waste_g": str(waste)},
        )
