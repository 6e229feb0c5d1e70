"""Plant use cases: create, read, list, update, two-step destruction, phases, history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from seedline_server.domain import plant as rules
from seedline_server.domain.errors import (
    ESignatureRequired,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ReferenceInvalid,
    UnitMismatch,
)
from seedline_server.domain.quantity import Dimension, Quantity
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

# seedline.plant.v1.PlantEventType numbers
EV_CREATED, EV_UPDATED, EV_PHASE, EV_DESTRUCTION_REQUESTED, EV_DESTRUCTION_CANCELLED, EV_DESTROYED = (
    1,
    2,
    3,
    7,
    8,
    9,
)


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


@dataclass(frozen=True)
class Signature:
    """A verified e-signature (identity re-proven by the transport)."""

    signer: str
    meaning: int
    reason: str


def _resource(license_id: str, plant_id: str) -> str:
    return f"licenses/{license_id}/plants/{plant_id}"


def _not_future(field: str, value: datetime | None) -> datetime:
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


async def _event(
    uow: UnitOfWork,
    plant: models.Plant,
    type_: int,
    when: datetime,
    summary: str,
    details: dict[str, Any],
    audit_id: str,
) -> None:
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


async def create_plants(
    uow: UnitOfWork, license_id: str, new: NewPlant, count: int = 1
) -> list[models.Plant]:
    """Create ``count`` plants in one transaction, each with its audit event and history entry."""
    await get_license(uow, license_id)
    if new.phase not in rules.INITIAL_PHASES:
        raise InvalidArgument(
            "a new plant starts as CLONE or SEEDLING",
            [FieldViolation("plant.phase", "must be PLANT_PHASE_CLONE or PLANT_PHASE_SEEDLING on create")],
        )
    await _check_refs(uow, license_id, new.variety_id, new.section_id)
    planted = _not_future("plant.plant_time", new.plant_time)
    t = now()
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
        await uow.session.flush()
        audit_id = await uow.audit(
            license_id=license_id,
            resource=_resource(license_id, row.id),
            action="CREATE",
            before=None,
            after=snapshot(row),
        )
        await _event(
            uow, row, EV_CREATED, planted, f"planted as {new.phase.name}", {"phase": new.phase.name}, audit_id
        )
        created.append(row)
    return created


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
        raise NotFound("plant", _resource(license_id, plant_id))
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
        resource=_resource(license_id, row.id),
        action="UPDATE",
        before=before,
        after=after,
    )
    changed = {
        k: after[k] for k in after if before.get(k) != after[k] and k not in {"version", "update_time"}
    }
    await _event(
        uow, row, EV_UPDATED, row.update_time, "updated " + ", ".join(sorted(changed)), changed, audit_id
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
        resource=_resource(license_id, row.id),
        action="DESTRUCTION_REQUESTED",
        before=before,
        after=snapshot(row),
    )
    await _event(
        uow,
        row,
        EV_DESTRUCTION_REQUESTED,
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
        resource=_resource(license_id, row.id),
        action="DESTROYED",
        before=before,
        after=snapshot(row),
    )
    destruction["audit_event_id"] = audit_id
    row.destruction = destruction
    await _event(uow, row, EV_DESTROYED, t, "destroyed", dict(destruction), audit_id)
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
        resource=_resource(license_id, row.id),
        action="DESTRUCTION_CANCELLED",
        before=before,
        after=snapshot(row),
    )
    await _event(uow, row, EV_DESTRUCTION_CANCELLED, t, "destruction cancelled", {}, audit_id)
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
    t = _not_future("phase_time", when)
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
        resource=_resource(license_id, row.id),
        action="PHASE_CHANGED",
        before=before,
        after=snapshot(row),
    )
    await _event(
        uow,
        row,
        EV_PHASE,
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
