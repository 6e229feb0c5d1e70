"""Transfer use cases against real PostgreSQL: no oversell, atomic refusals, cross-license lineage,
and the watch feed (events only for committed transactions, one LISTEN connection)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from seedline_server.domain import lot as lot_rules
from seedline_server.domain import transfer as rules
from seedline_server.domain.errors import InsufficientQuantity, LicenseNotPermitted
from seedline_server.domain.quantity import Dimension, Quantity
from seedline_server.service import inventory, lineage, registry, transfers
from seedline_server.service.context import Signature
from seedline_server.service.uow import Database, UnitOfWork, now
from seedline_server.service.watch import TransferFeed
from seedline_server.store import db, models
from tests.integration.conftest import CTX, make_farm

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLONE_TYPE = "018NY6XC00PT3EZZ4GN6105M64"
SIGNED = Signature(signer="users/tester", meaning=1, reason="ship it")


def encode(view: transfers.View) -> bytes:
    return f"{view.transfer.id}:{view.transfer.state}".encode()


def ea(n: int) -> Quantity:
    return Quantity(Decimal(n), Dimension.COUNT)


async def farm_with_clones(database: Database, clones: int, license_type: int = 1) -> tuple[str, str, str]:
    """A license (of ``license_type``) with an inventory section and a lot of clones: ids."""
    farm = await make_farm(database, f"TR-{uuid.uuid4().hex[:10]}")

    async def run(uow: UnitOfWork) -> tuple[str, str, str]:
        lic = await uow.session.get(models.License, farm.license_id)
        assert lic is not None
        lic.type = license_type
        vault = await registry.create_scoped(
            uow,
            farm.license_id,
            models.Section(display_name="Vault", type=2, active=True, version=1),
            "s",
            "sections",
        )
        product = await registry.create_scoped(
            uow,
            farm.license_id,
            models.Product(
                display_name="Clones",
                product_type=CLONE_TYPE,
                package_type=1,
                bulk_unit=9,
                unit_size_value=None,
                unit_size_unit=0,
                pack_unit_count=0,
                serving_size_value=None,
                serving_size_unit=0,
                servings_per_unit=0,
            ),
            "p",
            "products",
        )
        lot = await inventory.create_lot(
            uow,
            farm.license_id,
            inventory.NewLot(product_id=product.id, section_id=vault.id, quantity=ea(clones)),
        )
        return farm.license_id, vault.id, lot.id

    return await database.write(CTX, run)


async def draft(database: Database, source: str, target: str, lot_id: str, n: int) -> transfers.View:
    t = now()

    async def run(uow: UnitOfWork) -> transfers.View:
        return await transfers.create_transfer(
            uow,
            source,
            transfers.Draft(
                target_license_id=target,
                planned_depart=t + timedelta(hours=1),
                planned_arrive=t + timedelta(hours=3),
                vehicle={"make": "Ford", "model": "Transit", "licensePlate": "ABC123"},
                driver={"displayName": "Dee Driver", "licenseNumber": "D123"},
            ),
            [transfers.NewItem(lot_id, ea(n))],
            encode,
        )

    return await database.write(CTX, run)


async def commit(database: Database, view: transfers.View) -> transfers.View:
    async def run(uow: UnitOfWork) -> transfers.View:
        return await transfers.commit(
            uow,
            view.transfer.source_license_id,
            view.transfer.id,
            SIGNED,
            transfers.etag_of(view.transfer),
            encode,
        )

    return await database.write(CTX, run)


async def lot_quantity(database: Database, license_id: str, lot_id: str) -> tuple[Decimal, int]:
    async def run(uow: UnitOfWork) -> tuple[Decimal, int]:
        row = await inventory.get_lot(uow, license_id, lot_id)
        return row.quantity, row.status

    return await database.read(CTX, run)


async def test_concurrent_commits_never_oversell(database: Database) -> None:
    source, _, lot = await farm_with_clones(database, 10)
    target, _, _ = await farm_with_clones(database, 1)
    drafts = [await draft(database, source, target, lot, 3) for _ in range(6)]

    async def attempt(view: transfers.View) -> str:
        try:
            await commit(database, view)
            return "committed"
        except InsufficientQuantity:
            return "short"

    outcomes = await asyncio.gather(*(attempt(v) for v in drafts))
    assert sorted(outcomes) == ["committed"] * 3 + ["short"] * 3
    assert await lot_quantity(database, source, lot) == (Decimal(1), lot_rules.Status.AVAILABLE.value)


async def test_refused_commit_changes_nothing(database: Database) -> None:
    source, _, lot = await farm_with_clones(database, 10)
    retail, _, _ = await farm_with_clones(database, 1, license_type=rules.LicenseType.RETAIL.value)
    view = await draft(database, source, retail, lot, 4)
    with pytest.raises(LicenseNotPermitted):
        await commit(database, view)
    assert await lot_quantity(database, source, lot) == (Decimal(10), lot_rules.Status.AVAILABLE.value)

    async def state(uow: UnitOfWork) -> int:
        return (await transfers.get_transfer(uow, source, view.transfer.id)).transfer.state

    assert await database.read(CTX, state) == rules.State.DRAFT.value


async def test_whole_lot_in_transit_then_received_across_licenses(database: Database) -> None:
    source, _, lot = await farm_with_clones(database, 5)
    target, target_vault, _ = await farm_with_clones(database, 1)
    view = await commit(database, await draft(database, source, target, lot, 5))
    assert await lot_quantity(database, source, lot) == (Decimal(0), lot_rules.Status.IN_TRANSIT.value)
    (item,) = view.items

    async def accept(uow: UnitOfWork) -> transfers.View:
        return await transfers.accept(
            uow,
            source,
            view.transfer.id,
            [transfers.Received(item.id, ea(5))],
            target,
            target_vault,
            "",
            encode,
        )

    done = await database.write(CTX, accept)
    assert done.transfer.state == rules.State.ACCEPTED.value
    assert await lot_quantity(database, source, lot) == (Decimal(0), lot_rules.Status.TRANSFERRED.value)
    received = done.items[0].received_lot
    assert received.startswith(f"licenses/{target}/lots/")

    async def forward(uow: UnitOfWork) -> lineage.Trace:
        return await lineage.trace(uow, inventory.lot_name(source, lot), True, 10, 100)

    found = await database.read(CTX, forward)
    assert {n.name: n.depth for n in found.nodes}[received] == 2


async def test_feed_delivers_committed_events_only_with_one_connection(
    database: Database, migrated: str
) -> None:
    source, _, lot = await farm_with_clones(database, 10)
    target, _, _ = await farm_with_clones(database, 1)
    feed = TransferFeed(database, db.libpq_url(migrated), CTX, poll_interval=30)
    await feed.start()
    try:
        watchers = [feed.subscribe(target) for _ in range(25)] + [feed.subscribe(source)]

        async def rolled_back(uow: UnitOfWork) -> None:
            await transfers.create_transfer(
                uow, source, transfers.Draft(target_license_id=target), [], encode
            )
            raise RuntimeError("roll back")

        with pytest.raises(RuntimeError):
            await database.write(CTX, rolled_back)
        view = await commit(database, await draft(database, source, target, lot, 2))
        # The source sees CREATED then COMMITTED; the target only COMMITTED (no draft events);
        # the rolled-back draft was never seen by anyone.
        src = [await asyncio.wait_for(feed.next(watchers[-1]), 10) for _ in range(2)]
        assert [e.type for e in src] == [rules.Event.CREATED.value, rules.Event.COMMITTED.value]
        assert src[0].seq < src[1].seq
        for w in watchers[:-1]:
            ev = await asyncio.wait_for(feed.next(w), 10)
            assert (ev.type, ev.snapshot) == (rules.Event.COMMITTED.value, encode(view))
            assert w.queue.empty()
        assert feed.watchers == 26
        replay = [e async for e in feed.history(target, 0)]
        assert [e.type for e in replay] == [rules.Event.COMMITTED.value]
    finally:
        await feed.stop()
