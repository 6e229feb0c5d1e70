"""Plant use cases: create, read, list, update, two-step destruction, phases, history."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from seedline_server.domain import lot as lot_rules
from seedline_server.domain import plant as rules
from seedline_server.domain.errors import (
    ESignatureRequired,
    FieldViolation,
    InvalidArgument,
    InvalidStateTransition,
    NotFound,
    ReferenceInvalid,
    ResourceLocked,
    UnitMismatch,
)
from seedline_server.domain.quantity import Dimension, Quantity
from seedline_server.service import inventory, lineage
from seedline_server.service.context import Signature
from seedline_server.service.registry import (
    Page,
    apply_mask,
    check_etag,
    get_license,
    get_scoped,
    list_page,
    snapshot,
)
from seedline_server.service.uow import UnitOfWork, new_id, now
from seedline_server.store import models

CROP_SECTION = 1  # seedline.license.v1.SectionType.SECTION_TYPE_CROP


class Event(enum.IntEnum):
    """Values match ``seedline.plant.v1.PlantEventType``."""

    CREATED = 1
    UPDATED = 2
    PHASE_CHANGED = 3
    NOTE_ADDED = 4
    MATERIAL_APPLIED = 5
    RAW_COLLECTED = 6
    DESTRUCTION_REQUESTED = 7
    DESTRUCTION_CANCELLED = 8
    DESTROYED = 9


@dataclass(frozen=True)
class NewPlant:
    """Fields of a plant to create (ids already parsed from resource names)."""

    display_name: str
    variety_id: str
    section_id: str
    source_lot: str
    batch: str
    phase: rules.Phase
    plant_time: datetime | None


@dataclass(frozen=True)
class DestructionRequest:
    """Step one of destruction."""

    waste: Quantity
    reason: str
    method: int


def plant_name(license_id: str, plant_id: str) -> str:
    """``licenses/{license}/plants/{plant}``."""
    return f"licenses/{license_id}/plants/{plant_id}"


def not_future(field: str, value: datetime | None) -> datetime:
    """``value`` (now when unset); INVALID_ARGUMENT naming ``field`` when it is in the future."""
    t = now()
    if value is None:
        return t
    if value > t:
        raise InvalidArgument(f"{field} must not be in the future")
    return value


async def _check_refs(uow: UnitOfWork, license_id: str, variety_id: str, section_id: str) -> None:
    await get_scoped(uow, models.Variety, license_id, variety_id, "variety", "varieties")
    section = await get_scoped(uow, models.Section, license_id, section_id, "section", "sections")
    if section.type != CROP_SECTION or not section.active:
        raise ReferenceInvalid(
            f"section licenses/{license_id}/sections/{section_id} is not an active crop section",
            metadata={"section": f"licenses/{license_id}/sections/{section_id}"},
        )


async def record_event(
    uow: UnitOfWork,
    plant: models.Plant,
    type_: int,
    when: datetime,
    summary: str,
    details: dict[str, Any],
    audit_id: str,
) -> None:
    """Append an entry to the plant's history, pointing at the audit event of the change."""
    uow.session.add(
        models.PlantEvent(
            plant_id=plant.id,
            type=type_,
            event_time=when,
            actor=uow.ctx.principal.name,
            summary=summary,
            details=details,
            audit_event_id=audit_id,
        )
    )


async def _plant_from(uow: UnitOfWork, license_id: str, source_lot: str, count: int, t: datetime) -> None:
    """Take ``count`` seeds or clones from the source lot (locked), in this transaction."""
    lot_id = source_lot.rsplit("/", 1)[1]
    lot = await inventory.lock_lot(uow, license_id, lot_id)
    product = await inventory.get_product(uow, license_id, lot.product_id)
    count_rule = inventory.counting(product)
    if count_rule.package is not lot_rules.Package.BULK or count_rule.dimension is not Dimension.COUNT:
        raise ReferenceInvalid(
            f"source_lot {source_lot} is not a lot of seeds or clones (a bulk product counted in UNIT_EACH)",
            metadata={"source_lot": source_lot},
        )
    if lot.status == lot_rules.Status.QUARANTINED.value:
        raise InvalidStateTransition(
            f"source_lot {source_lot} is QUARANTINED: plants come only from AVAILABLE lots",
            metadata={"status": "QUARANTINED"},
        )
    await inventory.consume(uow, lot, Decimal(count), "PLANT", t)


async def create_plants(
    uow: UnitOfWork, license_id: str, new: NewPlant, count: int = 1
) -> list[models.Plant]:
    """Create ``count`` plants in one transaction, each with its audit event and history entry.

    With a source lot, the lot is locked first and its count goes down by ``count``; each plant
    gets a PLANTING lineage edge from it.
    """
    await get_license(uow, license_id)
    if new.phase not in rules.INITIAL_PHASES:
        raise InvalidArgument(
            "a new plant starts as CLONE or SEEDLING",
            [FieldViolation("plant.phase", "must be PLANT_PHASE_CLONE or PLANT_PHASE_SEEDLING on create")],
        )
    await _check_refs(uow, license_id, new.variety_id, new.section_id)
    planted = not_future("plant.plant_time", new.plant_time)
    t = now()
    if new.source_lot:
        await _plant_from(uow, license_id, new.source_lot, count, t)
    one = Quantity(Decimal(1), Dimension.COUNT)
    created = []
    for n in range(count):
        name = new.display_name
        if name and count > 1:
            name = f"{name} #{n + 1}"
        row = models.Plant(
            id=new_id(),
            license_id=license_id,
            display_name=name,
            variety_id=new.variety_id,
            section_id=new.section_id,
            source_lot=new.source_lot,
            batch=new.batch,
            phase=new.phase.value,
            state=rules.State.ACTIVE.value,
            plant_time=planted,
            create_time=t,
            update_time=t,
            version=1,
        )
        uow.session.add(row)
        audit_id = await uow.audit(
            license_id=license_id,
            resource=plant_name(license_id, row.id),
            action="CREATE",
            before=None,
            after=snapshot(row),
        )
        details: dict[str, Any] = {"phase": new.phase.name}
        if new.source_lot:
            details["source_lot"] = new.source_lot
            lineage.link(uow, new.source_lot, plant_name(license_id, row.id), lineage.Op.PLANTING, t, one)
        await record_event(
            uow, row, Event.CREATED, planted, f"planted as {new.phase.name}", details, audit_id
        )
        created.append(row)
    await uow.session.flush()
    return created


async def lock_plants(uow: UnitOfWork, license_id: str, plant_ids: Sequence[str]) -> list[models.Plant]:
    """The plants locked in id order, returned in request order (NOT_FOUND for a missing one)."""
    return await _plants(uow, license_id, plant_ids, lock=True)


async def _plants(
    uow: UnitOfWork, license_id: str, plant_ids: Sequence[str], lock: bool
) -> list[models.Plant]:
    """The plants, in request order (NOT_FOUND names the first missing one); locked in id order."""
    stmt = select(models.Plant).where(models.Plant.id.in_(sorted(set(plant_ids)))).order_by(models.Plant.id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    found = {p.id: p for p in (await uow.session.scalars(stmt)).all() if p.license_id == license_id}
    for plant_id in plant_ids:
        if plant_id not in found:
            raise NotFound("plant", plant_name(license_id, plant_id))
    return [found[p] for p in plant_ids]


async def add_note(uow: UnitOfWork, license_id: str, plant_ids: Sequence[str], note: str) -> int:
    """Add the same note to each plant's history (destroyed plants are locked)."""
    await get_license(uow, license_id)
    rows = await _plants(uow, license_id, plant_ids, lock=False)
    for row in rows:
        if row.state == rules.State.DESTROYED.value:
            raise ResourceLocked(
                f"plant {plant_name(license_id, row.id)} is destroyed and locked against change"
            )
    t = now()
    for row in rows:
        audit_id = await uow.audit(
            license_id=license_id,
            resource=plant_name(license_id, row.id),
            action="NOTE_ADDED",
            before=None,
            after={"note": note},
        )
        summary = note if len(note) <= 80 else note[:79] + "…"
        await record_event(uow, row, Event.NOTE_ADDED, t, summary, {"note": note}, audit_id)
    return len(rows)


@dataclass(frozen=True)
class GrowMaterial:
    """One application of a grow material to a set of plants."""

    kind: str
    material: str
    quantity: Quantity
    applied_by: str
    apply_time: datetime | None


async def apply_material(uow: UnitOfWork, license_id: str, plant_ids: Sequence[str], m: GrowMaterial) -> int:
    """Record a grow material applied to ACTIVE plants (the total quantity, shared by them)."""
    await get_license(uow, license_id)
    rows = await _plants(uow, license_id, plant_ids, lock=False)
    for row in rows:
        rules.check_editable(rules.State(row.state))
    when = not_future("apply_time", m.apply_time)
    details = {
        "kind": m.kind,
        "material": m.material,
        "quantity": m.quantity.text(),
        "unit": m.quantity.unit.name,
        "applied_by": m.applied_by,
        "plant_count": len(rows),
    }
    summary = f"{m.kind.lower()} {m.material}: {m.quantity.text()} {m.quantity.unit.name.lower()}"
    for row in rows:
        audit_id = await uow.audit(
            license_id=license_id,
            resource=plant_name(license_id, row.id),
            action="MATERIAL_APPLIED",
            before=None,
            after=details | {"apply_time": when.isoformat()},
        )
        await record_event(uow, row, Event.MATERIAL_APPLIED, when, summary, details, audit_id)
    return len(rows)


async def get_plant(uow: UnitOfWork, license_id: str, plant_id: str) -> models.Plant:
    """One plant (destroyed ones too) or NOT_FOUND."""
    return await get_scoped(uow, models.Plant, license_id, plant_id, "plant", "plants")


@dataclass(frozen=True)
class PlantFilter:
    """ListPlants filters; zero values mean "any"."""

    phase: int = 0
    state: int = 0
    section_id: str = ""
    variety_id: str = ""


async def list_plants(
    uow: UnitOfWork, license_id: str, f: PlantFilter, size: int, token: str
) -> Page[models.Plant]:
    """A page of plants in id order (keyset on the (license_id, id) index)."""
    await get_license(uow, license_id)
    stmt = select(models.Plant).where(models.Plant.license_id == license_id)
    if f.phase:
        stmt = stmt.where(models.Plant.phase == f.phase)
    if f.state:
        stmt = stmt.where(models.Plant.state == f.state)
    if f.section_id:
        stmt = stmt.where(models.Plant.section_id == f.section_id)
    if f.variety_id:
        stmt = stmt.where(models.Plant.variety_id == f.variety_id)
    query = {
        "parent": license_id,
        "phase": str(f.phase),
        "state": str(f.state),
        "section": f.section_id,
        "variety": f.variety_id,
    }
    return await list_page(uow, stmt, models.Plant.id, size, token, query)


async def _locked_plant(uow: UnitOfWork, license_id: str, plant_id: str) -> models.Plant:
    row = await uow.session.get(models.Plant, plant_id, with_for_update=True)
    if row is None or row.license_id != license_id:
        raise NotFound("plant", plant_name(license_id, plant_id))
    return row


async def update_plant(
    uow: UnitOfWork,
    license_id: str,
    plant_id: str,
    changes: dict[str, Any],
    mask: Sequence[str],
    given_etag: str,
) -> models.Plant:
    """Change variety, section or display name (FieldMask + etag)."""
    row = await _locked_plant(uow, license_id, plant_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_editable(rules.State(row.state))
    before = snapshot(row)
    apply_mask(row, changes, mask, {"variety_id", "section_id", "display_name"})
    await _check_refs(uow, license_id, row.variety_id, row.section_id)
    row.version += 1
    row.update_time = now()
    after = snapshot(row)
    audit_id = await uow.audit(
        license_id=license_id,
        resource=plant_name(license_id, row.id),
        action="UPDATE",
        before=before,
        after=after,
    )
    changed = {
        k: after[k] for k in after if before.get(k) != after[k] and k not in {"version", "update_time"}
    }
    await record_event(
        uow, row, Event.UPDATED, row.update_time, "updated " + ", ".join(sorted(changed)), changed, audit_id
    )
    return row


async def request_destruction(
    uow: UnitOfWork, license_id: str, plant_id: str, req: DestructionRequest, given_etag: str
) -> models.Plant:
    """Step one: mark the plant DESTRUCTION_PENDING with waste, reason and method."""
    row = await _locked_plant(uow, license_id, plant_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_editable(rules.State(row.state))
    if req.waste.dimension is not Dimension.WEIGHT:
        raise UnitMismatch("waste must be a weight (g, mg, kg, lb, oz)")
    before = snapshot(row)
    t = now()
    row.state = rules.State.DESTRUCTION_PENDING.value
    row.destruction = {
        "waste_g": req.waste.text(),
        "reason": req.reason,
        "method": req.method,
        "requested_by": uow.ctx.principal.name,
        "request_time": t.isoformat(),
    }
    row.version += 1
    row.update_time = t
    audit_id = await uow.audit(
        license_id=license_id,
        resource=plant_name(license_id, row.id),
        action="DESTRUCTION_REQUESTED",
        before=before,
        after=snapshot(row),
    )
    await record_event(
        uow,
        row,
        Event.DESTRUCTION_REQUESTED,
        t,
        f"destruction requested: {req.reason}",
        dict(row.destruction),
        audit_id,
    )
    return row


async def confirm_destruction(
    uow: UnitOfWork, license_id: str, plant_id: str, signature: Signature | None, given_etag: str
) -> models.Plant:
    """Step two: destroy a pending plant; it is locked afterwards."""
    row = await _locked_plant(uow, license_id, plant_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_pending(rules.State(row.state), "confirm")
    if signature is None:
        raise ESignatureRequired("confirming a destruction needs an e-signature")
    before = snapshot(row)
    t = now()
    row.state = rules.State.DESTROYED.value
    row.version += 1
    row.update_time = t
    destruction = dict(row.destruction or {})
    destruction.update(
        confirm_time=t.isoformat(),
        signer=signature.signer,
        meaning=signature.meaning,
        signature_reason=signature.reason,
    )
    row.destruction = destruction
    audit_id = await uow.audit(
        license_id=license_id,
        resource=plant_name(license_id, row.id),
        action="DESTROYED",
        before=before,
        after=snapshot(row),
    )
    destruction["audit_event_id"] = audit_id
    row.destruction = destruction
    await record_event(uow, row, Event.DESTROYED, t, "destroyed", dict(destruction), audit_id)
    return row


async def cancel_destruction(
    uow: UnitOfWork, license_id: str, plant_id: str, given_etag: str
) -> models.Plant:
    """Withdraw a pending destruction."""
    row = await _locked_plant(uow, license_id, plant_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_pending(rules.State(row.state), "cancel")
    before = snapshot(row)
    t = now()
    row.state = rules.State.ACTIVE.value
    row.destruction = None
    row.version += 1
    row.update_time = t
    audit_id = await uow.audit(
        license_id=license_id,
        resource=plant_name(license_id, row.id),
        action="DESTRUCTION_CANCELLED",
        before=before,
        after=snapshot(row),
    )
    await record_event(uow, row, Event.DESTRUCTION_CANCELLED, t, "destruction cancelled", {}, audit_id)
    return row


async def change_phase(
    uow: UnitOfWork,
    license_id: str,
    plant_id: str,
    phase: rules.Phase,
    when: datetime | None,
    given_etag: str,
) -> models.Plant:
    """Move a plant to its next growth phase, timestamped."""
    row = await _locked_plant(uow, license_id, plant_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_editable(rules.State(row.state))
    current = rules.Phase(row.phase)
    rules.check_phase_change(current, phase)
    t = not_future("phase_time", when)
    before = snapshot(row)
    row.phase = phase.value
    if phase is rules.Phase.VEGETATIVE:
        row.vegetative_time = t
    elif phase is rules.Phase.FLOWERING:
        row.flowering_time = t
    row.version += 1
    row.update_time = now()
    audit_id = await uow.audit(
        license_id=license_id,
        resource=plant_name(license_id, row.id),
        action="PHASE_CHANGED",
        before=before,
        after=snapshot(row),
    )
    await record_event(
        uow,
        row,
        Event.PHASE_CHANGED,
        t,
        f"{current.name} → {phase.name}",
        {"from": current.name, "to": phase.name},
        audit_id,
    )
    return row


async def history(
    uow: UnitOfWork,
    license_id: str,
    plant_id: str,
    start: datetime | None,
    end: datetime | None,
    with_audit: bool,
) -> list[tuple[models.PlantEvent, models.AuditEvent | None]]:
    """Events of a plant in [start, end), oldest first, optionally with their audit rows."""
    await get_plant(uow, license_id, plant_id)
    stmt = select(models.PlantEvent).where(models.PlantEvent.plant_id == plant_id)
    if start is not None:
        stmt = stmt.where(models.PlantEvent.event_time >= start)
    if end is not None:
        stmt = stmt.where(models.PlantEvent.event_time < end)
    events = list(
        (await uow.session.scalars(stmt.order_by(models.PlantEvent.event_time, models.PlantEvent.seq))).all()
    )
    audits: dict[str, models.AuditEvent] = {}
    if with_audit and events:
        ids = [e.audit_event_id for e in events]
        rows = await uow.session.scalars(select(models.AuditEvent).where(models.AuditEvent.id.in_(ids)))
        audits = {a.id: a for a in rows}
    return [(e, audits.get(e.audit_event_id)) for e in events]
