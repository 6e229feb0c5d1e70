"""The BioTrackTHC connector against the fake BioTrackTHC over TLS, with real PostgreSQL.

Changes are made through the use cases, written to the outbox in their transaction, and
delivered by the real :class:`OutboxWorker` through the real connector, mapping and records
reader to the in-process fake (:mod:`seedline_server.integrations.fakes.biotrack`).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from seedline.integration.v1 import integration_pb2 as pb
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from ulid import ULID

from seedline_server.certs import DevPki, write_dev_pki
from seedline_server.config import Settings
from seedline_server.crypto import KeyRing, Secret
from seedline_server.domain import lot as lot_rules
from seedline_server.domain import plant as plant_rules
from seedline_server.domain.quantity import Unit, parse
from seedline_server.integrations.fakes import _serve
from seedline_server.integrations.fakes.biotrack import make_app
from seedline_server.integrations.limits import SharedLimits
from seedline_server.integrations.registry import Connectors, IntegrationRow
from seedline_server.integrations.transport import Exchange, Http
from seedline_server.integrations.worker import OutboxWorker, WorkerSettings
from seedline_server.service import inventory, plants, registry
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import db, models
from seedline_server.store import integration_models as im
from tests.integration.conftest import CTX, Farm
from tests.support.fakes import FakeAdmin
from tests.support.integrations import insert_integration

pytestmark = pytest.mark.asyncio(loop_scope="session")

UBI, USER, PASSWORD, LOCATION = "123456789", "grower@example.com", "s3cret-pass", "1001"
CONFIG = {
    "accounts": [{"license_number": UBI, "username": USER, "password": PASSWORD, "locations": [LOCATION]}],
    "session_ttl_s": 3600,
}
FAST = WorkerSettings(batch=8, concurrency=8, base_delay=0.05, max_delay=0.2, breaker_threshold=50)
FLOWER_DRY = "018NY6XC00PTZZWCH7XVREHK6T"  # OpenTHC "Flower / Dry" → BioTrackTHC type 6
CO2_OIL = "018NY6XC00PTR9M5Z9S4T31C4R"  # OpenTHC "Extract/Oil/CO2" → BioTrackTHC type 18


class Fake(FakeAdmin):
    """The running fake: its base URL and an admin client."""

    @property
    def endpoint(self) -> str:
        return f"{self.url}/serverjson.asp"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(Path(tmp_path_factory.mktemp("biotrack-pki")))


@pytest_asyncio.fixture(loop_scope="session")
async def fake(pki: DevPki) -> AsyncIterator[Fake]:
    running = await _serve.start(
        make_app(CONFIG), host="127.0.0.1", port=0, cert=pki.server_cert, key=pki.server_key
    )
    url = f"https://127.0.0.1:{running.port}"
    admin = httpx.AsyncClient(base_url=url, verify=ssl.create_default_context(cafile=pki.ca_cert), timeout=10)
    try:
        yield Fake(url, admin)
    finally:
        await admin.aclose()
        await running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    e = db.make_engine(migrated, pool_size=5)
    yield e
    await e.dispose()


@pytest.fixture(scope="module")
def keyring() -> KeyRing:
    return KeyRing({"test": os.urandom(32)}, "test")


@pytest_asyncio.fixture(loop_scope="session")
async def connectors(engine: AsyncEngine, pki: DevPki, keyring: KeyRing) -> AsyncIterator[Connectors]:
    http = Http(ca_file=pki.ca_cert, timeout=5.0)
    yield Connectors(engine, keyring, http, SharedLimits(engine, "test"), settings=Settings())
    await http.aclose()


def credentials(password: str = PASSWORD) -> bytes:
    return pb.Credentials(
        biotrack=pb.BioTrackCredentials(username=USER, password=password)
    ).SerializeToString()


async def add_integration(database: Database, farm: Farm, keyring: KeyRing, fake: Fake) -> str:
    """A BIOTRACKTHC integration row with sealed credentials, as CreateIntegration stores it."""
    return await insert_integration(
        database,
        CTX,
        farm.license_id,
        "BIOTRACKTHC",
        endpoint_uri=fake.endpoint,
        display_name="BioTrackTHC",
        config={"ubi": UBI, "location": LOCATION},
        credentials=pb.Credentials.FromString(credentials()),
        keyring=keyring,
    )


def row(fake: Fake, *, password: str = PASSWORD, location: str = LOCATION) -> IntegrationRow:
    return IntegrationRow(
        id=str(ULID()),
        license_id=str(ULID()),
        kind="BIOTRACKTHC",
        endpoint_uri=fake.endpoint,
        config={"ubi": UBI, "location": location},
        credentials=Secret(credentials(password)),
        version=1,
    )


async def new_plant(database: Database, farm: Farm, section_id: str = "") -> models.Plant:
    async def run(uow: UnitOfWork) -> models.Plant:
        new = plants.NewPlant(
            "", farm.variety_id, section_id or farm.section_id, "", "", plant_rules.Phase.CLONE, None
        )
        (plant,) = await plants.create_plants(uow, farm.license_id, new)
        return plant

    return await database.write(CTX, run)


async def deliver(engine: AsyncEngine, connectors: Connectors, iid: str) -> None:
    await OutboxWorker(engine, connectors, FAST, only=[iid]).run_until_idle(within=30)


async def deliveries(engine: AsyncEngine, iid: str) -> list[tuple[str, str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(im.Delivery.event_type, im.Delivery.state, im.Delivery.attempts)
            .where(im.Delivery.integration_id == iid)
            .order_by(im.Delivery.id)
        )
        return [(r[0], r[1], r[2]) for r in rows]


async def remote_id(engine: AsyncEngine, iid: str, resource: str) -> str | None:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                select(im.RemoteId.remote_id).where(
                    im.RemoteId.integration_id == iid, im.RemoteId.resource == resource
                )
            )
        ).scalar_one_or_none()


def mine(state: Any, kind: str, barcodes: set[str]) -> list[dict[str, Any]]:
    return [r for r in state["records"][kind] if r["id"] in barcodes]


# -- the connection test ---------------------------------------------------------------------


async def test_connection_test_reports_login_and_location(fake: Fake, connectors: Connectors) -> None:
    ok = await connectors.build(row(fake)).test([])
    assert (ok.reachable, ok.authenticated, ok.license_visible) == (True, True, True)
    assert ok.latency is not None

    log: list[Exchange] = []
    wrong = await connectors.build(row(fake, password="not-it")).test(log)
    assert (wrong.reachable, wrong.authenticated, wrong.license_visible) == (True, False, False)
    assert "login" in wrong.detail.lower()
    assert log[-1].status == "ERROR"
    assert "not-it" not in wrong.detail

    elsewhere = await connectors.build(row(fake, location="4242")).test([])
    assert (elsewhere.authenticated, elsewhere.license_visible) == (True, False)
    assert "4242" in elsewhere.detail


# -- deliveries ------------------------------------------------------------------------------


async def test_a_created_plant_reaches_biotrack_once_with_its_strain_and_room(
    database: Database,
    farm: Farm,
    engine: AsyncEngine,
    connectors: Connectors,
    keyring: KeyRing,
    fake: Fake,
) -> None:
    iid = await add_integration(database, farm, keyring, fake)
    plant = await new_plant(database, farm)
    await deliver(engine, connectors, iid)

    assert await deliveries(engine, iid) == [("plant.create", "DELIVERED", 1)]
    barcode = await remote_id(engine, iid, plants.plant_name(farm.license_id, plant.id))
    assert barcode is not None
    assert len(barcode) == 16
    assert barcode.isdigit()
    state = await fake.state()
    (at_fake,) = mine(state, "plants", {barcode})
    assert at_fake["strain"] == "Haze"
    assert at_fake["room"] == "Crop"
    assert at_fake["location"] == LOCATION
    assert at_fake["license_number"] == UBI

    # A later change of the plant finds its barcode: moving it moves the BioTrackTHC plant.
    async def move(uow: UnitOfWork) -> None:
        section = await registry.create_scoped(
            uow,
            farm.license_id,
            models.Section(display_name="Flower Room", type=1, active=True, version=1),
            "section",
            "sections",
        )
        await plants.update_plant(
            uow, farm.license_id, plant.id, {"section_id": section.id}, ["section_id"], ""
        )

    await database.write(CTX, move)
    await deliver(engine, connectors, iid)
    assert [d[1] for d in await deliveries(engine, iid)] == ["DELIVERED", "DELIVERED"]
    (moved,) = mine(await fake.state(), "plants", {barcode})
    assert moved["room"] == "Flower Room"
    async with engine.connect() as conn:
        logged = (
            await conn.execute(
                select(im.IntegrationLog.request_id, im.IntegrationLog.status).where(
                    im.IntegrationLog.integration_id == iid
                )
            )
        ).all()
    assert {r[1] for r in logged} == {"SUCCESS"}
    assert any(r[0].endswith("-0") for r in logged)  # the nonce of the delivery's first call


async def test_a_retry_after_apply_then_timeout_repeats_the_nonce_and_leaves_one_plant(
    database: Database,
    farm: Farm,
    engine: AsyncEngine,
    connectors: Connectors,
    keyring: KeyRing,
    fake: Fake,
) -> None:
    iid = await add_integration(database, farm, keyring, fake)
    await fake.faults({"path_prefix": "/serverjson.asp/plant_new", "mode": "apply_then_timeout", "count": 1})
    before = await fake.state()
    try:
        plant = await new_plant(database, farm)
        await deliver(engine, connectors, iid)
    finally:
        await fake.faults()
    after = await fake.state()

    assert (
        after["faults"]["fired"].get("apply_then_timeout", 0)
        == before["faults"]["fired"].get("apply_then_timeout", 0) + 1
    )
    assert after["create_counts"]["plant"] == before["create_counts"].get("plant", 0) + 1
    assert after["nonce_replays"] == before["nonce_replays"] + 1
    assert await deliveries(engine, iid) == [("plant.create", "DELIVERED", 2)]
    barcode = await remote_id(engine, iid, plants.plant_name(farm.license_id, plant.id))
    assert barcode is not None
    assert len(mine(after, "plants", {barcode})) == 1
    new_ids = {r["id"] for r in after["records"]["plants"]} - {r["id"] for r in before["records"]["plants"]}
    assert new_ids == {barcode}


async def test_an_expired_session_is_reopened_transparently(
    database: Database,
    farm: Farm,
    engine: AsyncEngine,
    connectors: Connectors,
    keyring: KeyRing,
    fake: Fake,
) -> None:
    iid = await add_integration(database, farm, keyring, fake)
    first = await new_plant(database, farm)
    await deliver(engine, connectors, iid)
    logins = (await fake.state())["logins"]

    expired = (await fake.admin.post("/_fake/sessions/expire")).raise_for_status().json()["expired"]
    assert expired >= 1
    second = await new_plant(database, farm)
    await deliver(engine, connectors, iid)

    state = await fake.state()
    assert state["logins"] == logins + 1  # logged in again once
    assert await deliveries(engine, iid) == [
        ("plant.create", "DELIVERED", 1),
        ("plant.create", "DELIVERED", 1),
    ]
    codes = {await remote_id(engine, iid, plants.plant_name(farm.license_id, p.id)) for p in (first, second)}
    assert None not in codes
    assert len(mine(state, "plants", {c for c in codes if c})) == 2
    async with engine.connect() as conn:
        statuses = [
            r[0]
            for r in await conn.execute(
                select(im.IntegrationLog.status)
                .where(im.IntegrationLog.integration_id == iid)
                .order_by(im.IntegrationLog.exchange_time)
            )
        ]
    assert "ERROR" in statuses  # the refused call is in the log, then the login and the retry succeed
    assert statuses[-1] == "SUCCESS"


@dataclass(frozen=True)
class Catalogue:
    """An inventory section and two bulk products by weight of a farm."""

    vault: str
    flower: str
    oil: str


async def catalogue(database: Database, farm: Farm) -> Catalogue:
    async def run(uow: UnitOfWork) -> Catalogue:
        vault = await registry.create_scoped(
            uow,
            farm.license_id,
            models.Section(display_name="Vault", type=2, active=True, version=1),
            "section",
            "sections",
        )
        ids = []
        for name, product_type in (("Dry Flower", FLOWER_DRY), ("CO2 Oil", CO2_OIL)):
            product = models.Product(
                display_name=name,
                product_type=product_type,
                package_type=1,
                bulk_unit=1,
                unit_size_value=None,
                unit_size_unit=0,
                pack_unit_count=0,
                serving_size_value=None,
                serving_size_unit=0,
                servings_per_unit=0,
            )
            ids.append(
                (await registry.create_scoped(uow, farm.license_id, product, "product", "products")).id
            )
        return Catalogue(vault.id, ids[0], ids[1])

    return await database.write(CTX, run)


async def new_lot(database: Database, farm: Farm, c: Catalogue, grams: str) -> models.Lot:
    async def run(uow: UnitOfWork) -> models.Lot:
        new = inventory.NewLot(
            product_id=c.flower,
            section_id=c.vault,
            quantity=parse(grams, Unit.GRAM),
            variety_id=farm.variety_id,
        )
        return await inventory.create_lot(uow, farm.license_id, new)

    return await database.write(CTX, run)


async def test_a_lot_and_its_adjustment_reach_biotrack_as_inventory(
    database: Database,
    farm: Farm,
    engine: AsyncEngine,
    connectors: Connectors,
    keyring: KeyRing,
    fake: Fake,
) -> None:
    iid = await add_integration(database, farm, keyring, fake)
    lot = await new_lot(database, farm, await catalogue(database, farm), "250.5")

    async def steal(uow: UnitOfWork) -> None:
        change = inventory.Adjustment(
            lot_rules.Change.DECREASE, parse("0.25", Unit.GRAM), lot_rules.AdjustReason.THEFT, "case 7"
        )
        await inventory.adjust_lot(uow, farm.license_id, lot.id, change, "")

    await database.write(CTX, steal)
    await deliver(engine, connectors, iid)

    assert [d[:2] for d in await deliveries(engine, iid)] == [
        ("lot.create", "DELIVERED"),
        ("lot.adjust", "DELIVERED"),
    ]
    barcode = await remote_id(engine, iid, inventory.lot_name(farm.license_id, lot.id))
    assert barcode is not None
    state = await fake.state()
    (item,) = mine(state, "inventory", {barcode})
    assert item["invtype"] == 6
    assert item["strain"] == "Haze"
    assert item["room"] == "Vault"
    assert Decimal(item["remaining_quantity"]) == Decimal("250.25")
    (adjusted,) = [a for a in state["records"]["adjustments"] if a["barcodeid"] == barcode]
    assert adjusted["type"] == 2  # Theft
    assert adjusted["quantity"] == "250.250000"
    assert adjusted["reason"] == "Theft: case 7"


# -- the fake enforces what BioTrackTHC enforces ----------------------------------------------


async def call(fake: Fake, doc: dict[str, Any]) -> dict[str, Any]:
    answer = await fake.admin.post("/serverjson.asp", json=doc)
    assert answer.status_code == 200  # application errors are HTTP 200, as BioTrackTHC answers
    body: dict[str, Any] = answer.json()
    return body


async def session(fake: Fake) -> str:
    doc = {"API": "4.0", "action": "login", "license_number": UBI, "username": USER, "password": PASSWORD}
    answer = await call(fake, doc)
    assert answer["success"] == 1
    return str(answer["sessionid"])


async def test_the_fake_refuses_what_biotrack_refuses(fake: Fake) -> None:
    sid = await session(fake)
    base = {"API": "4.0", "sessionid": sid}
    plant_new = {**base, "action": "plant_new", "room": "A", "quantity": 2, "strain": "Haze", "source": ""}

    assert (await call(fake, {**base, "API": "3.0", "action": "sync_check", "location": LOCATION}))[
        "success"
    ] == 0
    no_session = await call(fake, {**plant_new, "sessionid": "nope", "nonce": "n0", "location": LOCATION})
    assert no_session["success"] == 0
    assert "session" in no_session["error"].lower()
    no_nonce = await call(fake, {**plant_new, "location": LOCATION})
    assert "nonce" in no_nonce["error"]
    missing = await call(fake, {**plant_new, "nonce": "n1"})
    assert missing["success"] == 0
    assert "location" in missing["error"]
    wrong_type = await call(fake, {**plant_new, "nonce": "n1", "location": LOCATION, "quantity": "two"})
    assert "quantity" in wrong_type["error"]
    elsewhere = await call(fake, {**plant_new, "nonce": "n1", "location": "9999"})
    assert "9999" in elsewhere["error"]

    made = await call(fake, {**plant_new, "nonce": "n1", "location": LOCATION})
    assert made["success"] == 1
    first, second = made["barcode_id"]
    assert len(first) == 16
    assert int(second) > int(first)
    assert await call(fake, {**plant_new, "nonce": "n1", "location": LOCATION}) == made  # replayed
    reused = await call(fake, {**plant_new, "nonce": "n1", "location": LOCATION, "strain": "Kush"})
    assert "nonce reuse" in reused["error"]

    unscheduled = await call(fake, {**base, "action": "plant_destroy", "nonce": "n2", "barcodeid": [first]})
    assert "not scheduled" in unscheduled["error"]
    adjust = {"barcodeid": first, "quantity": 1.5, "quantity_uom": "g", "type": 1, "reason": "count"}
    six = await call(fake, {**base, "action": "inventory_adjust", "nonce": "n3", "data": adjust})
    assert "data.quantity" in six["error"]

    listed = await call(fake, {**base, "action": "sync_plant", "download": 1})
    assert {first, second} <= {p["id"] for p in listed["plant"]}
    state = await fake.state()
    assert state["create_counts"] == {"plant": 2}
    assert state["nonce_replays"] == 1


async def test_the_fake_injects_faults_per_action(fake: Fake) -> None:
    sid = await session(fake)
    await fake.faults({"path_prefix": "/serverjson.asp/sync_check", "mode": "rate_limit", "delay_s": 3})
    doc = {"API": "4.0", "sessionid": sid, "action": "sync_check", "location": LOCATION}
    limited = await fake.admin.post("/serverjson.asp", json=doc)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "3"
    await fake.faults({"path_prefix": "/serverjson.asp/sync_check", "mode": "error500", "count": 1})
    assert (await fake.admin.post("/serverjson.asp", json=doc)).status_code == 500
    assert (await call(fake, doc))["success"] == 1  # count 1: the next one goes through
    assert (await session(fake)) != sid  # login was never targeted


async def test_a_conversion_reaches_biotrack_as_inventory_convert_of_its_inputs(
    database: Database,
    farm: Farm,
    engine: AsyncEngine,
    connectors: Connectors,
    keyring: KeyRing,
    fake: Fake,
) -> None:
    iid = await add_integration(database, farm, keyring, fake)
    c = await catalogue(database, farm)
    a, b = await new_lot(database, farm, c, "100"), await new_lot(database, farm, c, "50")

    async def convert(uow: UnitOfWork) -> models.Lot:
        out, _ = await inventory.convert_lots(
            uow,
            farm.license_id,
            [
                inventory.ConversionInput(a.id, parse("60", Unit.GRAM)),
                inventory.ConversionInput(b.id, parse("40", Unit.GRAM)),
            ],
            inventory.NewLot(product_id=c.oil, section_id=c.vault, quantity=parse("20", Unit.GRAM)),
            None,
            parse("80", Unit.GRAM),
            "CO2 run 1",
        )
        return out

    # Delivered together: the conversion waits (retried) until both inputs have their barcodes.
    out = await database.write(CTX, convert)
    await deliver(engine, connectors, iid)

    states = await deliveries(engine, iid)
    assert {s[1] for s in states} == {"DELIVERED"}
    assert sorted(s[0] for s in states) == [
        "lot.convert",
        "lot.convert",
        "lot.create",
        "lot.create",
        "lot.create_by_conversion",
    ]
    codes = {}
    for lot in (a, b, out):
        code = await remote_id(engine, iid, inventory.lot_name(farm.license_id, lot.id))
        assert code is not None
        codes[lot.id] = code
    state = await fake.state()
    items = {i["id"]: i for i in mine(state, "inventory", set(codes.values()))}
    assert Decimal(items[codes[a.id]]["remaining_quantity"]) == Decimal(40)
    assert Decimal(items[codes[b.id]]["remaining_quantity"]) == Decimal(10)
    oil = items[codes[out.id]]
    assert oil["invtype"] == 18
    assert Decimal(oil["remaining_quantity"]) == Decimal(20)
    assert sorted(oil["parentid"]) == sorted([codes[a.id], codes[b.id]])
    assert oil["waste"] == "80.000000"
    assert oil["strain"] == "Haze"
