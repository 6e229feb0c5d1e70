"""OpenTHC JSON objects → Seedline create requests: validation and field mapping, no I/O.

Each ``build_*`` function checks one OpenTHC object and returns the Seedline request that
creates it, or raises :class:`Invalid` naming the offending field. References to other objects
(``license.id``, ``product.id`` ...) are resolved through :class:`Refs`, filled as the import
creates them. Request ids are derived from the OpenTHC id (and the Seedline parent), so
importing the same object again replays the first create instead of making a duplicate.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from seedline.inventory.v1 import inventory_pb2 as inv
from seedline.license.v1 import license_pb2 as lic
from seedline.plant.v1 import plant_pb2 as pl
from seedline.type.v1 import quantity_pb2 as qty

# The order the kinds are imported in: every kind's references come earlier.
KINDS = ("company", "license", "section", "variety", "product", "plant", "inventory")
# File stems (singular or plural, - or _) → kind.
_ALIASES = {
    "company": "company",
    "companies": "company",
    "license": "license",
    "licenses": "license",
    "section": "section",
    "sections": "section",
    "variety": "variety",
    "varieties": "variety",
    "product": "product",
    "products": "product",
    "plant": "plant",
    "plants": "plant",
    "inventory": "inventory",
    "inventories": "inventory",
    "lot": "inventory",
    "lots": "inventory",
}
BULK_TYPE = "018NY6XC00PT0000000000BULK"
EACH_TYPE = "018NY6XC00PT0000000000EACH"
_ULID = re.compile(r"^[0-9A-Z]{26}$")
_UNITS = {
    "g": qty.UNIT_GRAM,
    "gram": qty.UNIT_GRAM,
    "mg": qty.UNIT_MILLIGRAM,
    "kg": qty.UNIT_KILOGRAM,
    "lb": qty.UNIT_POUND,
    "oz": qty.UNIT_OUNCE,
    "l": qty.UNIT_LITER,
    "ml": qty.UNIT_MILLILITER,
    "floz": qty.UNIT_FLUID_OUNCE,
    "ea": qty.UNIT_EACH,
    "each": qty.UNIT_EACH,
}
_PACKAGES = {"bulk": lic.PACKAGE_TYPE_BULK, "each": lic.PACKAGE_TYPE_EACH, "pack": lic.PACKAGE_TYPE_PACK}
_SECTIONS = {
    "crop": lic.SECTION_TYPE_CROP,
    "inventory": lic.SECTION_TYPE_INVENTORY,
    "inventory-quarantine": lic.SECTION_TYPE_QUARANTINE,
}
_VARIETIES = {
    "indica": lic.VARIETY_TYPE_INDICA,
    "sativa": lic.VARIETY_TYPE_SATIVA,
    "hybrid": lic.VARIETY_TYPE_HYBRID,
    "hemp": lic.VARIETY_TYPE_CBD,
    "cbd": lic.VARIETY_TYPE_CBD,
    "ruderalis": lic.VARIETY_TYPE_UNSPECIFIED,
}
_PHASES = {
    "clone": pl.PLANT_PHASE_CLONE,
    "seed": pl.PLANT_PHASE_SEEDLING,
    "seedling": pl.PLANT_PHASE_SEEDLING,
}  # Seedline creates plants young; later phases are reached with ChangePlantPhase.
# Words in an OpenTHC license type's code or name → Seedline's license type.
_LICENSE_WORDS = (
    ("laboratory", lic.LICENSE_TYPE_LABORATORY),
    ("lab", lic.LICENSE_TYPE_LABORATORY),
    ("retail", lic.LICENSE_TYPE_RETAIL),
    ("carrier", lic.LICENSE_TYPE_CARRIER),
    ("transport", lic.LICENSE_TYPE_CARRIER),
    ("distribut", lic.LICENSE_TYPE_DISTRIBUTOR),
    ("process", lic.LICENSE_TYPE_PROCESSOR),
    ("grow", lic.LICENSE_TYPE_GROWER),
    ("cultivat", lic.LICENSE_TYPE_GROWER),
    ("produc", lic.LICENSE_TYPE_GROWER),
)
LICENSE_TYPES = {
    "grower": lic.LICENSE_TYPE_GROWER,
    "processor": lic.LICENSE_TYPE_PROCESSOR,
    "grower-processor": lic.LICENSE_TYPE_GROWER_PROCESSOR,
    "laboratory": lic.LICENSE_TYPE_LABORATORY,
    "retail": lic.LICENSE_TYPE_RETAIL,
    "carrier": lic.LICENSE_TYPE_CARRIER,
    "distributor": lic.LICENSE_TYPE_DISTRIBUTOR,
}


class Invalid(Exception):
    """An OpenTHC object Seedline cannot take: ``field`` (a JSON path) and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class Options:
    """What OpenTHC objects do not carry and an import must be told."""

    jurisdiction: str | None = None  # ISO 3166-2, e.g. US-WA
    license_type: lic.LicenseType.ValueType | None = None  # when the type names none we know
    namespace: str = ""  # keeps two tenants' imports of the same OpenTHC ids apart


@dataclass
class Refs:
    """OpenTHC ids already imported → what Seedline made of them."""

    names: dict[tuple[str, str], str] = field(default_factory=dict)
    products: dict[str, lic.Product] = field(default_factory=dict)  # Seedline name → product

    def get(self, kind: str, obj: dict[str, Any], key: str) -> str:
        """The Seedline name of ``obj[key].id`` (a ``kind``), imported earlier."""
        ref = obj.get(key)
        ref_id = ref.get("id") if isinstance(ref, dict) else None
        if not isinstance(ref_id, str) or not ref_id:
            raise Invalid(f"{key}.id", "required")
        found = self.names.get((kind, ref_id))
        if found is None:
            raise Invalid(f"{key}.id", f"{kind} {ref_id} is not in this import (import it with this object)")
        return found


def kind_of(stem: str) -> str | None:
    """The kind of the objects a file named ``stem`` holds (``varieties`` → ``variety``), or None."""
    return _ALIASES.get(stem.lower().replace("_", "-"))


def request_id(kind: str, openthc_id: str, scope: str) -> str:
    """The idempotency key of an object's create: the same object always gets the same one."""
    digest = hashlib.sha256(f"{kind}\x1f{scope}\x1f{openthc_id}".encode()).hexdigest()
    return f"openthc-{digest[:48]}"


def object_id(obj: Any) -> str:
    """The object's OpenTHC id, checked."""
    if not isinstance(obj, dict):
        raise Invalid("", f"an OpenTHC object must be a JSON object, not {type(obj).__name__}")
    value = obj.get("id")
    if not isinstance(value, str) or not value.strip():
        raise Invalid("id", "required: a non-empty string")
    if len(value) > 128:
        raise Invalid("id", "longer than 128 characters")
    return value


def _text(obj: dict[str, Any], key: str, *, required: bool = True, max_len: int = 256) -> str:
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise Invalid(key, "required")
        return ""
    if not isinstance(value, str):
        raise Invalid(key, f"must be a string, not {type(value).__name__}")
    if len(value) > max_len:
        raise Invalid(key, f"longer than {max_len} characters")
    return value.strip()


def _amount(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Invalid(where, "must be a number")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise Invalid(where, f"{value!r} is not a number") from None
    if not number.is_finite() or number < 0:
        raise Invalid(where, "must be a finite number, zero or more")
    text = format(number.quantize(Decimal("0.000000001")).normalize(), "f")
    return text


def _unit(value: Any, where: str) -> qty.Unit.ValueType:
    unit = _UNITS.get(str(value).lower().replace(" ", "")) if isinstance(value, str) else None
    if unit is None:
        raise Invalid(where, f"unit {value!r} is not one of {', '.join(sorted(_UNITS))}")
    return unit


def _enum(value: Any, where: str, table: dict[str, Any]) -> Any:
    if value is None or value == "":
        return None
    found = table.get(str(value).lower()) if isinstance(value, str) else None
    if found is None:
        raise Invalid(where, f"{value!r} is not one of {', '.join(table)}")
    return found


def company_request(obj: dict[str, Any], options: Options) -> lic.CreateCompanyRequest:
    """CreateCompany from an OpenTHC Company."""
    return lic.CreateCompanyRequest(
        company=lic.Company(display_name=_text(obj, "name")),
        request_id=request_id("company", object_id(obj), options.namespace),
    )


def license_type(obj: dict[str, Any], options: Options) -> lic.LicenseType.ValueType:
    """The license type its ``type`` code or name names, else the import's default."""
    kind = obj.get("type")
    words = (
        " ".join(str(kind.get(k, "")) for k in ("code", "name"))
        if isinstance(kind, dict)
        else str(kind or "")
    )
    words = words.lower()
    if "process" in words and any(w in words for w in ("grow", "cultivat", "produc")):
        return lic.LICENSE_TYPE_GROWER_PROCESSOR
    for word, value in _LICENSE_WORDS:
        if word in words:
            return value
    if options.license_type is not None:
        return options.license_type
    raise Invalid("type", f"license type {words.strip()!r} names no kind Seedline knows; pass --license-type")


def license_request(obj: dict[str, Any], company_name: str, options: Options) -> lic.CreateLicenseRequest:
    """CreateLicense from an OpenTHC License (its code is the license number; else its id)."""
    openthc_id = object_id(obj)
    number = _text(obj, "code", required=False, max_len=64) or openthc_id
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", number) or len(number) > 64:
        raise Invalid("code", f"{number!r} is not a license number (letters, digits, . _ / -)")
    if options.jurisdiction is None:
        raise Invalid("jurisdiction", "OpenTHC licenses carry none; pass --jurisdiction (e.g. US-WA)")
    return lic.CreateLicenseRequest(
        license=lic.License(
            company=company_name,
            license_number=number,
            display_name=_text(obj, "name"),
            type=license_type(obj, options),
            jurisdiction=options.jurisdiction,
            active=True,
        ),
        request_id=request_id("license", openthc_id, options.namespace),
    )


def embedded_company(obj: dict[str, Any], options: Options) -> lic.CreateCompanyRequest:
    """CreateCompany for a license's embedded ``company`` object (when not imported on its own)."""
    inner = obj.get("company")
    if not isinstance(inner, dict):
        raise Invalid("company", "required: an object with id and name")
    try:
        return company_request(inner, options)
    except Invalid as exc:
        raise Invalid(f"company.{exc.field}", exc.message) from None


def section_request(
    obj: dict[str, Any], parent: str, *, default_type: lic.SectionType.ValueType = lic.SECTION_TYPE_INVENTORY
) -> lic.CreateSectionRequest:
    """CreateSection from an OpenTHC Section (``type`` crop, inventory or inventory-quarantine)."""
    kind = _enum(obj.get("type"), "type", _SECTIONS)
    return lic.CreateSectionRequest(
        parent=parent,
        section=lic.Section(
            display_name=_text(obj, "name", max_len=128), type=kind or default_type, active=True
        ),
        request_id=request_id("section", object_id(obj), parent),
    )


def default_section(parent: str, kind: str) -> lic.CreateSectionRequest:
    """The section imported plants or lots go to when their object names none."""
    crop = kind == "plant"
    return lic.CreateSectionRequest(
        parent=parent,
        section=lic.Section(
            display_name="Imported plants" if crop else "Imported inventory",
            type=lic.SECTION_TYPE_CROP if crop else lic.SECTION_TYPE_INVENTORY,
            active=True,
        ),
        request_id=request_id("default-section", kind, parent),
    )


def variety_request(obj: dict[str, Any], parent: str) -> lic.CreateVarietyRequest:
    """CreateVariety from an OpenTHC Variety."""
    kind = _enum(obj.get("type"), "type", _VARIETIES)
    return lic.CreateVarietyRequest(
        parent=parent,
        variety=lic.Variety(display_name=_text(obj, "name"), type=kind or lic.VARIETY_TYPE_UNSPECIFIED),
        request_id=request_id("variety", object_id(obj), parent),
    )


def product_request(obj: dict[str, Any], parent: str) -> lic.CreateProductRequest:
    """CreateProduct from an OpenTHC Product.

    ``package.type`` bulk/each/pack (bulk when absent); bulk products are counted in
    ``package.uom`` (g when absent); each/pack products need ``package.net_weight`` (g) or
    ``package.net_volume`` (ml) for one unit, pack products ``package.unit_count``. The product
    type is ``type.id`` when it is an OpenTHC product type id, else the bulk or each type.
    """
    package = obj.get("package") or {}
    if not isinstance(package, dict):
        raise Invalid("package", "must be an object")
    package_type = _enum(package.get("type"), "package.type", _PACKAGES) or lic.PACKAGE_TYPE_BULK
    out = lic.Product(display_name=_text(obj, "name"), package_type=package_type)
    declared = obj.get("type")
    type_id = declared.get("id") if isinstance(declared, dict) else None
    if isinstance(type_id, str) and _ULID.match(type_id):
        out.product_type = type_id
    else:
        out.product_type = BULK_TYPE if package_type == lic.PACKAGE_TYPE_BULK else EACH_TYPE
    if package_type == lic.PACKAGE_TYPE_BULK:
        out.bulk_unit = _unit(package.get("uom") or "g", "package.uom")
    elif package.get("net_weight") is not None:
        out.unit_size.CopyFrom(
            qty.Quantity(value=_amount(package["net_weight"], "package.net_weight"), unit=qty.UNIT_GRAM)
        )
    elif package.get("net_volume") is not None:
        out.unit_size.CopyFrom(
            qty.Quantity(value=_amount(package["net_volume"], "package.net_volume"), unit=qty.UNIT_MILLILITER)
        )
    else:
        raise Invalid(
            "package.net_weight", "each and pack products need the net weight or volume of one unit"
        )
    if package_type == lic.PACKAGE_TYPE_PACK:
        count = package.get("unit_count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 2:
            raise Invalid("package.unit_count", "pack products need a whole unit count of 2 or more")
        out.pack_unit_count = count
    return lic.CreateProductRequest(
        parent=parent, product=out, request_id=request_id("product", object_id(obj), parent)
    )


def plant_request(
    obj: dict[str, Any], parent: str, variety_name: str, section_name: str
) -> pl.CreatePlantRequest:
    """CreatePlant from an OpenTHC Plant (``phase`` or ``stage``: clone or seedling)."""
    phase = _enum(obj.get("phase") or obj.get("stage"), "phase", _PHASES)
    return pl.CreatePlantRequest(
        parent=parent,
        plant=pl.Plant(
            display_name=_text(obj, "name", required=False, max_len=128),
            variety=variety_name,
            section=section_name,
            phase=phase or pl.PLANT_PHASE_UNSPECIFIED,
        ),
        request_id=request_id("plant", object_id(obj), parent),
    )


def lot_request(
    obj: dict[str, Any], parent: str, made: lic.Product, variety_name: str, section_name: str
) -> inv.CreateLotRequest:
    """CreateLot (an initial lot) from an OpenTHC Inventory: ``qty`` (or ``unit_count``) of the product."""
    key = "qty" if obj.get("qty") is not None else "unit_count"
    if obj.get(key) is None:
        raise Invalid("qty", "required: the quantity on hand")
    unit = made.bulk_unit if made.package_type == lic.PACKAGE_TYPE_BULK else qty.UNIT_EACH
    return inv.CreateLotRequest(
        parent=parent,
        lot=inv.Lot(
            display_name=_text(obj, "name", required=False),
            product=made.name,
            variety=variety_name,
            section=section_name,
            quantity=qty.Quantity(value=_amount(obj[key], key), unit=unit),
            source=inv.LotSource(origin=inv.LOT_ORIGIN_INITIAL),
        ),
        request_id=request_id("inventory", object_id(obj), parent),
    )
