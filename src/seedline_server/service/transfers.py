"""Transfer use cases: drafts and their items, commit, void, accept (in full or in part), reject.

A transfer moves material between two licenses, and every step is one transaction across both:
commit takes the item quantities out of the source lots, accept creates the receiver's lots (with
lineage to the shipped lots, so a forward trace crosses licenses) and returns what was refused,
void and reject return everything. Lots are locked in id order before any write, so concurrent
commits drawing on the same lot serialise and can never oversell it.

Each change also appends a :class:`~seedline_server.store.models.TransferEvent` (a snapshot for
WatchTransfers) and a NOTIFY, both delivered only if the transaction commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text

from seedline_server.domain import lot as lot_rules
from seedline_server.domain import transfer as rules
from seedline_server.domain.errors import (
    AlreadyExists,
    EtagMismatch,
    FieldViolation,
    InvalidArgument,
    InvalidStateTransition,
    NotFound,
    ReferenceInvalid,
)
from seedline_server.domain.quantity import Quantity
from seedline_server.service import inventory, lineage
from seedline_server.service.context import Signature
from seedline_server.service.registry import (
    Page,
    apply_mask,
    check_etag,
    etag,
    get_license,
    list_page,
    snapshot,
)
from seedline_server.service.uow import UnitOfWork, new_id, now
from seedline_server.store import models

NOTIFY_CHANNEL = "seedline_transfer_events"
_EVENTS_LOCK_KEY = 0x5EED_7E11


def transfer_name(license_id: str, transfer_id: str) -> str:
    """``licenses/{license}/transfers/{transfer}`` (under the source license)."""
    return f"licenses/{license_id}/transfers/{transfer_id}"


@dataclass
class View:
    """A transfer with its items (id order), as the API shows it."""

    transfer: models.Transfer
    items: list[models.TransferItem]
    lots: dict[str, models.Lot] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The transfer's resource name."""
        return transfer_name(self.transfer.source_license_id, self.transfer.id)


# How an event snapshot is encoded (the API layer provides it: the Transfer message's bytes).
Encoder = Callable[[View], bytes]


@dataclass(frozen=True)
class NewItem:
    """A line item to add: a quantity of one lot of the source license."""

    lot_id: str
    quantity: Quantity
    unit_price: str = ""
    currency_code: str = ""


@dataclass(frozen=True)
class Draft:
    """The mutable fields of a draft transfer (ids already parsed)."""

    target_license_id: str
    planned_depart: datetime | None = None
    planned_arrive: datetime | None = None
    transporter_license_id: str = ""
    vehicle: dict[str, Any] | None = None
    driver: dict[str, Any] | None = None
    notes: str = ""


async def _active_license(uow: UnitOfWork, license_id: str, field_name: str) -> models.License:
    row = await uow.session.get(models.License, license_id)
    if row is None or not row.active:
        raise ReferenceInvalid(
            f"{field_name} licenses/{license_id} does not exist or is not active",
            metadata={field_name: f"licenses/{license_id}"},
        )
    return row


async def _items(uow: UnitOfWork, transfer_id: str) -> list[models.TransferItem]:
    stmt = (
        select(models.TransferItem)
        .where(models.TransferItem.transfer_id == transfer_id)
        .order_by(models.TransferItem.id)
    )
    return list((await uow.session.scalars(stmt)).all())


async def _view(uow: UnitOfWork, row: models.Transfer) -> View:
    items = await _items(uow, row.id)
    lots = {lot.id: lot for lot in await inventory.lots_by_id(uow, [i.lot_id for i in items])}
    return View(row, items, lots)


async def _locked(
    uow: UnitOfWork, source_license_id: str, transfer_id: str, given_etag: str
) -> models.Transfer:
    row = await uow.session.get(models.Transfer, transfer_id, with_for_update=True, populate_existing=True)
    if row is None or row.source_license_id != source_license_id:
        raise NotFound("transfer", transfer_name(source_license_id, transfer_id))
    check_etag(given_etag, row.id, row.version)
    return row


async def _record(
    uow: UnitOfWork, row: models.Transfer, event: rules.Event, before: dict[str, Any] | None, encode: Encoder
) -> View:
    """Bump the version, audit, and append the watch event (with its NOTIFY) for this change."""
    t = now()
    row.version += 1
    row.update_time = t
    await uow.session.flush()
    view = await _view(uow, row)
    audit_id = await uow.audit(
        license_id=row.source_license_id,
        resource=view.name,
        action=f"TRANSFER_{event.name}",
        before=before,
        after=snapshot(row) | {"items": [snapshot(i) for i in view.items]},
    )
    # Events are appended under their own lock, held until commit, so event seqs commit in seq
    # order: a watcher that has seen seq N can never later miss a smaller one.
    await uow.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _EVENTS_LOCK_KEY})
    if event is rules.Event.COMMITTED and row.commit_signature is not None:
        # The signature is bound to the audit event that records what was signed.
        row.commit_signature = {**row.commit_signature, "audit_event_id": audit_id}
    uow.session.add(
        models.TransferEvent(
            transfer_id=row.id,
            source_license_id=row.source_license_id,
            target_license_id=row.target_license_id,
            type=event.value,
            # The target sees a transfer only once it was committed (a voided draft stays hidden).
            visible_to_target=row.commit_signature is not None,
            event_time=t,
            snapshot=encode(view),
        )
    )
    await uow.session.execute(text("SELECT pg_notify(:c, :p)"), {"c": NOTIFY_CHANNEL, "p": row.id})
    return view


async def _check_item(uow: UnitOfWork, source_license_id: str, item: NewItem, n: int) -> models.Lot:
    lot = await uow.session.get(models.Lot, item.lot_id)
    if lot is None or lot.license_id != source_license_id:
        raise ReferenceInvalid(
            f"items[{n}].lot is not a lot of the source license licenses/{source_license_id}",
            metadata={"lot": inventory.lot_name(source_license_id, item.lot_id)},
        )
    product = await inventory.get_product(uow, source_license_id, lot.product_id)
    inventory.counting(product).check_fits(item.quantity, f"items[{n}].quantity")
    lot_rules.positive(item.quantity, f"items[{n}].quantity")
    lot_rules.take(lot.quantity, item.quantity.amount, inventory.lot_name(source_license_id, lot.id))
    return lot


def _new_item(transfer_id: str, item: NewItem) -> models.TransferItem:
    return models.TransferItem(
        id=new_id(),
        transfer_id=transfer_id,
        lot_id=item.lot_id,
        quantity=item.quantity.amount,
        unit=item.quantity.unit.value,
        unit_price=item.unit_price,
        currency_code=item.currency_code,
        received_quantity=None,
        received_lot="",
        rejection_reason="",
        state=rules.ItemState.PENDING.value,
    )


async def create_transfer(
    uow: UnitOfWork, source_license_id: str, draft: Draft, items: Sequence[NewItem], encode: Encoder
) -> View:
    """Create a DRAFT (no material moves) with optional items."""
    await get_license(uow, source_license_id)
    await _check_refs(uow, source_license_id, draft)
    t = now()
    row = models.Transfer(
        id=new_id(),
        source_license_id=source_license_id,
        target_license_id=draft.target_license_id,
        state=rules.State.DRAFT.value,
        planned_depart_time=draft.planned_depart,
        planned_arrive_time=draft.planned_arrive,
        transporter_license_id=draft.transporter_license_id,
        vehicle=draft.vehicle,
        driver=draft.driver,
        notes=draft.notes,
        commit_signature=None,
        depart_time=None,
        receive_time=None,
        state_reason="",
        external_id="",
        create_time=t,
        update_time=t,
        version=0,
    )
    uow.session.add(row)
    for n, item in enumerate(items):
        await _check_item(uow, source_license_id, item, n)
        uow.session.add(_new_item(row.id, item))
    return await _record(uow, row, rules.Event.CREATED, None, encode)


async def _check_refs(uow: UnitOfWork, source_license_id: str, draft: Draft) -> None:
    if draft.target_license_id == source_license_id:
        raise InvalidArgument(
            "target_license must differ from the source license",
            [FieldViolation("transfer.target_license", "must differ from the source license")],
        )
    await _active_license(uow, draft.target_license_id, "target_license")
    if draft.transporter_license_id:
        await _active_license(uow, draft.transporter_license_id, "transporter_license")


async def get_transfer(uow: UnitOfWork, source_license_id: str, transfer_id: str) -> View:
    """One transfer with its items, or NOT_FOUND."""
    row = await uow.session.get(models.Transfer, transfer_id)
    if row is None or row.source_license_id != source_license_id:
        raise NotFound("transfer", transfer_name(source_license_id, transfer_id))
    return await _view(uow, row)


async def views(uow: UnitOfWork, rows: Sequence[models.Transfer]) -> list[View]:
    """Views of several transfers, with their items in one query."""
    by_id: dict[str, list[models.TransferItem]] = {r.id: [] for r in rows}
    if by_id:
        stmt = (
            select(models.TransferItem)
            .where(models.TransferItem.transfer_id.in_(list(by_id)))
            .order_by(models.TransferItem.id)
        )
        for item in await uow.session.scalars(stmt):
            by_id[item.transfer_id].append(item)
    return [View(r, by_id[r.id]) for r in rows]


async def list_outgoing(
    uow: UnitOfWork, license_id: str, state: int, target_id: str, size: int, token: str
) -> Page[models.Transfer]:
    """A page of a license's outgoing transfers in id order."""
    await get_license(uow, license_id)
    stmt = select(models.Transfer).where(models.Transfer.source_license_id == license_id)
    if state:
        stmt = stmt.where(models.Transfer.state == state)
    if target_id:
        stmt = stmt.where(models.Transfer.target_license_id == target_id)
    query = {"parent": license_id, "state": str(state), "target": target_id}
    return await list_page(uow, stmt, models.Transfer.id, size, token, query)


async def list_incoming(
    uow: UnitOfWork, license_id: str, state: int, source_id: str, size: int, token: str
) -> Page[models.Transfer]:
    """A page of the transfers addressed to a license, in id order: only ever-committed ones."""
    await get_license(uow, license_id)
    stmt = select(models.Transfer).where(
        models.Transfer.target_license_id == license_id,
        # Committed at some point (a JSONB column stores Python None as JSON null, not SQL NULL).
        func.jsonb_typeof(models.Transfer.commit_signature) == "object",
    )
    if state:
        stmt = stmt.where(models.Transfer.state == state)
    if source_id:
        stmt = stmt.where(models.Transfer.source_license_id == source_id)
    query = {"incoming": license_id, "state": str(state), "source": source_id}
    return await list_page(uow, stmt, models.Transfer.id, size, token, query)


_MUTABLE = {
    "target_license_id",
    "planned_depart_time",
    "planned_arrive_time",
    "transporter_license_id",
    "vehicle",
    "driver",
    "notes",
}


async def update_transfer(
    uow: UnitOfWork,
    source_license_id: str,
    transfer_id: str,
    draft: Draft,
    mask: Sequence[str],
    given_etag: str,
    encode: Encoder,
) -> View:
    """Change a draft's fields (FieldMask over the stored column names)."""
    row = await _locked(uow, source_license_id, transfer_id, given_etag)
    rules.check_draft(rules.State(row.state), "update")
    before = snapshot(row)
    changes = {
        "target_license_id": draft.target_license_id,
        "planned_depart_time": draft.planned_depart,
        "planned_arrive_time": draft.planned_arrive,
        "transporter_license_id": draft.transporter_license_id,
        "vehicle": draft.vehicle,
        "driver": draft.driver,
        "notes": draft.notes,
    }
    apply_mask(row, changes, mask, _MUTABLE)
    merged = Draft(
        row.target_license_id,
        row.planned_depart_time,
        row.planned_arrive_time,
        row.transporter_license_id,
        row.vehicle,
        row.driver,
        row.notes,
    )
    if merged.planned_depart and merged.planned_arrive and merged.planned_arrive <= merged.planned_depart:
        raise InvalidArgument(
            "planned_arrive_time must be after planned_depart_time",
            [FieldViolation("transfer.planned_arrive_time", "must be after planned_depart_time")],
        )
    await _check_refs(uow, source_license_id, merged)
    return await _record(uow, row, rules.Event.UPDATED, before, encode)


async def add_item(
    uow: UnitOfWork, source_license_id: str, transfer_id: str, item: NewItem, given_etag: str, encode: Encoder
) -> View:
    """Add a line item to a draft (a lot at most once)."""
    row = await _locked(uow, source_license_id, transfer_id, given_etag)
    rules.check_draft(rules.State(row.state), "add an item")
    if any(i.lot_id == item.lot_id for i in await _items(uow, row.id)):
        raise AlreadyExists(
            f"lot {inventory.lot_name(source_license_id, item.lot_id)} is already on this transfer",
            metadata={"lot": inventory.lot_name(source_license_id, item.lot_id)},
        )
    await _check_item(uow, source_license_id, item, 0)
    before = snapshot(row)
    uow.session.add(_new_item(row.id, item))
    return await _record(uow, row, rules.Event.UPDATED, before, encode)


async def _item(uow: UnitOfWork, row: models.Transfer, item_id: str) -> models.TransferItem:
    item = await uow.session.get(models.TransferItem, item_id)
    if item is None or item.transfer_id != row.id:
        raise NotFound("transfer item", f"{transfer_name(row.source_license_id, row.id)}/items/{item_id}")
    return item


async def update_item(
    uow: UnitOfWork,
    source_license_id: str,
    transfer_id: str,
    item_id: str,
    change: NewItem,
    fields: Sequence[str],
    given_etag: str,
    encode: Encoder,
) -> View:
    """Change a draft item's quantity and/or price (``fields``: quantity, unit_price, currency_code)."""
    row = await _locked(uow, source_license_id, transfer_id, given_etag)
    rules.check_draft(rules.State(row.state), "change an item")
    item = await _item(uow, row, item_id)
    if change.lot_id and change.lot_id != item.lot_id:
        raise InvalidArgument(
            "an item's lot cannot change: remove the item and add another",
            [FieldViolation("item.lot", "must be the item's lot")],
        )
    before = snapshot(row)
    if "quantity" in fields:
        await _check_item(uow, source_license_id, NewItem(item.lot_id, change.quantity), 0)
        item.quantity = change.quantity.amount
    if "unit_price" in fields or "currency_code" in fields:
        item.unit_price, item.currency_code = change.unit_price, change.currency_code
    return await _record(uow, row, rules.Event.UPDATED, before, encode)


async def remove_item(
    uow: UnitOfWork, source_license_id: str, transfer_id: str, item_id: str, given_etag: str, encode: Encoder
) -> View:
    """Remove a line item from a draft."""
    row = await _locked(uow, source_license_id, transfer_id, given_etag)
    rules.check_draft(rules.State(row.state), "remove an item")
    item = await _item(uow, row, item_id)
    before = snapshot(row)
    await uow.session.delete(item)
    return await _record(uow, row, rules.Event.UPDATED, before, encode)


async def commit(
    uow: UnitOfWork,
    source_license_id: str,
    transfer_id: str,
    signature: Signature,
    given_etag: str,
    encode: Encoder,
) -> View:
    """DRAFT → COMMITTED under e-signature: every item checked, then taken out of its lot."""
    if not given_etag:
        raise EtagMismatch("committing needs the etag of the transfer the signer reviewed")
    row = await _locked(uow, source_license_id, transfer_id, given_etag)
    rules.check_draft(rules.State(row.state), "commit")
    items = await _items(uow, row.id)
    rules.check_manifest(
        rules.Manifest(
            len(items),
            row.planned_depart_time,
            row.planned_arrive_time,
            row.vehicle is not None,
            row.driver is not None,
        )
    )
    target = await _active_license(uow, row.target_license_id, "target_license")
    target_type = rules.LicenseType(target.type)
    lots = await inventory.lock_lots(uow, source_license_id, [i.lot_id for i in items])
    target_name = f"licenses/{target.id}"
    for item in items:
        lot = lots[item.lot_id]
        name = inventory.lot_name(source_license_id, lot.id)
        lot_rules.take(lot.quantity, item.quantity, name)  # INSUFFICIENT_QUANTITY, whatever emptied it
        product = await inventory.get_product(uow, source_license_id, lot.product_id)
        rules.check_receivable(
            target_type,
            lot_rules.Package(product.package_type),
            lot_rules.lab_status_for(product.product_type) is lot_rules.LabStatus.NOT_REQUIRED,
            target_name,
            f"licenses/{source_license_id}/products/{product.id}",
        )
        rules.check_lab(lot_rules.LabStatus(lot.lab_status), target_type, name)
        if lot.status == lot_rules.Status.QUARANTINED.value:
            raise InvalidStateTransition(
                f"lot {name} is QUARANTINED and cannot be shipped",
                metadata={"lot": name, "status": "QUARANTINED"},
            )
    t = now()
    before = snapshot(row)
    tname = transfer_name(source_license_id, row.id)
    for item in items:
        lot = lots[item.lot_id]
        await inventory.consume(uow, lot, item.quantity, "SHIPPED", t, emptied=lot_rules.Status.IN_TRANSIT)
        dim = inventory.counting(
            await inventory.get_product(uow, source_license_id, lot.product_id)
        ).dimension
        lineage.link(
            uow,
            inventory.lot_name(source_license_id, lot.id),
            tname,
            lineage.Op.TRANSFER,
            t,
            Quantity(item.quantity, dim),
        )
    row.state = rules.State.COMMITTED.value
    row.commit_signature = {
        "signer": signature.signer,
        "meaning": signature.meaning,
        "reason": signature.reason,
        "sign_time": t.isoformat(),
    }
    return await _record(uow, row, rules.Event.COMMITTED, before, encode)


async def _return_items(
    uow: UnitOfWork,
    row: models.Transfer,
    items: Sequence[models.TransferItem],
    amounts: dict[str, Decimal],
    t: datetime,
) -> None:
    """Put ``amounts`` (item id → quantity) back into the items' source lots."""
    wanted = [i.lot_id for i in items if amounts.get(i.id, Decimal(0)) > 0]
    if not wanted:
        return
    lots = await inventory.lock_lots(uow, row.source_license_id, wanted)
    for item in items:
        amount = amounts.get(item.id, Decimal(0))
        if amount > 0:
            await inventory.restore(uow, lots[item.lot_id], amount, "RETURNED", t)


async def void(
    uow: UnitOfWork, source_license_id: str, transfer_id: str, reason: str, given_etag: str, encode: Encoder
) -> View:
    """Cancel a transfer before it is received; committed quantities go back to their lots."""
    row = await _locked(uow, source_license_id, transfer_id, given_etag)
    state = rules.State(row.state)
    rules.check_voidable(state)
    before = snapshot(row)
    items = await _items(uow, row.id)
    t = now()
    if state in rules.SHIPPED:
        await _return_items(uow, row, items, {i.id: i.quantity for i in items}, t)
    for item in items:
        item.state = rules.ItemState.VOIDED.value
    row.state = rules.State.VOIDED.value
    row.state_reason = reason
    return await _record(uow, row, rules.Event.VOIDED, before, encode)


@dataclass(frozen=True)
class Received:
    """How much of one item the target license accepts."""

    item_id: str
    quantity: Quantity
    rejection_reason: str = ""


async def _mirror_product(uow: UnitOfWork, source: models.Product, target_license_id: str) -> models.Product:
    """The target license's product like ``source`` (type, packaging, name), created if missing."""
    stmt = select(models.Product).where(
        models.Product.license_id == target_license_id,
        models.Product.product_type == source.product_type,
        models.Product.package_type == source.package_type,
        models.Product.bulk_unit == source.bulk_unit,
        models.Product.unit_size_value == source.unit_size_value
        if source.unit_size_value is not None
        else models.Product.unit_size_value.is_(None),
        models.Product.unit_size_unit == source.unit_size_unit,
        models.Product.pack_unit_count == source.pack_unit_count,
        models.Product.display_name == source.display_name,
    )
    found = (await uow.session.scalars(stmt.limit(1))).first()
    if found is not None:
        return found
    copy = models.Product(
        id=new_id(),
        license_id=target_license_id,
        display_name=source.display_name,
        product_type=source.product_type,
        package_type=source.package_type,
        bulk_unit=source.bulk_unit,
        unit_size_value=source.unit_size_value,
        unit_size_unit=source.unit_size_unit,
        pack_unit_count=source.pack_unit_count,
        serving_size_value=source.serving_size_value,
        serving_size_unit=source.serving_size_unit,
        servings_per_unit=source.servings_per_unit,
        create_time=now(),
    )
    uow.session.add(copy)
    await uow.audit(
        license_id=target_license_id,
        resource=f"licenses/{target_license_id}/products/{copy.id}",
        action="CREATE_BY_TRANSFER",
        before=None,
        after=snapshot(copy),
    )
    return copy


async def _mirror_variety(uow: UnitOfWork, variety_id: str | None, target_license_id: str) -> str | None:
    if variety_id is None:
        return None
    source = await uow.session.get(models.Variety, variety_id)
    if source is None:
        return None
    stmt = select(models.Variety).where(
        models.Variety.license_id == target_license_id, models.Variety.display_name == source.display_name
    )
    found = (await uow.session.scalars(stmt.limit(1))).first()
    if found is not None:
        return found.id
    copy = models.Variety(
        id=new_id(),
        license_id=target_license_id,
        display_name=source.display_name,
        type=source.type,
        create_time=now(),
    )
    uow.session.add(copy)
    await uow.audit(
        license_id=target_license_id,
        resource=f"licenses/{target_license_id}/varieties/{copy.id}",
        action="CREATE_BY_TRANSFER",
        before=None,
        after=snapshot(copy),
    )
    await uow.session.flush()
    return copy.id


async def accept(
    uow: UnitOfWork,
    source_license_id: str,
    transfer_id: str,
    received: Sequence[Received],
    section_license_id: str,
    section_id: str,
    given_etag: str,
    encode: Encoder,
) -> View:
    """Receive a shipped transfer item by item: new lots at the target, the rest back to the source."""
    row = await _locked(uow, source_license_id, transfer_id, given_etag)
    state = rules.effective_state(rules.State(row.state), row.planned_depart_time, now())
    rules.check_shipped(state, "accept")
    if section_license_id != row.target_license_id:
        raise ReferenceInvalid(
            "section must be a section of the receiving (target) license",
            metadata={"section": f"licenses/{section_license_id}/sections/{section_id}"},
        )
    try:
        await inventory.lot_section(uow, row.target_license_id, section_id)
    except NotFound as exc:
        raise ReferenceInvalid(
            "section is not a section of the receiving (target) license",
            metadata={"section": f"licenses/{section_license_id}/sections/{section_id}"},
        ) from exc
    items = {i.id: i for i in await _items(uow, row.id)}
    given = {r.item_id: r for r in received}
    missing = sorted(set(items) - set(given))
    unknown = sorted(set(given) - set(items))
    if missing or unknown:
        raise InvalidArgument(
            "every item of the transfer must be listed exactly once",
            [
                FieldViolation(
                    "items", f"missing: {', '.join(missing) or '-'}; unknown: {', '.join(unknown) or '-'}"
                )
            ],
        )
    lots = await inventory.lock_lots(uow, source_license_id, [i.lot_id for i in items.values()])
    for n, r in enumerate(received):
        item = items[r.item_id]
        lot = lots[item.lot_id]
        product = await inventory.get_product(uow, source_license_id, lot.product_id)
        inventory.counting(product).check_fits(r.quantity, f"items[{n}].received_quantity")
        rules.check_received(item.quantity, r.quantity.amount, f"items[{n}].received_quantity")
    if all(r.quantity.amount == 0 for r in received):
        raise InvalidArgument(
            "nothing received: use RejectTransfer to refuse the whole transfer",
            [FieldViolation("items", "at least one received_quantity must be greater than zero")],
        )
    t = now()
    before = snapshot(row)
    tname = transfer_name(source_license_id, row.id)
    returned: dict[str, Decimal] = {}
    for r in received:
        item = items[r.item_id]
        lot = lots[item.lot_id]
        item.received_quantity = r.quantity.amount
        item.rejection_reason = r.rejection_reason
        rest = item.quantity - r.quantity.amount
        returned[item.id] = rest
        if r.quantity.amount == 0:
            item.state = rules.ItemState.REJECTED.value
            continue
        item.state = (rules.ItemState.ACCEPTED if rest == 0 else rules.ItemState.PARTIALLY_ACCEPTED).value
        product = await inventory.get_product(uow, source_license_id, lot.product_id)
        mirrored = await _mirror_product(uow, product, row.target_license_id)
        new = await inventory.insert_lot(
            uow,
            row.target_license_id,
            inventory.NewLot(
                product_id=mirrored.id,
                section_id=section_id,
                quantity=Quantity(r.quantity.amount, r.quantity.dimension),
                variety_id=await _mirror_variety(uow, lot.variety_id, row.target_license_id),
                display_name=lot.display_name,
                state_tag=lot.state_tag,
            ),
            inventory.Provenance(
                origin=lot_rules.Origin.TRANSFER,
                source_lots=[inventory.lot_name(source_license_id, lot.id)],
                lab_status=lot_rules.LabStatus(lot.lab_status),
                lab_result=lot.lab_result,
            ),
            t,
            action="CREATE_BY_TRANSFER",
        )
        new.source_transfer = tname
        item.received_lot = inventory.lot_name(row.target_license_id, new.id)
        lineage.link(uow, tname, item.received_lot, lineage.Op.TRANSFER, t, r.quantity)
    await _return_items(uow, row, list(items.values()), returned, t)
    for item in items.values():
        lot = lots[item.lot_id]
        if lot.status == lot_rules.Status.IN_TRANSIT.value and not await _still_shipping(uow, lot.id, row.id):
            # All of the lot went and was accepted: it now lives at the receiver(s).
            await inventory.set_status(uow, lot, lot_rules.Status.TRANSFERRED, "TRANSFERRED", t)
    full = all(i.state == rules.ItemState.ACCEPTED.value for i in items.values())
    row.state = (rules.State.ACCEPTED if full else rules.State.PARTIALLY_ACCEPTED).value
    row.receive_time = t
    return await _record(uow, row, rules.Event.ACCEPTED, before, encode)


async def _still_shipping(uow: UnitOfWork, lot_id: str, except_transfer: str) -> bool:
    """Whether another committed or in-transit transfer still carries material of the lot."""
    stmt = (
        select(models.TransferItem.id)
        .join(models.Transfer, models.Transfer.id == models.TransferItem.transfer_id)
        .where(
            models.TransferItem.lot_id == lot_id,
            models.Transfer.id != except_transfer,
            models.Transfer.state.in_([s.value for s in rules.SHIPPED]),
        )
        .limit(1)
    )
    return (await uow.session.scalar(stmt)) is not None


async def reject(
    uow: UnitOfWork, source_license_id: str, transfer_id: str, reason: str, given_etag: str, encode: Encoder
) -> View:
    """Refuse a whole shipped transfer: every quantity returns to its source lot."""
    row = await _locked(uow, source_license_id, transfer_id, given_etag)
    rules.check_shipped(
        rules.effective_state(rules.State(row.state), row.planned_depart_time, now()), "reject"
    )
    before = snapshot(row)
    items = await _items(uow, row.id)
    t = now()
    await _return_items(uow, row, items, {i.id: i.quantity for i in items}, t)
    for item in items:
        item.state = rules.ItemState.REJECTED.value
        item.received_quantity = Decimal(0)
        item.rejection_reason = reason
    row.state = rules.State.REJECTED.value
    row.state_reason = reason
    row.receive_time = t
    return await _record(uow, row, rules.Event.REJECTED, before, encode)


async def depart_due(uow: UnitOfWork, encode: Encoder, limit: int = 100) -> int:
    """Move COMMITTED transfers whose planned departure has passed to IN_TRANSIT; returns how many."""
    t = now()
    stmt = (
        select(models.Transfer)
        .where(models.Transfer.state == rules.State.COMMITTED.value, models.Transfer.planned_depart_time <= t)
        .order_by(models.Transfer.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = list((await uow.session.scalars(stmt)).all())
    for row in rows:
        before = snapshot(row)
        row.state = rules.State.IN_TRANSIT.value
        row.depart_time = t
        await _record(uow, row, rules.Event.IN_TRANSIT, before, encode)
    return len(rows)


def etag_of(row: models.Transfer) -> str:
    """The transfer's etag."""
    return etag(row.id, row.version)
