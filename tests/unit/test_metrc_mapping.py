"""The METRC mapping against the reference: every body uses METRC's fields, units and names."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from seedline_server.integrations import metrc_mapping as m
from seedline_server.integrations.fakes import _metrc_schema as schema

REFERENCE = (
    Path(__file__).resolve().parents[3] / "shared" / "reference" / "metrc" / "metrc-v2-endpoint-index.json"
)

# The request schema of each (method, path) the mapping uses.
FIELDS = {
    ("POST", "/plantbatches/v2/plantings"): schema.PLANTBATCH_PLANTINGS,
    ("POST", "/plantbatches/v2/growthphase"): schema.PLANTBATCH_GROWTHPHASE,
    ("DELETE", "/plantbatches/v2"): schema.PLANTBATCH_DESTROY,
    ("PUT", "/plants/v2/growthphase"): schema.PLANT_GROWTHPHASE,
    ("PUT", "/plants/v2/location"): schema.PLANT_LOCATION,
    ("PUT", "/plants/v2/harvest"): schema.PLANT_HARVEST,
    ("POST", "/plants/v2/manicure"): schema.PLANT_HARVEST,
    ("DELETE", "/plants/v2"): schema.PLANT_DESTROY,
    ("POST", "/harvests/v2/packages"): schema.HARVEST_PACKAGES,
    ("POST", "/packages/v2"): schema.PACKAGES_CREATE,
    ("POST", "/packages/v2/adjust"): schema.PACKAGE_ADJUST,
    ("PUT", "/packages/v2/location"): schema.PACKAGE_LOCATION,
    ("POST", "/labtests/v2/record"): schema.LAB_RECORD,
    ("POST", "/transfers/v2/templates/outgoing"): schema.TEMPLATE_CREATE,
}
UNIT_KEYS = {"UnitOfWeight", "UnitOfMeasure", "WasteUnitOfMeasureName"}


def _check_row(row: dict[str, Any], fields: schema.Fields, where: str) -> None:
    for key, value in row.items():
        assert key[:1].isupper(), f"{where}.{key} is not PascalCase"
        assert "_" not in key, f"{where}.{key} is not PascalCase"
        assert key in fields.names, f"{where}.{key} is not a METRC field"
        if key in UNIT_KEYS:
            assert value in schema.UNITS, f"{where}.{key}={value!r} is not a METRC unit"
        if key == "AdjustmentReason":
            assert value in schema.ADJUST_REASONS
            if schema.ADJUST_REASONS[value]:
                assert row.get("ReasonNote"), "METRC requires a note for this reason"
        if key == "LabTestTypeName":
            assert value in schema.lab_test_type_names()
        nested = fields.nested.get(key)
        if nested is not None and nested is not schema.OPAQUE:
            for i, item in enumerate(value):
                _check_row(item, nested, f"{where}.{key}[{i}]")


def check(plan: m.Plan) -> None:
    """Every call of ``plan`` is a METRC v2 operation with only that operation's fields."""
    index = json.loads(REFERENCE.read_text())
    operations = {(e["method"], e["path"]) for e in index["endpoints"]}
    for call in plan.calls:
        assert (call.method, call.path) in operations, (call.method, call.path)
        fields = FIELDS[(call.method, call.path)]
        assert isinstance(call.body, list)
        assert call.body
        for i, row in enumerate(call.body):
            _check_row(row, fields, f"{call.path}[{i}]")
        if call.lookup_path is not None:
            assert call.lookup_path.startswith(("/plants/v2/", "/packages/v2/"))


PLANT_ID = str(ULID())
FACTS = m.PlantFacts(label=m.label_for(PLANT_ID), strain="Haze", location="Flower Room")


def plant(phase: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": PLANT_ID,
        "display_name": "",
        "phase": phase,
        "state": 1,
        "section_id": "S1",
        "plant_time": "2026-11-02T10:00:00+00:00",
        "update_time": "2026-11-20T10:00:00+00:00",
    } | extra


@pytest.mark.parametrize(("phase", "batch_type"), [(1, "Clone"), (2, "Seed")])
def test_immature_plant_is_a_batch_of_one(phase: int, batch_type: str) -> None:
    plan = m.plant_created(plant(phase), FACTS)
    check(plan)
    assert [c.path for c in plan.calls] == ["/plantbatches/v2/plantings"]
    row = plan.calls[0].body[0]
    assert row == {
        "Name": FACTS.label,
        "Type": batch_type,
        "Count": 1,
        "Strain": "Haze",
        "Location": "Flower Room",
        "ActualDate": "2026-11-02",
    }


@pytest.mark.parametrize(("phase", "growth"), [(3, "Vegetative"), (4, "Flowering")])
def test_mature_plant_is_batched_then_tagged_and_looked_up_by_label(phase: int, growth: str) -> None:
    plan = m.plant_created(plant(phase), FACTS)
    check(plan)
    assert [c.path for c in plan.calls] == ["/plantbatches/v2/plantings", "/plantbatches/v2/growthphase"]
    tag = plan.calls[1]
    assert tag.body[0]["StartingTag"] == FACTS.label
    assert tag.body[0]["GrowthPhase"] == growth
    assert tag.lookup_path == f"/plants/v2/{FACTS.label}"
    assert plan.calls[0].lookup_path is None  # batches are found by METRC's duplicate-name refusal


def test_phase_changes() -> None:
    tagging = m.plant_changed(
        "PHASE_CHANGED", plant(1), plant(3, vegetative_time="2026-11-10T00:00:00Z"), FACTS
    )
    check(tagging)
    assert tagging.calls[0].path == "/plantbatches/v2/growthphase"
    assert tagging.calls[0].body[0]["GrowthDate"] == "2026-11-10"
    flowering = m.plant_changed(
        "PHASE_CHANGED", plant(3), plant(4, flowering_time="2026-11-15T00:00:00Z"), FACTS
    )
    check(flowering)
    assert flowering.calls[0].method == "PUT"
    assert flowering.calls[0].body[0]["GrowthPhase"] == "Flowering"
    assert not m.plant_changed("PHASE_CHANGED", plant(1), plant(2), FACTS).calls


def test_harvest_and_manicure() -> None:
    after = plant(
        5, collection="licenses/L/collections/C", collection_name="Harvest 7", wet_weight_g="1234.5"
    )
    harvest = m.plant_changed("RAW_COLLECTED", plant(4), after, FACTS)
    check(harvest)
    row = harvest.calls[0].body[0]
    assert (harvest.calls[0].method, harvest.calls[0].path) == ("PUT", "/plants/v2/harvest")
    assert row["HarvestName"] == "Harvest 7"
    assert row["Weight"] == 1234.5
    assert row["UnitOfWeight"] == "Grams"
    done = harvest.calls[0].done
    assert done is not None
    assert done({"HarvestedDate": "2026-11-20"})
    assert not done({"HarvestedDate": None})
    manicure = m.plant_changed(
        "RAW_COLLECTED", plant(4), plant(4, collection_name="H", wet_weight_g="10"), FACTS
    )
    check(manicure)
    assert manicure.calls[0].path == "/plants/v2/manicure"


def test_destruction_of_tagged_and_immature_plants() -> None:
    tagged = m.plant_changed("DESTROYED", plant(3), plant(3, destruction={"reason": "mould"}), FACTS)
    check(tagged)
    assert tagged.calls[0].body[0]["ReasonNote"] == "mould"
    immature = m.plant_changed("DESTROYED", plant(1), plant(1), FACTS)
    check(immature)
    assert immature.calls[0].path == "/plantbatches/v2"


LOT_ID = str(ULID())


def lot(quantity: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": LOT_ID,
        "quantity": quantity,
        "section_id": "S",
        "create_time": "2026-11-21T08:00:00Z",
    } | extra


def test_lot_from_a_harvest_and_from_packages() -> None:
    facts = m.LotFacts(label="1A4FF0100000022000000009", item="Flower", location="Vault", unit="Grams")
    from_harvest = m.lot_created(
        "CREATE_BY_COLLECTION", lot("500.25"), m.LotFacts(**vars(facts) | {"harvest_name": "Harvest 7"})
    )
    check(from_harvest)
    ingredient = from_harvest.calls[0].body[0]["Ingredients"][0]
    assert ingredient == {"HarvestName": "Harvest 7", "Weight": 500.25, "UnitOfWeight": "Grams"}
    assert from_harvest.calls[0].needs_others
    split = m.lot_created(
        "CREATE_BY_SPLIT",
        lot("20"),
        m.LotFacts(**vars(facts) | {"ingredients": [("1A4FF0100000022000000001", Decimal(20))]}),
    )
    check(split)
    assert split.calls[0].body[0]["Ingredients"] == [
        {"Package": "1A4FF0100000022000000001", "Quantity": 20, "UnitOfMeasure": "Grams"}
    ]
    assert not m.lot_created("CREATE", lot("1"), facts).calls  # initial inventory: nothing to report
    received = m.LotFacts(**vars(facts) | {"ingredients": [("1A4FF0100000022000000001", Decimal(5))]})
    assert not m.lot_created("CREATE_BY_TRANSFER", lot("5"), received).calls


@pytest.mark.parametrize(("reason", "metrc"), [(3, "Scale Variance"), (5, "Theft"), (4, "Entry Error")])
def test_adjustment_delta_reason_and_lookup(reason: int, metrc: str) -> None:
    facts = m.LotFacts(
        label="1A4FF0100000022000000009", item="Flower", location="Vault", unit="Grams", reason=reason
    )
    plan = m.lot_changed("ADJUST", lot("100"), lot("97.5"), facts)
    check(plan)
    row = plan.calls[0].body[0]
    assert row["Quantity"] == -2.5
    assert row["AdjustmentReason"] == metrc
    done = plan.calls[0].done
    assert done is not None
    assert done({"Quantity": 97.5})
    assert not done({"Quantity": 100})


def test_lab_results_use_crosswalk_names() -> None:
    name = sorted(schema.lab_test_type_names())[0]
    plan = m.lab_recorded(
        m.LabFacts(["1A4FF0100000022000000009"], [(name, Decimal("0.3"), True)], "2026-11-22")
    )
    check(plan)
    assert plan.calls[0].body[0]["Results"][0]["LabTestTypeName"] == name


def test_transfer_template() -> None:
    plan = m.transfer_committed(
        m.TransferFacts(
            name="SEEDLINE-1",
            shipper_license="LIC-1",
            shipper_name="Farm",
            recipient_license="LIC-2",
            depart="2026-11-23T08:00:00Z",
            arrive="2026-11-23T12:00:00Z",
            packages=[("1A4FF0100000022000000009", "120.00")],
            driver={"name": "Dana"},
            vehicle={"make": "Ford"},
        )
    )
    check(plan)
    destination = plan.calls[0].body[0]["Destinations"][0]
    assert destination["RecipientLicenseNumber"] == "LIC-2"
    assert destination["Packages"] == [{"PackageLabel": "1A4FF0100000022000000009", "WholesalePrice": 120.0}]


@given(st.builds(lambda: str(ULID())))
def test_labels_are_metrc_tags(record_id: str) -> None:
    label = m.label_for(record_id)
    assert len(label) == 24
    assert label.startswith("1A")
    assert label[2:].isdigit()  # METRC tags end in a serial number
    assert m.label_for(record_id, display_name="1A4FF0100000022000000009") == "1A4FF0100000022000000009"
    assert m.label_for(record_id, display_name="Plant #3") == label


def test_distinct_records_get_distinct_labels() -> None:
    ids = {str(ULID()) for _ in range(5000)}
    assert len({m.label_for(i) for i in ids}) == len(ids)


@given(
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
)
def test_windows_cover_the_span_in_at_most_24_hours(start: datetime, span: timedelta) -> None:
    windows = list(m.metrc_windows(start, start + span))
    assert all(b - a <= m.METRC_WINDOW and b > a for a, b in windows)
    if span:
        assert windows[0][0] == start
        assert windows[-1][1] == start + span
        assert all(windows[i][1] == windows[i + 1][0] for i in range(len(windows) - 1))
    else:
        assert windows == []


def test_metrc_records_read_back() -> None:
    p = m.plant_from_metrc({"Label": "1A", "GrowthPhase": "Flowering", "HarvestedDate": None})
    assert (p.value, p.active) == ("FLOWERING", True)
    h = m.plant_from_metrc({"Label": "1A", "GrowthPhase": "Flowering", "HarvestedDate": "2026-11-01"})
    assert (h.value, h.active) == ("HARVESTED", False)
    pkg = m.package_from_metrc({"Label": "1B", "Quantity": 12.50, "UnitOfMeasureName": "Grams"})
    local = m.LocalRecord("licenses/L/lots/X", "1B", "12.5 Grams", True)
    assert local.compare(pkg) is None
    short = m.LocalRecord("licenses/L/lots/X", "1B", "12 Grams", True)
    assert short.compare(pkg) == ("QUANTITY_MISMATCH", "12 Grams", "12.5 Grams")
