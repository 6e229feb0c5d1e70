"""Inventory end to end: a full cultivation cycle and the lot error contract, over gRPC and REST.

Every expectation below comes from the comments in proto/seedline/{license,plant,inventory}/v1:
quantities are compared as exact wire strings (4 places for g and l, none for counts).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from seedline.inventory.v1 import inventory_pb2 as inv
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.plant.v1 import plant_pb2 as pl
from seedline.plant.v1 import plant_pb2_grpc
from seedline.type.v1 import esignature_pb2
from seedline.type.v1 import quantity_pb2 as qty

from tests.e2e.test_grpc import details
from tests.e2e.test_rest import reason
from tests.support import auth

pytestmark = pytest.mark.e2e

# Product type ULIDs: OpenTHC's plant/clone/seed type, and two placeholders of the right shape.
CLONE_TYPE = "018NY6XC00PT3EZZ4GN6105M64"
BULK_TYPE = "018NY6XC00PT0000000000BULK"
EACH_TYPE = "018NY6XC00PT0000000000EACH"
MISSING_ID = "01JD0000000000000000000000"

GRAM, KILOGRAM, POUND, LITER, EACH = (
    qty.UNIT_GRAM,
    qty.UNIT_KILOGRAM,
    qty.UNIT_POUND,
    qty.UNIT_LITER,
    qty.UNIT_EACH,
)


def q(value: str, unit: qty.Unit.ValueType = GRAM) -> qty.Quantity:
    return qty.Quantity(value=value, unit=unit)


def jq(value: str, unit: str = "UNIT_GRAM") -> dict[str, str]:
    return {"value": value, "unit": unit}


def number() -> str:
    return f"CO-INV-{uuid.uuid4().hex[:12].upper()}"


@dataclass(frozen=True)
class Farm:
    """A license with the registry an inventory cycle needs (resource names)."""

    license: str
    crop: str  # SECTION_TYPE_CROP
    vault: str  # SECTION_TYPE_INVENTORY
    variety: str
    clone: str  # bulk, counted in UNIT_EACH
    flower: str  # bulk, UNIT_GRAM
    trim: str  # bulk, UNIT_GRAM
    jar: str  # each, unit_size 1 g


def make_farm(channel: grpc.Channel) -> Farm:
    stub = license_pb2_grpc.LicenseServiceStub(channel)
    company = stub.CreateCompany(lic.CreateCompanyRequest(company=lic.Company(display_name="Cycle Farms")))
    license_ = stub.CreateLicense(
        lic.CreateLicenseRequest(
            license=lic.License(
                company=company.name,
                license_number=number(),
                display_name="Cycle Farms 1",
                type=lic.LICENSE_TYPE_GROWER_PROCESSOR,
                jurisdiction="US-CO",
                active=True,
            )
        )
    ).name

    def section(name: str, kind: lic.SectionType.ValueType) -> str:
        return stub.CreateSection(
            lic.CreateSectionRequest(parent=license_, section=lic.Section(display_name=name, type=kind))
        ).name

    def product(name: str, **fields: Any) -> str:
        return stub.CreateProduct(
            lic.CreateProductRequest(parent=license_, product=lic.Product(display_name=name, **fields))
        ).name

    bulk = lic.PACKAGE_TYPE_BULK
    return Farm(
        license=license_,
        crop=section("Flower Room 1", lic.SECTION_TYPE_CROP),
        vault=section("Vault", lic.SECTION_TYPE_INVENTORY),
        variety=stub.CreateVariety(
            lic.CreateVarietyRequest(parent=license_, variety=lic.Variety(display_name="Blue Dream"))
        ).name,
        clone=product("BD Clone", product_type=CLONE_TYPE, package_type=bulk, bulk_unit=EACH),
        flower=product("BD Flower", product_type=BULK_TYPE, package_type=bulk, bulk_unit=GRAM),
        trim=product("BD Trim", product_type=BULK_TYPE, package_type=bulk, bulk_unit=GRAM),
        jar=product(
            "BD 1g Jar", product_type=EACH_TYPE, package_type=lic.PACKAGE_TYPE_EACH, unit_size=q("1")
        ),
    )


def add_section(channel: grpc.Channel, license_: str, name: str, kind: lic.SectionType.ValueType) -> str:
    return (
        license_pb2_grpc.LicenseServiceStub(channel)
        .CreateSection(
            lic.CreateSectionRequest(parent=license_, section=lic.Section(display_name=name, type=kind))
        )
        .name
    )


def new_lot(
    stub: inventory_pb2_grpc.InventoryServiceStub,
    farm: Farm,
    quantity: qty.Quantity,
    product: str = "",
    section: str = "",
    display_name: str = "",
) -> inv.Lot:
    return stub.CreateLot(
        inv.CreateLotRequest(
            parent=farm.license,
            lot=inv.Lot(
                product=product or farm.flower,
                variety=farm.variety,
                section=section or farm.vault,
                display_name=display_name,
                quantity=quantity,
                source=inv.LotSource(origin=inv.LOT_ORIGIN_INITIAL),
            ),
        )
    )


def refused(code: grpc.StatusCode, why: str, fn: Callable[..., object], *args: Any) -> grpc.RpcError:
    """Call ``fn`` and check it fails with ``code`` and ErrorInfo reason ``why``."""
    with pytest.raises(grpc.RpcError) as err:
        fn(*args)
    got = (err.value.code(), details(err.value)[0].reason)
    assert got == (code, why), err.value.details()
    return err.value


def outcome(fn: Callable[..., object], *args: Any) -> tuple[grpc.StatusCode, str] | str:
    """The (code, reason) ``fn`` fails with, or "OK" when it succeeds."""
    try:
        fn(*args)
    except grpc.RpcError as err:
        return err.code(), details(err)[0].reason
    return "OK"


def flowering_plants(channel: grpc.Channel, farm: Farm, count: int) -> list[str]:
    plants = plant_pb2_grpc.PlantServiceStub(channel)
    batch = plants.BatchCreatePlants(
        pl.BatchCreatePlantsRequest(
            parent=farm.license,
            plant=pl.Plant(variety=farm.variety, section=farm.crop),
            count=count,
        )
    )
    names = [p.name for p in batch.plants]
    for name in names:
        for phase in (pl.PLANT_PHASE_VEGETATIVE, pl.PLANT_PHASE_FLOWERING):
            plants.ChangePlantPhase(pl.ChangePlantPhaseRequest(name=name, phase=phase))
    return names


def event_text(event: pl.PlantEvent) -> str:
    return event.summary + json_format.MessageToJson(event.details)


# --- 1. the whole cycle over gRPC --------------------------------------------------------------


def test_cultivation_cycle_over_grpc(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    plants = plant_pb2_grpc.PlantServiceStub(channel)

    # Opening inventory: 50 clones.
    clones = new_lot(lots, farm, q("50", EACH), product=farm.clone, display_name="BD clones")
    assert clones.name.startswith(farm.license + "/lots/")
    assert clones.product == farm.clone
    assert clones.variety == farm.variety
    assert clones.section == farm.vault
    assert clones.quantity == q("50", EACH)
    assert not clones.HasField("net_weight")  # counted, no weight
    assert not clones.HasField("net_volume")
    assert clones.status == inv.LOT_STATUS_AVAILABLE
    assert clones.source.origin == inv.LOT_ORIGIN_INITIAL
    assert clones.display_name == "BD clones"
    assert clones.etag
    assert clones.HasField("create_time")
    assert lots.GetLot(inv.GetLotRequest(name=clones.name)) == clones

    # Plant 10 of them: the lot goes down by 10 in the same transaction.
    batch = plants.BatchCreatePlants(
        pl.BatchCreatePlantsRequest(
            parent=farm.license,
            plant=pl.Plant(variety=farm.variety, section=farm.crop, source_lot=clones.name, batch="BD-1"),
            count=10,
        )
    ).plants
    assert len(batch) == 10
    assert all(p.source_lot == clones.name for p in batch)
    assert all(p.phase == pl.PLANT_PHASE_CLONE and p.state == pl.PLANT_STATE_ACTIVE for p in batch)
    names = [p.name for p in batch]
    planted = lots.GetLot(inv.GetLotRequest(name=clones.name))
    assert planted.quantity == q("40", EACH)
    assert planted.status == inv.LOT_STATUS_AVAILABLE
    assert planted.etag != clones.etag

    # Grow: clone -> vegetative -> flowering, each transition dated.
    for name in names:
        veg = plants.ChangePlantPhase(pl.ChangePlantPhaseRequest(name=name, phase=pl.PLANT_PHASE_VEGETATIVE))
        assert veg.phase == pl.PLANT_PHASE_VEGETATIVE
        assert veg.HasField("vegetative_time")
        assert not veg.HasField("flowering_time")
        flo = plants.ChangePlantPhase(pl.ChangePlantPhaseRequest(name=name, phase=pl.PLANT_PHASE_FLOWERING))
        assert flo.phase == pl.PLANT_PHASE_FLOWERING
        assert flo.HasField("flowering_time")
        assert flo.vegetative_time == veg.vegetative_time
        assert flo.flowering_time.ToDatetime() >= flo.vegetative_time.ToDatetime()
        assert not flo.HasField("harvest_time")

    # A note on every plant, a nutrient on the first four.
    noted = plants.AddPlantNote(
        pl.AddPlantNoteRequest(parent=farm.license, plants=names, text="Topped and defoliated")
    )
    assert noted.plant_count == 10
    fed = plants.ApplyGrowMaterial(
        pl.ApplyGrowMaterialRequest(
            parent=farm.license,
            plants=names[:4],
            kind=pl.GROW_MATERIAL_KIND_NUTRIENT,
            material="General Hydroponics FloraGro",
            quantity=q("2", LITER),
            applied_by="Alice Grower",
        )
    )
    assert fed.plant_count == 4

    def history(name: str) -> list[pl.PlantEvent]:
        return list(plants.GetPlantHistory(pl.GetPlantHistoryRequest(name=name)).events)

    grown = [
        pl.PLANT_EVENT_TYPE_CREATED,
        pl.PLANT_EVENT_TYPE_PHASE_CHANGED,
        pl.PLANT_EVENT_TYPE_PHASE_CHANGED,
        pl.PLANT_EVENT_TYPE_NOTE_ADDED,
    ]
    fed_history = history(names[0])
    assert [e.type for e in fed_history] == [*grown, pl.PLANT_EVENT_TYPE_MATERIAL_APPLIED]
    assert "Topped and defoliated" in event_text(fed_history[3])
    assert "FloraGro" in event_text(fed_history[4])
    assert [e.type for e in history(names[9])] == grown

    # Final harvest: wet weights in kg, g and lb; the total is exact in grams.
    wet = [q("1.2", KILOGRAM)] * 5 + [q("850.5")] * 4 + [q("2", POUND)]
    collection = plants.CollectRaw(
        pl.CollectRawRequest(
            parent=farm.license,
            display_name="Harvest BD-1",
            harvest=True,
            weights=[pl.RawWeight(plant=n, wet_weight=w) for n, w in zip(names, wet, strict=True)],
        )
    )
    # 5 x 1200 g + 4 x 850.5 g + 907.18474 g (rounded once to 907.1847 g)
    assert collection.total_wet_weight == q("10309.1847")
    assert collection.name.startswith(farm.license + "/collections/")
    assert collection.display_name == "Harvest BD-1"
    assert collection.state == pl.COLLECTION_STATE_OPEN
    assert [r.plant for r in collection.raw_weights] == names
    assert not collection.output_lots
    assert not collection.HasField("total_dry_weight")
    assert not collection.HasField("close_time")
    for name in names:
        harvested = plants.GetPlant(pl.GetPlantRequest(name=name))
        assert harvested.phase == pl.PLANT_PHASE_HARVESTED
        assert harvested.state == pl.PLANT_STATE_ACTIVE
        assert harvested.HasField("harvest_time")
    assert pl.PLANT_EVENT_TYPE_RAW_COLLECTED in [e.type for e in history(names[0])]

    # Net collect: 2.5 kg flower + 750 g trim + 4 kg waste <= 10309.1847 g wet.
    net = plants.CollectNet(
        pl.CollectNetRequest(
            name=collection.name,
            outputs=[
                pl.NetOutput(product=farm.flower, dry_weight=q("2.5", KILOGRAM), section=farm.vault),
                pl.NetOutput(product=farm.trim, dry_weight=q("750"), section=farm.vault),
            ],
            waste=q("4", KILOGRAM),
        )
    )
    closed = net.collection
    assert closed.name == collection.name
    assert closed.state == pl.COLLECTION_STATE_CLOSED
    assert closed.total_wet_weight == q("10309.1847")
    assert closed.total_dry_weight == q("3250.0000")
    assert closed.waste == q("4000.0000")
    assert closed.HasField("close_time")
    assert len(net.lots) == 2
    assert list(closed.output_lots) == list(net.lots)
    assert plants.GetCollection(pl.GetCollectionRequest(name=collection.name)) == closed
    assert [
        c.name for c in plants.ListCollections(pl.ListCollectionsRequest(parent=farm.license)).collections
    ] == [collection.name]
    still_open = plants.ListCollections(
        pl.ListCollectionsRequest(parent=farm.license, state=pl.COLLECTION_STATE_OPEN)
    )
    assert not still_open.collections

    flower = lots.GetLot(inv.GetLotRequest(name=net.lots[0]))
    trim = lots.GetLot(inv.GetLotRequest(name=net.lots[1]))
    for lot, product, grams in ((flower, farm.flower, "2500.0000"), (trim, farm.trim, "750.0000")):
        assert lot.product == product
        assert lot.section == farm.vault
        assert lot.quantity == q(grams)
        assert lot.net_weight == q(grams)  # bulk by weight: the quantity itself
        assert lot.status == inv.LOT_STATUS_AVAILABLE
        assert lot.source.origin == inv.LOT_ORIGIN_COLLECTION
        assert lot.source.collection == collection.name
        assert not lot.source.lots

    # Split 100 g off the flower.
    split = lots.SplitLot(
        inv.SplitLotRequest(
            name=flower.name, quantity=q("100"), display_name="Flower for jars", etag=flower.etag
        )
    )
    assert split.source_lot.name == flower.name
    assert split.source_lot.quantity == q("2400.0000")
    assert split.source_lot.status == inv.LOT_STATUS_AVAILABLE
    assert split.source_lot.etag != flower.etag
    assert lots.GetLot(inv.GetLotRequest(name=flower.name)) == split.source_lot
    sub = split.new_lot
    assert sub.name.startswith(farm.license + "/lots/")
    assert sub.name != flower.name
    assert sub.quantity == q("100.0000")
    assert sub.net_weight == q("100.0000")
    assert sub.product == farm.flower
    assert sub.section == farm.vault
    assert sub.variety == flower.variety
    assert sub.lab_status == flower.lab_status
    assert sub.display_name == "Flower for jars"
    assert sub.status == inv.LOT_STATUS_AVAILABLE
    assert sub.source.origin == inv.LOT_ORIGIN_SPLIT
    assert list(sub.source.lots) == [flower.name]

    # Convert the 100 g into 100 jars of 1 g: 100 g in = 100 g out + 0 g waste.
    converted = lots.ConvertLots(
        inv.ConvertLotsRequest(
            parent=farm.license,
            inputs=[inv.ConversionInput(lot=sub.name, quantity=q("100"), etag=sub.etag)],
            output_lot=inv.Lot(
                product=farm.jar, section=farm.vault, quantity=q("100", EACH), display_name="BD jars"
            ),
            waste=q("0"),
            note="hand-packed",
        )
    )
    jars = converted.output_lot
    assert jars.name.startswith(farm.license + "/lots/")
    assert jars.product == farm.jar
    assert jars.quantity == q("100", EACH)
    assert jars.net_weight == q("100.0000")  # 100 x 1 g
    assert jars.status == inv.LOT_STATUS_AVAILABLE
    assert jars.source.origin == inv.LOT_ORIGIN_CONVERSION
    assert list(jars.source.lots) == [sub.name]
    assert jars.variety == sub.variety  # the inputs' common variety
    assert jars.display_name == "BD jars"
    (consumed,) = converted.input_lots
    assert consumed.name == sub.name
    assert consumed.quantity == q("0.0000")
    assert consumed.status == inv.LOT_STATUS_DEPLETED
    assert lots.GetLot(inv.GetLotRequest(name=sub.name)) == consumed
    assert lots.GetLot(inv.GetLotRequest(name=jars.name)) == jars

    # Backward from the jars: split lot, flower lot, collection, the 10 plants, the clone lot.
    back = lots.TraceLineage(inv.TraceLineageRequest(name=jars.name, direction=inv.TRACE_DIRECTION_BACKWARD))
    expected_nodes = {
        jars.name: (inv.LINEAGE_NODE_KIND_LOT, 0),
        sub.name: (inv.LINEAGE_NODE_KIND_LOT, 1),
        flower.name: (inv.LINEAGE_NODE_KIND_LOT, 2),
        collection.name: (inv.LINEAGE_NODE_KIND_COLLECTION, 3),
        **{n: (inv.LINEAGE_NODE_KIND_PLANT, 4) for n in names},
        clones.name: (inv.LINEAGE_NODE_KIND_LOT, 5),
    }
    assert {n.name: (n.kind, n.depth) for n in back.nodes} == expected_nodes
    assert len(back.nodes) == len(expected_nodes)  # each node once
    assert back.nodes[0].name == jars.name
    assert [n.depth for n in back.nodes] == sorted(n.depth for n in back.nodes)
    assert not back.truncated
    for node in back.nodes:
        assert not node.restricted
        if node.kind == inv.LINEAGE_NODE_KIND_LOT:
            assert node.lot.name == node.name
        else:
            assert not node.HasField("lot")
    by_name = {n.name: n for n in back.nodes}
    assert by_name[clones.name].lot.quantity == q("40", EACH)
    assert by_name[sub.name].lot.status == inv.LOT_STATUS_DEPLETED
    expected_edges = {
        (sub.name, jars.name): inv.LINEAGE_OPERATION_CONVERSION,
        (flower.name, sub.name): inv.LINEAGE_OPERATION_SPLIT,
        (collection.name, flower.name): inv.LINEAGE_OPERATION_COLLECTION,
        **{(n, collection.name): inv.LINEAGE_OPERATION_COLLECTION for n in names},
        **{(clones.name, n): inv.LINEAGE_OPERATION_PLANTING for n in names},
    }
    edges = {(e.source, e.target): e for e in back.edges}
    assert {k: e.operation for k, e in edges.items()} == expected_edges
    assert len(back.edges) == len(expected_edges)
    assert edges[(flower.name, sub.name)].quantity == q("100.0000")
    assert edges[(sub.name, jars.name)].quantity == q("100.0000")
    assert all(e.HasField("time") for e in back.edges)

    # A shallow trace is cut and says so.
    shallow = lots.TraceLineage(
        inv.TraceLineageRequest(name=jars.name, direction=inv.TRACE_DIRECTION_BACKWARD, max_depth=2)
    )
    assert {n.name for n in shallow.nodes} == {jars.name, sub.name, flower.name}
    assert shallow.truncated

    # Forward from the clones (a recall): plants, collection, both bulk lots, split lot, jars.
    fwd = lots.TraceLineage(inv.TraceLineageRequest(name=clones.name, direction=inv.TRACE_DIRECTION_FORWARD))
    assert {n.name: (n.kind, n.depth) for n in fwd.nodes} == {
        clones.name: (inv.LINEAGE_NODE_KIND_LOT, 0),
        **{n: (inv.LINEAGE_NODE_KIND_PLANT, 1) for n in names},
        collection.name: (inv.LINEAGE_NODE_KIND_COLLECTION, 2),
        flower.name: (inv.LINEAGE_NODE_KIND_LOT, 3),
        trim.name: (inv.LINEAGE_NODE_KIND_LOT, 3),
        sub.name: (inv.LINEAGE_NODE_KIND_LOT, 4),
        jars.name: (inv.LINEAGE_NODE_KIND_LOT, 5),
    }
    assert fwd.nodes[0].name == clones.name
    assert not fwd.truncated
    assert {(e.source, e.target): e.operation for e in fwd.edges} == {
        **{(clones.name, n): inv.LINEAGE_OPERATION_PLANTING for n in names},
        **{(n, collection.name): inv.LINEAGE_OPERATION_COLLECTION for n in names},
        (collection.name, flower.name): inv.LINEAGE_OPERATION_COLLECTION,
        (collection.name, trim.name): inv.LINEAGE_OPERATION_COLLECTION,
        (flower.name, sub.name): inv.LINEAGE_OPERATION_SPLIT,
        (sub.name, jars.name): inv.LINEAGE_OPERATION_CONVERSION,
    }


# --- 2. the same cycle over REST -------------------------------------------------------------


def rest_farm(rest: httpx.Client) -> Farm:
    def post(path: str, body: dict[str, Any]) -> str:
        response = rest.post(path, json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["name"])

    company = post("/v1/companies", {"displayName": "Rest Cycle Farms"})
    lic_ = post(
        "/v1/licenses",
        {
            "company": company,
            "licenseNumber": number(),
            "displayName": "Rest Cycle 1",
            "type": "LICENSE_TYPE_GROWER_PROCESSOR",
            "jurisdiction": "US-WA",
            "active": True,
        },
    )
    bulk = "PACKAGE_TYPE_BULK"
    return Farm(
        license=lic_,
        crop=post(f"/v1/{lic_}/sections", {"displayName": "Canopy", "type": "SECTION_TYPE_CROP"}),
        vault=post(f"/v1/{lic_}/sections", {"displayName": "Vault", "type": "SECTION_TYPE_INVENTORY"}),
        variety=post(f"/v1/{lic_}/varieties", {"displayName": "OG Kush"}),
        clone=post(
            f"/v1/{lic_}/products",
            {
                "displayName": "OG Clone",
                "productType": CLONE_TYPE,
                "packageType": bulk,
                "bulkUnit": "UNIT_EACH",
            },
        ),
        flower=post(
            f"/v1/{lic_}/products",
            {
                "displayName": "OG Flower",
                "productType": BULK_TYPE,
                "packageType": bulk,
                "bulkUnit": "UNIT_GRAM",
            },
        ),
        trim=post(
            f"/v1/{lic_}/products",
            {
                "displayName": "OG Trim",
                "productType": BULK_TYPE,
                "packageType": bulk,
                "bulkUnit": "UNIT_GRAM",
            },
        ),
        jar=post(
            f"/v1/{lic_}/products",
            {
                "displayName": "OG 1g Jar",
                "productType": EACH_TYPE,
                "packageType": "PACKAGE_TYPE_EACH",
                "unitSize": jq("1"),
            },
        ),
    )


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def test_cultivation_cycle_over_rest(rest: httpx.Client) -> None:
    farm = rest_farm(rest)
    clones = ok(
        rest.post(
            f"/v1/{farm.license}/lots",
            json={
                "product": farm.clone,
                "variety": farm.variety,
                "section": farm.vault,
                "quantity": jq("20", "UNIT_EACH"),
                "source": {"origin": "LOT_ORIGIN_INITIAL"},
            },
        )
    )
    assert clones["name"].startswith(farm.license + "/lots/")
    assert clones["quantity"] == jq("20", "UNIT_EACH")
    assert clones["status"] == "LOT_STATUS_AVAILABLE"
    assert clones["source"]["origin"] == "LOT_ORIGIN_INITIAL"
    assert "netWeight" not in clones

    batch = ok(
        rest.post(
            f"/v1/{farm.license}/plants:batchCreate",
            json={
                "plant": {"variety": farm.variety, "section": farm.crop, "sourceLot": clones["name"]},
                "count": 3,
            },
        )
    )["plants"]
    names = [p["name"] for p in batch]
    assert len(names) == 3
    assert all(p["sourceLot"] == clones["name"] for p in batch)
    assert ok(rest.get(f"/v1/{clones['name']}"))["quantity"] == jq("17", "UNIT_EACH")

    for name in names:
        veg = ok(rest.post(f"/v1/{name}:changePhase", json={"phase": "PLANT_PHASE_VEGETATIVE"}))
        assert veg["phase"] == "PLANT_PHASE_VEGETATIVE"
        assert veg["vegetativeTime"]
        flo = ok(rest.post(f"/v1/{name}:changePhase", json={"phase": "PLANT_PHASE_FLOWERING"}))
        assert flo["phase"] == "PLANT_PHASE_FLOWERING"
        assert flo["floweringTime"]

    collection = ok(
        rest.post(
            f"/v1/{farm.license}/collections:collectRaw",
            json={
                "displayName": "Rest harvest",
                "harvest": True,
                "weights": [
                    {"plant": names[0], "wetWeight": jq("0.5", "UNIT_KILOGRAM")},
                    {"plant": names[1], "wetWeight": jq("500")},
                    {"plant": names[2], "wetWeight": jq("500000", "UNIT_MILLIGRAM")},
                ],
            },
        )
    )
    assert collection["totalWetWeight"] == jq("1500.0000")
    assert collection["state"] == "COLLECTION_STATE_OPEN"
    harvested = ok(rest.get(f"/v1/{names[0]}"))
    assert harvested["phase"] == "PLANT_PHASE_HARVESTED"
    assert harvested["harvestTime"]

    net = ok(
        rest.post(
            f"/v1/{collection['name']}:collectNet",
            json={
                "outputs": [
                    {"product": farm.flower, "dryWeight": jq("300"), "section": farm.vault},
                    {"product": farm.trim, "dryWeight": jq("100"), "section": farm.vault},
                ],
                "waste": jq("200"),
            },
        )
    )
    assert net["collection"]["state"] == "COLLECTION_STATE_CLOSED"
    assert net["collection"]["totalDryWeight"] == jq("400.0000")
    assert net["collection"]["waste"] == jq("200.0000")
    flower_name, trim_name = net["lots"]
    flower = ok(rest.get(f"/v1/{flower_name}"))
    assert flower["quantity"] == jq("300.0000")
    assert flower["source"]["origin"] == "LOT_ORIGIN_COLLECTION"
    assert flower["source"]["collection"] == collection["name"]
    assert ok(rest.get(f"/v1/{trim_name}"))["quantity"] == jq("100.0000")

    split = ok(rest.post(f"/v1/{flower_name}:split", json={"quantity": jq("50"), "etag": flower["etag"]}))
    assert split["sourceLot"]["quantity"] == jq("250.0000")
    sub = split["newLot"]
    assert sub["quantity"] == jq("50.0000")
    assert sub["source"]["origin"] == "LOT_ORIGIN_SPLIT"
    assert sub["source"]["lots"] == [flower_name]

    converted = ok(
        rest.post(
            f"/v1/{farm.license}/lots:convert",
            json={
                "inputs": [{"lot": sub["name"], "quantity": jq("50")}],
                "outputLot": {"product": farm.jar, "section": farm.vault, "quantity": jq("50", "UNIT_EACH")},
                "waste": jq("0"),
            },
        )
    )
    jars = converted["outputLot"]
    assert jars["quantity"] == jq("50", "UNIT_EACH")
    assert jars["netWeight"] == jq("50.0000")
    assert jars["source"]["origin"] == "LOT_ORIGIN_CONVERSION"
    assert converted["inputLots"][0]["status"] == "LOT_STATUS_DEPLETED"
    assert converted["inputLots"][0]["quantity"] == jq("0.0000")

    depleted = ok(
        rest.get(
            f"/v1/{farm.license}/lots",
            params={"product": farm.flower, "statuses": ["LOT_STATUS_DEPLETED"]},
        )
    )
    assert [lot["name"] for lot in depleted["lots"]] == [sub["name"]]
    everything = ok(rest.get(f"/v1/{farm.license}/lots", params={"pageSize": 10}))
    assert sorted(lot["name"] for lot in everything["lots"]) == sorted(
        [clones["name"], flower_name, trim_name, sub["name"], jars["name"]]
    )

    back = ok(rest.get(f"/v1/{jars['name']}:traceLineage", params={"direction": "TRACE_DIRECTION_BACKWARD"}))
    assert {n["name"]: (n["kind"], n.get("depth", 0)) for n in back["nodes"]} == {
        jars["name"]: ("LINEAGE_NODE_KIND_LOT", 0),
        sub["name"]: ("LINEAGE_NODE_KIND_LOT", 1),
        flower_name: ("LINEAGE_NODE_KIND_LOT", 2),
        collection["name"]: ("LINEAGE_NODE_KIND_COLLECTION", 3),
        **{n: ("LINEAGE_NODE_KIND_PLANT", 4) for n in names},
        clones["name"]: ("LINEAGE_NODE_KIND_LOT", 5),
    }
    assert {(e["source"], e["target"]): e["operation"] for e in back["edges"]} == {
        (sub["name"], jars["name"]): "LINEAGE_OPERATION_CONVERSION",
        (flower_name, sub["name"]): "LINEAGE_OPERATION_SPLIT",
        (collection["name"], flower_name): "LINEAGE_OPERATION_COLLECTION",
        **{(n, collection["name"]): "LINEAGE_OPERATION_COLLECTION" for n in names},
        **{(clones["name"], n): "LINEAGE_OPERATION_PLANTING" for n in names},
    }
    assert not back.get("truncated", False)

    fwd = ok(rest.get(f"/v1/{clones['name']}:traceLineage", params={"direction": "TRACE_DIRECTION_FORWARD"}))
    reached = {n["name"] for n in fwd["nodes"]}
    assert reached == {
        clones["name"],
        *names,
        collection["name"],
        flower_name,
        trim_name,
        sub["name"],
        jars["name"],
    }


# --- 3. error contract over gRPC -------------------------------------------------------------


def test_decrease_beyond_quantity_is_refused_and_changes_nothing(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    lot = new_lot(lots, farm, q("10"))
    assert lot.quantity == q("10.0000")
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_QUANTITY",
        lots.AdjustLot,
        inv.AdjustLotRequest(
            name=lot.name, decrease_by=q("10.0001"), reason=inv.ADJUSTMENT_REASON_SCALE_VARIANCE
        ),
    )
    assert lots.GetLot(inv.GetLotRequest(name=lot.name)) == lot
    # The whole quantity is fine: the lot is emptied and DEPLETED.
    emptied = lots.AdjustLot(
        inv.AdjustLotRequest(name=lot.name, decrease_by=q("10"), reason=inv.ADJUSTMENT_REASON_HANDLING_LOSS)
    )
    assert emptied.quantity == q("0.0000")
    assert emptied.status == inv.LOT_STATUS_DEPLETED
    # A depleted lot is locked, except for an ENTRY_ERROR / INVENTORY_COUNT correction.
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESOURCE_LOCKED",
        lots.AdjustLot,
        inv.AdjustLotRequest(name=lot.name, increase_by=q("2"), reason=inv.ADJUSTMENT_REASON_SCALE_VARIANCE),
    )
    corrected = lots.AdjustLot(
        inv.AdjustLotRequest(name=lot.name, increase_by=q("2"), reason=inv.ADJUSTMENT_REASON_ENTRY_ERROR)
    )
    assert corrected.quantity == q("2.0000")
    assert corrected.status == inv.LOT_STATUS_AVAILABLE
    # Splitting more than a lot holds is refused the same way.
    other = new_lot(lots, farm, q("5"))
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_QUANTITY",
        lots.SplitLot,
        inv.SplitLotRequest(name=other.name, quantity=q("5.5")),
    )
    assert lots.GetLot(inv.GetLotRequest(name=other.name)) == other


def test_quantity_of_another_dimension_is_unit_mismatch(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNIT_MISMATCH",
        lots.CreateLot,
        inv.CreateLotRequest(
            parent=farm.license,
            lot=inv.Lot(
                product=farm.flower,
                section=farm.vault,
                quantity=q("1", LITER),
                source=inv.LotSource(origin=inv.LOT_ORIGIN_INITIAL),
            ),
        ),
    )
    assert not lots.ListLots(inv.ListLotsRequest(parent=farm.license)).lots
    lot = new_lot(lots, farm, q("10"))
    refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNIT_MISMATCH",
        lots.AdjustLot,
        inv.AdjustLotRequest(name=lot.name, decrease_by=q("1", LITER), reason=inv.ADJUSTMENT_REASON_DRYING),
    )
    # Clones in grams, and a fractional count of clones, are refused too.
    for wrong in (q("1"), q("1.5", EACH)):
        with pytest.raises(grpc.RpcError) as err:
            lots.CreateLot(
                inv.CreateLotRequest(
                    parent=farm.license,
                    lot=inv.Lot(
                        product=farm.clone,
                        section=farm.vault,
                        quantity=wrong,
                        source=inv.LotSource(origin=inv.LOT_ORIGIN_INITIAL),
                    ),
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # "counts must be whole" names no reason: UNIT_MISMATCH or VALIDATION_FAILED.
        expected = {"UNIT_MISMATCH"} if wrong.unit == GRAM else {"UNIT_MISMATCH", "VALIDATION_FAILED"}
        assert details(err.value)[0].reason in expected, err.value.details()
    # Another weight unit is converted.
    assert lots.GetLot(inv.GetLotRequest(name=lot.name)) == lot
    dried = lots.AdjustLot(
        inv.AdjustLotRequest(
            name=lot.name, decrease_by=q("250", qty.UNIT_MILLIGRAM), reason=inv.ADJUSTMENT_REASON_DRYING
        )
    )
    assert dried.quantity == q("9.7500")
    pound = new_lot(lots, farm, q("1", POUND))
    assert pound.quantity == q("453.5924")


def test_unbalanced_conversion_changes_nothing(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    a = new_lot(lots, farm, q("100"))
    b = new_lot(lots, farm, q("50"))
    before = lots.ListLots(inv.ListLotsRequest(parent=farm.license)).lots

    def convert(waste: str, from_b: str = "40", request_id: str = "") -> inv.ConvertLotsResponse:
        return lots.ConvertLots(
            inv.ConvertLotsRequest(
                parent=farm.license,
                inputs=[
                    inv.ConversionInput(lot=a.name, quantity=q("60")),
                    inv.ConversionInput(lot=b.name, quantity=q(from_b)),
                ],
                output_lot=inv.Lot(product=farm.jar, section=farm.vault, quantity=q("90", EACH)),
                waste=q(waste),
                request_id=request_id,
            )
        )

    # 100 g in, 90 g out + 5 g waste: 5 g unaccounted for.
    refused(grpc.StatusCode.FAILED_PRECONDITION, "MASS_BALANCE_VIOLATION", convert, "5")
    # 100 g in, 90 g out + 10.5 g waste: more out than in.
    refused(grpc.StatusCode.FAILED_PRECONDITION, "MASS_BALANCE_VIOLATION", convert, "10.5")
    # The second input holds too little (50 g < 60 g): the first is not consumed either.
    refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_QUANTITY", convert, "30", "60")
    assert lots.ListLots(inv.ListLotsRequest(parent=farm.license)).lots == before
    assert lots.GetLot(inv.GetLotRequest(name=a.name)) == a
    assert lots.GetLot(inv.GetLotRequest(name=b.name)) == b

    # Balanced, 100 g = 90 g + 10 g: both inputs go down, one output appears, once per request id.
    done = convert("10", request_id="conv-1")
    assert convert("10", request_id="conv-1") == done
    assert [lot.quantity for lot in done.input_lots] == [q("40.0000"), q("10.0000")]
    assert [lot.name for lot in done.input_lots] == [a.name, b.name]
    assert done.output_lot.quantity == q("90", EACH)
    assert done.output_lot.net_weight == q("90.0000")
    assert sorted(done.output_lot.source.lots) == sorted([a.name, b.name])
    after = lots.ListLots(inv.ListLotsRequest(parent=farm.license)).lots
    assert len(after) == len(before) + 1
    assert lots.GetLot(inv.GetLotRequest(name=a.name)).quantity == q("40.0000")


def test_net_collect_beyond_wet_weight_is_mass_balance_violation(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    plants = plant_pb2_grpc.PlantServiceStub(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    names = flowering_plants(channel, farm, 2)
    # A partial (manicure) collection first: the plants keep flowering.
    partial = plants.CollectRaw(
        pl.CollectRawRequest(
            parent=farm.license,
            harvest=False,
            weights=[pl.RawWeight(plant=names[0], wet_weight=q("25"))],
        )
    )
    assert partial.total_wet_weight == q("25.0000")
    assert plants.GetPlant(pl.GetPlantRequest(name=names[0])).phase == pl.PLANT_PHASE_FLOWERING
    collection = plants.CollectRaw(
        pl.CollectRawRequest(
            parent=farm.license,
            collection=partial.name,
            harvest=True,
            weights=[
                pl.RawWeight(plant=names[0], wet_weight=q("75")),
                pl.RawWeight(plant=names[1], wet_weight=q("100")),
            ],
        )
    )
    assert collection.name == partial.name
    assert collection.total_wet_weight == q("200.0000")
    assert [r.plant for r in collection.raw_weights] == [names[0], names[0], names[1]]

    # A harvested plant takes raw collections only into its own collection.
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE_TRANSITION",
        plants.CollectRaw,
        pl.CollectRawRequest(parent=farm.license, weights=[pl.RawWeight(plant=names[1], wet_weight=q("1"))]),
    )

    def collect_net(dry: str, waste: str, product: str = "", section: str = "") -> pl.CollectNetResponse:
        output = pl.NetOutput(
            product=product or farm.flower, dry_weight=q(dry), section=section or farm.vault
        )
        return plants.CollectNet(pl.CollectNetRequest(name=collection.name, outputs=[output], waste=q(waste)))

    # Outputs must be bulk products counted by weight, into inventory sections.
    refused(grpc.StatusCode.FAILED_PRECONDITION, "REFERENCE_INVALID", collect_net, "100", "0", farm.jar)
    refused(grpc.StatusCode.FAILED_PRECONDITION, "REFERENCE_INVALID", collect_net, "100", "0", farm.clone)
    refused(grpc.StatusCode.FAILED_PRECONDITION, "REFERENCE_INVALID", collect_net, "100", "0", "", farm.crop)

    # 150 g dry + 50.0001 g waste > 200 g wet.
    refused(grpc.StatusCode.FAILED_PRECONDITION, "MASS_BALANCE_VIOLATION", collect_net, "150", "50.0001")
    refused(grpc.StatusCode.FAILED_PRECONDITION, "MASS_BALANCE_VIOLATION", collect_net, "201", "0")
    assert (
        plants.GetCollection(pl.GetCollectionRequest(name=collection.name)).state == pl.COLLECTION_STATE_OPEN
    )
    assert not lots.ListLots(inv.ListLotsRequest(parent=farm.license)).lots
    # Exactly the wet weight is allowed; then the collection is closed and locked.
    done = collect_net("150", "50")
    assert done.collection.state == pl.COLLECTION_STATE_CLOSED
    assert lots.GetLot(inv.GetLotRequest(name=done.lots[0])).quantity == q("150.0000")
    refused(grpc.StatusCode.FAILED_PRECONDITION, "RESOURCE_LOCKED", collect_net, "1", "0")


def test_clone_cannot_jump_to_flowering(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    plants = plant_pb2_grpc.PlantServiceStub(channel)
    plant = plants.CreatePlant(
        pl.CreatePlantRequest(parent=farm.license, plant=pl.Plant(variety=farm.variety, section=farm.crop))
    )
    assert plant.phase == pl.PLANT_PHASE_CLONE
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE_TRANSITION",
        plants.ChangePlantPhase,
        pl.ChangePlantPhaseRequest(name=plant.name, phase=pl.PLANT_PHASE_FLOWERING),
    )
    assert plants.GetPlant(pl.GetPlantRequest(name=plant.name)) == plant
    # A vegetative plant cannot be raw collected with a final harvest (that needs FLOWERING).
    plants.ChangePlantPhase(pl.ChangePlantPhaseRequest(name=plant.name, phase=pl.PLANT_PHASE_VEGETATIVE))
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE_TRANSITION",
        plants.CollectRaw,
        pl.CollectRawRequest(
            parent=farm.license, harvest=True, weights=[pl.RawWeight(plant=plant.name, wet_weight=q("10"))]
        ),
    )
    assert not plants.ListCollections(pl.ListCollectionsRequest(parent=farm.license)).collections
    # And no way back: flowering -> vegetative is refused.
    plants.ChangePlantPhase(pl.ChangePlantPhaseRequest(name=plant.name, phase=pl.PLANT_PHASE_FLOWERING))
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE_TRANSITION",
        plants.ChangePlantPhase,
        pl.ChangePlantPhaseRequest(name=plant.name, phase=pl.PLANT_PHASE_VEGETATIVE),
    )


def test_planting_from_a_lot_checks_the_lot(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    plants = plant_pb2_grpc.PlantServiceStub(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    clones = new_lot(lots, farm, q("5", EACH), product=farm.clone)
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_QUANTITY",
        plants.BatchCreatePlants,
        pl.BatchCreatePlantsRequest(
            parent=farm.license,
            plant=pl.Plant(variety=farm.variety, section=farm.crop, source_lot=clones.name),
            count=6,
        ),
    )
    assert lots.GetLot(inv.GetLotRequest(name=clones.name)) == clones
    assert not plants.ListPlants(pl.ListPlantsRequest(parent=farm.license)).plants
    flower = new_lot(lots, farm, q("5"))
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "REFERENCE_INVALID",
        plants.CreatePlant,
        pl.CreatePlantRequest(
            parent=farm.license,
            plant=pl.Plant(variety=farm.variety, section=farm.crop, source_lot=flower.name),
        ),
    )
    assert lots.GetLot(inv.GetLotRequest(name=flower.name)) == flower
    one = plants.CreatePlant(
        pl.CreatePlantRequest(
            parent=farm.license,
            plant=pl.Plant(variety=farm.variety, section=farm.crop, source_lot=clones.name),
        )
    )
    assert one.source_lot == clones.name
    assert lots.GetLot(inv.GetLotRequest(name=clones.name)).quantity == q("4", EACH)


def test_stale_etag_is_aborted(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    lot = new_lot(lots, farm, q("10"))
    first = lots.AdjustLot(
        inv.AdjustLotRequest(
            name=lot.name, decrease_by=q("1"), reason=inv.ADJUSTMENT_REASON_MOISTURE_LOSS, etag=lot.etag
        )
    )
    assert first.quantity == q("9.0000")
    assert first.etag != lot.etag
    refused(
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
        lots.AdjustLot,
        inv.AdjustLotRequest(
            name=lot.name, decrease_by=q("1"), reason=inv.ADJUSTMENT_REASON_MOISTURE_LOSS, etag=lot.etag
        ),
    )
    assert lots.GetLot(inv.GetLotRequest(name=lot.name)) == first


def test_adjust_retry_with_same_request_id_applies_once(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    lot = new_lot(lots, farm, q("10"))
    request = inv.AdjustLotRequest(
        name=lot.name, decrease_by=q("3"), reason=inv.ADJUSTMENT_REASON_SCALE_VARIANCE, request_id="adj-1"
    )
    first = lots.AdjustLot(request)
    assert first.quantity == q("7.0000")
    assert lots.AdjustLot(request) == first
    assert lots.GetLot(inv.GetLotRequest(name=lot.name)).quantity == q("7.0000")
    request.decrease_by.value = "4"
    refused(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", lots.AdjustLot, request)
    assert lots.GetLot(inv.GetLotRequest(name=lot.name)) == first


def test_two_step_lot_destruction_then_locked(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    lot = new_lot(lots, farm, q("12.5"))
    signature = esignature_pb2.ESignatureInput(
        credential=auth.mint(),
        meaning=esignature_pb2.SIGNATURE_MEANING_WITNESSED,
        reason="witnessed grinding",
    )
    # Confirming before a request is not a legal transition.
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE_TRANSITION",
        lots.DeleteLot,
        inv.DeleteLotRequest(name=lot.name, confirm=True, esignature=signature),
    )
    pending = lots.DeleteLot(
        inv.DeleteLotRequest(
            name=lot.name,
            reason=inv.DESTRUCTION_REASON_CONTAMINATION,
            method=inv.DESTRUCTION_METHOD_GRIND_AND_MIX,
            waste=q("0.025", KILOGRAM),
            note="powdery mildew",
        )
    )
    assert pending.status == inv.LOT_STATUS_DESTRUCTION_PENDING
    assert pending.quantity == q("12.5000")
    assert pending.destruction.reason == inv.DESTRUCTION_REASON_CONTAMINATION
    assert pending.destruction.method == inv.DESTRUCTION_METHOD_GRIND_AND_MIX
    assert pending.destruction.waste == q("25.0000")
    assert pending.destruction.note == "powdery mildew"
    assert pending.destruction.HasField("request_time")
    assert not pending.destruction.HasField("confirmation")
    assert not pending.destruction.HasField("confirm_time")
    assert not pending.destruction.HasField("destroyed_quantity")
    # While pending, other changes are refused.
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "DESTRUCTION_PENDING",
        lots.AdjustLot,
        inv.AdjustLotRequest(name=lot.name, decrease_by=q("1"), reason=inv.ADJUSTMENT_REASON_DRYING),
    )
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "DESTRUCTION_PENDING",
        lots.DeleteLot,
        inv.DeleteLotRequest(
            name=lot.name,
            reason=inv.DESTRUCTION_REASON_DAMAGED,
            method=inv.DESTRUCTION_METHOD_COMPOST,
            waste=q("1"),
        ),
    )
    assert lots.GetLot(inv.GetLotRequest(name=lot.name)) == pending

    destroyed = lots.DeleteLot(inv.DeleteLotRequest(name=lot.name, confirm=True, esignature=signature))
    assert destroyed.status == inv.LOT_STATUS_DESTROYED
    assert destroyed.quantity == q("0.0000")
    assert destroyed.destruction.destroyed_quantity == q("12.5000")
    assert destroyed.destruction.waste == q("25.0000")
    assert destroyed.destruction.confirmation.meaning == esignature_pb2.SIGNATURE_MEANING_WITNESSED
    assert destroyed.destruction.confirmation.reason == "witnessed grinding"
    assert destroyed.destruction.confirmation.audit_event_id
    assert destroyed.destruction.confirmation.HasField("sign_time")
    assert destroyed.destruction.HasField("confirm_time")
    assert "fresh-token" not in str(destroyed)
    assert lots.GetLot(inv.GetLotRequest(name=lot.name)) == destroyed  # still readable

    # Locked against any change: a decrease, and even an ENTRY_ERROR correction (that exception is
    # for DEPLETED lots only).
    changes = {
        "decrease": inv.AdjustLotRequest(
            name=lot.name, decrease_by=q("1"), reason=inv.ADJUSTMENT_REASON_DRYING
        ),
        "increase": inv.AdjustLotRequest(
            name=lot.name, increase_by=q("1"), reason=inv.ADJUSTMENT_REASON_ENTRY_ERROR
        ),
        "new_quantity": inv.AdjustLotRequest(
            name=lot.name, new_quantity=q("5"), reason=inv.ADJUSTMENT_REASON_INVENTORY_COUNT
        ),
    }
    outcomes = {what: outcome(lots.AdjustLot, change) for what, change in changes.items()}
    locked = (grpc.StatusCode.FAILED_PRECONDITION, "RESOURCE_LOCKED")
    assert outcomes == dict.fromkeys(changes, locked)
    assert lots.GetLot(inv.GetLotRequest(name=lot.name)) == destroyed


def test_cancelled_destruction_returns_lot_to_available(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    lot = new_lot(lots, farm, q("3"))
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE_TRANSITION",
        lots.CancelLotDestruction,
        inv.CancelLotDestructionRequest(name=lot.name),
    )
    lots.DeleteLot(
        inv.DeleteLotRequest(
            name=lot.name,
            reason=inv.DESTRUCTION_REASON_QUALITY,
            method=inv.DESTRUCTION_METHOD_COMPOST,
            waste=q("3"),
        )
    )
    back = lots.CancelLotDestruction(inv.CancelLotDestructionRequest(name=lot.name))
    assert back.status == inv.LOT_STATUS_AVAILABLE
    assert back.quantity == q("3.0000")
    adjusted = lots.AdjustLot(
        inv.AdjustLotRequest(name=lot.name, decrease_by=q("1"), reason=inv.ADJUSTMENT_REASON_DRYING)
    )
    assert adjusted.quantity == q("2.0000")


def test_list_lots_filters_and_keyset_pages(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    shelf = add_section(channel, farm.license, "Shelf", lic.SECTION_TYPE_INVENTORY)
    l1 = new_lot(lots, farm, q("10"), product=farm.flower, section=farm.vault)
    l2 = new_lot(lots, farm, q("10"), product=farm.flower, section=shelf)
    l3 = new_lot(lots, farm, q("10"), product=farm.trim, section=farm.vault)
    l4 = new_lot(lots, farm, q("10"), product=farm.flower, section=farm.vault)
    l5 = new_lot(lots, farm, q("10"), product=farm.trim, section=shelf)
    emptied = lots.AdjustLot(
        inv.AdjustLotRequest(name=l4.name, decrease_by=q("10"), reason=inv.ADJUSTMENT_REASON_HANDLING_LOSS)
    )
    assert emptied.status == inv.LOT_STATUS_DEPLETED

    def listed(**filters: Any) -> list[str]:
        return [lot.name for lot in lots.ListLots(inv.ListLotsRequest(parent=farm.license, **filters)).lots]

    def ids(*wanted: inv.Lot) -> list[str]:
        return sorted(lot.name for lot in wanted)

    assert listed() == ids(l1, l2, l3, l4, l5)
    assert listed(product=farm.flower) == ids(l1, l2, l4)
    assert listed(section=farm.vault) == ids(l1, l3, l4)
    assert listed(product=farm.flower, section=farm.vault) == ids(l1, l4)
    assert listed(variety=farm.variety) == ids(l1, l2, l3, l4, l5)
    assert listed(statuses=[inv.LOT_STATUS_DEPLETED]) == ids(l4)
    assert listed(statuses=[inv.LOT_STATUS_AVAILABLE, inv.LOT_STATUS_DEPLETED]) == ids(l1, l2, l3, l4, l5)
    assert listed(statuses=[inv.LOT_STATUS_AVAILABLE], product=farm.trim) == ids(l3, l5)
    assert listed(statuses=[inv.LOT_STATUS_DESTROYED]) == []
    # create_time: start inclusive, end exclusive.
    assert listed(create_time_start=l2.create_time, create_time_end=l4.create_time) == ids(l2, l3)
    assert listed(create_time_start=l5.create_time) == ids(l5)
    assert listed(create_time_end=l1.create_time) == []

    # Keyset pages of 2: no repeats, no gaps, and a lot created while paging lands on a later page.
    first = lots.ListLots(inv.ListLotsRequest(parent=farm.license, page_size=2))
    assert len(first.lots) == 2
    assert first.next_page_token
    l6 = new_lot(lots, farm, q("1"))
    seen = [lot.name for lot in first.lots]
    token = first.next_page_token
    pages = 1
    while token:
        page = lots.ListLots(inv.ListLotsRequest(parent=farm.license, page_size=2, page_token=token))
        assert len(page.lots) <= 2
        assert page.lots or not page.next_page_token
        seen.extend(lot.name for lot in page.lots)
        token = page.next_page_token
        pages += 1
        assert pages <= 4
    assert seen == ids(l1, l2, l3, l4, l5, l6)
    # A token is bound to its filters.
    refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        lots.ListLots,
        inv.ListLotsRequest(
            parent=farm.license, page_size=2, page_token=first.next_page_token, product=farm.trim
        ),
    )


def test_section_of_another_license_is_refused(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    other = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    err = refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        lots.CreateLot,
        inv.CreateLotRequest(
            parent=farm.license,
            lot=inv.Lot(
                product=farm.flower,
                section=other.vault,
                quantity=q("1"),
                source=inv.LotSource(origin=inv.LOT_ORIGIN_INITIAL),
            ),
        ),
    )
    assert any(isinstance(d, error_details_pb2.BadRequest) for d in details(err)[1])
    assert not lots.ListLots(inv.ListLotsRequest(parent=farm.license)).lots
    assert not lots.ListLots(inv.ListLotsRequest(parent=other.license)).lots
    # Moving a lot to another license's section, or to a crop section, is REFERENCE_INVALID.
    lot = new_lot(lots, farm, q("1"))
    moves = {
        "other license": outcome(lots.MoveLot, inv.MoveLotRequest(name=lot.name, section=other.vault)),
        "crop section": outcome(lots.MoveLot, inv.MoveLotRequest(name=lot.name, section=farm.crop)),
    }
    invalid = (grpc.StatusCode.FAILED_PRECONDITION, "REFERENCE_INVALID")
    assert moves == {"other license": invalid, "crop section": invalid}
    assert lots.GetLot(inv.GetLotRequest(name=lot.name)) == lot


def test_unknown_lot_is_not_found(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    missing = f"{farm.license}/lots/{MISSING_ID}"
    err = refused(
        grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND", lots.GetLot, inv.GetLotRequest(name=missing)
    )
    info, others = details(err)
    assert info.domain == "seedline.dev"
    assert any(isinstance(o, error_details_pb2.ResourceInfo) and o.resource_name == missing for o in others)
    refused(
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        lots.AdjustLot,
        inv.AdjustLotRequest(name=missing, decrease_by=q("1"), reason=inv.ADJUSTMENT_REASON_DRYING),
    )
    refused(
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        lots.TraceLineage,
        inv.TraceLineageRequest(name=missing, direction=inv.TRACE_DIRECTION_FORWARD),
    )


# --- 4. error contract over REST -------------------------------------------------------------


def test_rest_lot_errors(rest: httpx.Client) -> None:
    farm = rest_farm(rest)
    liters = rest.post(
        f"/v1/{farm.license}/lots",
        json={
            "product": farm.flower,
            "section": farm.vault,
            "quantity": jq("1", "UNIT_LITER"),
            "source": {"origin": "LOT_ORIGIN_INITIAL"},
        },
    )
    assert liters.status_code == 400, liters.text
    assert liters.json()["code"] == 3
    assert reason(liters.json()) == "UNIT_MISMATCH"

    missing = rest.get(f"/v1/{farm.license}/lots/{MISSING_ID}")
    assert missing.status_code == 404
    assert missing.json()["code"] == 5
    assert reason(missing.json()) == "RESOURCE_NOT_FOUND"

    lot = ok(
        rest.post(
            f"/v1/{farm.license}/lots",
            json={
                "product": farm.flower,
                "section": farm.vault,
                "quantity": jq("10"),
                "source": {"origin": "LOT_ORIGIN_INITIAL"},
            },
        )
    )
    adjust = {"decreaseBy": jq("1"), "reason": "ADJUSTMENT_REASON_SCALE_VARIANCE", "etag": lot["etag"]}
    assert ok(rest.post(f"/v1/{lot['name']}:adjust", json=adjust))["quantity"] == jq("9.0000")
    stale = rest.post(f"/v1/{lot['name']}:adjust", json=adjust)
    assert stale.status_code == 409
    assert reason(stale.json()) == "ETAG_MISMATCH"

    too_much = rest.post(
        f"/v1/{lot['name']}:adjust", json={"decreaseBy": jq("9.5"), "reason": "ADJUSTMENT_REASON_DRYING"}
    )
    assert too_much.status_code == 400
    assert reason(too_much.json()) == "INSUFFICIENT_QUANTITY"

    unbalanced = rest.post(
        f"/v1/{farm.license}/lots:convert",
        json={
            "inputs": [{"lot": lot["name"], "quantity": jq("5")}],
            "outputLot": {"product": farm.jar, "section": farm.vault, "quantity": jq("5", "UNIT_EACH")},
            "waste": jq("1"),
        },
    )
    assert unbalanced.status_code == 400
    assert reason(unbalanced.json()) == "MASS_BALANCE_VIOLATION"
    assert ok(rest.get(f"/v1/{lot['name']}"))["quantity"] == jq("9.0000")


def test_quarantine_moves_and_split_into_another_product(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    hold = add_section(channel, farm.license, "Hold", lic.SECTION_TYPE_QUARANTINE)
    lot = new_lot(lots, farm, q("20"))
    held = lots.MoveLot(inv.MoveLotRequest(name=lot.name, section=hold, etag=lot.etag))
    assert held.section == hold
    assert held.status == inv.LOT_STATUS_QUARANTINED
    released = lots.MoveLot(inv.MoveLotRequest(name=lot.name, section=farm.vault))
    assert released.section == farm.vault
    assert released.status == inv.LOT_STATUS_AVAILABLE
    assert released.quantity == q("20.0000")

    # Split into a product of the same type and counting unit, into the quarantine section.
    split = lots.SplitLot(
        inv.SplitLotRequest(name=lot.name, quantity=q("5"), product=farm.trim, section=hold)
    )
    assert split.new_lot.product == farm.trim
    assert split.new_lot.section == hold
    assert split.new_lot.status == inv.LOT_STATUS_QUARANTINED
    assert split.new_lot.quantity == q("5.0000")
    assert split.source_lot.quantity == q("15.0000")
    # A product with another counting unit is REFERENCE_INVALID (that is a conversion).
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "REFERENCE_INVALID",
        lots.SplitLot,
        inv.SplitLotRequest(name=lot.name, quantity=q("5"), product=farm.jar),
    )
    # Splitting everything that is left depletes the source.
    rest_of_it = lots.SplitLot(inv.SplitLotRequest(name=lot.name, quantity=q("0.015", KILOGRAM)))
    assert rest_of_it.source_lot.quantity == q("0.0000")
    assert rest_of_it.source_lot.status == inv.LOT_STATUS_DEPLETED
    assert rest_of_it.new_lot.quantity == q("15.0000")


def test_conversion_weighs_packs_and_volumes(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    registry = license_pb2_grpc.LicenseServiceStub(channel)
    packs = registry.CreateProduct(
        lic.CreateProductRequest(
            parent=farm.license,
            product=lic.Product(
                display_name="Pre-roll 10 x 0.5 g",
                product_type=EACH_TYPE,
                package_type=lic.PACKAGE_TYPE_PACK,
                unit_size=q("0.5"),
                pack_unit_count=10,
            ),
        )
    ).name
    oil = registry.CreateProduct(
        lic.CreateProductRequest(
            parent=farm.license,
            product=lic.Product(
                display_name="Distillate",
                product_type=BULK_TYPE,
                package_type=lic.PACKAGE_TYPE_BULK,
                bulk_unit=qty.UNIT_MILLILITER,
            ),
        )
    ).name
    flower = new_lot(lots, farm, q("100"))

    # 50 g of flower -> 10 packs x 10 x 0.5 g = 50 g.
    prerolls = lots.ConvertLots(
        inv.ConvertLotsRequest(
            parent=farm.license,
            inputs=[inv.ConversionInput(lot=flower.name, quantity=q("50"))],
            output_lot=inv.Lot(product=packs, section=farm.vault, quantity=q("10", EACH)),
            waste=q("0"),
        )
    ).output_lot
    assert prerolls.quantity == q("10", EACH)
    assert prerolls.net_weight == q("50.0000")

    # Into a volume product: the output's weight must be measured (missing: UNIT_MISMATCH).
    def extract(measured: qty.Quantity | None) -> inv.ConvertLotsResponse:
        request = inv.ConvertLotsRequest(
            parent=farm.license,
            inputs=[inv.ConversionInput(lot=flower.name, quantity=q("50"))],
            output_lot=inv.Lot(product=oil, section=farm.vault, quantity=q("12.5", qty.UNIT_MILLILITER)),
            waste=q("40"),
        )
        if measured is not None:
            request.output_measured_weight.CopyFrom(measured)
        return lots.ConvertLots(request)

    refused(grpc.StatusCode.INVALID_ARGUMENT, "UNIT_MISMATCH", extract, None)
    refused(grpc.StatusCode.FAILED_PRECONDITION, "MASS_BALANCE_VIOLATION", extract, q("9"))
    assert lots.GetLot(inv.GetLotRequest(name=flower.name)).quantity == q("50.0000")
    done = extract(q("10"))  # 50 g = 10 g of distillate + 40 g waste
    distillate = done.output_lot
    assert distillate.quantity == q("0.0125", LITER)  # stored in liters
    assert distillate.net_volume == q("0.0125", LITER)
    assert not distillate.HasField("net_weight")
    assert done.input_lots[0].status == inv.LOT_STATUS_DEPLETED
