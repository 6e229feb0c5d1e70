"""Plant use cases against real PostgreSQL: concurrency, idempotency, audit, atomicity."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from seedline_server.domain import plant as rules
from seedline_server.domain.errors import EtagMismatch, InvalidArgument, NotFound, RequestIdReused
from seedline_server.service import audit, plants, registry
from seedline_server.service.uow import GENESIS_HASH, Database, Replay, UnitOfWork
from seedline_server.store import models
from tests.integration.conftest import CTX, Farm

pytestmark = pytest.mark.asyncio(loop_scope="session")


def new_plant(farm: Farm, name: str = "") -> plants.NewPlant:
    return plants.NewPlant(
        display_name=name,
        variety_id=farm.variety_id,
        section_id=farm.section_id,
        source_lot="",
        batch="",
        phase=rules.Phase.CLONE,
        plant_time=None,
    )


async def create(database: Database, farm: Farm, count: int = 1) -> list[models.Plant]:
    async def run(uow: UnitOfWork) -> list[models.Plant]:
        return await plants.create_plants(uow, farm.license_id, new_plant(farm), count)

    return await database.write(CTX, run)


async def test_concurrent_updates_with_one_etag_let_exactly_one_win(database: Database, farm: Farm) -> None:
    (plant,) = await create(database, farm)
    tag = registry.etag(plant.id, plant.version)

    async def rename(n: int) -> str:
        async def run(uow: UnitOfWork) -> models.Plant:
            return await plants.update_plant(
                uow, farm.license_id, plant.id, {"display_name": f"n{n}"}, ["display_name"], tag
            )

        try:
            await database.write(CTX, run)
            return "ok"
        except EtagMismatch:
            return "stale"

    outcomes = await asyncio.gather(*(rename(n) for n in range(8)))
    assert sorted(outcomes) == ["ok"] + ["stale"] * 7


async def test_request_id_replays_first_result_under_concurrency(database: Database, farm: Farm) -> None:
    replay = Replay[list[str]](
        scope="it.create",
        fingerprint="f1",
        encode=lambda ids: ",".join(ids).encode(),
        decode=lambda b: b.decode().split(","),
    )
    ctx = dataclasses.replace(CTX, request_id="req-123")

    async def run(uow: UnitOfWork) -> list[str]:
        return [p.id for p in await plants.create_plants(uow, farm.license_id, new_plant(farm), 2)]

    results = await asyncio.gather(*(database.write(ctx, run, replay) for _ in range(5)))
    assert all(r == results[0] for r in results)

    async def count(uow: UnitOfWork) -> int:
        return int(
            await uow.session.scalar(
                select(func.count())
                .select_from(models.Plant)
                .where(models.Plant.license_id == farm.license_id)
            )
            or 0
        )

    assert await database.read(CTX, count) == 2
    other = dataclasses.replace(replay, fingerprint="f2")
    with pytest.raises(RequestIdReused):
        await database.write(ctx, run, other)
    # Another caller's identical request with the same id is its own request, not a replay.
    stranger = dataclasses.replace(
        ctx, principal=dataclasses.replace(ctx.principal, name="users/someone-else")
    )
    theirs = await database.write(stranger, run, replay)
    assert set(theirs).isdisjoint(results[0])
    assert await database.read(CTX, count) == 4
    assert await database.write(stranger, run, replay) == theirs


async def test_failed_batch_writes_nothing(database: Database, farm: Farm) -> None:
    bad = dataclasses.replace(new_plant(farm), variety_id="01JD0000000000000000000000")

    async def run(uow: UnitOfWork) -> list[models.Plant]:
        return await plants.create_plants(uow, farm.license_id, bad, 10)

    with pytest.raises(NotFound):
        await database.write(CTX, run)

    async def counts(uow: UnitOfWork) -> tuple[int, int]:
        n_plants = await uow.session.scalar(
            select(func.count()).select_from(models.Plant).where(models.Plant.license_id == farm.license_id)
        )
        n_audit = await uow.session.scalar(
            select(func.count())
            .select_from(models.AuditEvent)
            .where(
                models.AuditEvent.license_id == farm.license_id, models.AuditEvent.resource.like("%/plants/%")
            )
        )
        return int(n_plants or 0), int(n_audit or 0)

    assert await database.read(CTX, counts) == (0, 0)


async def test_new_plant_must_start_as_clone_or_seedling(database: Database, farm: Farm) -> None:
    async def run(uow: UnitOfWork) -> list[models.Plant]:
        return await plants.create_plants(
            uow, farm.license_id, dataclasses.replace(new_plant(farm), phase=rules.Phase.FLOWERING)
        )

    with pytest.raises(InvalidArgument):
        await database.write(CTX, run)


async def test_audit_chain_links_and_hashes_verify(database: Database, farm: Farm) -> None:
    await create(database, farm, 3)

    async def rows(uow: UnitOfWork) -> list[models.AuditEvent]:
        ev = models.AuditEvent
        stmt = select(ev).where(ev.license_id == farm.license_id).order_by(ev.sequence)
        return list((await uow.session.scalars(stmt)).all())

    events = await database.read(CTX, rows)
    assert events[0].prev_hash == GENESIS_HASH
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    for prev, event in itertools.pairwise(events):
        assert event.prev_hash == prev.hash
    for event in events:
        assert audit.row_hash(event, event.prev_hash) == event.hash, event.id


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET principal = 'mallory' WHERE seq = (SELECT max(seq) FROM audit_events)",
        "DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)",
        "TRUNCATE audit_events",
    ],
)
async def test_audit_events_are_append_only_in_postgres(
    database: Database, farm: Farm, statement: str
) -> None:
    async def tamper(uow: UnitOfWork) -> None:
        await uow.session.execute(text(statement))

    with pytest.raises(Exception, match="append-only"):
        await database.write(CTX, tamper)


async def test_keyset_pages_are_stable_while_rows_are_inserted(database: Database, farm: Farm) -> None:
    await create(database, farm, 30)

    async def page(uow: UnitOfWork, token: str) -> registry.Page[models.Plant]:
        return await plants.list_plants(uow, farm.license_id, plants.PlantFilter(), 10, token)

    first = await database.read(CTX, lambda uow: page(uow, ""))
    await create(database, farm, 5)  # inserted after the first page was read
    seen = [p.id for p in first.rows]
    token = first.next_page_token
    while token:
        nxt = await database.read(CTX, lambda uow, t=token: page(uow, t))  # type: ignore[misc]
        seen.extend(p.id for p in nxt.rows)
        token = nxt.next_page_token
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) == 35


async def test_largest_admissible_quantity_is_stored_exactly(database: Database, farm: Farm) -> None:
    from seedline_server.domain.quantity import Unit, parse

    # The largest amount stored (what a Quantity's 12 integer digits can carry back), reached from
    # the heaviest unit.
    biggest = parse("2204622621.848775586", Unit.POUND)
    assert biggest.amount == Decimal("999999999999.9999")

    async def run(uow: UnitOfWork) -> models.Product:
        product = models.Product(
            display_name="Silo",
            product_type="018NY6XC00PT0000000000BULK",
            package_type=2,
            bulk_unit=9,
            unit_size_value=biggest.amount,
            unit_size_unit=1,
            pack_unit_count=0,
            serving_size_value=None,
            serving_size_unit=0,
            servings_per_unit=0,
        )
        return await registry.create_scoped(uow, farm.license_id, product, "product", "products")

    created = await database.write(CTX, run)

    async def read(uow: UnitOfWork) -> models.Product:
        return await registry.get_scoped(
            uow, models.Product, farm.license_id, created.id, "product", "products"
        )

    assert (await database.read(CTX, read)).unit_size_value == biggest.amount
