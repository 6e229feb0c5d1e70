"""Reference data and request-body field lists of the fake METRC (see :mod:`.metrc`).

Field lists are the community OpenMetrc v2 specification's request schemas (camelCase there),
PascalCased as real METRC expects them, plus the few fields the Seedline brief adds (template
``Name``, destination ``PlannedDepartureDateTime``/``PlannedArrivalDateTime`` and package
``WholesalePrice``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any, Final

from seedline_server.store.reference import LAB_METRIC_INDEX


@dataclass(frozen=True)
class Unit:
    """A METRC unit of measure; ``factor`` converts to the base unit of its kind (g, ml, each)."""

    name: str
    abbreviation: str
    quantity_type: str  # CountBased | WeightBased | VolumeBased
    factor: Decimal

    def to_json(self) -> dict[str, Any]:
        """As ``GET /unitsofmeasure/v2/active`` lists it."""
        return {"Name": self.name, "QuantityType": self.quantity_type, "Abbreviation": self.abbreviation}


UNITS: Final[dict[str, Unit]] = {
    u.name: u
    for u in (
        Unit("Each", "ea", "CountBased", Decimal(1)),
        Unit("Fluid Ounces", "fl oz", "VolumeBased", Decimal("29.5735295625")),
        Unit("Gallons", "gal", "VolumeBased", Decimal("3785.411784")),
        Unit("Grams", "g", "WeightBased", Decimal(1)),
        Unit("Kilograms", "kg", "WeightBased", Decimal(1000)),
        Unit("Liters", "l", "VolumeBased", Decimal(1000)),
        Unit("Milligrams", "mg", "WeightBased", Decimal("0.001")),
        Unit("Milliliters", "ml", "VolumeBased", Decimal(1)),
        Unit("Ounces", "oz", "WeightBased", Decimal("28.349523125")),
        Unit("Pints", "pt", "VolumeBased", Decimal("473.176473")),
        Unit("Pounds", "lb", "WeightBased", Decimal("453.59237")),
        Unit("Quarts", "qt", "VolumeBased", Decimal("946.352946")),
    )
}
"""The active units of measure, by name."""

ADJUST_REASONS: Final[dict[str, bool]] = {
    "Damage": False,
    "Drying": False,
    "Entry Error": True,
    "Incorrect Quantity": False,
    "Mandated State Destruction": True,
    "Scale Variance": False,
    "Spoilage": False,
    "Theft": True,
    "Trim": False,
    "Waste": False,
}
"""Package adjustment reasons and whether each requires a ``ReasonNote``."""

LAB_TESTING_STATES: Final = (
    "NotSubmitted",
    "SubmittedForTesting",
    "TestFailed",
    "TestPassed",
    "TestingInProgress",
    "AwaitingConfirmation",
    "RetestFailed",
    "RetestPassed",
    "Remediated",
    "SelectedForRandomTesting",
    "NotRequired",
    "ProcessValidated",
)
"""``GET /labtests/v2/states``."""


@cache
def lab_test_types() -> tuple[dict[str, Any], ...]:
    """The lab test types, from the lab metric index shipped with Seedline.

    The crosswalk names (``metrc.name``, what Seedline sends as ``LabTestTypeName``) come first,
    then the Massachusetts METRC names listed under ``metrc["usa-ma"]["search-list"]``; each name
    once, in that order.
    """
    index = json.loads(LAB_METRIC_INDEX.read_text(encoding="utf-8"))
    names: list[str] = []
    for metric in index["lab_metric"]:
        metrc = metric.get("metrc")
        if isinstance(metrc, dict) and isinstance(metrc.get("name"), str) and metrc["name"].strip():
            names.append(metrc["name"].strip())
    for metric in index["lab_metric"]:
        metrc = metric.get("metrc")
        state = metrc.get("usa-ma") if isinstance(metrc, dict) else None
        for entry in state.get("search-list", []) if isinstance(state, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"].strip():
                names.append(entry["name"].strip())
    unique = list(dict.fromkeys(names))
    return tuple(
        {
            "Id": i,
            "Name": name,
            "RequiresTestResult": True,
            "InformationalOnly": False,
            "AlwaysPasses": False,
            "LabTestResultMode": "Default",
            "LabTestResultMinimum": None,
            "LabTestResultMaximum": None,
            "LabTestResultExpirationDays": None,
            "DependencyMode": "Default",
            "MaxAllowedFailureCount": None,
        }
        for i, name in enumerate(unique, start=1)
    )


@cache
def lab_test_type_names() -> frozenset[str]:
    """The names of :func:`lab_test_types`."""
    return frozenset(t["Name"] for t in lab_test_types())


@dataclass(frozen=True)
class Fields:
    """The fields a request-body object may have; ``nested`` holds arrays/objects of objects."""

    names: frozenset[str]
    nested: dict[str, Fields] = field(default_factory=dict)


def _fields(*names: str, **nested: Fields) -> Fields:
    return Fields(frozenset(names) | frozenset(nested), nested)


OPAQUE: Final = Fields(frozenset())
"""Marks a nested object whose keys are only checked for PascalCase."""

PLANTBATCH_PLANTINGS = _fields(
    "Name", "Type", "Count", "Strain", "Location", "PatientLicenseNumber", "ActualDate"
)
PLANTBATCH_GROWTHPHASE = _fields(
    "Name", "Count", "StartingTag", "GrowthPhase", "NewLocation", "GrowthDate", "PatientLicenseNumber"
)
PLANTBATCH_DESTROY = _fields("PlantBatch", "Count", "ReasonNote", "ActualDate")
PLANT_GROWTHPHASE = _fields("Id", "Label", "NewTag", "GrowthPhase", "NewLocation", "GrowthDate")
PLANT_LOCATION = _fields("Id", "Label", "Location", "ActualDate")
PLANT_HARVEST = _fields(
    "Plant", "Weight", "UnitOfWeight", "DryingLocation", "HarvestName", "PatientLicenseNumber", "ActualDate"
)
PLANT_DESTROY = _fields(
    "Id",
    "Label",
    "WasteMethodName",
    "WasteMaterialMixed",
    "WasteWeight",
    "WasteUnitOfMeasureName",
    "WasteReasonName",
    "ReasonNote",
    "ActualDate",
)
HARVEST_PACKAGES = _fields(
    "Tag",
    "Location",
    "Item",
    "UnitOfWeight",
    "PatientLicenseNumber",
    "Note",
    "IsProductionBatch",
    "ProductionBatchNumber",
    "IsTradeSample",
    "IsDonation",
    "ProductRequiresRemediation",
    "RemediateProduct",
    "RemediationMethodId",
    "RemediationDate",
    "RemediationSteps",
    "ActualDate",
    Ingredients=_fields("HarvestId", "HarvestName", "Weight", "UnitOfWeight"),
)
HARVEST_FINISH = _fields("Id", "ActualDate")
PACKAGES_CREATE = _fields(
    "Tag",
    "Location",
    "Item",
    "Quantity",
    "UnitOfMeasure",
    "PatientLicenseNumber",
    "Note",
    "IsProductionBatch",
    "ProductionBatchNumber",
    "IsDonation",
    "ProductRequiresRemediation",
    "UseSameItem",
    "ActualDate",
    Ingredients=_fields("Package", "Quantity", "UnitOfMeasure"),
)
PACKAGE_ADJUST = _fields(
    "Label", "Quantity", "UnitOfMeasure", "AdjustmentReason", "AdjustmentDate", "ReasonNote"
)
PACKAGE_LOCATION = _fields("Label", "Location", "MoveDate")
PACKAGE_FINISH = _fields("Label", "ActualDate")
PACKAGE_UNFINISH = _fields("Label")
LAB_RECORD = _fields(
    "Label",
    "ResultDate",
    "DocumentFileName",
    "DocumentFileBase64",
    Results=_fields("LabTestTypeName", "Quantity", "Passed", "Notes"),
)
_TRANSPORTER = _fields(
    "TransporterFacilityLicenseNumber",
    "DriverOccupationalLicenseNumber",
    "DriverName",
    "DriverLicenseNumber",
    "PhoneNumberForQuestions",
    "VehicleMake",
    "VehicleModel",
    "VehicleLicensePlateNumber",
    "IsLayover",
    "EstimatedDepartureDateTime",
    "EstimatedArrivalDateTime",
    TransporterDetails=OPAQUE,
)
_DESTINATION = _fields(
    "RecipientLicenseNumber",
    "TransferTypeName",
    "PlannedRoute",
    "EstimatedDepartureDateTime",
    "EstimatedArrivalDateTime",
    "PlannedDepartureDateTime",
    "PlannedArrivalDateTime",
    "GrossWeight",
    "GrossUnitOfWeightId",
    Transporters=_TRANSPORTER,
    Packages=_fields("PackageLabel", "WholesalePrice", "GrossWeight", "GrossUnitOfWeightName"),
)
_TEMPLATE_FIELDS = (
    "Name",
    "ShipperLicenseNumber",
    "ShipperName",
    "ShipperMainPhoneNumber",
    "ShipperAddress1",
    "ShipperAddress2",
    "ShipperAddressCity",
    "ShipperAddressState",
    "ShipperAddressPostalCode",
    "TransporterFacilityLicenseNumber",
    "DriverOccupationalLicenseNumber",
    "DriverName",
    "DriverLicenseNumber",
    "PhoneNumberForQuestions",
    "VehicleMake",
    "VehicleModel",
    "VehicleLicensePlateNumber",
)
TEMPLATE_CREATE = _fields(*_TEMPLATE_FIELDS, Destinations=_DESTINATION)
TEMPLATE_UPDATE = _fields(*_TEMPLATE_FIELDS, "TransferId", Destinations=_DESTINATION)
