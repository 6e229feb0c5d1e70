"""Inventory use cases against real PostgreSQL: concurrency, atomicity, idempotency, lineage, audit."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import any_, func, literal, select

from seedline_server.domain import lot as rules
from seedline_server.domain import plant as plant_rules
from seedline_server.domain.errors import (
    InsufficientQuantity,
    MassBalanceViolation,
    NotFound,
    ReferenceInvalid,
)
from seedline_server.domain.quantity import Dimension, Quantity, Unit, parse
from seedline_server.service import harvest, inventory, lineage, plants, registry
from seedline_server.service.uow import Database, Replay, UnitOfWork
from seedline_server.store import models
from tests.integration.conftest import CTX, Farm, make_farm

pytestmark = pytest.mark.asyncio(loop_scope="session")

SEED_TYPE = "018NY6XC00PT3EZZ4GN6105M64"  # OpenTHC "Bulk Plant / Clone / Seed"
FLOWER_TYPE = "018NY6XC00PTHE7GWB4QTG4JKZ"


@dataclass(frozen=True)
class Store:
    farm: Farm
    vault: str  # inventory section
    quarantine: str
    clones: str  # bulk product counted in ea
    flower: str  # bulk product by weight
    jar: str  # each product, 1 g units


def g(value: str) -> Quantity:
    return parse(value, Unit.GRAM)


def ea(value: int) -> Quantity:
    return Quantity(Decimal(value), Dimension.COUNT)


@pytest_asyncio.fixture(loop_scope="session")
async def store(database: Database) -> Store:
    farm = await make_farm(database, f"INV-{uuid.uuid4().hex[:10]}")

    async def run(uow: UnitOfWork) -> Store:
        lic = farm.license_id

        async def section(name: str, kind: int) -> str:
            row = models.Section(display_name=name, type=kind, active=True, version=1)
            return (await registry.create_scoped(uow, lic, row, "section", "sections")).id

        async def product(name: str, ptype: str, package: int, bulk: int, size: Decimal | None) -> str:
            row = models.Product(
                display_name=name,
                product_type=ptype,
                package_type=package,
                bulk_unit=bulk,
                unit_size_value=size,
                unit_size_unit=1 if size is not None else 0,
                pack_unit_count=0,
                serving_size_value=None,
                serving_size_unit=0,
                servings_per_unit=0,
            )
            return (await registry.create_scoped(uow, lic, row, "product", "products")).id

        return Store(
            farm=farm,
            vault=await section("Vault", 2),
            quarantine=await section("Quarantine", 3),
            clones=await product("Clones", SEED_TYPE, 1, 9, None),
            flower=await product("Flower", FLOWER_TYPE, 1, 1, None),
            jar=await product("Jar 1 g", FLOWER_TYPE, 2, 9, Decimal(1)),
        )

    return await database.write(CTX, run)


async def new_lot(database: Database, s: Store, product: str, qty: Quantity, section: str = "") -> models.Lot:
    async def run(uow: UnitOfWork) -> models.Lot:
        return await inventory.create_lot(
            uow,
            s.farm.license_id,
            inventory.NewLot(product_id=product, section_id=section or s.vault, quantity=qty),
        )

    return await database.write(CTX, run)


async def read_lot(database: Database, s: Store, lot_id: str) -> models.Lot:
    async def run(uow: UnitOfWork) -> models.Lot:
        return await inventory.get_lot(uow, s.farm.license_id, lot_id)

    return await database.read(CTX, run)


async def test_hammering_one_lot_loses_no_update_and_never_goes_negative(
    database: Database, store: Store
) -> None:
    lot = await new_lot(database, store, store.flower, g("100"))
    lic = store.farm.license_id

    async def decrease(n: int) -> str:
        async def run(uow: UnitOfWork) -> None:
            await inventory.adjust_lot(
                uow,
                lic,
                lot.id,
                inventory.Adjustment(rules.Change.DECREASE, g("1.5"), rules.AdjustReason.SCALE_VARIANCE),
                "",
            )

        try:
            await database.write(CTX, run)
            return "ok"
        except InsufficientQuantity:
            return "short"

    async def split(n: int) -> str:
        async def run(uow: UnitOfWork) -> None:
            await inventory.split_lot(uow, lic, lot.id, inventory.SplitSpec(quantity=g("2.25")), "")

        try:
            await database.write(CTX, run)
            return "split"
        except (InsufficientQuantity, rules.ResourceLocked):
            return "short"

    jobs = [decrease(n) for n in range(40)] + [split(n) for n in range(20)]
    outcomes = await asyncio.gather(*jobs)
    done = await read_lot(database, store, lot.id)
    expected = (
        Decimal(100) - Decimal("1.5") * outcomes.count("ok") - Decimal("2.25") * outcomes.count("split")
    )
    assert done.quantity == expected
    assert done.quantity >= 0
    # 100 g cannot feed 40 x 1.5 g + 20 x 2.25 g = 105 g: some calls must have been refused.
    assert outcomes.count("short") >= 1

    async def children(uow: UnitOfWork) -> Decimal:
        total = await uow.session.scalar(
            select(func.coalesce(func.sum(models.Lot.quantity), 0)).where(
                literal(inventory.lot_name(lic, lot.id)) == any_(models.Lot.source_lots)
            )
        )
        return Decimal(total)

    # Every gram is accounted for: what the splits created is exactly what left the lot for them.
    assert await database.read(CTX, children) == Decimal("2.25") * outcomes.count("split")


async def test_failed_conversion_changes_nothing(database: Database, store: Store) -> None:
    a = await new_lot(database, store, store.flower, g("10"))
    b = await new_lot(database, store, store.flower, g("5"))
    lic = store.farm.license_id

    async def convert(second: str, waste: str) -> None:
        async def run(uow: UnitOfWork) -> None:
            await inventory.convert_lots(
                uow,
                lic,
                [
                    inventory.ConversionInput(a.id, g("10")),
                    inventory.ConversionInput(b.id, g(second)),
                ],
                inventory.NewLot(product_id=store.jar, section_id=store.vault, quantity=ea(12)),
                None,
                g(waste),
                "",
            )

        await database.write(CTX, run)

    async def count_lots(uow: UnitOfWork) -> int:
        return int(await uow.session.scalar(select(func.count()).where(models.Lot.license_id == lic)) or 0)

    before = await database.read(CTX, count_lots)
    with pytest.raises(MassBalanceViolation) as err:
        await convert("5", "2.9998")  # 15 g in, 12 g + 2.9998 g out: 0.0002 g unaccounted for
    assert err.value.metadata["difference_g"] == "0.0002"
    with pytest.raises(InsufficientQuantity):
        await convert("6", "4")  # b holds only 5 g; a alone would have been fine
    assert (await read_lot(database, store, a.id)).quantity == Decimal(10)
    assert (await read_lot(database, store, b.id)).quantity == Decimal(5)
    assert await database.read(CTX, count_lots) == before
    await convert("5", "3")
    assert (await read_lot(database, store, a.id)).status == rules.Status.DEPLETED.value
    assert await database.read(CTX, count_lots) == before + 1


async def test_retry_with_the_same_request_id_adjusts_once(database: Database, store: Store) -> None:
    lot = await new_lot(database, store, store.flower, g("50"))
    ctx = dataclasses.replace(CTX, request_id="adjust-once-" + uuid.uuid4().hex)
    replay: Replay[str] = Replay("AdjustLot", "fp", lambda v: v.encode(), lambda b: b.decode())

    async def run(uow: UnitOfWork) -> str:
        row = await inventory.adjust_lot(
            uow,
            store.farm.license_id,
            lot.id,
            inventory.Adjustment(rules.Change.DECREASE, g("7"), rules.AdjustReason.MOISTURE_LOSS, "dried"),
            "",
        )
        return str(row.quantity)

    first, second = await asyncio.gather(database.write(ctx, run, replay), database.write(ctx, run, replay))
    assert first == second == "43.0000"
    assert (await read_lot(database, store, lot.id)).quantity == Decimal(43)

    async def trail(uow: UnitOfWork) -> tuple[int, int]:
        audits = await uow.session.scalar(
            select(func.count()).where(
                models.AuditEvent.resource == inventory.lot_name(store.farm.license_id, lot.id),
                models.AuditEvent.action == "ADJUST",
            )
        )
        log = await uow.session.scalar(select(func.count()).where(models.LotAdjustment.lot_id == lot.id))
        return int(audits or 0), int(log or 0)

    assert await database.read(CTX, trail) == (1, 1)


async def test_planting_takes_from_the_lot_in_the_same_transaction(database: Database, store: Store) -> None:
    clones = await new_lot(database, store, store.clones, ea(5))
    lic = store.farm.license_id
    source = inventory.lot_name(lic, clones.id)
    template = plants.NewPlant(
        display_name="",
        variety_id=store.farm.variety_id,
        section_id=store.farm.section_id,
        source_lot=source,
        batch="b1",
        phase=plant_rules.Phase.CLONE,
        plant_time=None,
    )

    async def plant(count: int) -> list[models.Plant]:
        async def run(uow: UnitOfWork) -> list[models.Plant]:
            return await plants.create_plants(uow, lic, template, count)

        return await database.write(CTX, run)

    async def plant_count(uow: UnitOfWork) -> int:
        return int(
            await uow.session.scalar(select(func.count()).where(models.Plant.source_lot == source)) or 0
        )

    with pytest.raises(InsufficientQuantity):
        await plant(6)
    assert await database.read(CTX, plant_count) == 0
    assert (await read_lot(database, store, clones.id)).quantity == 5
    made = await plant(5)
    lot = await read_lot(database, store, clones.id)
    assert (lot.quantity, lot.status) == (0, rules.Status.DEPLETED.value)
    assert await database.read(CTX, plant_count) == 5

    async def forward(uow: UnitOfWork) -> lineage.Trace:
        return await lineage.trace(uow, source, True, 10, 100)

    found = await database.read(CTX, forward)
    assert {n.name for n in found.nodes if n.depth == 1} == {plants.plant_name(lic, p.id) for p in made}
    assert {e.operation for e in found.edges} == {lineage.Op.PLANTING.value}

    flower = await new_lot(database, store, store.flower, g("10"))

    async def wrong_kind(uow: UnitOfWork) -> None:
        await plants.create_plants(
            uow, lic, dataclasses.replace(template, source_lot=inventory.lot_name(lic, flower.id)), 1
        )

    with pytest.raises(ReferenceInvalid):
        await database.write(CTX, wrong_kind)


async def test_harvest_to_lots_and_trace_back_to_the_plants(database: Database, store: Store) -> None:
    lic = store.farm.license_id
    clones = await new_lot(database, store, store.clones, ea(3))

    async def run(uow: UnitOfWork) -> tuple[list[models.Plant], harvest.Harvested, list[models.Lot]]:
        made = await plants.create_plants(
            uow,
            lic,
            plants.NewPlant(
                "",
                store.farm.variety_id,
                store.farm.section_id,
                inventory.lot_name(lic, clones.id),
                "",
                plant_rules.Phase.CLONE,
                None,
            ),
            3,
        )
        for p in made:
            await plants.change_phase(uow, lic, p.id, plant_rules.Phase.VEGETATIVE, None, "")
            await plants.change_phase(uow, lic, p.id, plant_rules.Phase.FLOWERING, None, "")
        first = await harvest.collect_raw(
            uow, lic, "", "H1", [harvest.RawWeight(made[0].id, parse("1.5", Unit.KILOGRAM))], False, None
        )
        await harvest.collect_raw(
            uow,
            lic,
            first.collection.id,
            "",
            [harvest.RawWeight(p.id, g("1000")) for p in made],
            True,
            None,
        )
        with pytest.raises(MassBalanceViolation):
            async with uow.session.begin_nested():
                await harvest.collect_net(
                    uow,
                    lic,
                    first.collection.id,
                    [harvest.NetOutput(store.flower, g("4000"), store.vault)],
                    g("501"),
                    None,
                )
        done, lots = await harvest.collect_net(
            uow,
            lic,
            first.collection.id,
            [harvest.NetOutput(store.flower, g("900"), store.vault)],
            g("100"),
            None,
        )
        return made, done, lots

    made, done, lots = await database.write(CTX, run)
    assert done.collection.total_wet == Decimal(4500)
    assert len(done.weights) == 4
    assert done.collection.state == harvest.CLOSED
    (lot,) = lots
    assert lot.quantity == Decimal(900)
    assert lot.variety_id == store.farm.variety_id

    async def back(uow: UnitOfWork) -> lineage.Trace:
        return await lineage.trace(uow, inventory.lot_name(lic, lot.id), False, 10, 100)

    found = await database.read(CTX, back)
    by_depth = {n.name: n.depth for n in found.nodes}
    assert by_depth[harvest.collection_name(lic, done.collection.id)] == 1
    assert all(by_depth[plants.plant_name(lic, p.id)] == 2 for p in made)
    assert by_depth[inventory.lot_name(lic, clones.id)] == 3
    assert not found.truncated

    async def shallow(uow: UnitOfWork) -> lineage.Trace:
        return await lineage.trace(uow, inventory.lot_name(lic, lot.id), False, 2, 100)

    cut = await database.read(CTX, shallow)
    assert cut.truncated
    assert max(n.depth for n in cut.nodes) == 2

    async def narrow(uow: UnitOfWork) -> lineage.Trace:
        return await lineage.trace(uow, inventory.lot_name(lic, lot.id), False, 10, 3)

    few = await database.read(CTX, narrow)
    assert few.truncated
    assert len(few.nodes) == 3
    assert [n.depth for n in few.nodes][:2] == [0, 1]


async def test_unknown_lot_is_not_found_and_other_license_lots_are_invisible(
    database: Database, store: Store
) -> None:
    lot = await new_lot(database, store, store.flower, g("1"))
    other = await make_farm(database, f"INV-{uuid.uuid4().hex[:10]}")

    async def peek(uow: UnitOfWork) -> models.Lot:
        return await inventory.get_lot(uow, other.license_id, lot.id)

    with pytest.raises(NotFound):
        await database.read(CTX, peek)
