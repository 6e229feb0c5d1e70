"""Transfer rules: lifecycle states, who may receive what, what a commit needs."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from seedline_server.domain import lot as lot_rules
from seedline_server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    InvalidStateTransition,
    LabTestingRequired,
    LicenseNotPermitted,
    Violations,
)


class State(enum.Enum):
    """Values match ``seedline.transfer.v1.TransferState``."""

    DRAFT = 1
    COMMITTED = 2
    IN_TRANSIT = 3
    ACCEPTED = 4
    PARTIALLY_ACCEPTED = 5
    REJECTED = 6
    VOIDED = 7


class ItemState(enum.Enum):
    """Values match ``seedline.transfer.v1.TransferItemState``."""

    PENDING = 1
    ACCEPTED = 2
    PARTIALLY_ACCEPTED = 3
    REJECTED = 4
    VOIDED = 5


class Event(enum.Enum):
    """Values match ``seedline.transfer.v1.TransferEventType``."""

    CREATED = 1
    UPDATED = 2
    COMMITTED = 3
    IN_TRANSIT = 4
    ACCEPTED = 5
    REJECTED = 6
    VOIDED = 7


class LicenseType(enum.Enum):
    """Values match ``seedline.license.v1.LicenseType``."""

    GROWER = 1
    PROCESSOR = 2
    GROWER_PROCESSOR = 3
    LABORATORY = 4
    RETAIL = 5
    CARRIER = 6
    DISTRIBUTOR = 7


SHIPPED = frozenset({State.COMMITTED, State.IN_TRANSIT})
FINAL = frozenset({State.ACCEPTED, State.PARTIALLY_ACCEPTED, State.REJECTED, State.VOIDED})


def check_draft(state: State, action: str) -> None:
    """Raise unless the transfer is a DRAFT (only drafts are edited or committed)."""
    if state is not State.DRAFT:
        raise InvalidStateTransition(
            f"cannot {action}: the transfer is {state.name}; only a DRAFT can be changed",
            metadata={"state": state.name},
        )


def check_shipped(state: State, action: str) -> None:
    """Raise unless the transfer is COMMITTED or IN_TRANSIT (what receiving needs)."""
    if state not in SHIPPED:
        raise InvalidStateTransition(
            f"cannot {action}: the transfer is {state.name}; only a COMMITTED or IN_TRANSIT transfer can",
            metadata={"state": state.name},
        )


def check_voidable(state: State) -> None:
    """Raise unless the transfer has not been received or ended."""
    if state in FINAL:
        raise InvalidStateTransition(
            f"cannot void: the transfer is {state.name} (final)", metadata={"state": state.name}
        )


def effective_state(state: State, planned_depart: datetime | None, now: datetime) -> State:
    """COMMITTED becomes IN_TRANSIT once its planned departure time has passed."""
    if state is State.COMMITTED and planned_depart is not None and planned_depart <= now:
        return State.IN_TRANSIT
    return state


@dataclass(frozen=True)
class Manifest:
    """What a commit needs besides the items: planned times, vehicle, driver."""

    items: int
    planned_depart: datetime | None
    planned_arrive: datetime | None
    has_vehicle: bool
    has_driver: bool


def check_manifest(m: Manifest) -> None:
    """Raise INVALID_ARGUMENT listing every missing piece of a committable manifest."""
    v = Violations()
    if m.items == 0:
        v.add("transfer.items", "a transfer needs at least one item to commit")
    if m.planned_depart is None:
        v.add("transfer.planned_depart_time", "required to commit")
    if m.planned_arrive is None:
        v.add("transfer.planned_arrive_time", "required to commit")
    if m.planned_depart and m.planned_arrive and m.planned_arrive <= m.planned_depart:
        v.add("transfer.planned_arrive_time", "must be after planned_depart_time")
    if not m.has_vehicle:
        v.add("transfer.vehicle", "required to commit")
    if not m.has_driver:
        v.add("transfer.driver", "required to commit")
    v.raise_if_any("the transfer is not ready to commit")


def check_receivable(
    target_type: LicenseType, package: lot_rules.Package, plant_material: bool, target: str, product: str
) -> None:
    """Raise LICENSE_NOT_PERMITTED when the target license may not receive the product.

    Carriers receive nothing (they only transport); retailers receive only packaged goods
    (each/pack); plant material (seeds, clones, plants) goes only to growers, labs and
    distributors; processors receive bulk and packaged goods.
    """
    allowed = True
    if target_type is LicenseType.CARRIER:
        allowed = False
    elif target_type is LicenseType.RETAIL:
        allowed = package is not lot_rules.Package.BULK and not plant_material
    elif plant_material:
        allowed = target_type in {
            LicenseType.GROWER,
            LicenseType.GROWER_PROCESSOR,
            LicenseType.LABORATORY,
            LicenseType.DISTRIBUTOR,
        }
    if not allowed:
        raise LicenseNotPermitted(
            f"license {target} ({target_type.name}) may not receive {product}",
            metadata={"target_license": target, "license_type": target_type.name, "product": product},
        )


def check_lab(lab: lot_rules.LabStatus, target_type: LicenseType, lot: str) -> None:
    """Raise LAB_TESTING_REQUIRED unless the lot passed testing, needs none, or goes to a lab."""
    if target_type is LicenseType.LABORATORY:
        return
    if lab not in (lot_rules.LabStatus.NOT_REQUIRED, lot_rules.LabStatus.PASSED):
        raise LabTestingRequired(
            f"lot {lot} has lab status {lab.name}: it needs a passing lab result before it can be shipped",
            metadata={"lot": lot, "lab_status": lab.name},
        )


def check_received(sent: Decimal, received: Decimal, field: str) -> None:
    """Raise INVALID_ARGUMENT when more is received than was sent."""
    if received > sent:
        raise InvalidArgument(
            f"{field} is more than the quantity sent ({sent})",
            [FieldViolation(field, f"must not exceed the quantity sent ({sent})")],
        )
