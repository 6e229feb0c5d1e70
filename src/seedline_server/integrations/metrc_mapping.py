"""What METRC hears of each Seedline change, and how METRC's records read back: one place.

Pure functions, no I/O: :mod:`metrc_records` gathers the facts (names, labels, quantities) from
the database and calls these; :mod:`metrc` sends what they return.

Mapping (METRC v2, PascalCase bodies, dates ``YYYY-MM-DD``):

======================================  ==============================================================
Seedline change                         METRC call(s)
======================================  ==============================================================
plant created as CLONE / SEEDLING        ``POST /plantbatches/v2/plantings`` (a batch of 1, Type Clone/Seed)
plant created VEGETATIVE / FLOWERING     the batch, then ``POST /plantbatches/v2/growthphase`` (tags it)
phase CLONE/SEEDLING → VEG/FLOWERING     ``POST /plantbatches/v2/growthphase`` (StartingTag = the label)
phase VEGETATIVE → FLOWERING             ``PUT /plants/v2/growthphase``
plant moved to another section           ``PUT /plants/v2/location``
raw collection that harvests the plant   ``PUT /plants/v2/harvest`` (HarvestName = the collection)
raw collection without harvest           ``POST /plants/v2/manicure``
plant destroyed                          ``DELETE /plants/v2`` (tagged) or ``DELETE /plantbatches/v2``
lot from a collection                    ``POST /harvests/v2/packages`` (ingredient: the harvest)
lot from lots (split, conversion)        ``POST /packages/v2`` (ingredients: the source packages)
lot adjusted                             ``POST /packages/v2/adjust`` (signed delta, reason crosswalk)
lot moved                                ``PUT /packages/v2/location``
lot destroyed                            ``POST /packages/v2/adjust`` to zero (Waste)
lab result recorded                      ``POST /labtests/v2/record`` per tested package
transfer committed                       ``POST /transfers/v2/templates/outgoing``
======================================  ==============================================================

Labels: METRC tags are 24 characters (``1A`` + 22). A plant or lot whose display name already is a
tag keeps it; otherwise the label is ``1A`` + its ULID's low 73 bits as 22 decimal digits
(METRC tags end in a serial number). A lot's ``state_tag`` wins when set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from ulid import ULID

__all__ = [
    "METRC_MAX_PAGE_SIZE",
    "METRC_WINDOW",
    "Call",
    "LocalRecord",
    "Plan",
    "RemoteRecord",
    "describe_remote",
    "label_for",
    "metrc_windows",
    "package_from_metrc",
    "plant_from_metrc",
]

METRC_MAX_PAGE_SIZE: Final = 20
"""METRC refuses pageSize above 20."""
METRC_WINDOW: Final = timedelta(hours=24)
"""METRC's lastModified filters span at most 24 hours."""

_TAG = re.compile(r"^1A[0-9A-Z]{22}$")

# Seedline PlantPhase numbers.
CLONE, SEEDLING, VEGETATIVE, FLOWERING, HARVESTED = 1, 2, 3, 4, 5
IMMATURE: Final = frozenset({CLONE, SEEDLING})
TAGGED: Final = frozenset({VEGETATIVE, FLOWERING})
_BATCH_TYPE = {CLONE: "Clone", SEEDLING: "Seed"}
_GROWTH_PHASE = {VEGETATIVE: "Vegetative", FLOWERING: "Flowering"}
_PHASE_OF_METRC = {"Vegetative": "VEGETATIVE", "Flowering": "FLOWERING", "Harvested": "HARVESTED"}

# Seedline storage units (Dimension) → METRC unit of measure names.
UNIT_NAMES: Final = {"WEIGHT": "Grams", "VOLUME": "Liters", "COUNT": "Each"}

# Seedline AdjustmentReason → METRC adjustment reason (and whether METRC wants a ReasonNote).
ADJUST_REASONS: Final[dict[int, str]] = {
    1: "Drying",  # DRYING
    2: "Drying",  # MOISTURE_LOSS
    3: "Scale Variance",  # SCALE_VARIANCE
    4: "Entry Error",  # ENTRY_ERROR
    5: "Theft",  # THEFT
    6: "Damage",  # HANDLING_LOSS
    7: "Incorrect Quantity",  # INVENTORY_COUNT
    8: "Entry Error",  # OTHER
}
_NOTE_REQUIRED: Final = frozenset({"Entry Error", "Mandated State Destruction", "Theft"})


@dataclass(frozen=True)
class Call:
    """One METRC request of a delivery.

    Attributes:
        method: HTTP method.
        path: Path under the METRC base URL.
        body: The JSON array sent (METRC takes lists of rows).
        lookup_path: A GET showing whether this call already took effect (look-before-resend).
        done: Given the looked-up record, whether the effect is there (default: it exists).
        what: What the call is about, for logs ("plant 1A…").
        needs_others: The call refers to records other deliveries create (a harvest, a source
            package): METRC's "not found" means "not yet" and is retried, not a dead letter.

    """

    method: str
    path: str
    body: list[dict[str, Any]]
    lookup_path: str | None = None
    done: Callable[[Any], bool] | None = None
    what: str = ""
    needs_others: bool = False


@dataclass(frozen=True)
class Plan:
    """What one delivery sends: its calls in order, a summary and remote ids to remember."""

    summary: str
    calls: list[Call] = field(default_factory=list)
    remote_ids: dict[str, str] = field(default_factory=dict)


def label_for(record_id: str, display_name: str = "", state_tag: str = "") -> str:
    """The METRC tag of a plant or lot (see the module docstring)."""
    for candidate in (state_tag, display_name):
        if candidate and _TAG.fullmatch(candidate):
            return candidate
    # 73 low bits of the ULID (its randomness; ULIDs of one millisecond differ there) as 22
    # decimal digits: METRC tags end in a serial number, and 2**73 < 10**22.
    low = int.from_bytes(ULID.from_str(record_id).bytes, "big") & ((1 << 73) - 1)
    return f"1A{low:022d}"


def day(value: Any) -> str:
    """A timestamp (ISO text or datetime) as METRC's ``YYYY-MM-DD``."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    text = str(value or "")
    return text[:10]


def amount(value: Any) -> Decimal:
    """A stored amount (text in snapshots) as a Decimal, normalised for JSON."""
    return Decimal(str(value)).normalize() if value not in (None, "") else Decimal(0)


def _num(value: Decimal) -> float | int:
    """JSON number for METRC (it takes numbers, not strings)."""
    return int(value) if value == value.to_integral_value() else float(value)


# -- plants ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantFacts:
    """What the plant mappings need, resolved by :mod:`metrc_records`."""

    label: str
    strain: str
    location: str
    previous_location: str = ""


def plant_created(after: dict[str, Any], f: PlantFacts) -> Plan:
    """A new plant: a batch of one, tagged at once when it starts vegetative or flowering."""
    phase = int(after.get("phase", 0))
    batch_type = _BATCH_TYPE.get(phase, "Clone")
    calls = [
        Call(
            "POST",
            "/plantbatches/v2/plantings",
            [
                {
                    "Name": f.label,
                    "Type": batch_type,
                    "Count": 1,
                    "Strain": f.strain,
                    "Location": f.location,
                    "ActualDate": day(after.get("plant_time")),
                }
            ],
            what=f"plant batch {f.label}",
        )
    ]
    if phase in TAGGED:
        calls.append(_tag_call(f, phase, after.get("plant_time")))
    return Plan(f"registered plant {f.label}", calls, {})


def _tag_call(f: PlantFacts, phase: int, when: Any) -> Call:
    return Call(
        "POST",
        "/plantbatches/v2/growthphase",
        [
            {
                "Name": f.label,
                "Count": 1,
                "StartingTag": f.label,
                "GrowthPhase": _GROWTH_PHASE[phase],
                "NewLocation": f.location,
                "GrowthDate": day(when),
            }
        ],
        lookup_path=f"/plants/v2/{f.label}",
        what=f"plant {f.label}",
    )


def plant_changed(verb: str, before: dict[str, Any], after: dict[str, Any], f: PlantFacts) -> Plan:
    """Phase changes, moves, raw collections and destruction of a plant."""
    old, new = int(before.get("phase", 0)), int(after.get("phase", 0))
    if verb == "PHASE_CHANGED":
        if old in IMMATURE and new in TAGGED:
            when = after.get("vegetative_time") or after.get("flowering_time") or after.get("update_time")
            return Plan(f"tagged plant {f.label} ({_GROWTH_PHASE[new]})", [_tag_call(f, new, when)])
        if old in TAGGED and new in TAGGED and old != new:
            body = [
                {
                    "Label": f.label,
                    "GrowthPhase": _GROWTH_PHASE[new],
                    "NewLocation": f.location,
                    "GrowthDate": day(after.get("flowering_time") or after.get("update_time")),
                }
            ]
            return Plan(
                f"plant {f.label} now {_GROWTH_PHASE[new]}", [Call("PUT", "/plants/v2/growthphase", body)]
            )
        return Plan("")
    if verb == "DESTROYED":
        when = day(after.get("update_time"))
        note = str((after.get("destruction") or {}).get("reason", "destroyed")) or "destroyed"
        if old in IMMATURE:
            row = {"PlantBatch": f.label, "Count": 1, "ReasonNote": note[:200], "ActualDate": when}
            return Plan(f"destroyed plant batch {f.label}", [Call("DELETE", "/plantbatches/v2", [row])])
        row2: dict[str, Any] = {
            "Label": f.label,
            "WasteMethodName": "Grinder",
            "WasteWeight": 0,
            "WasteUnitOfMeasureName": "Grams",
            "WasteReasonName": "Waste",
            "ReasonNote": note[:200],
            "ActualDate": when,
        }
        call = Call(
            "DELETE",
            "/plants/v2",
            [row2],
            lookup_path=f"/plants/v2/{f.label}",
            done=lambda p: bool(isinstance(p, dict) and p.get("DestroyedDate")),
            what=f"plant {f.label}",
        )
        return Plan(f"destroyed plant {f.label}", [call])
    if old in IMMATURE and new in IMMATURE:
        return Plan("")  # METRC tracks immature plants as a batch count only
    if verb == "RAW_COLLECTED":
        return _collected(before, after, f)
    if after.get("section_id") != before.get("section_id") and new in TAGGED:
        row3 = {"Label": f.label, "Location": f.location, "ActualDate": day(after.get("update_time"))}
        return Plan(f"moved plant {f.label} to {f.location}", [Call("PUT", "/plants/v2/location", [row3])])
    return Plan("")


def _collected(before: dict[str, Any], after: dict[str, Any], f: PlantFacts) -> Plan:
    harvest = int(after.get("phase", 0)) == HARVESTED and int(before.get("phase", 0)) != HARVESTED
    row = {
        "Plant": f.label,
        "Weight": _num(amount(after.get("wet_weight_g"))),
        "UnitOfWeight": "Grams",
        "DryingLocation": f.location,
        "HarvestName": str(after.get("collection_name") or after.get("collection", "")),
        "ActualDate": day(after.get("harvest_time") or after.get("update_time")),
    }
    if harvest:
        call = Call(
            "PUT",
            "/plants/v2/harvest",
            [row],
            lookup_path=f"/plants/v2/{f.label}",
            done=lambda p: bool(isinstance(p, dict) and p.get("HarvestedDate")),
            what=f"plant {f.label}",
        )
        return Plan(f"harvested plant {f.label} ({row['Weight']} g wet)", [call])
    return Plan(
        f"manicured plant {f.label} ({row['Weight']} g wet)",
        [Call("POST", "/plants/v2/manicure", [row], what=f"plant {f.label}")],
    )


# -- lots (packages) ------------------------------------------------------------------------


@dataclass(frozen=True)
class LotFacts:
    """What the lot mappings need, resolved by :mod:`metrc_records`."""

    label: str
    item: str
    location: str
    unit: str  # METRC unit name of the lot's quantity
    harvest_name: str = ""  # origin COLLECTION: the collection's name
    ingredients: list[tuple[str, Decimal]] = field(default_factory=list)  # (package label, quantity)
    reason: int = 0  # the adjustment's Seedline reason
    note: str = ""


def lot_created(verb: str, after: dict[str, Any], f: LotFacts) -> Plan:
    """A new lot becomes a METRC package, from a harvest or from other packages."""
    if verb == "CREATE_BY_TRANSFER":
        return Plan("")  # a received lot: METRC moves the shipper's package when the transfer is accepted
    when = day(after.get("create_time"))
    quantity = amount(after.get("quantity"))
    lookup = f"/packages/v2/{f.label}"
    if f.harvest_name:
        row: dict[str, Any] = {
            "Tag": f.label,
            "Location": f.location,
            "Item": f.item,
            "UnitOfWeight": f.unit,
            "Ingredients": [
                {"HarvestName": f.harvest_name, "Weight": _num(quantity), "UnitOfWeight": f.unit}
            ],
            "ActualDate": when,
        }
        call = Call(
            "POST", "/harvests/v2/packages", [row], lookup, what=f"package {f.label}", needs_others=True
        )
        return Plan(f"packaged {f.label} from harvest {f.harvest_name}", [call], {})
    if f.ingredients:
        row = {
            "Tag": f.label,
            "Location": f.location,
            "Item": f.item,
            "Quantity": _num(quantity),
            "UnitOfMeasure": f.unit,
            "Ingredients": [
                {"Package": label, "Quantity": _num(q), "UnitOfMeasure": f.unit} for label, q in f.ingredients
            ],
            "ActualDate": when,
        }
        call = Call("POST", "/packages/v2", [row], lookup, what=f"package {f.label}", needs_others=True)
        return Plan(f"packaged {f.label} from {len(f.ingredients)} package(s)", [call], {})
    return Plan("")  # initial inventory and received lots: METRC has them already (or never will)


def lot_changed(verb: str, before: dict[str, Any], after: dict[str, Any], f: LotFacts) -> Plan:
    """Adjustments, moves and destruction of a lot."""
    old, new = amount(before.get("quantity")), amount(after.get("quantity"))
    if verb in ("ADJUST", "DESTROYED") and old != new:
        reason = "Waste" if verb == "DESTROYED" else ADJUST_REASONS.get(f.reason, "Entry Error")
        row: dict[str, Any] = {
            "Label": f.label,
            "Quantity": _num(new - old),
            "UnitOfMeasure": f.unit,
            "AdjustmentReason": reason,
            "AdjustmentDate": day(after.get("update_time")),
        }
        if f.note or reason in _NOTE_REQUIRED:
            row["ReasonNote"] = (f.note or "adjusted in Seedline")[:200]
        target = new

        def applied(p: Any) -> bool:
            return isinstance(p, dict) and amount(p.get("Quantity")) == target

        call = Call(
            "POST", "/packages/v2/adjust", [row], f"/packages/v2/{f.label}", applied, f"package {f.label}"
        )
        return Plan(f"adjusted package {f.label} by {row['Quantity']} {f.unit}", [call])
    if verb == "MOVE" and after.get("section_id") != before.get("section_id"):
        row2 = {"Label": f.label, "Location": f.location, "MoveDate": day(after.get("update_time"))}
        return Plan(
            f"moved package {f.label} to {f.location}", [Call("PUT", "/packages/v2/location", [row2])]
        )
    return Plan("")


# -- lab results and transfers ---------------------------------------------------------------


@dataclass(frozen=True)
class LabFacts:
    """A lab result as METRC records it: tested package labels and (test type, value, passed)."""

    packages: list[str]
    results: list[tuple[str, Decimal, bool]]
    result_date: str


def lab_recorded(f: LabFacts) -> Plan:
    """``POST /labtests/v2/record`` for every tested package (results with a METRC test type)."""
    if not f.packages or not f.results:
        return Plan("")
    rows = [
        {
            "Label": label,
            "ResultDate": f.result_date,
            "Results": [
                {"LabTestTypeName": name, "Quantity": _num(value), "Passed": passed, "Notes": ""}
                for name, value, passed in f.results
            ],
        }
        for label in f.packages
    ]
    calls = [
        Call("POST", "/labtests/v2/record", [row], what=f"lab results of {row['Label']}", needs_others=True)
        for row in rows
    ]
    return Plan(f"recorded {len(f.results)} lab result(s) for {len(rows)} package(s)", calls)


@dataclass(frozen=True)
class TransferFacts:
    """A committed transfer as a METRC outgoing template."""

    name: str
    shipper_license: str
    shipper_name: str
    recipient_license: str
    depart: str
    arrive: str
    packages: list[tuple[str, str]]  # (label, wholesale price or "")
    transporter_license: str = ""
    driver: dict[str, Any] = field(default_factory=dict)
    vehicle: dict[str, Any] = field(default_factory=dict)


def transfer_committed(f: TransferFacts) -> Plan:
    """``POST /transfers/v2/templates/outgoing``: METRC makes the manifest from the template."""
    destination: dict[str, Any] = {
        "RecipientLicenseNumber": f.recipient_license,
        "TransferTypeName": "Transfer",
        "PlannedRoute": "as filed in Seedline",
        "EstimatedDepartureDateTime": f.depart,
        "EstimatedArrivalDateTime": f.arrive,
        "Packages": [
            {"PackageLabel": label} | ({"WholesalePrice": float(price)} if price else {})
            for label, price in f.packages
        ],
    }
    transporter = {
        "TransporterFacilityLicenseNumber": f.transporter_license or f.shipper_license,
        "DriverName": str(f.driver.get("name", "")),
        "DriverLicenseNumber": str(f.driver.get("license_number", f.driver.get("licenseNumber", ""))),
        "VehicleMake": str(f.vehicle.get("make", "")),
        "VehicleModel": str(f.vehicle.get("model", "")),
        "VehicleLicensePlateNumber": str(f.vehicle.get("plate", f.vehicle.get("license_plate", ""))),
        "EstimatedDepartureDateTime": f.depart,
        "EstimatedArrivalDateTime": f.arrive,
    }
    destination["Transporters"] = [transporter]
    row = {
        "Name": f.name,
        "ShipperLicenseNumber": f.shipper_license,
        "ShipperName": f.shipper_name,
        "Destinations": [destination],
    }
    call = Call(
        "POST",
        "/transfers/v2/templates/outgoing",
        [row],
        what=f"transfer template {f.name}",
        needs_others=True,
    )
    return Plan(f"filed transfer template {f.name} ({len(f.packages)} package(s))", [call])


# -- reading METRC back ---------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteRecord:
    """A plant or package as METRC lists it, reduced to what reconciliation compares."""

    label: str
    value: str  # phase (plants) or quantity + unit (packages)
    active: bool
    raw: dict[str, Any]


@dataclass(frozen=True)
class LocalRecord:
    """Our side of the comparison."""

    resource: str
    label: str
    value: str
    active: bool

    def compare(self, other: RemoteRecord) -> tuple[str, str, str] | None:
        """(difference kind, ours, theirs) or None when they agree."""
        if self.active != other.active:
            return (
                "STATUS_MISMATCH",
                "active" if self.active else "inactive",
                "active" if other.active else "inactive",
            )
        if self.value != other.value:
            kind = "PHASE_MISMATCH" if self.resource.split("/")[-2] == "plants" else "QUANTITY_MISMATCH"
            return kind, self.value, other.value
        return None


def plant_from_metrc(o: dict[str, Any]) -> RemoteRecord:
    """A METRC plant object."""
    phase = _PHASE_OF_METRC.get(str(o.get("GrowthPhase", "")), str(o.get("GrowthPhase", "")).upper())
    active = not (o.get("HarvestedDate") or o.get("DestroyedDate"))
    if o.get("HarvestedDate"):
        phase = "HARVESTED"
    return RemoteRecord(str(o.get("Label", "")), phase, active, o)


def package_from_metrc(o: dict[str, Any]) -> RemoteRecord:
    """A METRC package object."""
    value = f"{amount(o.get('Quantity'))} {o.get('UnitOfMeasureName', '')}".strip()
    return RemoteRecord(str(o.get("Label", "")), value, not o.get("FinishedDate"), o)


def describe_remote(o: RemoteRecord) -> str:
    """One line for a record METRC has and Seedline does not."""
    return o.value


def metrc_windows(since: datetime, until: datetime) -> Iterator[tuple[datetime, datetime]]:
    """``[since, until)`` cut into consecutive windows of at most 24 hours."""
    start = since
    while start < until:
        end = min(start + METRC_WINDOW, until)
        yield start, end
        start = end
