"""Harvest use cases: raw (wet) collection from plants, net (dry) collection into bulk lots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select

from seedline_server.domain import lot as lot_rules
from seedline_server.domain import plant as rules
from seedline_server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    InvalidStateTransition,
    NotFound,
    ReferenceInvalid,
    ResourceLocked,
    UnitMismatch,
)
from seedline_server.domain.quantity import Dimension, Quantity, check_storable
from seedline_server.service import inventory, lineage, plants
from seedline_server.service.registry import Page, get_license, get_scoped, list_page, snapshot
from seedline_server.service.uow import UnitOfWork, new_id, now
from seedline_server.store import models

OPEN, CLOSED = 1, 2  # seedline.plant.v1.CollectionState


def collection_name(license_id: str, collection_id: str) -> str:
    """``licenses/{license}/collections/{collection}``."""
    return f"licenses/{license_id}/collections/{collection_id}"


@dataclass(frozen=True)
class RawWeight:
    """Wet weight from one plant."""

    plant_id: str
    wet_weight: Quantity


@dataclass(frozen=True)
class Harvested:
    """A collection and its raw weighings, oldest first."""

    collection: models.Collection
    weights: Sequence[models.CollectionWeight]


async def _locked_collection(uow: UnitOfWork, license_id: str, collection_id: str) -> models.Collection:
    row = await uow.session.get(
        models.Collection, collection_id, with_for_update=True, populate_existing=True
    )
    if row is None or row.license_id != license_id:
        raise NotFound("collection", collection_name(license_id, collection_id))
    if row.state != OPEN:
        raise ResourceLocked(
            f"collection {collection_name(license_id, collection_id)} is closed (net collected) and locked"
        )
    return row


async def _weights(uow: UnitOfWork, collection_id: str) -> list[models.CollectionWeight]:
    stmt = (
        select(models.CollectionWeight)
        .where(models.CollectionWeight.collection_id == collection_id)
        .order_by(models.CollectionWeight.seq)
    )
    return list((await uow.session.scalars(stmt)).all())


def _check_phase(plant: models.Plant, harvest: bool, already_in: bool, name: str) -> None:
    phase = rules.Phase(plant.phase)
    if phase is rules.Phase.HARVESTED and already_in:
        return
    allowed = {rules.Phase.FLOWERING} if harvest else {rules.Phase.VEGETATIVE, rules.Phase.FLOWERING}
    if phase not in allowed:
        need = "FLOWERING" if harvest else "VEGETATIVE or FLOWERING"
        raise InvalidStateTransition(
            f"plant {name} is {phase.name}: a {'harvest' if harvest else 'partial collection'} needs {need}"
            + (
                " (or a plant already harvested into this collection)"
                if phase is rules.Phase.HARVESTED
                else ""
            ),
            metadata={"plant": name, "phase": phase.name},
        )


async def collect_raw(
    uow: UnitOfWork,
    license_id: str,
    collection_id: str,
    display_name: str,
    weights: Sequence[RawWeight],
    harvest: bool,
    when: datetime | None,
) -> Harvested:
    """Record wet weights into an open collection (a new one when ``collection_id`` is empty)."""
    await get_license(uow, license_id)
    ids = [w.plant_id for w in weights]
    if len(set(ids)) != len(ids):
        raise InvalidArgument(
            "each plant may appear once per raw collection",
            [FieldViolation("weights", "plants must be unique")],
        )
    for n, w in enumerate(weights):
        if w.wet_weight.dimension is not Dimension.WEIGHT:
            raise UnitMismatch(f"weights[{n}].wet_weight must be a weight")
        lot_rules.positive(w.wet_weight, f"weights[{n}].wet_weight")
    t = now()
    collected = plants.not_future("collect_time", when)
    if collection_id:
        coll = await _locked_collection(uow, license_id, collection_id)
        before = snapshot(coll)
    else:
        coll = models.Collection(
            id=new_id(),
            license_id=license_id,
            display_name=display_name or f"Harvest {collected.date().isoformat()}",
            state=OPEN,
            total_wet=Decimal(0),
            total_dry=None,
            waste=None,
            output_lots=[],
            create_time=t,
            close_time=None,
            update_time=t,
            version=0,
        )
        uow.session.add(coll)
        before = None
    cname = collection_name(license_id, coll.id)
    rows = await plants.lock_plants(uow, license_id, ids)
    linked = set(
        (
            await uow.session.scalars(
                select(models.LineageEdge.source).where(
                    models.LineageEdge.target == cname,
                    models.LineageEdge.source.in_([plants.plant_name(license_id, i) for i in ids]),
                )
            )
        ).all()
    )
    for plant in rows:
        pname = plants.plant_name(license_id, plant.id)
        rules.check_editable(rules.State(plant.state))
        _check_phase(plant, harvest, pname in linked, pname)
    for plant, w in zip(rows, weights, strict=True):
        pname = plants.plant_name(license_id, plant.id)
        uow.session.add(
            models.CollectionWeight(
                collection_id=coll.id,
                plant_id=plant.id,
                wet_weight=w.wet_weight.amount,
                harvest=harvest,
                collect_time=collected,
            )
        )
        plant_before = snapshot(plant)
        if harvest and plant.phase != rules.Phase.HARVESTED.value:
            plant.phase = rules.Phase.HARVESTED.value
            plant.harvest_time = collected
        plant.version += 1
        plant.update_time = t
        audit_id = await uow.audit(
            license_id=license_id,
            resource=pname,
            action="RAW_COLLECTED",
            before=plant_before,
            after=snapshot(plant) | {"collection": cname, "wet_weight_g": w.wet_weight.text()},
        )
        details = {"collection": cname, "wet_weight_g": w.wet_weight.text(), "harvest": harvest}
        summary = (
            f"{'harvested' if harvest else 'collected'} {w.wet_weight.text()} g wet into {coll.display_name}"
        )
        await plants.record_event(
            uow, plant, plants.Event.RAW_COLLECTED, collected, summary, details, audit_id
        )
        if pname not in linked:
            lineage.link(uow, pname, cname, lineage.Op.COLLECTION, collected)
    coll.total_wet += sum((w.wet_weight.amount for w in weights), Decimal(0))
    check_storable(coll.total_wet, "total_wet_weight")
    coll.version += 1
    coll.update_time = t
    await uow.audit(
        license_id=license_id,
        resource=cname,
        action="CREATE" if before is None else "RAW_COLLECTED",
        before=before,
        after=snapshot(coll),
    )
    await uow.session.flush()
    return Harvested(coll, await _weights(uow, coll.id))


@dataclass(frozen=True)
class NetOutput:
    """One output of a net collection: a bulk product by weight, its dry weight, its section."""

    product_id: str
    dry_weight: Quantity
    section_id: str


async def collect_net(
    uow: UnitOfWork,
    license_id: str,
    collection_id: str,
    outputs: Sequence[NetOutput],
    waste: Quantity | None,
    when: datetime | None,
) -> tuple[Harvested, list[models.Lot]]:
    """Close the collection into one bulk lot per output, under mass balance; returns it and the lots."""
    coll = await _locked_collection(uow, license_id, collection_id)
    if waste is not None and waste.dimension is not Dimension.WEIGHT:
        raise UnitMismatch("waste must be a weight")
    waste_g = waste.amount if waste is not None else Decimal(0)
    for n, out in enumerate(outputs):
        if out.dry_weight.dimension is not Dimension.WEIGHT:
            raise UnitMismatch(f"outputs[{n}].dry_weight must be a weight")
        lot_rules.positive(out.dry_weight, f"outputs[{n}].dry_weight")
        product = await inventory.get_product(uow, license_id, out.product_id)
        count = inventory.counting(product)
        if count.package is not lot_rules.Package.BULK or count.dimension is not Dimension.WEIGHT:
            raise ReferenceInvalid(
                f"outputs[{n}].product must be a bulk product counted by weight",
                metadata={"product": f"licenses/{license_id}/products/{out.product_id}"},
            )
    dry = sum((o.dry_weight.amount for o in outputs), Decimal(0))
    lot_rules.check_not_more(coll.total_wet, dry, waste_g, "net collect")
    varieties = (
        await uow.session.scalars(
            select(models.Plant.variety_id)
            .distinct()
            .join(models.CollectionWeight, models.CollectionWeight.plant_id == models.Plant.id)
            .where(models.CollectionWeight.collection_id == coll.id)
        )
    ).all()
    variety = varieties[0] if len(varieties) == 1 else None
    cname = collection_name(license_id, coll.id)
    collected = plants.not_future("collect_time", when)
    t = now()
    before = snapshot(coll)
    lots = []
    for out in outputs:
        lot = await inventory.insert_lot(
            uow,
            license_id,
            inventory.NewLot(
                product_id=out.product_id,
                section_id=out.section_id,
                quantity=out.dry_weight,
                variety_id=variety,
                display_name=coll.display_name,
            ),
            inventory.Provenance(origin=lot_rules.Origin.COLLECTION, source_collection=cname),
            t,
            action="CREATE_BY_COLLECTION",
        )
        lineage.link(
            uow,
            cname,
            inventory.lot_name(license_id, lot.id),
            lineage.Op.COLLECTION,
            collected,
            out.dry_weight,
        )
        lots.append(lot)
    coll.state = CLOSED
    coll.close_time = collected
    coll.total_dry = dry
    coll.waste = waste_g
    coll.output_lots = [inventory.lot_name(license_id, lot.id) for lot in lots]
    coll.version += 1
    coll.update_time = t
    await uow.audit(
        license_id=license_id, resource=cname, action="NET_COLLECTED", before=before, after=snapshot(coll)
    )
    await uow.session.flush()
    return Harvested(coll, await _weights(uow, coll.id)), lots


async def get_collection(uow: UnitOfWork, license_id: str, collection_id: str) -> Harvested:
    """One collection with its weighings, or NOT_FOUND."""
    coll = await get_scoped(uow, models.Collection, license_id, collection_id, "collection", "collections")
    return Harvested(coll, await _weights(uow, coll.id))


async def list_collections(
    uow: UnitOfWork, license_id: str, state: int, size: int, token: str
) -> tuple[Page[models.Collection], dict[str, list[models.CollectionWeight]]]:
    """A page of collections (oldest first) and their weighings, in two queries."""
    await get_license(uow, license_id)
    stmt = select(models.Collection).where(models.Collection.license_id == license_id)
    if state:
        stmt = stmt.where(models.Collection.state == state)
    page: Page[models.Collection] = await list_page(
        uow, stmt, models.Collection.id, size, token, {"parent": license_id, "state": str(state)}
    )
    weights: dict[str, list[models.CollectionWeight]] = {c.id: [] for c in page.rows}
    if weights:
        rows = await uow.session.scalars(
            select(models.CollectionWeight)
            .where(models.CollectionWeight.collection_id.in_(list(weights)))
            .order_by(models.CollectionWeight.seq)
        )
        for w in rows:
            weights[w.collection_id].append(w)
    return page, weights
