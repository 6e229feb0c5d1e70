"""The Seedline → BioTrackTHC mapping, checked against the reference's action field lists.

Every call the mapping produces is checked against ``biotrack-v1-actions.json`` (loaded here,
not copied): a field the reference does not list for the action fails the test.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from seedline_server.integrations import biotrack_mapping as m

REFERENCE = Path(__file__).resolve().parents[3] / "shared/reference/biotrack/biotrack-v1-actions.json"

LIC = "01JLICENSE0000000000000000"
OTHER = "01JOTHERLICENSE00000000000"
CARRIER = "01JCARRIER0000000000000000"
PLANT = f"licenses/{LIC}/plants/01JPLANT000000000000000000"
LOT = f"licenses/{LIC}/lots/01JLOT00000000000000000000"
SEEDS = f"licenses/{LIC}/lots/01JSEEDS000000000000000000"
INPUT_A = f"licenses/{LIC}/lots/01JINPUTA00000000000000000"
INPUT_B = f"licenses/{LIC}/lots/01JINPUTB00000000000000000"
TRANSFER = f"licenses/{LIC}/transfers/01JTRANSFER000000000000000"
WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

FLOWER = "018NY6XC00PTZZWCH7XVREHK6T"  # Flower / Dry → 6
TINCTURE_LIQUID = "018NY6XC00PT7N83PFNCX8ZFEF"  # Package / Edible / Liquid → 23
PREROLL = "018NY6XC00PTK2E0W67FMBZP9Q"  # Flower/Pre-Roll → 28
GENERIC = "018NY6XC00PT0000000000BULK"  # no BioTrackTHC type

PRODUCTS = {
    "P-FLOWER": m.ProductFacts("Dry Flower", FLOWER, 1, 1),  # bulk, grams
    "P-LIQUID": m.ProductFacts("Syrup", TINCTURE_LIQUID, 1, 6),  # bulk, liters
    "P-PREROLL": m.ProductFacts("Pre-roll 1g", PREROLL, 2, 9),  # each
    "P-GENERIC": m.ProductFacts("Thing", GENERIC, 1, 1),
}


# -- the reference's field lists ----------------------------------------------------------


def _split_top(spec: str) -> list[str]:
    """Split on commas outside (), [] and {}."""
    parts, depth, current = [], 0, ""
    for ch in spec:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


class Spec:
    """An object's fields per the reference: names, nested objects, and whether it is open."""

    def __init__(self, specs: list[str]) -> None:
        self.fields: dict[str, Spec | None] = {}
        self.open = False
        for raw in specs:
            if raw == "..." or raw.startswith("<"):  # "<metric fields>": named elsewhere
                self.open = True
                continue
            if "|" in raw and "{" not in raw:  # "vendor_license|employee_id": either
                for alternative in raw.split("|"):
                    self.fields[alternative.strip()] = None
                continue
            match = re.match(r"^([a-z_]+)(\(s\))?", raw)
            assert match, raw
            names = [match.group(1)] + ([match.group(1) + "s"] if match.group(2) else [])
            rest = raw[match.end() :].lstrip("[] ")
            nested = Spec(_split_top(rest[1 : rest.rindex("}")])) if rest.startswith("{") else None
            for name in names:
                self.fields[name] = nested

    def check(self, doc: dict[str, Any], where: str) -> None:
        """Fail on a key the reference does not list; a closed nested object must be whole."""
        for key, value in doc.items():
            if key not in self.fields:
                assert self.open, f"{where}: {key!r} is not a field of the reference"
                continue
            nested = self.fields[key]
            if nested is None:
                continue
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                assert isinstance(item, dict), f"{where}.{key}[{i}] must be an object"
                nested.check(item, f"{where}.{key}[{i}]")
                if not nested.open:
                    assert set(item) == set(nested.fields), f"{where}.{key}: {sorted(item)}"


def _action_names(key: str) -> list[str]:
    names = []
    for part in key.split(" / "):
        part = re.sub(r"\s*\(lab only\)", "", part.strip())
        if part.startswith("_"):
            continue  # "_void_items": variants of the first name, not used by the mapping
        if m_ := re.fullmatch(r"([a-z_]+)\((_[a-z]+)\)", part):
            names += [m_.group(1), m_.group(1) + m_.group(2)]
        else:
            names.append(part)
    return names


@cache
def reference() -> dict[str, Spec]:
    doc = json.loads(REFERENCE.read_text())
    out = {}
    for key, fields in doc["write_actions"].items():
        for name in _action_names(key):
            out[name] = Spec(fields)
    return out


def conforms(call: m.Call) -> None:
    specs = reference()
    assert call.action in specs, f"{call.action} is not an action of the reference"
    specs[call.action].check(call.fields, call.action)


# -- helpers -------------------------------------------------------------------------------


def names(resource: str, **kw: Any) -> m.Names:
    base: dict[str, Any] = {
        "resource": resource,
        "location": "1001",
        "event_time": WHEN,
        "strains": {"V1": "Haze", "V2": "Kush"},
        "rooms": {"S1": "Crop A", "S2": "Flower Room", "S3": "Vault"},
        "barcodes": {},
        "products": PRODUCTS,
        "license_numbers": {OTHER: "987654321", CARRIER: "555000111"},
    }
    base.update(kw)
    return m.Names(**base)


def payload(
    after: dict[str, Any] | None, before: dict[str, Any] | None = None, verb: str = "X"
) -> dict[str, Any]:
    return {"verb": verb, "before": before, "after": after}


def plant(**kw: Any) -> dict[str, Any]:
    row = {
        "id": "01JPLANT000000000000000000",
        "license_id": LIC,
        "variety_id": "V1",
        "section_id": "S1",
        "source_lot": "",
        "phase": 1,
        "state": 1,
        "plant_time": "2024-04-02 08:30:00+00:00",
        "harvest_time": None,
        "destruction": None,
    }
    row.update(kw)
    return row


def lot(**kw: Any) -> dict[str, Any]:
    row = {
        "id": "01JLOT00000000000000000000",
        "license_id": LIC,
        "product_id": "P-FLOWER",
        "variety_id": "V1",
        "section_id": "S3",
        "quantity": "100.0000",
        "origin": 1,
        "source_lots": [],
        "source_collection": "",
        "destruction": None,
    }
    row.update(kw)
    return row


def one(event: str, p: dict[str, Any], n: m.Names) -> m.Call:
    calls = m.actions(event, p, n)
    assert len(calls) == 1, calls
    conforms(calls[0])
    return calls[0]


# -- the checker itself can fail ------------------------------------------------------------


def test_the_reference_check_refuses_a_field_it_does_not_list() -> None:
    with pytest.raises(AssertionError, match="bogus"):
        conforms(m.Call("plant_new", {"room": "A", "bogus": 1}))
    with pytest.raises(AssertionError, match="reason"):
        conforms(m.Call("inventory_adjust", {"data": {"barcodeid": "1", "quantity": "1.000000"}}))
    with pytest.raises(AssertionError, match="not an action"):
        conforms(m.Call("plant_teleport", {}))


# -- plants --------------------------------------------------------------------------------


def test_plant_create_registers_one_plant_with_strain_room_and_source_barcode() -> None:
    n = names(PLANT, barcodes={SEEDS: "6647000000000007"})
    call = one("plant.create", payload(plant(source_lot=SEEDS)), n)
    assert call == m.Call(
        "plant_new",
        {
            "room": "Crop A",
            "quantity": 1,
            "strain": "Haze",
            "source": "6647000000000007",
            "mother": 0,
            "location": "1001",
        },
    )
    p = m.plan("plant.create", payload(plant(source_lot=SEEDS)), n)
    assert p.creates == PLANT


def test_plant_create_without_a_known_source_sends_an_empty_source() -> None:
    assert one("plant.create", payload(plant(source_lot=SEEDS)), names(PLANT)).fields["source"] == ""
    assert one("plant.create", payload(plant()), names(PLANT)).fields["source"] == ""


def test_plant_update_moves_and_modifies_only_what_changed() -> None:
    n = names(PLANT, barcodes={PLANT: "6647000000000001"})
    moved = m.actions("plant.update", payload(plant(section_id="S2"), plant()), n)
    assert moved == [m.Call("plant_move", {"barcodeid": ["6647000000000001"], "room": "Flower Room"})]
    restrained = m.actions("plant.update", payload(plant(variety_id="V2"), plant()), n)
    assert restrained == [m.Call("plant_modify", {"barcodeid": "6647000000000001", "strain": "Kush"})]
    renamed = m.actions("plant.update", payload(plant(display_name="x"), plant(display_name="y")), n)
    assert renamed == []
    for c in moved + restrained:
        conforms(c)


def test_plant_phase_change_restates_the_plant_with_plant_modify() -> None:
    n = names(PLANT, barcodes={PLANT: "6647000000000001"})
    call = one("plant.phase_changed", payload(plant(phase=3), plant(phase=1)), n)
    assert call == m.Call(
        "plant_modify", {"barcodeid": "6647000000000001", "strain": "Haze", "birthdate": "20240402"}
    )
    both = m.actions("plant.phase_changed", payload(plant(phase=4, section_id="S2"), plant(phase=3)), n)
    assert [c.action for c in both] == ["plant_move", "plant_modify"]


def test_a_harvesting_raw_collection_is_a_final_wet_plant_harvest() -> None:
    n = names(PLANT, barcodes={PLANT: "6647000000000001"})
    after = plant(phase=5, harvest_time="2024-05-01 10:00:00+00:00", wet_weight_g="125.5")
    after["collection"] = f"licenses/{LIC}/collections/C1"
    call = one("plant.raw_collected", payload(after, plant(phase=4)), n)
    assert call.action == "plant_harvest"
    assert call.fields == {
        "barcodeid": ["6647000000000001"],
        "collectiontime": int(datetime(2024, 5, 1, 10, 0, tzinfo=UTC).timestamp()),
        "weights": [{"amount": "125.500000", "invtype": 29, "uom": "g"}],
        "new_room": "Crop A",
        "collectadditional": 0,
        "wet": 1,
    }
    assert m.plan("plant.raw_collected", payload(after, plant(phase=4)), n).creates is None


def test_a_partial_raw_collection_is_a_wet_harvest_with_more_to_come() -> None:
    n = names(PLANT, barcodes={PLANT: "6647000000000001"})
    call = one("plant.raw_collected", payload(plant(phase=4, wet_weight_g="3"), plant(phase=4)), n)
    assert call.fields["collectadditional"] == 1
    assert call.fields["wet"] == 1
    assert call.fields["weights"] == [{"amount": "3.000000", "invtype": 29, "uom": "g"}]
    assert call.fields["collectiontime"] == int(WHEN.timestamp())  # the change's commit time


def test_plant_destruction_is_scheduled_then_destroyed() -> None:
    n = names(PLANT, barcodes={PLANT: "6647000000000001"})
    pending = plant(state=2, destruction={"waste_g": "40", "reason": "mold", "method": 1})
    call = one("plant.destruction_requested", payload(pending, plant()), n)
    assert call.action == "plant_destroy_schedule"
    assert call.fields["barcodeid"] == ["6647000000000001"]
    assert call.fields["reason"] == "mold"
    assert "40" in call.fields["reason_extended"]
    done = one("plant.destroyed", payload(plant(state=3), pending), n)
    assert done == m.Call("plant_destroy", {"barcodeid": ["6647000000000001"]})


def test_a_plant_without_a_barcode_yet_waits() -> None:
    with pytest.raises(m.MappingError) as info:
        m.actions("plant.destroyed", payload(plant(state=3)), names(PLANT))
    assert info.value.waiting is True
    assert PLANT in info.value.detail


# -- lots ----------------------------------------------------------------------------------


def test_opening_inventory_is_inventory_new_with_type_quantity_and_uom() -> None:
    call = one("lot.create", payload(lot(quantity="100.25")), names(LOT))
    assert call == m.Call(
        "inventory_new",
        {
            "location": "1001",
            "data": [
                {
                    "invtype": 6,
                    "quantity": "100.250000",
                    "quantity_uom": "g",
                    "strain": "Haze",
                    "productname": "Dry Flower",
                    "room": "Vault",
                }
            ],
        },
    )
    assert m.plan("lot.create", payload(lot()), names(LOT)).creates == LOT


@pytest.mark.parametrize(
    ("product", "stored", "quantity", "unit"),
    [
        ("P-FLOWER", "0.0001", "0.000100", "g"),
        ("P-LIQUID", "1.5", "1500.000000", "ml"),  # liters are stored, BioTrackTHC hears ml
        ("P-PREROLL", "24", "24.000000", "each"),
    ],
)
def test_units_are_g_ml_or_each_with_six_decimals(
    product: str, stored: str, quantity: str, unit: str
) -> None:
    call = one("lot.create", payload(lot(product_id=product, quantity=stored, origin=2)), names(LOT))
    assert (call.fields["data"][0]["quantity"], call.fields["data"][0]["quantity_uom"]) == (quantity, unit)


def test_a_product_type_without_a_biotrack_type_is_refused_for_good() -> None:
    with pytest.raises(m.MappingError) as info:
        m.actions("lot.create", payload(lot(product_id="P-GENERIC")), names(LOT))
    assert info.value.waiting is False


def test_a_split_lot_is_inventory_split_of_its_source() -> None:
    n = names(LOT, barcodes={INPUT_A: "6647000000000020"})
    call = one("lot.create", payload(lot(origin=4, source_lots=[INPUT_A], quantity="10")), n)
    assert call == m.Call(
        "inventory_split",
        {
            "barcodeid": "6647000000000020",
            "quantity": "10.000000",
            "uom": "g",
            "room": "Vault",
            "product": "Dry Flower",
        },
    )
    assert m.plan("lot.create", payload(lot(origin=4, source_lots=[INPUT_A])), n).creates == LOT


def test_a_lot_from_a_net_collection_is_new_inventory() -> None:
    after = lot(origin=3, source_collection=f"licenses/{LIC}/collections/C1", quantity="812.5")
    call = one("lot.create_by_collection", payload(after), names(LOT))
    assert call.action == "inventory_new"
    assert call.fields["data"][0]["quantity"] == "812.500000"


def test_a_conversion_output_is_inventory_convert_of_its_inputs() -> None:
    n = names(
        LOT,
        barcodes={INPUT_A: "6647000000000020", INPUT_B: "6647000000000021"},
        inputs=(m.Input(INPUT_A, Decimal("50"), 1), m.Input(INPUT_B, Decimal("0.25"), 6)),
        waste_g=Decimal("7.5"),
    )
    after = lot(origin=5, source_lots=[INPUT_A, INPUT_B], product_id="P-PREROLL", quantity="40")
    call = one("lot.create_by_conversion", payload(after), n)
    assert call == m.Call(
        "inventory_convert",
        {
            "data": [
                {"barcodeid": "6647000000000020", "remove_quantity": "50.000000", "remove_quantity_uom": "g"},
                {
                    "barcodeid": "6647000000000021",
                    "remove_quantity": "250.000000",
                    "remove_quantity_uom": "ml",
                },
            ],
            "derivative_type": 28,
            "derivative_strain": "Haze",
            "derivative_product": "Pre-roll 1g",
            "derivative_quantity": "40.000000",
            "derivative_quantity_uom": "each",
            "waste": "7.500000",
            "waste_uom": "g",
        },
    )


@pytest.mark.parametrize(
    ("reason", "code"),
    [(1, 5), (2, 5), (3, 4), (4, 4), (5, 2), (6, 6), (7, 1), (8, 4)],
)
def test_adjustments_carry_the_biotrack_type_of_their_reason(reason: int, code: int) -> None:
    n = names(LOT, barcodes={LOT: "6647000000000030"}, adjust_reason=reason, adjust_note="recount 3")
    call = one("lot.adjust", payload(lot(quantity="97.5"), lot()), n)
    data = call.fields["data"]
    assert data["type"] == code
    assert data["quantity"] == "97.500000"
    assert re.fullmatch(r"[0-9]+\.[0-9]{6}", data["quantity"])
    assert data["quantity_uom"] == "g"
    assert data["barcodeid"] == "6647000000000030"
    assert data["reason"].endswith(": recount 3")


def test_an_adjustment_without_its_reason_is_not_guessed() -> None:
    with pytest.raises(m.MappingError):
        m.actions("lot.adjust", payload(lot(), lot()), names(LOT, barcodes={LOT: "6647000000000030"}))


def test_lot_move_and_destruction() -> None:
    n = names(LOT, barcodes={LOT: "6647000000000030"})
    assert one("lot.move", payload(lot(section_id="S1"), lot()), n) == m.Call(
        "inventory_move", {"barcodeid": "6647000000000030", "room": "Crop A"}
    )
    pending = lot(destruction={"reason": 2, "method": 1, "waste_g": "3", "note": "mold on top"})
    call = one("lot.destruction_requested", payload(pending, lot()), n)
    assert call.fields == {
        "barcodeid": ["6647000000000030"],
        "reason": "Contamination",
        "reason_extended": "mold on top",
    }
    assert (
        one("lot.destruction_cancelled", payload(lot(), pending), n).action
        == "inventory_destroy_schedule_undo"
    )
    assert one("lot.destroyed", payload(lot(quantity="0"), pending), n) == m.Call(
        "inventory_destroy", {"barcodeid": ["6647000000000030"]}
    )


# -- transfers -----------------------------------------------------------------------------


def transfer(**kw: Any) -> dict[str, Any]:
    row = {
        "id": "01JTRANSFER000000000000000",
        "source_license_id": LIC,
        "target_license_id": OTHER,
        "transporter_license_id": "",
        "driver": {"displayName": "Dee", "licenseNumber": "D123"},
        "vehicle": {"make": "Ford", "model": "Transit", "licensePlate": "ABC-123"},
        "items": [{"lot_id": "01JINPUTA00000000000000000", "quantity": "5"}],
    }
    row.update(kw)
    return row


def test_a_committed_transfer_files_a_manifest() -> None:
    n = names(TRANSFER, barcodes={INPUT_A: "6647000000000020"})
    call = one("transfer.transfer_committed", payload(transfer()), n)
    assert call == m.Call(
        "inventory_manifest",
        {
            "location": "1001",
            "employee_id": "D123",
            "vehicle_id": "ABC-123",
            "stop_overview": [
                {"stop_number": 1, "vendor_license": "987654321", "barcodeid": ["6647000000000020"]}
            ],
        },
    )
    assert m.plan("transfer.transfer_committed", payload(transfer()), n).creates == TRANSFER
    carried = one("transfer.transfer_committed", payload(transfer(transporter_license_id=CARRIER)), n)
    assert carried.action == "inventory_manifest_third_party"
    assert carried.fields["third_party_license"] == "555000111"


def test_a_voided_transfer_voids_its_manifest_if_one_was_filed() -> None:
    filed = names(TRANSFER, barcodes={TRANSFER: "6647000000000099"})
    assert m.actions("transfer.transfer_voided", payload(transfer()), filed) == [
        m.Call("inventory_manifest_void", {"manifest_id": "6647000000000099"})
    ]
    assert m.actions("transfer.transfer_voided", payload(transfer()), names(TRANSFER)) == []


# -- what is not reported -------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        "collection.create",
        "collection.raw_collected",
        "collection.net_collected",
        "lot.split",
        "lot.convert",
        "lot.plant",
        "lot.sample",
        "lot.shipped",
        "lot.create_by_transfer",
        "lab_sample.create",
        "lab_result.create",
        "plant.material_applied",
        "plant.destruction_cancelled",
        "transfer.transfer_accepted",
        "transfer.transfer_created",
    ],
)
def test_unmapped_changes_send_nothing(event: str) -> None:
    p = payload(lot(), lot())
    assert m.actions(event, p, names(LOT, barcodes={LOT: "6647000000000030"})) == []
    assert m.needs(event, p, LOT) == m.Needs()
    assert m.mapped(event) is False


def test_lots_of_other_origins_created_plainly_send_nothing() -> None:
    assert m.actions("lot.create", payload(lot(origin=6)), names(LOT)) == []


def test_needs_names_what_the_mapping_reads() -> None:
    want = m.needs("plant.create", payload(plant(source_lot=SEEDS)), PLANT)
    assert want.varieties == {"V1"}
    assert want.sections == {"S1"}
    assert want.resources == {PLANT, SEEDS}
    conv = m.needs("lot.create_by_conversion", payload(lot(source_lots=[INPUT_A])), LOT)
    assert conv.conversion
    assert not conv.adjustment
    assert INPUT_A in conv.resources
    assert m.needs("lot.adjust", payload(lot(), lot()), LOT).adjustment
    tr = m.needs("transfer.transfer_committed", payload(transfer(transporter_license_id=CARRIER)), TRANSFER)
    assert tr.licenses == {OTHER, CARRIER}
    assert INPUT_A in tr.resources


@pytest.mark.parametrize(
    ("amount", "text"),
    [("1", "1.000000"), ("0.0001", "0.000100"), ("12.3456785", "12.345678"), ("1E+3", "1000.000000")],
)
def test_quantities_have_exactly_six_decimals(amount: str, text: str) -> None:
    assert m.quantity6(Decimal(amount)) == text
