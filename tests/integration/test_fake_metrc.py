"""The fake METRC v2 server: METRC's rules, limits and injected faults, over real TLS."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from seedline_server.certs import DevPki, write_dev_pki
from seedline_server.integrations.fakes import _metrc_schema as schema
from seedline_server.integrations.fakes._serve import start
from seedline_server.integrations.fakes.metrc import STATE_KEY, FakeMetrc, make_app
from tests.support.fakes import FakeProcess

CONFIG: dict[str, Any] = {
    "vendor_keys": ["vendor-key"],
    "users": {"user-key": ["LIC-1", "LIC-2"], "other-user": ["LIC-3"]},
}
AUTH = ("vendor-key", "user-key")
LIC = {"licenseNumber": "LIC-1"}


def tag(n: int) -> str:
    """A 24-character METRC tag ending in ``n``."""
    return f"1A4FF0100000022000{n:06d}"


@dataclass
class Fake:
    url: str
    tls: ssl.SSLContext
    metrc: FakeMetrc
    client: httpx.AsyncClient

    def other(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=self.tls, **kwargs)

    async def rows(
        self, path: str, rows: Any, *, method: str = "POST", license: str = "LIC-1"
    ) -> httpx.Response:
        return await self.client.request(method, path, params={"licenseNumber": license}, json=rows)

    async def ok(self, path: str, rows: Any, *, method: str = "POST") -> None:
        answer = await self.rows(path, rows, method=method)
        assert answer.status_code == 200, answer.text

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params={**LIC, **params})

    async def state(self) -> Any:
        answer = await self.client.get("/_fake/state")
        assert answer.status_code == 200
        return answer.json()

    async def faults(self, *rules: dict[str, Any]) -> None:
        answer = await self.client.post("/_fake/faults", json={"seed": 1, "rules": list(rules)})
        assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(tmp_path_factory.mktemp("metrc-pki"))


@pytest_asyncio.fixture
async def fake(pki: DevPki) -> AsyncIterator[Fake]:
    app = make_app(CONFIG)
    running = await start(app, host="127.0.0.1", port=0, cert=pki.server_cert, key=pki.server_key)
    tls = ssl.create_default_context(cafile=str(pki.ca_cert))
    url = f"https://127.0.0.1:{running.port}"
    try:
        async with httpx.AsyncClient(
            base_url=url,
            verify=tls,
            auth=AUTH,
            timeout=10,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        ) as client:
            yield Fake(url, tls, app[STATE_KEY], client)
    finally:
        await running.stop()


def planting(name: str, count: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "Type": "Clone",
        "Count": count,
        "Strain": "Haze",
        "Location": "Propagation",
        "ActualDate": "2024-05-01",
        **extra,
    }


def to_plants(batch: str, first: int, count: int = 1, phase: str = "Vegetative") -> dict[str, Any]:
    return {
        "Name": batch,
        "Count": count,
        "StartingTag": tag(first),
        "GrowthPhase": phase,
        "NewLocation": "Veg Room",
        "GrowthDate": "2024-05-10",
    }


async def flowering_plants(fake: Fake, batch: str, first: int, count: int) -> None:
    await fake.ok("/plantbatches/v2/plantings", [planting(batch, count)])
    await fake.ok("/plantbatches/v2/growthphase", [to_plants(batch, first, count, "Flowering")])


def harvest_row(label: str, weight: float, unit: str = "Grams", name: str = "H-1") -> dict[str, Any]:
    return {
        "Plant": label,
        "Weight": weight,
        "UnitOfWeight": unit,
        "DryingLocation": "Dry Room",
        "HarvestName": name,
        "ActualDate": "2024-07-01",
    }


def harvest_package(tag_label: str, grams: float, harvest: str = "H-1") -> dict[str, Any]:
    return {
        "Tag": tag_label,
        "Location": "Vault",
        "Item": "Flower",
        "UnitOfWeight": "Grams",
        "Ingredients": [{"HarvestName": harvest, "Weight": grams, "UnitOfWeight": "Grams"}],
        "ActualDate": "2024-07-15",
    }


async def packaged(fake: Fake, label: str, grams: float) -> None:
    """A harvest of one plant (``grams``) packaged whole into ``label``."""
    await flowering_plants(fake, f"B-{label}", 900, 1)
    await fake.ok("/plants/v2/harvest", [harvest_row(tag(900), grams, name=f"H-{label}")], method="PUT")
    await fake.ok("/harvests/v2/packages", [harvest_package(label, grams, f"H-{label}")])


# -- auth, license scope --------------------------------------------------------------------


async def test_auth_refusals(fake: Fake) -> None:
    async with fake.other() as anonymous:
        answer = await anonymous.get("/plants/v2/vegetative", params=LIC)
        assert answer.status_code == 401
        assert answer.json()["Message"]
        assert (await anonymous.get("/facilities/v2", auth=("bad-vendor", "user-key"))).status_code == 401
        assert (await anonymous.get("/facilities/v2", auth=("vendor-key", "bad-user"))).status_code == 401
    hidden = await fake.client.get("/plants/v2/vegetative", params={"licenseNumber": "LIC-3"})
    assert hidden.status_code == 403
    assert "LIC-3" in hidden.json()["Message"]
    mine = await fake.client.get("/facilities/v2")
    assert mine.status_code == 200
    assert [f["License"]["Number"] for f in mine.json()] == ["LIC-1", "LIC-2"]
    assert mine.json()[0]["Name"] == "Fake Farm 1"
    theirs = await fake.client.get("/facilities/v2", auth=("vendor-key", "other-user"))
    assert [f["License"]["Number"] for f in theirs.json()] == ["LIC-3"]
    assert fake.metrc.stats.by_status["401"] == 3


async def test_license_number_required_where_metrc_requires_it(fake: Fake) -> None:
    answer = await fake.client.get("/plants/v2/vegetative")
    assert answer.status_code == 400
    assert "licenseNumber" in answer.json()["Message"]
    units = await fake.client.get("/unitsofmeasure/v2/active")
    assert units.status_code == 200
    assert {"Name": "Grams", "QuantityType": "WeightBased", "Abbreviation": "g"} in units.json()["Data"]
    types = await fake.client.get("/labtests/v2/types", params={"pageSize": 20, "pageNumber": 1})
    assert types.status_code == 200
    assert types.json()["RecordsOnPage"] == 20
    assert types.json()["Total"] == len(schema.lab_test_types())


# -- paging and windows -----------------------------------------------------------------------


async def test_page_size_limit_and_walking_every_page(fake: Fake) -> None:
    seeded = await fake.client.post("/_fake/seed", json={"plants": [{"Label": tag(i)} for i in range(45)]})
    assert seeded.status_code == 200, seeded.text
    too_big = await fake.get("/plants/v2/vegetative", pageSize=21, pageNumber=1)
    assert too_big.status_code == 400
    assert "20" in too_big.json()["Message"]
    assert (await fake.get("/plants/v2/vegetative", pageSize=20, pageNumber=0)).status_code == 400
    labels: list[str] = []
    page = 1
    while True:
        answer = await fake.get("/plants/v2/vegetative", pageSize=20, pageNumber=page)
        body = answer.json()
        assert body["CurrentPage"] == page
        assert body["PageSize"] == 20
        assert body["Total"] == 45
        assert body["TotalPages"] == 3
        assert body["RecordsOnPage"] == len(body["Data"]) <= 20
        labels += [p["Label"] for p in body["Data"]]
        if page >= body["TotalPages"]:
            break
        page += 1
    assert labels == [tag(i) for i in range(45)]


async def test_last_modified_window(fake: Fake) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ages = {1: timedelta(hours=48), 2: timedelta(hours=12), 3: timedelta(hours=1)}
    seeded = await fake.client.post(
        "/_fake/seed",
        json={
            "plants": [{"Label": tag(n), "LastModified": (now - age).isoformat()} for n, age in ages.items()]
        },
    )
    assert seeded.status_code == 200, seeded.text

    def window(start: datetime, end: datetime) -> dict[str, str]:
        return {"lastModifiedStart": start.isoformat(), "lastModifiedEnd": end.isoformat()}

    too_long = await fake.get("/plants/v2/vegetative", **window(now - timedelta(hours=25), now))
    assert too_long.status_code == 400
    assert "24 hours" in too_long.json()["Message"]
    backwards = await fake.get("/plants/v2/vegetative", **window(now, now - timedelta(hours=1)))
    assert backwards.status_code == 400
    half = await fake.get("/plants/v2/vegetative", lastModifiedStart=now.isoformat())
    assert half.status_code == 400
    naive = await fake.get(
        "/plants/v2/vegetative",
        lastModifiedStart="2024-01-01T00:00:00",
        lastModifiedEnd="2024-01-01T01:00:00",
    )
    assert naive.status_code == 400
    recent = await fake.get("/plants/v2/vegetative", **window(now - timedelta(hours=13), now))
    assert recent.status_code == 200
    assert [p["Label"] for p in recent.json()["Data"]] == [tag(2), tag(3)]
    old = await fake.get(
        "/plants/v2/vegetative", **window(now - timedelta(hours=49), now - timedelta(hours=47))
    )
    assert [p["Label"] for p in old.json()["Data"]] == [tag(1)]


# -- bodies -------------------------------------------------------------------------------------


async def test_body_keys_must_be_pascal_case_known_fields_and_nothing_is_applied(fake: Fake) -> None:
    camel = await fake.rows(
        "/plantbatches/v2/plantings",
        [planting("Good"), {**planting("Bad"), "strain": "Haze"}],
    )
    assert camel.status_code == 400
    errors = camel.json()
    assert [e["row"] for e in errors] == [1]
    assert "strain" in errors[0]["message"]
    assert "PascalCase" in errors[0]["message"]
    unknown = await fake.rows("/plantbatches/v2/plantings", [planting("Good", Colour="green")])
    assert unknown.status_code == 400
    assert unknown.json()[0]["row"] == 0
    assert "Colour" in unknown.json()[0]["message"]
    not_array = await fake.rows("/plantbatches/v2/plantings", planting("Good"))
    assert not_array.status_code == 400
    bad_date = await fake.rows("/plantbatches/v2/plantings", [planting("Good", ActualDate="05/01/2024")])
    assert bad_date.status_code == 400
    assert "ActualDate" in bad_date.json()[0]["message"]
    assert (await fake.state())["plant_batches"] == {}


async def test_unknown_unit_refused(fake: Fake) -> None:
    await flowering_plants(fake, "B1", 1, 1)
    answer = await fake.rows("/plants/v2/harvest", [harvest_row(tag(1), 100, unit="Stones")], method="PUT")
    assert answer.status_code == 400
    assert "Stones" in answer.json()[0]["message"]
    volume = await fake.rows("/plants/v2/harvest", [harvest_row(tag(1), 100, unit="Liters")], method="PUT")
    assert volume.status_code == 400
    assert (await fake.state())["harvests"] == {}


# -- plant batches and plants -------------------------------------------------------------------


async def test_batch_to_tagged_plants_and_lookups(fake: Fake) -> None:
    await fake.ok("/plantbatches/v2/plantings", [planting("B1", 3)])
    await fake.ok("/plantbatches/v2/growthphase", [to_plants("B1", 1, 2)])
    found = await fake.get(f"/plants/v2/{tag(2)}")
    assert found.status_code == 200
    plant = found.json()
    assert plant["Label"] == tag(2)
    assert plant["State"] == "Tracked"
    assert plant["GrowthPhase"] == "Vegetative"
    assert plant["PlantBatchName"] == "B1"
    assert plant["StrainName"] == "Haze"
    assert plant["LastModified"].endswith("+00:00")
    by_id = await fake.get(f"/plants/v2/{plant['Id']}")
    assert by_id.status_code == 200
    assert by_id.json()["Label"] == tag(2)
    missing = await fake.get(f"/plants/v2/{tag(3)}")
    assert missing.status_code == 404
    assert tag(3) in missing.json()["Message"]
    other_facility = await fake.client.get(f"/plants/v2/{tag(2)}", params={"licenseNumber": "LIC-2"})
    assert other_facility.status_code == 404
    batches = (await fake.get("/plantbatches/v2/active")).json()["Data"]
    assert [(b["Name"], b["UntrackedCount"], b["TrackedCount"]) for b in batches] == [("B1", 1, 2)]
    short = await fake.rows("/plantbatches/v2/growthphase", [to_plants("B1", 10, 2)])
    assert short.status_code == 400
    assert "untracked" in short.json()[0]["message"]
    await fake.ok(
        "/plants/v2/growthphase",
        [
            {
                "Label": tag(1),
                "GrowthPhase": "Flowering",
                "NewLocation": "Flower Room",
                "GrowthDate": "2024-06-01",
            }
        ],
        method="PUT",
    )
    flowering = (await fake.get("/plants/v2/flowering")).json()["Data"]
    assert [(p["Label"], p["FloweringDate"], p["LocationName"]) for p in flowering] == [
        (tag(1), "2024-06-01", "Flower Room")
    ]


async def test_duplicates_refused_and_counted_once(fake: Fake) -> None:
    await fake.ok("/plantbatches/v2/plantings", [planting("B1", 3)])
    await fake.ok("/plantbatches/v2/growthphase", [to_plants("B1", 1)])
    again = await fake.rows("/plantbatches/v2/plantings", [planting("B1", 3)])
    assert again.status_code == 400
    assert "already exists" in again.json()[0]["message"]
    same_tag = await fake.rows("/plantbatches/v2/growthphase", [to_plants("B1", 1)])
    assert same_tag.status_code == 400
    assert "already exists" in same_tag.json()[0]["message"]
    state = await fake.state()
    assert [(d["kind"], d["key"]) for d in state["duplicate_attempts"]] == [
        ("batch", "B1"),
        ("plant", tag(1)),
    ]
    assert state["create_counts"] == {"batch:B1": 1, f"plant:{tag(1)}": 1}
    assert state["plant_batches"]["B1"]["UntrackedCount"] == 2  # the refused request took nothing


async def test_harvest_adds_weight_and_makes_the_plant_inactive(fake: Fake) -> None:
    await flowering_plants(fake, "B1", 1, 2)
    await fake.ok(
        "/plants/v2/harvest",
        [harvest_row(tag(1), 500), harvest_row(tag(2), 1, unit="Kilograms")],
        method="PUT",
    )
    harvest = (await fake.get("/harvests/v2/active")).json()["Data"]
    assert len(harvest) == 1
    assert harvest[0]["Name"] == "H-1"
    assert harvest[0]["UnitOfWeightName"] == "Grams"
    assert harvest[0]["TotalWetWeight"] == harvest[0]["CurrentWeight"] == 1500
    assert harvest[0]["PlantCount"] == 2
    plant = (await fake.get(f"/plants/v2/{tag(1)}")).json()
    assert plant["State"] == "Harvested"
    assert plant["HarvestedDate"] == "2024-07-01"
    assert plant["HarvestId"] == harvest[0]["Id"]
    assert plant["HarvestCount"] == 1
    assert (await fake.get("/plants/v2/flowering")).json()["Data"] == []
    assert {p["Label"] for p in (await fake.get("/plants/v2/inactive")).json()["Data"]} == {tag(1), tag(2)}
    twice = await fake.rows("/plants/v2/harvest", [harvest_row(tag(1), 10)], method="PUT")
    assert twice.status_code == 400
    assert (await fake.get(f"/harvests/v2/{harvest[0]['Id']}")).json()["CurrentWeight"] == 1500


async def test_package_from_harvest_reduces_the_harvest(fake: Fake) -> None:
    await flowering_plants(fake, "B1", 1, 1)
    await fake.ok("/plants/v2/harvest", [harvest_row(tag(1), 1000)], method="PUT")
    too_much = await fake.rows("/harvests/v2/packages", [harvest_package(tag(100), 1000.5)])
    assert too_much.status_code == 400
    await fake.ok("/harvests/v2/packages", [harvest_package(tag(100), 400)])
    package = (await fake.get(f"/packages/v2/{tag(100)}")).json()
    assert package["Quantity"] == 400
    assert package["UnitOfMeasureName"] == "Grams"
    assert package["SourceHarvestNames"] == "H-1"
    assert package["LabTestingState"] == "NotSubmitted"
    harvest = (await fake.get("/harvests/v2/active")).json()["Data"][0]
    assert harvest["CurrentWeight"] == 600
    assert harvest["PackageCount"] == 1
    reused = await fake.rows("/harvests/v2/packages", [harvest_package(tag(100), 10)])
    assert reused.status_code == 400
    assert "already exists" in reused.json()[0]["message"]
    assert (await fake.get(f"/packages/v2/{tag(101)}")).status_code == 404


async def test_adjust_below_zero_refused(fake: Fake) -> None:
    await packaged(fake, tag(100), 400)

    def adjust(quantity: float, reason: str = "Drying", **extra: Any) -> dict[str, Any]:
        return {
            "Label": tag(100),
            "Quantity": quantity,
            "UnitOfMeasure": "Grams",
            "AdjustmentReason": reason,
            "AdjustmentDate": "2024-08-01",
            **extra,
        }

    below = await fake.rows("/packages/v2/adjust", [adjust(-401)])
    assert below.status_code == 400
    assert "below zero" in below.json()[0]["message"]
    assert (await fake.rows("/packages/v2/adjust", [adjust(-1, "Theft")])).status_code == 400  # no note
    assert (await fake.rows("/packages/v2/adjust", [adjust(-1, "Gremlins")])).status_code == 400
    await fake.ok("/packages/v2/adjust", [adjust(-100), adjust(-50, "Theft", ReasonNote="missing")])
    assert (await fake.get(f"/packages/v2/{tag(100)}")).json()["Quantity"] == 250


async def test_lab_results_set_the_testing_state(fake: Fake) -> None:
    await packaged(fake, tag(100), 400)
    known = sorted(schema.lab_test_type_names())[0]

    def record(name: str, passed: bool) -> dict[str, Any]:
        return {
            "Label": tag(100),
            "ResultDate": "2024-08-02",
            "Results": [{"LabTestTypeName": name, "Quantity": 0.5, "Passed": passed, "Notes": ""}],
        }

    unknown = await fake.rows("/labtests/v2/record", [record("Unobtainium", True)])
    assert unknown.status_code == 400
    assert "Unobtainium" in unknown.json()[0]["message"]
    await fake.ok("/labtests/v2/record", [record(known, True)])
    package = (await fake.get(f"/packages/v2/{tag(100)}")).json()
    assert package["LabTestingState"] == "TestPassed"
    results = (await fake.get("/labtests/v2/results", packageId=package["Id"])).json()
    assert [(r["TestTypeName"], r["TestPassed"]) for r in results["Data"]] == [(known, True)]
    await fake.ok("/labtests/v2/record", [record(known, False)])
    assert (await fake.get(f"/packages/v2/{tag(100)}")).json()["LabTestingState"] == "TestFailed"


async def test_transfer_template_needs_active_packages(fake: Fake) -> None:
    await packaged(fake, tag(100), 400)

    def template(name: str, label: str) -> dict[str, Any]:
        return {
            "Name": name,
            "Destinations": [
                {
                    "RecipientLicenseNumber": "LIC-9",
                    "TransferTypeName": "Wholesale",
                    "PlannedRoute": "I-25",
                    "EstimatedDepartureDateTime": "2024-08-03T09:00:00-06:00",
                    "EstimatedArrivalDateTime": "2024-08-03T12:00:00-06:00",
                    "Packages": [{"PackageLabel": label, "WholesalePrice": 100.0}],
                }
            ],
        }

    unknown = await fake.rows("/transfers/v2/templates/outgoing", [template("T1", tag(555))])
    assert unknown.status_code == 400
    assert tag(555) in unknown.json()[0]["message"]
    await fake.ok("/transfers/v2/templates/outgoing", [template("T1", tag(100))])
    listed = (await fake.get("/transfers/v2/templates/outgoing", pageNumber=1, pageSize=20)).json()
    assert [(t["Name"], t["ShipperFacilityLicenseNumber"], t["PackageCount"]) for t in listed["Data"]] == [
        ("T1", "LIC-1", 1)
    ]
    again = await fake.rows("/transfers/v2/templates/outgoing", [template("T1", tag(100))])
    assert again.status_code == 400
    assert "already exists" in again.json()[0]["message"]
    assert (await fake.state())["create_counts"]["template:T1"] == 1


async def test_destroy_plant_and_repackage(fake: Fake) -> None:
    await fake.ok("/plantbatches/v2/plantings", [planting("B1", 1)])
    await fake.ok("/plantbatches/v2/growthphase", [to_plants("B1", 1)])
    destroy = {
        "Label": tag(1),
        "WasteMethodName": "Grinder",
        "WasteWeight": 12.5,
        "WasteUnitOfMeasureName": "Grams",
        "WasteReasonName": "Male plant",
        "ReasonNote": "culled",
        "ActualDate": "2024-06-01",
    }
    await fake.ok("/plants/v2", [destroy], method="DELETE")
    plant = (await fake.get(f"/plants/v2/{tag(1)}")).json()
    assert (plant["State"], plant["DestroyedDate"]) == ("Destroyed", "2024-06-01")
    assert (await fake.rows("/plants/v2", [destroy], method="DELETE")).status_code == 400
    await packaged(fake, tag(100), 400)

    def repackage(label: str, grams: float) -> dict[str, Any]:
        return {
            "Tag": label,
            "Location": "Vault",
            "Item": "Pre-roll",
            "Quantity": 1,
            "UnitOfMeasure": "Each",
            "Ingredients": [{"Package": tag(100), "Quantity": grams, "UnitOfMeasure": "Grams"}],
            "ActualDate": "2024-08-01",
        }

    short = await fake.rows("/packages/v2", [repackage(tag(101), 300), repackage(tag(102), 300)])
    assert short.status_code == 400
    assert [e["row"] for e in short.json()] == [1]
    assert (await fake.get(f"/packages/v2/{tag(101)}")).status_code == 404  # row 0 undone too
    await fake.ok("/packages/v2", [repackage(tag(101), 300)])
    source = (await fake.get(f"/packages/v2/{tag(100)}")).json()
    assert source["Quantity"] == 100
    made = (await fake.get(f"/packages/v2/{tag(101)}")).json()
    assert (made["SourcePackageLabels"], made["SourceHarvestNames"]) == (tag(100), f"H-{tag(100)}")


# -- limits ---------------------------------------------------------------------------------------


async def burst(client: httpx.AsyncClient, n: int, path: str, **params: Any) -> list[httpx.Response]:
    return list(await asyncio.gather(*(client.get(path, params=params) for _ in range(n))))


async def test_get_rate_limit_per_facility(fake: Fake) -> None:
    # Ten kept-alive connections: no TLS handshake slows the burst, and no request waits on
    # another in the fake (it answers at once), so only the rate limit can refuse them.
    client = fake.other(auth=AUTH, timeout=10, limits=httpx.Limits(max_connections=10))
    async with client:
        await burst(client, 10, "/_fake/faults")  # open the connections (admin calls are not counted)
        t0 = time.monotonic()
        answers = await burst(client, 60, "/plants/v2/vegetative", **LIC)
        assert time.monotonic() - t0 < 1.0
        await asyncio.sleep(1.05)
        calm = await burst(client, 40, "/plants/v2/vegetative", **LIC)
    refused = [a for a in answers if a.status_code == 429]
    assert refused
    assert len(answers) - len(refused) == 50
    assert all(a.status_code == 200 for a in answers if a not in refused)
    assert all(a.headers["Retry-After"] == "1" and a.json()["Message"] for a in refused)
    stats = fake.metrc.stats
    assert stats.rate_limited["facility_get_rate"] == len(refused)
    assert stats.max_per_second_facility_get["LIC-1"] == 60
    assert [a.status_code for a in calm] == [200] * 40


async def test_concurrency_limit_per_facility(fake: Fake) -> None:
    await fake.faults(
        {"method": "GET", "path_prefix": "/plants/v2/vegetative", "mode": "slow", "delay_s": 0.5}
    )
    await burst(fake.client, 12, "/_fake/state", summary=1)
    answers = await burst(fake.client, 12, "/plants/v2/vegetative", **LIC)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 10 + [429] * 2
    assert all(a.headers["Retry-After"] == "1" for a in answers if a.status_code == 429)
    stats = fake.metrc.stats
    assert stats.rate_limited["concurrency"] == 2
    assert stats.max_in_flight["LIC-1"] == 11  # 10 in flight when another one arrived
    assert fake.metrc.limiter.in_flight["LIC-1"] == 0


# -- faults -----------------------------------------------------------------------------------------


async def test_fault_error500_applies_nothing(fake: Fake) -> None:
    await fake.faults({"method": "POST", "path_prefix": "/plantbatches/", "mode": "error500", "count": 1})
    failed = await fake.rows("/plantbatches/v2/plantings", [planting("B1")])
    assert failed.status_code == 500
    assert (await fake.state())["plant_batches"] == {}
    await fake.ok("/plantbatches/v2/plantings", [planting("B1")])
    assert (await fake.state())["create_counts"] == {"batch:B1": 1}


async def test_fault_apply_then_500_applies(fake: Fake) -> None:
    await fake.faults({"path_prefix": "/plantbatches/v2/plantings", "mode": "apply_then_500"})
    answer = await fake.rows("/plantbatches/v2/plantings", [planting("B1")])
    assert answer.status_code == 500
    assert "B1" in (await fake.state())["plant_batches"]


async def test_fault_partial_applies_some_rows(fake: Fake) -> None:
    await fake.faults({"path_prefix": "/plantbatches/v2/plantings", "mode": "partial", "count": 1})
    answer = await fake.rows("/plantbatches/v2/plantings", [planting(f"B{i}") for i in range(4)])
    assert answer.status_code == 400
    assert [e["row"] for e in answer.json()] == [1, 3]
    assert set((await fake.state())["plant_batches"]) == {"B0", "B2"}


async def test_fault_timeout_applies_nothing(fake: Fake) -> None:
    await fake.faults({"path_prefix": "/plantbatches/v2/plantings", "mode": "timeout", "delay_s": 0.6})
    with pytest.raises(httpx.TimeoutException):
        await fake.client.post("/plantbatches/v2/plantings", params=LIC, json=[planting("B1")], timeout=0.2)
    await asyncio.sleep(0.6)
    state = await fake.state()
    assert state["plant_batches"] == {}
    assert state["stats"]["by_status"].get("dropped") == 1


async def test_fault_apply_then_timeout_applies(fake: Fake) -> None:
    await fake.faults(
        {"path_prefix": "/plantbatches/v2/plantings", "mode": "apply_then_timeout", "delay_s": 0.4}
    )
    with pytest.raises(httpx.TransportError):
        await fake.client.post("/plantbatches/v2/plantings", params=LIC, json=[planting("B1")], timeout=2)
    assert "B1" in (await fake.state())["plant_batches"]


async def test_fault_rate_limit(fake: Fake) -> None:
    await fake.faults({"method": "GET", "mode": "rate_limit", "delay_s": 2.5, "count": 1})
    answer = await fake.get("/plants/v2/vegetative")
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "3"
    assert (await fake.get("/plants/v2/vegetative")).status_code == 200


# -- admin and the command line ------------------------------------------------------------------


async def test_reset_and_summary(fake: Fake) -> None:
    await fake.ok("/plantbatches/v2/plantings", [planting("B1")])
    bad_seed = await fake.client.post("/_fake/seed", json={"plants": [{"Label": "short"}]})
    assert bad_seed.status_code == 400
    summary = (await fake.client.get("/_fake/state", params={"summary": 1})).json()
    assert summary["counts"]["plant_batches"] == 1
    assert summary["counts"]["plants"] == 0
    assert summary["stats"]["requests_total"] == 1
    assert (await fake.client.post("/_fake/reset")).status_code == 200
    state = await fake.state()
    assert state["plant_batches"] == {}
    assert state["stats"]["requests_total"] == 0


def test_runs_as_a_module(pki: DevPki, tmp_path: Path) -> None:
    proc = FakeProcess("metrc", pki.server_cert, pki.server_key, pki.ca_cert, config=CONFIG, workdir=tmp_path)
    proc.start()
    try:
        with proc.client() as client:
            answer = client.get("/facilities/v2", auth=("vendor-key", "other-user"))
            assert answer.status_code == 200
            assert [f["License"]["Number"] for f in answer.json()] == ["LIC-3"]
        assert proc.state()["stats"]["requests_total"] == 1
    finally:
        proc.stop()
