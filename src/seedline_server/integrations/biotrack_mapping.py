"""What BioTrackTHC hears of each Seedline change: one place, pure functions, no I/O.

:mod:`biotrack_records` reads the facts a change needs (:func:`needs` says which) from the
database into :class:`Names`; :func:`plan` (or :func:`actions`) turns the change into BioTrackTHC
v1 actions; :mod:`biotrack` sends them, each with a nonce derived from the delivery id.

=========================================  =======================================================
Seedline change (``Job.event_type``)        BioTrackTHC action(s)
=========================================  =======================================================
``plant.create``                            ``plant_new`` (quantity 1; ``source`` = the barcode of
                                            the seed/clone lot when it is known, else ``""``)
``plant.update`` (section / variety)        ``plant_move`` / ``plant_modify`` (strain)
``plant.phase_changed``                     ``plant_modify`` (strain and birthdate restated), and
                                            ``plant_move`` if the section changed too
``plant.raw_collected``                     ``plant_harvest`` of the wet weight (``wet: 1``,
                                            inventory type 29 Wet Flower, uom ``g``);
                                            ``collectadditional`` 0 when the collection harvested
                                            the plant, 1 for a partial collection (it keeps growing)
``plant.destruction_requested``             ``plant_destroy_schedule``
``plant.destroyed``                         ``plant_destroy``
``lot.create`` (opening / received)         ``inventory_new``
``lot.create`` (a split's new lot)          ``inventory_split`` of the source lot
``lot.create_by_collection``                ``inventory_new`` (the dry lot of a net collection)
``lot.create_by_conversion``                ``inventory_convert`` (inputs from the lineage edges,
                                            waste from the conversion's mass balance)
``lot.adjust``                              ``inventory_adjust`` (new quantity, 6 decimals; type
                                            from the adjustment reason, :data:`ADJUST_TYPES`)
``lot.move``                                ``inventory_move``
``lot.destruction_requested``               ``inventory_destroy_schedule``
``lot.destruction_cancelled``               ``inventory_destroy_schedule_undo``
``lot.destroyed``                           ``inventory_destroy``
``transfer.transfer_committed``             ``inventory_manifest`` (or ``inventory_manifest_third_party``
                                            when a transporter license is named)
``transfer.transfer_voided``                ``inventory_manifest_void`` (when a manifest was filed)
everything else                             nothing (delivered as "not reported")
=========================================  =======================================================

Choices, where Seedline and BioTrackTHC do not line up one to one:

- **Growth phases**: BioTrackTHC keeps no growth phase (a plant's room says where it is), so a
  phase change restates the plant's strain and birthdate with ``plant_modify``.
- **Raw collections are wet**: Seedline weighs each plant wet (``plant_harvest``) and dries per
  *collection*, not per plant. ``plant_cure`` records dry weights *per plant*, which Seedline
  never has, so it is not sent; the dry output of a net collection reaches BioTrackTHC as the
  ``inventory_new`` of its lot.
- **Consumption that another action already reports** is not sent again: a lot's ``plant``
  (``plant_new`` with the lot as ``source`` deducts it), ``split`` and ``convert`` (the new lot's
  ``inventory_split`` / ``inventory_convert``), ``shipped``/``returned``/``transferred`` (the
  manifest), lab sampling and lab status (BioTrackTHC hears those from the laboratory).
- **A cancelled plant destruction** is not reported: the reference lists no undo for
  ``plant_destroy_schedule``.
- **Units**: Seedline stores grams, liters and counts; BioTrackTHC hears ``g``, ``ml`` (liters
  times 1000) and ``each``. Quantities are decimal strings with 6 decimals (exact, no floats).
- **Manifests**: BioTrackTHC's ``employee_id`` / ``vehicle_id`` are the driver's license number
  and the vehicle's plate from the transfer (Seedline keeps no BioTrackTHC employee registry).
  Items are manifested whole (BioTrackTHC manifests inventory items, not part quantities).
- A referenced record without a BioTrackTHC barcode (registered by a delivery still pending)
  raises :class:`MappingError` with ``waiting=True``: the delivery is retried later. The one
  exception is a new plant's source lot, sent only when known (a lot from before the
  integration existed has no barcode; ``source`` is then empty).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from seedline_server.domain.quantity import Dimension, Unit, dimension_of

__all__ = [
    "ADJUST_TYPES",
    "CREATING_ACTIONS",
    "INVENTORY_TYPES",
    "Call",
    "Input",
    "MappingError",
    "Names",
    "Needs",
    "Plan",
    "ProductFacts",
    "actions",
    "mapped",
    "needs",
    "plan",
    "quantity6",
]

# Seedline PlantPhase numbers.
HARVESTED: Final = 5
# Seedline LotOrigin numbers.
ORIGIN_INITIAL, ORIGIN_RECEIVED, ORIGIN_SPLIT = 1, 2, 4
# seedline.license.v1.PackageType.BULK
_BULK: Final = 1
# Wet Flower: what a harvest's wet weight is in BioTrackTHC's inventory types.
WET_FLOWER: Final = 29

ADJUST_TYPES: Final[dict[int, int]] = {
    1: 5,  # DRYING → Moisture Loss
    2: 5,  # MOISTURE_LOSS → Moisture Loss
    3: 4,  # SCALE_VARIANCE → Correction
    4: 4,  # ENTRY_ERROR → Correction
    5: 2,  # THEFT → Theft
    6: 6,  # HANDLING_LOSS → Depletion
    7: 1,  # INVENTORY_COUNT → Audit
    8: 4,  # OTHER → Correction
}
"""Seedline AdjustmentReason → BioTrackTHC ``inventory_adjust`` type (1 Audit, 2 Theft,
3 Seizure, 4 Correction, 5 Moisture Loss, 6 Depletion). Seedline has no seizure reason."""

_ADJUST_REASON_NAMES: Final = {
    1: "Drying",
    2: "Moisture loss",
    3: "Scale variance",
    4: "Entry error",
    5: "Theft",
    6: "Handling loss",
    7: "Inventory count",
    8: "Other",
}
_LOT_DESTRUCTION_REASONS: Final = {
    1: "Failed lab test",
    2: "Contamination",
    3: "Damaged",
    4: "Expired",
    5: "Recall",
    6: "Quality",
    7: "Regulator order",
    8: "Other",
}

INVENTORY_TYPES: Final[dict[str, int]] = {
    "018NY6XC00PT01KFPCEFB9G1Z2": 11,  # Bulk Plant Tissue → Plant Tissue
    "018NY6XC00PT0WQP2XV5KNP395": 25,  # Retail / Topical → Infused Topicals
    "018NY6XC00PT3EZZ4GN6105M64": 7,  # Bulk Plant / Clone / Seed → Clone
    "018NY6XC00PT63ECNBAZH32YC3": 30,  # Mixed/Lot → Marijuana Mix
    "018NY6XC00PT6QKRGR3JYQX0BK": 15,  # Extract / Hash / Bubble → Bubble Hash
    "018NY6XC00PT7N83PFNCX8ZFEF": 23,  # Package / Edible / Liquid → Infused Edible - Liquid
    "018NY6XC00PT8AXVZGNZN3A0QT": 27,  # General Waste → Waste
    "018NY6XC00PT8ZPGMPR8H2TAXH": 14,  # Bulk Grade-B / Lot → Other Plant Material Lot
    "018NY6XC00PTACC942KY9DCERR": 16,  # Extract / Non-Solvent → Hash
    "018NY6XC00PTAF3TFBB51C8HX6": 13,  # Bulk Grade-A / Lot → Flower Lot
    "018NY6XC00PTBNDY5VJ8JQ6NKP": 22,  # Edible/Solid → Infused Edible - Solid
    "018NY6XC00PTCS5AZV189X1YRK": 17,  # Extract/Wax/Hydrocarbon → Hydrocarbon Wax
    "018NY6XC00PTGBW49J6YD3WM84": 9,  # Bulk Grade-B / Raw (Wet) → Other Plant Material
    "018NY6XC00PTGMB39NHCZ8EDEZ": 28,  # Flower/Bagged → Usable Marijuana
    "018NY6XC00PTGRX4Q9SZBHDA5Z": 32,  # Retail / Mix Infused → Marijuana Mix - Infused
    "018NY6XC00PTHE7GWB4QTG4JKZ": 26,  # Retail/Sample Jar → Sample Jar
    "018NY6XC00PTHP9NMJ1RE6TA62": 19,  # Extract/Food Grade → Food Grade Solvent Extract
    "018NY6XC00PTK2E0W67FMBZP9Q": 28,  # Flower/Pre-Roll → Usable Marijuana
    "018NY6XC00PTKYYGMRSKV4XNH7": 31,  # Mix/Package → Marijuana Mix - Packaged
    "018NY6XC00PTNPA4TPCYSKD5XN": 5,  # Extract/Kief → Kief
    "018NY6XC00PTNZQPYNH74BPZ1K": 20,  # Extract/Dairy → Infused Dairy or Fat - Solid
    "018NY6XC00PTR9M5Z9S4T31C4R": 18,  # Extract/Oil/CO2 → CO2 Hash Oil
    "018NY6XC00PTRPPDT8NJY2MWQW": 12,  # Bulk Plant → Mature Plant
    "018NY6XC00PTSF5NTC899SR0JF": 24,  # Extract/Packaged → Extract for Inhalation
    "018NY6XC00PTY5XPA4KJT6W3K4": 21,  # Extract/Oil/Cooking → Infused Cooking Oil
    "018NY6XC00PTY9THKSEQ8NFS1J": 10,  # Seed → Seed
    "018NY6XC00PTYM8J81K9HFGEMQ": 29,  # Bulk Grade-A / Raw (Wet) → Wet Flower
    "018NY6XC00PTZZWCH7XVREHK6T": 6,  # Flower / Dry → Flower
}
"""OpenTHC product type → BioTrackTHC inventory type, from the ``biotrack.path`` of OpenTHC's
product-type catalogue (MIT), kept to the types the BioTrackTHC reference lists."""

_SIX = Decimal("0.000001")
_ML_PER_LITER = Decimal(1000)


class MappingError(Exception):
    """A change cannot be put into BioTrackTHC terms (yet).

    Attributes:
        waiting: True when a referenced record is simply not registered at BioTrackTHC yet (its
            own delivery is pending): a later attempt may succeed.

    """

    def __init__(self, detail: str, *, waiting: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.waiting = waiting


@dataclass(frozen=True)
class Call:
    """One BioTrackTHC action: its name and the fields besides the envelope."""

    action: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What one delivery sends.

    Attributes:
        summary: One line for the log.
        calls: The actions, in order.
        creates: The Seedline resource whose BioTrackTHC id is the first ``barcode_id`` (or the
            ``manifest_id``) of the answer, to remember; None when nothing is created.

    """

    summary: str
    calls: list[Call] = field(default_factory=list)
    creates: str | None = None


@dataclass(frozen=True)
class ProductFacts:
    """What the mapping needs of a product."""

    name: str
    product_type: str
    package_type: int
    bulk_unit: int


@dataclass(frozen=True)
class Input:
    """One consumed lot of a conversion: its name and amount in its storage unit."""

    lot: str
    quantity: Decimal
    unit: int  # seedline Unit number of the storage unit (1 g, 6 l, 9 ea)


@dataclass(frozen=True)
class Needs:
    """Which facts :func:`actions` needs for a change (what the records reader looks up)."""

    varieties: frozenset[str] = frozenset()
    sections: frozenset[str] = frozenset()
    products: frozenset[str] = frozenset()
    licenses: frozenset[str] = frozenset()
    resources: frozenset[str] = frozenset()
    adjustment: bool = False
    conversion: bool = False


@dataclass(frozen=True)
class Names:
    """Facts looked up for one change.

    Attributes:
        resource: The Seedline resource the change is about.
        location: The BioTrackTHC location (license) id of the integration.
        event_time: When the change committed.
        strains: Variety id → display name.
        rooms: Section id → display name.
        barcodes: Seedline resource name → BioTrackTHC barcode (or manifest) id.
        products: Product id → its facts.
        license_numbers: License id → license number.
        adjust_reason: A lot adjustment's Seedline AdjustmentReason number.
        adjust_note: A lot adjustment's note.
        inputs: A conversion's consumed lots.
        waste_g: A conversion's waste in grams.

    """

    resource: str
    location: str
    event_time: datetime
    strains: Mapping[str, str] = field(default_factory=dict)
    rooms: Mapping[str, str] = field(default_factory=dict)
    barcodes: Mapping[str, str] = field(default_factory=dict)
    products: Mapping[str, ProductFacts] = field(default_factory=dict)
    license_numbers: Mapping[str, str] = field(default_factory=dict)
    adjust_reason: int | None = None
    adjust_note: str = ""
    inputs: tuple[Input, ...] = ()
    waste_g: Decimal | None = None


# -- small helpers -------------------------------------------------------------------------


def quantity6(amount: Decimal) -> str:
    """``amount`` as BioTrackTHC wants quantities: a plain decimal string with 6 decimals."""
    return f"{amount.quantize(_SIX):f}"


def _decimal(value: Any, what: str) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise MappingError(f"{what} is not a number: {value!r}") from exc


def _epoch(value: Any, default: datetime) -> int:
    when = _time(value) or default
    return int(when.timestamp())


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    when = datetime.fromisoformat(str(value))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _in_uom(amount: Decimal, unit: Unit) -> tuple[str, str]:
    """A stored amount (g, l or ea) as BioTrackTHC's quantity string and uom."""
    dim = dimension_of(unit)
    if dim is Dimension.WEIGHT:
        return quantity6(amount), "g"
    if dim is Dimension.VOLUME:
        return quantity6(amount * _ML_PER_LITER), "ml"
    return quantity6(amount), "each"


def _storage_unit(product: ProductFacts) -> Unit:
    """The unit a product's lots are stored in: the bulk unit's storage unit, else each."""
    if product.package_type != _BULK:
        return Unit.EACH
    return {Dimension.WEIGHT: Unit.GRAM, Dimension.VOLUME: Unit.LITER, Dimension.COUNT: Unit.EACH}[
        dimension_of(Unit(product.bulk_unit))
    ]


class _Facts:
    """Lookups over :class:`Names` that fail with a clear :class:`MappingError`."""

    def __init__(self, names: Names) -> None:
        self.n = names

    def strain(self, variety_id: Any) -> str:
        if not variety_id:
            return ""
        try:
            return self.n.strains[str(variety_id)]
        except KeyError:
            raise MappingError(f"variety {variety_id} was not found") from None

    def room(self, section_id: Any) -> str:
        try:
            return self.n.rooms[str(section_id)]
        except KeyError:
            raise MappingError(f"section {section_id} was not found") from None

    def barcode(self, resource: str) -> str:
        try:
            return self.n.barcodes[resource]
        except KeyError:
            raise MappingError(
                f"{resource} has no BioTrackTHC barcode yet (not registered there)", waiting=True
            ) from None

    def product(self, product_id: Any) -> ProductFacts:
        try:
            return self.n.products[str(product_id)]
        except KeyError:
            raise MappingError(f"product {product_id} was not found") from None

    def invtype(self, product: ProductFacts) -> int:
        try:
            return INVENTORY_TYPES[product.product_type]
        except KeyError:
            raise MappingError(
                f"product {product.name!r} is of a product type ({product.product_type}) without a "
                "BioTrackTHC inventory type"
            ) from None

    def lot_quantity(self, lot: Mapping[str, Any]) -> tuple[str, str]:
        unit = _storage_unit(self.product(lot.get("product_id")))
        return _in_uom(_decimal(lot.get("quantity"), "lot quantity"), unit)


def _snap(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    return dict(value) if isinstance(value, Mapping) else {}


def _lot(resource: str, lot_id: Any) -> str:
    """A lot of the same license as ``resource`` (``licenses/L/<anything>/<id>``)."""
    parts = resource.split("/")
    return f"licenses/{parts[1]}/lots/{lot_id}"


# -- plants --------------------------------------------------------------------------------


def _plant_new(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    source = str(p.get("source_lot") or "")
    return [
        Call(
            "plant_new",
            {
                "room": f.room(p.get("section_id")),
                "quantity": 1,
                "strain": f.strain(p.get("variety_id")),
                "source": f.n.barcodes.get(source, "") if source else "",
                "mother": 0,
                "location": f.n.location,
            },
        )
    ]


def _plant_moved_or_modified(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    me = f.barcode(f.n.resource)
    calls = []
    if b.get("section_id") != p.get("section_id"):
        calls.append(Call("plant_move", {"barcodeid": [me], "room": f.room(p.get("section_id"))}))
    if b.get("variety_id") != p.get("variety_id"):
        calls.append(Call("plant_modify", {"barcodeid": me, "strain": f.strain(p.get("variety_id"))}))
    return calls


def _plant_phase(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    me = f.barcode(f.n.resource)
    calls = []
    if b.get("section_id") != p.get("section_id"):
        calls.append(Call("plant_move", {"barcodeid": [me], "room": f.room(p.get("section_id"))}))
    fields: dict[str, Any] = {"barcodeid": me, "strain": f.strain(p.get("variety_id"))}
    born = _time(p.get("plant_time"))
    if born is not None:
        fields["birthdate"] = born.strftime("%Y%m%d")
    calls.append(Call("plant_modify", fields))
    return calls


def _plant_harvest(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    wet = _decimal(p.get("wet_weight_g"), "wet_weight_g")
    harvested = p.get("phase") == HARVESTED
    return [
        Call(
            "plant_harvest",
            {
                "barcodeid": [f.barcode(f.n.resource)],
                "collectiontime": _epoch(p.get("harvest_time") if harvested else None, f.n.event_time),
                "weights": [{"amount": quantity6(wet), "invtype": WET_FLOWER, "uom": "g"}],
                "new_room": f.room(p.get("section_id")),
                "collectadditional": 0 if harvested else 1,
                "wet": 1,
            },
        )
    ]


def _plant_destroy_schedule(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    d = _snap(p, "destruction")
    reason = str(d.get("reason") or "Other")
    return [
        Call(
            "plant_destroy_schedule",
            {
                "barcodeid": [f.barcode(f.n.resource)],
                "reason": reason[:255],
                "reason_extended": f"waste {d.get('waste_g', '?')} g; method {d.get('method', 0)}",
            },
        )
    ]


def _plant_destroy(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    return [Call("plant_destroy", {"barcodeid": [f.barcode(f.n.resource)]})]


# -- lots ----------------------------------------------------------------------------------


def _inventory_new(p: dict[str, Any], f: _Facts) -> list[Call]:
    product = f.product(p.get("product_id"))
    quantity, uom = f.lot_quantity(p)
    return [
        Call(
            "inventory_new",
            {
                "location": f.n.location,
                "data": [
                    {
                        "invtype": f.invtype(product),
                        "quantity": quantity,
                        "quantity_uom": uom,
                        "strain": f.strain(p.get("variety_id")),
                        "productname": product.name,
                        "room": f.room(p.get("section_id")),
                    }
                ],
            },
        )
    ]


def _lot_create(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    origin = p.get("origin")
    if origin in (ORIGIN_INITIAL, ORIGIN_RECEIVED):
        return _inventory_new(p, f)
    if origin == ORIGIN_SPLIT:
        sources = list(p.get("source_lots") or [])
        if len(sources) != 1:
            raise MappingError(f"a split lot names {len(sources)} source lots, not one")
        quantity, uom = f.lot_quantity(p)
        return [
            Call(
                "inventory_split",
                {
                    "barcodeid": f.barcode(str(sources[0])),
                    "quantity": quantity,
                    "uom": uom,
                    "room": f.room(p.get("section_id")),
                    "product": f.product(p.get("product_id")).name,
                },
            )
        ]
    return []


def _lot_from_collection(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    return _inventory_new(p, f)


def _lot_from_conversion(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    if not f.n.inputs:
        raise MappingError("the conversion's inputs were not found")
    product = f.product(p.get("product_id"))
    quantity, uom = f.lot_quantity(p)
    data = []
    for item in f.n.inputs:
        amount, item_uom = _in_uom(item.quantity, Unit(item.unit))
        data.append(
            {"barcodeid": f.barcode(item.lot), "remove_quantity": amount, "remove_quantity_uom": item_uom}
        )
    return [
        Call(
            "inventory_convert",
            {
                "data": data,
                "derivative_type": f.invtype(product),
                "derivative_strain": f.strain(p.get("variety_id")),
                "derivative_product": product.name,
                "derivative_quantity": quantity,
                "derivative_quantity_uom": uom,
                "waste": quantity6(f.n.waste_g if f.n.waste_g is not None else Decimal(0)),
                "waste_uom": "g",
            },
        )
    ]


def _lot_adjust(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    reason = f.n.adjust_reason
    if reason is None or reason not in ADJUST_TYPES:
        raise MappingError(f"the adjustment of {f.n.resource} has no known reason ({reason})")
    quantity, uom = f.lot_quantity(p)
    text = _ADJUST_REASON_NAMES[reason] + (f": {f.n.adjust_note}" if f.n.adjust_note else "")
    return [
        Call(
            "inventory_adjust",
            {
                "data": {
                    "barcodeid": f.barcode(f.n.resource),
                    "quantity": quantity,
                    "quantity_uom": uom,
                    "type": ADJUST_TYPES[reason],
                    "reason": text[:255],
                }
            },
        )
    ]


def _lot_move(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    return [
        Call("inventory_move", {"barcodeid": f.barcode(f.n.resource), "room": f.room(p.get("section_id"))})
    ]


def _lot_destroy_schedule(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    d = _snap(p, "destruction")
    reason = _LOT_DESTRUCTION_REASONS.get(int(d.get("reason") or 8), "Other")
    return [
        Call(
            "inventory_destroy_schedule",
            {
                "barcodeid": [f.barcode(f.n.resource)],
                "reason": reason,
                "reason_extended": str(d.get("note") or "")[:255],
            },
        )
    ]


def _lot_destroy_undo(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    return [Call("inventory_destroy_schedule_undo", {"barcodeid": [f.barcode(f.n.resource)]})]


def _lot_destroy(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    return [Call("inventory_destroy", {"barcodeid": [f.barcode(f.n.resource)]})]


# -- transfers -----------------------------------------------------------------------------


def _manifest(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    items = [i for i in p.get("items") or [] if isinstance(i, Mapping)]
    if not items:
        raise MappingError("the committed transfer has no items")
    target = str(p.get("target_license_id") or "")
    try:
        vendor = f.n.license_numbers[target]
    except KeyError:
        raise MappingError(f"the target license {target} was not found") from None
    stop = {
        "stop_number": 1,
        "vendor_license": vendor,
        "barcodeid": [f.barcode(_lot(f.n.resource, i.get("lot_id"))) for i in items],
    }
    transporter = str(p.get("transporter_license_id") or "")
    if transporter:
        try:
            number = f.n.license_numbers[transporter]
        except KeyError:
            raise MappingError(f"the transporter license {transporter} was not found") from None
        return [
            Call(
                "inventory_manifest_third_party",
                {"location": f.n.location, "third_party_license": number, "stop_overview": [stop]},
            )
        ]
    driver = _snap(p, "driver")
    vehicle = _snap(p, "vehicle")
    return [
        Call(
            "inventory_manifest",
            {
                "location": f.n.location,
                "employee_id": str(driver.get("licenseNumber", "")),
                "vehicle_id": str(vehicle.get("licensePlate", "")),
                "stop_overview": [stop],
            },
        )
    ]


def _manifest_void(p: dict[str, Any], b: dict[str, Any], f: _Facts) -> list[Call]:
    manifest = f.n.barcodes.get(f.n.resource)
    if manifest is None:
        return []  # never filed (a draft voided before its commit): nothing to void
    return [Call("inventory_manifest_void", {"manifest_id": manifest})]


# -- the table -----------------------------------------------------------------------------

CREATING_ACTIONS: Final = frozenset(
    {
        "plant_new",
        "inventory_new",
        "inventory_split",
        "inventory_convert",
        "inventory_manifest",
        "inventory_manifest_third_party",
    }
)
"""Actions whose answer carries the new record's id (``barcode_id`` or ``manifest_id``)."""

_Mapper = Callable[[dict[str, Any], dict[str, Any], _Facts], list[Call]]

_MAPPERS: Final[dict[str, tuple[_Mapper, str]]] = {
    "plant.create": (_plant_new, "register plant"),
    "plant.update": (_plant_moved_or_modified, "update plant"),
    "plant.phase_changed": (_plant_phase, "plant phase change"),
    "plant.raw_collected": (_plant_harvest, "harvest collection of plant"),
    "plant.destruction_requested": (_plant_destroy_schedule, "schedule destruction of plant"),
    "plant.destroyed": (_plant_destroy, "destroy plant"),
    "lot.create": (_lot_create, "register lot"),
    "lot.create_by_collection": (_lot_from_collection, "register lot from collection"),
    "lot.create_by_conversion": (_lot_from_conversion, "convert into lot"),
    "lot.adjust": (_lot_adjust, "adjust lot"),
    "lot.move": (_lot_move, "move lot"),
    "lot.destruction_requested": (_lot_destroy_schedule, "schedule destruction of lot"),
    "lot.destruction_cancelled": (_lot_destroy_undo, "cancel destruction of lot"),
    "lot.destroyed": (_lot_destroy, "destroy lot"),
    "transfer.transfer_committed": (_manifest, "file manifest for transfer"),
    "transfer.transfer_voided": (_manifest_void, "void manifest of transfer"),
}


def mapped(event_type: str) -> bool:
    """Whether changes of ``event_type`` may be reported to BioTrackTHC at all."""
    return event_type in _MAPPERS


def needs(event_type: str, payload: Mapping[str, Any], resource: str) -> Needs:
    """The facts :func:`actions` needs for this change (nothing for unmapped changes).

    Args:
        event_type: ``plant.create``, ``lot.adjust``...
        payload: ``{"verb", "before", "after"}`` audit snapshots.
        resource: The Seedline resource the change is about.

    Returns:
        Ids to look up; the records reader turns them into :class:`Names`.

    """
    if not mapped(event_type):
        return Needs()
    after, before = _snap(payload, "after"), _snap(payload, "before")
    snaps = [s for s in (after, before) if s]
    resources = {resource}
    licenses: set[str] = set()
    if after.get("source_lot"):
        resources.add(str(after["source_lot"]))
    resources.update(str(s) for s in after.get("source_lots") or [])
    for item in after.get("items") or []:
        if isinstance(item, Mapping):
            resources.add(_lot(resource, item.get("lot_id")))
    for key in ("target_license_id", "transporter_license_id"):
        if after.get(key):
            licenses.add(str(after[key]))
    return Needs(
        varieties=_ids(snaps, "variety_id"),
        sections=_ids(snaps, "section_id"),
        products=_ids(snaps, "product_id"),
        licenses=frozenset(licenses),
        resources=frozenset(resources),
        adjustment=event_type == "lot.adjust",
        conversion=event_type == "lot.create_by_conversion",
    )


def _ids(snaps: Iterable[Mapping[str, Any]], key: str) -> frozenset[str]:
    return frozenset(str(s[key]) for s in snaps if s.get(key))


def actions(event_type: str, payload: Mapping[str, Any], names: Names) -> list[Call]:
    """The BioTrackTHC actions that report one Seedline change, in order ([] when not reported).

    Args:
        event_type: ``plant.create``, ``lot.adjust``...
        payload: ``{"verb", "before", "after"}`` audit snapshots.
        names: The facts :func:`needs` asked for.

    Returns:
        The calls; empty when BioTrackTHC does not hear of this change.

    Raises:
        MappingError: the change cannot be expressed (a referenced record has no barcode yet,
            a product type without a BioTrackTHC inventory type...).

    """
    entry = _MAPPERS.get(event_type)
    if entry is None:
        return []
    return entry[0](_snap(payload, "after"), _snap(payload, "before"), _Facts(names))


def plan(event_type: str, payload: Mapping[str, Any], names: Names) -> Plan:
    """:func:`actions` with a summary and the resource the first answer's barcode names.

    Raises:
        MappingError: as :func:`actions`.

    """
    calls = actions(event_type, payload, names)
    what = _MAPPERS[event_type][1] if event_type in _MAPPERS else event_type
    creates = names.resource if len(calls) == 1 and calls[0].action in CREATING_ACTIONS else None
    return Plan(summary=f"{what} {names.resource}", calls=calls, creates=creates)
