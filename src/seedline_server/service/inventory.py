"""Inventory use cases: lots from creation through adjust, move, split, convert and destruction.

Every mutation locks the lots it changes (``SELECT … FOR UPDATE``, in id order when there are
several, so two conversions sharing inputs cannot deadlock), re-checks the rules on the locked
rows, and writes the change, its audit events and its lineage edges in the caller's transaction.
A concurrent change therefore waits for the lock and then sees the committed quantity: no lost
update and no negative quantity (the table's CHECK constraint is the last line of defence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from ulid import ULID

from seedline_server.domain import lot as rules
from seedline_server.domain.errors import (
    ESignatureRequired,
    FieldViolation,
    InvalidArgument,
    InvalidStateTransition,
    NotFound,
    ReferenceInvalid,
    UnitMismatch,
)
from seedline_server.domain.quantity import Dimension, Quantity, check_storable
from seedline_server.service import lineage
from seedline_server.service.context import Signature
from seedline_server.service.registry import Page, check_etag, get_license, get_scoped, list_page, snapshot
from seedline_server.service.uow import UnitOfWork, now
from seedline_server.store import models


def lot_name(license_id: str, lot_id: str) -> str:
    """``licenses/{license}/lots/{lot}``."""
    return f"licenses/{license_id}/lots/{lot_id}"


def counting(product: models.Product) -> rules.Counting:
    """How lots of ``product`` are counted."""
    return rules.Counting.of(
        product.package_type,
        product.bulk_unit,
        product.unit_size_value,
        product.unit_size_unit,
        product.pack_unit_count,
    )


@dataclass(frozen=True)
class NewLot:
    """Fields of a lot to create (ids already parsed from resource names)."""

    product_id: str
    section_id: str
    quantity: Quantity
    variety_id: str | None = None
    display_name: str = ""
    state_tag: str = ""
    origin: rules.Origin = rules.Origin.INITIAL
    supplier_license_number: str = ""
    manifest_number: str = ""


@dataclass
class Provenance:
    """Provenance a derived lot records (set by the operation that makes it)."""

    origin: rules.Origin
    source_lots: list[str] = field(default_factory=list)
    source_collection: str = ""
    lab_status: rules.LabStatus | None = None
    lab_result: str = ""


async def get_product(uow: UnitOfWork, license_id: str, product_id: str) -> models.Product:
    """A product of the license or NOT_FOUND."""
    return await get_scoped(uow, models.Product, license_id, product_id, "product", "products")


async def lot_section(uow: UnitOfWork, license_id: str, section_id: str) -> models.Section:
    """An active inventory or quarantine section of the license (else NOT_FOUND / REFERENCE_INVALID)."""
    section = await get_scoped(uow, models.Section, license_id, section_id, "section", "sections")
    rules.check_section_holds_lots(
        rules.SectionKind(section.type), section.active, f"licenses/{license_id}/sections/{section_id}"
    )
    return section


async def _section_kind(uow: UnitOfWork, section_id: str) -> rules.SectionKind:
    section = await uow.session.get(models.Section, section_id)
    assert section is not None
    return rules.SectionKind(section.type)


async def insert_lot(
    uow: UnitOfWork, license_id: str, new: NewLot, made: Provenance, t: datetime, action: str = "CREATE"
) -> models.Lot:
    """Check a new lot's references, insert it and audit it; returns the row.

    The id is a ULID of the creation time, so id order is creation order and a created-time
    range is also an id range (what ListLots uses to stay on its index).
    """
    product = await get_product(uow, license_id, new.product_id)
    count = counting(product)
    count.check_fits(new.quantity, "quantity")
    section = await lot_section(uow, license_id, new.section_id)
    if new.variety_id:
        await get_scoped(uow, models.Variety, license_id, new.variety_id, "variety", "varieties")
    lab = made.lab_status or rules.lab_status_for(product.product_type)
    row = models.Lot(
        id=str(ULID.from_datetime(t)),
        license_id=license_id,
        display_name=new.display_name,
        product_id=product.id,
        variety_id=new.variety_id or None,
        section_id=section.id,
        quantity=new.quantity.amount,
        status=rules.settled(new.quantity.amount, rules.SectionKind(section.type), lab).value,
        lab_status=lab.value,
        lab_result=made.lab_result,
        origin=made.origin.value,
        source_lots=made.source_lots,
        source_collection=made.source_collection,
        source_transfer="",
        supplier_license_number=new.supplier_license_number,
        manifest_number=new.manifest_number,
        state_tag=new.state_tag,
        state_system_id="",
        destruction=None,
        create_time=t,
        update_time=t,
        version=1,
    )
    uow.session.add(row)
    await uow.audit(
        license_id=license_id,
        resource=lot_name(license_id, row.id),
        action=action,
        before=None,
        after=snapshot(row),
    )
    return row


async def create_lot(uow: UnitOfWork, license_id: str, new: NewLot) -> models.Lot:
    """Create a lot of opening inventory (INITIAL) or material received outside Seedline (RECEIVED)."""
    await get_license(uow, license_id)
    rules.positive(new.quantity, "lot.quantity")
    row = await insert_lot(uow, license_id, new, Provenance(origin=new.origin), now())
    await uow.session.flush()
    return row


async def get_lot(uow: UnitOfWork, license_id: str, lot_id: str) -> models.Lot:
    """One lot, in any status, or NOT_FOUND; its product is loaded in the same round trip."""
    found = (
        await uow.session.execute(
            select(models.Lot, models.Product)
            .join(models.Product, models.Product.id == models.Lot.product_id)
            .where(models.Lot.id == lot_id)
        )
    ).first()
    if found is None or found[0].license_id != license_id:
        raise NotFound("lot", lot_name(license_id, lot_id))
    uow.pinned.append(found)
    lot: models.Lot = found[0]
    return lot


async def lots_by_id(uow: UnitOfWork, lot_ids: Sequence[str]) -> list[models.Lot]:
    """The lots with these ids (any license), in one query; missing ids are skipped."""
    if not lot_ids:
        return []
    return list((await uow.session.scalars(select(models.Lot).where(models.Lot.id.in_(lot_ids)))).all())


async def products_of(uow: UnitOfWork, lots: Sequence[models.Lot]) -> dict[str, models.Product]:
    """The products of ``lots`` by id, in one query (rows already in the session are reused)."""
    ids = {lot.product_id for lot in lots}
    if not ids:
        return {}
    rows = await uow.session.scalars(select(models.Product).where(models.Product.id.in_(ids)))
    return {p.id: p for p in rows}


@dataclass(frozen=True)
class LotFilter:
    """ListLots filters; empty values mean "any"."""

    product_id: str = ""
    variety_id: str = ""
    section_id: str = ""
    statuses: tuple[int, ...] = ()
    create_start: datetime | None = None
    create_end: datetime | None = None


async def list_lots(
    uow: UnitOfWork, license_id: str, f: LotFilter, size: int, token: str
) -> Page[models.Lot]:
    """A page of lots in id (creation) order.

    Each equality filter has a ``(license_id, x, id)`` index, so a filtered page is a range scan
    that stops after ``size + 1`` rows. The created-time range is also applied to the id (ULIDs
    start with their millisecond timestamp), which keeps it on the same indexes; the exact
    ``create_time`` predicate then trims the millisecond at each end.
    """
    await get_license(uow, license_id)
    lot = models.Lot
    stmt = select(lot).where(lot.license_id == license_id)
    if f.product_id:
        stmt = stmt.where(lot.product_id == f.product_id)
    if f.variety_id:
        stmt = stmt.where(lot.variety_id == f.variety_id)
    if f.section_id:
        stmt = stmt.where(lot.section_id == f.section_id)
    if len(f.statuses) == 1:
        stmt = stmt.where(lot.status == f.statuses[0])
    elif f.statuses:
        stmt = stmt.where(lot.status.in_(f.statuses))
    if f.create_start is not None:
        stmt = stmt.where(lot.id >= _ulid_floor(f.create_start), lot.create_time >= f.create_start)
    if f.create_end is not None:
        stmt = stmt.where(lot.id < _ulid_ceiling(f.create_end), lot.create_time < f.create_end)
    query = {
        "parent": license_id,
        "product": f.product_id,
        "variety": f.variety_id,
        "section": f.section_id,
        "statuses": ",".join(str(s) for s in sorted(f.statuses)),
        "start": f.create_start.isoformat() if f.create_start else "",
        "end": f.create_end.isoformat() if f.create_end else "",
    }
    return await list_page(uow, stmt, lot.id, size, token, query)


def _ulid_prefix(t: datetime) -> str:
    """The 10-character time prefix of ULIDs of ``t``'s millisecond (clamped to the ULID range)."""
    ms = min(max(int(t.timestamp() * 1000), 0), 2**48 - 1)
    return str(ULID.from_timestamp(ms / 1000))[:10]


def _ulid_floor(t: datetime) -> str:
    """The smallest ULID of ``t``'s millisecond (times before 1970: the smallest ULID)."""
    return _ulid_prefix(t) + "0" * 16


def _ulid_ceiling(t: datetime) -> str:
    """A bound above every ULID of ``t``'s millisecond (exclusive upper bound for the range)."""
    if t.timestamp() < 0:
        return "0" * 26  # no lot was created before 1970
    return _ulid_prefix(t) + "Z" * 16


async def lock_lots(uow: UnitOfWork, license_id: str, lot_ids: Sequence[str]) -> dict[str, models.Lot]:
    """Lock the lots (in id order, so concurrent multi-lot operations cannot deadlock).

    Their products and sections come in the same round trip (locked: only the lots), so the
    rules that need them read the session's identity map instead of querying again.
    """
    ordered = sorted(set(lot_ids))
    rows = (
        await uow.session.execute(
            select(models.Lot, models.Product, models.Section)
            .join(models.Product, models.Product.id == models.Lot.product_id)
            .join(models.Section, models.Section.id == models.Lot.section_id)
            .where(models.Lot.id.in_(ordered))
            .order_by(models.Lot.id)
            .with_for_update(of=models.Lot)
            .execution_options(populate_existing=True)
        )
    ).all()
    uow.pinned.extend(rows)
    found = {lot.id: lot for lot, _, _ in rows if lot.license_id == license_id}
    for lot_id in ordered:
        if lot_id not in found:
            raise NotFound("lot", lot_name(license_id, lot_id))
    return found


async def lock_lot(uow: UnitOfWork, license_id: str, lot_id: str) -> models.Lot:
    """Lock one lot of the license (NOT_FOUND otherwise)."""
    return (await lock_lots(uow, license_id, [lot_id]))[lot_id]


async def _changed(uow: UnitOfWork, row: models.Lot, action: str, before: dict[str, Any], t: datetime) -> str:
    row.version += 1
    row.update_time = t
    return await uow.audit(
        license_id=row.license_id,
        resource=lot_name(row.license_id, row.id),
        action=action,
        before=before,
        after=snapshot(row),
    )


async def _resettle(uow: UnitOfWork, row: models.Lot) -> None:
    """Recompute a usable lot's status from its quantity, section and lab status."""
    kind = await _section_kind(uow, row.section_id)
    row.status = rules.settled(row.quantity, kind, rules.LabStatus(row.lab_status)).value


async def consume(
    uow: UnitOfWork,
    row: models.Lot,
    amount: Decimal,
    action: str,
    t: datetime,
    emptied: rules.Status = rules.Status.DEPLETED,
) -> None:
    """Take ``amount`` from a locked, usable lot and audit it; an emptied lot takes ``emptied``."""
    rules.check_usable(rules.Status(row.status), action.lower())
    before = snapshot(row)
    row.quantity = rules.take(row.quantity, amount, lot_name(row.license_id, row.id))
    await _resettle(uow, row)
    if row.quantity == 0:
        row.status = emptied.value
    await _changed(uow, row, action, before, t)


async def set_status(
    uow: UnitOfWork, row: models.Lot, status: rules.Status, action: str, t: datetime
) -> None:
    """Move a locked lot to ``status`` (e.g. IN_TRANSIT → TRANSFERRED once received), audited."""
    before = snapshot(row)
    row.status = status.value
    await _changed(uow, row, action, before, t)


async def restore(uow: UnitOfWork, row: models.Lot, amount: Decimal, action: str, t: datetime) -> None:
    """Put ``amount`` back into a locked lot (a voided sample, a rejected or voided transfer).

    A DEPLETED or IN_TRANSIT lot becomes usable again; a destroyed or transferred lot cannot
    take material back (RESOURCE_LOCKED).
    """
    status = rules.Status(row.status)
    if status in (rules.Status.DESTROYED, rules.Status.TRANSFERRED):
        rules.check_usable(status, "return material to")
    before = snapshot(row)
    row.quantity = row.quantity + amount
    check_storable(row.quantity, "quantity")
    if status is not rules.Status.DESTRUCTION_PENDING:
        await _resettle(uow, row)
    await _changed(uow, row, action, before, t)


async def set_lab_status(
    uow: UnitOfWork, row: models.Lot, lab: rules.LabStatus, lab_result: str, action: str, t: datetime
) -> None:
    """Record a locked lot's new lab status and governing result.

    A FAILED status quarantines an AVAILABLE lot; any other releases a QUARANTINED one (unless
    its section is a quarantine section). Lots in other statuses keep their status and only
    record the lab facts.
    """
    before = snapshot(row)
    row.lab_status = lab.value
    row.lab_result = lab_result
    if rules.Status(row.status) in rules.USABLE:
        await _resettle(uow, row)
    await _changed(uow, row, action, before, t)


@dataclass(frozen=True)
class Adjustment:
    """An AdjustLot change: exactly one of an absolute value or a delta."""

    change: rules.Change
    amount: Quantity
    reason: rules.AdjustReason
    note: str = ""


async def adjust_lot(
    uow: UnitOfWork, license_id: str, lot_id: str, adj: Adjustment, given_etag: str
) -> models.Lot:
    """Correct a lot's quantity, with a reason, in the adjust log and the audit trail."""
    row = await lock_lot(uow, license_id, lot_id)
    check_etag(given_etag, row.id, row.version)
    product = await get_product(uow, license_id, row.product_id)
    counting(product).check_fits(adj.amount, adj.change.value)
    current = row.quantity
    new = rules.adjusted(
        rules.Status(row.status),
        adj.reason,
        current,
        adj.change,
        adj.amount.amount,
        lot_name(license_id, lot_id),
    )
    before = snapshot(row)
    t = now()
    row.quantity = new
    await _resettle(uow, row)
    audit_id = await _changed(uow, row, "ADJUST", before, t)
    uow.session.add(
        models.LotAdjustment(
            lot_id=row.id,
            before=current,
            after=new,
            reason=adj.reason.value,
            note=adj.note,
            actor=uow.ctx.principal.name,
            adjust_time=t,
            audit_event_id=audit_id,
        )
    )
    return row


async def move_lot(
    uow: UnitOfWork, license_id: str, lot_id: str, section_id: str, given_etag: str
) -> models.Lot:
    """Move a lot to another inventory or quarantine section; quarantine follows the section."""
    row = await lock_lot(uow, license_id, lot_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_usable(rules.Status(row.status), "move")
    section = await lot_section(uow, license_id, section_id)
    if section.id == row.section_id:
        raise InvalidArgument(
            "the lot is already in that section",
            [FieldViolation("section", "must differ from the lot's section")],
        )
    before = snapshot(row)
    row.section_id = section.id
    await _resettle(uow, row)
    await _changed(uow, row, "MOVE", before, now())
    return row


@dataclass(frozen=True)
class SplitSpec:
    """What SplitLot takes and where the new lot goes (empty ids: the source's)."""

    quantity: Quantity
    product_id: str = ""
    section_id: str = ""
    display_name: str = ""
    state_tag: str = ""


async def split_lot(
    uow: UnitOfWork, license_id: str, lot_id: str, spec: SplitSpec, given_etag: str
) -> tuple[models.Lot, models.Lot]:
    """Move part of a lot into a new sub-lot; returns (source, new)."""
    source = await lock_lot(uow, license_id, lot_id)
    check_etag(given_etag, source.id, source.version)
    rules.check_usable(rules.Status(source.status), "split")
    product = await get_product(uow, license_id, source.product_id)
    count = counting(product)
    count.check_fits(spec.quantity, "quantity")
    rules.positive(spec.quantity, "quantity")
    target_product = product
    if spec.product_id and spec.product_id != product.id:
        target_product = await get_product(uow, license_id, spec.product_id)
        if target_product.product_type != product.product_type or counting(target_product) != count:
            raise ReferenceInvalid(
                "a split keeps the product type and the counting unit (and unit size); use ConvertLots "
                "to make another kind of product",
                metadata={"product": f"licenses/{license_id}/products/{spec.product_id}"},
            )
    t = now()
    await consume(uow, source, spec.quantity.amount, "SPLIT", t)
    source_name = lot_name(license_id, source.id)
    new = await insert_lot(
        uow,
        license_id,
        NewLot(
            product_id=target_product.id,
            section_id=spec.section_id or source.section_id,
            quantity=spec.quantity,
            variety_id=source.variety_id,
            display_name=spec.display_name,
            state_tag=spec.state_tag,
        ),
        Provenance(
            origin=rules.Origin.SPLIT,
            source_lots=[source_name],
            lab_status=rules.LabStatus(source.lab_status),
            lab_result=source.lab_result,
        ),
        t,
    )
    lineage.link(uow, source_name, lot_name(license_id, new.id), lineage.Op.SPLIT, t, spec.quantity)
    await uow.session.flush()
    return source, new


@dataclass(frozen=True)
class ConversionInput:
    """One consumed lot: how much, and its measured weight when it has no net weight."""

    lot_id: str
    quantity: Quantity
    measured_weight: Quantity | None = None
    etag: str = ""


def _weight(count: rules.Counting, amount: Decimal, measured: Quantity | None, what: str) -> Decimal:
    weight = count.weight(amount)
    if weight is not None:
        return weight
    if measured is None:
        raise UnitMismatch(
            f"{what} is not known by weight (its product is counted or sized by volume, or by plain "
            "count): give its measured weight",
            metadata={"field": what},
        )
    return measured.amount


async def convert_lots(
    uow: UnitOfWork,
    license_id: str,
    inputs: Sequence[ConversionInput],
    output: NewLot,
    output_measured_weight: Quantity | None,
    waste: Quantity,
    note: str,
) -> tuple[models.Lot, list[models.Lot]]:
    """Consume the inputs into one new lot under mass balance; returns (output, inputs in order)."""
    if waste.dimension is not Dimension.WEIGHT:
        raise UnitMismatch("waste must be a weight")
    locked = await lock_lots(uow, license_id, [i.lot_id for i in inputs])
    out_product = await get_product(uow, license_id, output.product_id)
    out_count = counting(out_product)
    out_count.check_fits(output.quantity, "output_lot.quantity")
    rules.positive(output.quantity, "output_lot.quantity")
    consumed: list[Decimal] = []
    for n, item in enumerate(inputs):
        row = locked[item.lot_id]
        check_etag(item.etag, row.id, row.version)
        rules.check_usable(rules.Status(row.status), "convert")
        count = counting(await get_product(uow, license_id, row.product_id))
        count.check_fits(item.quantity, f"inputs[{n}].quantity")
        rules.positive(item.quantity, f"inputs[{n}].quantity")
        rules.take(row.quantity, item.quantity.amount, lot_name(license_id, row.id))
        consumed.append(_weight(count, item.quantity.amount, item.measured_weight, f"inputs[{n}]"))
    produced = _weight(out_count, output.quantity.amount, output_measured_weight, "output_lot")
    balance = rules.check_balance(consumed, produced, waste.amount)
    varieties = {locked[i.lot_id].variety_id for i in inputs}
    variety = output.variety_id or (varieties.pop() if len(varieties) == 1 else None)
    t = now()
    for item in inputs:
        await consume(uow, locked[item.lot_id], item.quantity.amount, "CONVERT", t)
    names = [lot_name(license_id, i.lot_id) for i in inputs]
    out = await insert_lot(
        uow,
        license_id,
        NewLot(
            product_id=out_product.id,
            section_id=output.section_id,
            quantity=output.quantity,
            variety_id=variety,
            display_name=output.display_name,
            state_tag=output.state_tag,
        ),
        Provenance(origin=rules.Origin.CONVERSION, source_lots=names),
        t,
        action="CREATE_BY_CONVERSION",
    )
    out_name = lot_name(license_id, out.id)
    for name, item in zip(names, inputs, strict=True):
        lineage.link(uow, name, out_name, lineage.Op.CONVERSION, t, item.quantity)
    await uow.audit(
        license_id=license_id,
        resource=out_name,
        action="CONVERSION_BALANCE",
        before=None,
        after={
            "inputs": names,
            "consumed_g": str(balance.consumed),
            "produced_g": str(balance.produced),
            "waste_g": str(balance.waste),
            "note": note,
        },
    )
    await uow.session.flush()
    return out, [locked[i.lot_id] for i in inputs]


@dataclass(frozen=True)
class DestructionRequest:
    """Step one of a lot's destruction."""

    reason: int
    method: int
    waste: Quantity
    note: str = ""


async def request_destruction(
    uow: UnitOfWork, license_id: str, lot_id: str, req: DestructionRequest, given_etag: str
) -> models.Lot:
    """Step one: mark the lot DESTRUCTION_PENDING with reason, method and waste."""
    row = await lock_lot(uow, license_id, lot_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_usable(rules.Status(row.status), "destroy")
    if req.waste.dimension is not Dimension.WEIGHT:
        raise UnitMismatch("waste must be a weight (g, mg, kg, lb, oz)")
    before = snapshot(row)
    t = now()
    row.status = rules.Status.DESTRUCTION_PENDING.value
    row.destruction = {
        "reason": req.reason,
        "method": req.method,
        "waste_g": req.waste.text(),
        "note": req.note,
        "requested_by": uow.ctx.principal.name,
        "request_time": t.isoformat(),
    }
    await _changed(uow, row, "DESTRUCTION_REQUESTED", before, t)
    return row


async def confirm_destruction(
    uow: UnitOfWork, license_id: str, lot_id: str, signature: Signature | None, given_etag: str
) -> models.Lot:
    """Step two: destroy a pending lot (quantity 0, DESTROYED, locked), bound to its audit event."""
    row = await lock_lot(uow, license_id, lot_id)
    check_etag(given_etag, row.id, row.version)
    _check_pending(rules.Status(row.status), "confirm")
    if signature is None:
        raise ESignatureRequired("confirming a destruction needs an e-signature")
    before = snapshot(row)
    t = now()
    destruction = dict(row.destruction or {})
    destruction.update(
        destroyed_quantity=str(row.quantity),
        confirm_time=t.isoformat(),
        signer=signature.signer,
        meaning=signature.meaning,
        signature_reason=signature.reason,
    )
    row.quantity = Decimal(0)
    row.status = rules.Status.DESTROYED.value
    row.destruction = destruction
    audit_id = await _changed(uow, row, "DESTROYED", before, t)
    row.destruction = {**destruction, "audit_event_id": audit_id}
    return row


async def cancel_destruction(uow: UnitOfWork, license_id: str, lot_id: str, given_etag: str) -> models.Lot:
    """Withdraw a pending destruction: the lot is usable again."""
    row = await lock_lot(uow, license_id, lot_id)
    check_etag(given_etag, row.id, row.version)
    _check_pending(rules.Status(row.status), "cancel")
    before = snapshot(row)
    row.destruction = None
    await _resettle(uow, row)
    await _changed(uow, row, "DESTRUCTION_CANCELLED", before, now())
    return row


def _check_pending(status: rules.Status, action: str) -> None:
    if status is rules.Status.DESTRUCTION_PENDING:
        return
    if status is rules.Status.DESTROYED:
        rules.check_usable(status, action)
    raise InvalidStateTransition(
        f"nothing to {action}: the lot has no pending destruction (it is {status.name})",
        metadata={"status": status.name},
    )
