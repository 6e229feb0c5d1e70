"""TransferService over gRPC (and REST through Envoy)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import grpc
from google.protobuf import json_format
from seedline.transfer.v1 import transfer_pb2 as pb
from seedline.transfer.v1 import transfer_pb2_grpc

from seedline_server.api import names
from seedline_server.api.convert import call, dt, parse_quantity, replay, signature, to_quantity, ts
from seedline_server.api.interceptor import identity
from seedline_server.domain.errors import (
    FieldViolation,
    InvalidUpdateMask,
    PermissionDenied,
    ReferenceInvalid,
)
from seedline_server.domain.quantity import Quantity, Unit, dimension_of
from seedline_server.service import transfers
from seedline_server.service.registry import get_license
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.service.watch import Event, TransferFeed
from seedline_server.store import models

Ctx = grpc.aio.ServicerContext[Any, Any]
_FIELDS = {
    "target_license": "target_license_id",
    "planned_depart_time": "planned_depart_time",
    "planned_arrive_time": "planned_arrive_time",
    "transporter_license": "transporter_license_id",
    "vehicle": "vehicle",
    "driver": "driver",
    "notes": "notes",
}
_ITEM_FIELDS = {"quantity", "unit_price", "currency_code"}


def _amount(value: Decimal | None, unit: int) -> Any:
    return None if value is None else to_quantity(Quantity(value, dimension_of(Unit(unit))))


def _item_pb(item: models.TransferItem, source_license_id: str) -> pb.TransferItem:
    return pb.TransferItem(
        item_id=item.id,
        lot=f"licenses/{source_license_id}/lots/{item.lot_id}",
        quantity=_amount(item.quantity, item.unit),
        unit_price=item.unit_price,
        currency_code=item.currency_code,
        received_quantity=_amount(item.received_quantity, item.unit),
        received_lot=item.received_lot,
        rejection_reason=item.rejection_reason,
        state=item.state,  # type: ignore[arg-type]
    )


def transfer_pb(view: transfers.View) -> pb.Transfer:
    """Wire form of a transfer with its items."""
    row = view.transfer
    out = pb.Transfer(
        name=view.name,
        source_license=f"licenses/{row.source_license_id}",
        target_license=f"licenses/{row.target_license_id}",
        state=row.state,  # type: ignore[arg-type]
        items=[_item_pb(i, row.source_license_id) for i in view.items],
        planned_depart_time=ts(row.planned_depart_time),
        planned_arrive_time=ts(row.planned_arrive_time),
        transporter_license=f"licenses/{row.transporter_license_id}" if row.transporter_license_id else "",
        notes=row.notes,
        depart_time=ts(row.depart_time),
        receive_time=ts(row.receive_time),
        state_reason=row.state_reason,
        external_id=row.external_id,
        create_time=ts(row.create_time),
        update_time=ts(row.update_time),
        etag=transfers.etag_of(row),
    )
    if row.vehicle is not None:
        json_format.ParseDict(row.vehicle, out.vehicle)
    if row.driver is not None:
        json_format.ParseDict(row.driver, out.driver)
    if row.commit_signature:
        sig = row.commit_signature
        out.commit_signature.signer = sig.get("signer", "")
        out.commit_signature.meaning = sig.get("meaning", 0)
        out.commit_signature.reason = sig.get("reason", "")
        out.commit_signature.sign_time.FromJsonString(sig["sign_time"])
        out.commit_signature.audit_event_id = sig.get("audit_event_id", "")
    return out


def encode(view: transfers.View) -> bytes:
    """The event snapshot of a transfer: its wire form."""
    return transfer_pb(view).SerializeToString()


def _draft(source_license_id: str, t: pb.Transfer) -> transfers.Draft:
    def other_license(value: str, field: str) -> str:
        return names.license_id(value, field) if value else ""

    return transfers.Draft(
        target_license_id=other_license(t.target_license, "transfer.target_license"),
        planned_depart=dt(t, "planned_depart_time"),
        planned_arrive=dt(t, "planned_arrive_time"),
        transporter_license_id=other_license(t.transporter_license, "transfer.transporter_license"),
        vehicle=json_format.MessageToDict(t.vehicle) if t.HasField("vehicle") else None,
        driver=json_format.MessageToDict(t.driver) if t.HasField("driver") else None,
        notes=t.notes,
    )


def _new_item(source_license_id: str, item: pb.TransferItem, field: str) -> transfers.NewItem:
    lot_license, lot_id = names.child(item.lot, "lots", f"{field}.lot")
    if lot_license != source_license_id:
        raise ReferenceInvalid(
            f"{field}.lot must be a lot of the source license licenses/{source_license_id}",
            metadata={"lot": item.lot},
        )
    return transfers.NewItem(
        lot_id=lot_id,
        quantity=parse_quantity(item.quantity, f"{field}.quantity"),
        unit_price=item.unit_price,
        currency_code=item.currency_code,
    )


async def _party(
    uow: UnitOfWork, source_license_id: str, transfer_id: str, permission: str, *, source: bool
) -> None:
    """PERMISSION_DENIED unless the caller is a party holding ``permission``.

    A party is the source license (when ``source``) or the target license of a committed
    transfer. The answer is the same whether or not the transfer exists.
    """
    who = identity()
    if source and who.grants.allows(permission, source_license_id):
        return
    row = await uow.session.get(models.Transfer, transfer_id)
    if (
        row is not None
        and row.source_license_id == source_license_id
        and row.commit_signature is not None
        and who.grants.allows(permission, row.target_license_id)
    ):
        return
    where = transfers.transfer_name(source_license_id, transfer_id)
    raise PermissionDenied(
        f"{who.principal.name} may not {permission} on {where}",
        metadata={"permission": permission, "resource": where},
    )


class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    """Implements seedline.transfer.v1.TransferService."""

    def __init__(self, db: Database, feed: TransferFeed) -> None:
        self._db = db
        self._feed = feed

    async def CreateTransfer(self, request: pb.CreateTransferRequest, context: Ctx) -> pb.Transfer:
        lic = names.license_id(request.parent)
        draft = _draft(lic, request.transfer)
        if not draft.target_license_id:
            raise ReferenceInvalid(
                "transfer.target_license is required", metadata={"field": "target_license"}
            )
        items = [_new_item(lic, i, f"transfer.items[{n}]") for n, i in enumerate(request.transfer.items)]

        async def run(uow: UnitOfWork) -> pb.Transfer:
            return transfer_pb(await transfers.create_transfer(uow, lic, draft, items, encode))

        return await self._db.write(
            call(request.request_id), run, replay("CreateTransfer", request, pb.Transfer)
        )

    async def GetTransfer(self, request: pb.GetTransferRequest, context: Ctx) -> pb.Transfer:
        lic, tid = names.child(request.name, "transfers")

        async def run(uow: UnitOfWork) -> pb.Transfer:
            await _party(uow, lic, tid, "transfer.read", source=True)
            return transfer_pb(await transfers.get_transfer(uow, lic, tid))

        return await self._db.read(call(), run)

    async def ListTransfers(self, request: pb.ListTransfersRequest, context: Ctx) -> pb.ListTransfersResponse:
        lic = names.license_id(request.parent)
        target = names.license_id(request.target_license, "target_license") if request.target_license else ""

        async def run(uow: UnitOfWork) -> pb.ListTransfersResponse:
            page = await transfers.list_outgoing(
                uow, lic, request.state, target, request.page_size, request.page_token
            )
            return pb.ListTransfersResponse(
                transfers=[transfer_pb(v) for v in await transfers.views(uow, page.rows)],
                next_page_token=page.next_page_token,
            )

        return await self._db.read(call(), run)

    async def ListIncomingTransfers(
        self, request: pb.ListIncomingTransfersRequest, context: Ctx
    ) -> pb.ListIncomingTransfersResponse:
        lic = names.license_id(request.parent)
        source = names.license_id(request.source_license, "source_license") if request.source_license else ""

        async def run(uow: UnitOfWork) -> pb.ListIncomingTransfersResponse:
            page = await transfers.list_incoming(
                uow, lic, request.state, source, request.page_size, request.page_token
            )
            return pb.ListIncomingTransfersResponse(
                transfers=[transfer_pb(v) for v in await transfers.views(uow, page.rows)],
                next_page_token=page.next_page_token,
            )

        return await self._db.read(call(), run)

    async def UpdateTransfer(self, request: pb.UpdateTransferRequest, context: Ctx) -> pb.Transfer:
        t = request.transfer
        lic, tid = names.child(t.name, "transfers", "transfer.name")
        paths = list(request.update_mask.paths) or list(_FIELDS)
        bad = [p for p in paths if p not in _FIELDS]
        if bad:
            raise InvalidUpdateMask(
                f"update_mask may name {', '.join(_FIELDS)}; not {', '.join(bad)}",
                [FieldViolation("update_mask", f"not updatable: {', '.join(bad)}")],
            )
        draft = _draft(lic, t)
        mask = [_FIELDS[p] for p in paths]

        async def run(uow: UnitOfWork) -> pb.Transfer:
            return transfer_pb(await transfers.update_transfer(uow, lic, tid, draft, mask, t.etag, encode))

        return await self._db.write(
            call(request.request_id), run, replay("UpdateTransfer", request, pb.Transfer)
        )

    async def AddTransferItem(self, request: pb.AddTransferItemRequest, context: Ctx) -> pb.Transfer:
        lic, tid = names.child(request.name, "transfers")
        item = _new_item(lic, request.item, "item")

        async def run(uow: UnitOfWork) -> pb.Transfer:
            return transfer_pb(await transfers.add_item(uow, lic, tid, item, request.etag, encode))

        return await self._db.write(
            call(request.request_id), run, replay("AddTransferItem", request, pb.Transfer)
        )

    async def UpdateTransferItem(self, request: pb.UpdateTransferItemRequest, context: Ctx) -> pb.Transfer:
        lic, tid = names.child(request.name, "transfers")
        fields = list(request.update_mask.paths) or sorted(_ITEM_FIELDS)
        bad = [f for f in fields if f not in _ITEM_FIELDS]
        if bad or (("unit_price" in fields) != ("currency_code" in fields)):
            raise InvalidUpdateMask(
                "update_mask may name quantity, and unit_price with currency_code (together)",
                [FieldViolation("update_mask", f"invalid: {', '.join(fields)}")],
            )
        item = request.item
        lot_id = names.child(item.lot, "lots", "item.lot")[1] if item.lot else ""
        change = transfers.NewItem(
            lot_id=lot_id,
            quantity=parse_quantity(item.quantity, "item.quantity")
            if "quantity" in fields
            else Quantity(Decimal(0), dimension_of(Unit.GRAM)),
            unit_price=item.unit_price,
            currency_code=item.currency_code,
        )

        async def run(uow: UnitOfWork) -> pb.Transfer:
            view = await transfers.update_item(
                uow, lic, tid, request.item_id, change, fields, request.etag, encode
            )
            return transfer_pb(view)

        return await self._db.write(
            call(request.request_id), run, replay("UpdateTransferItem", request, pb.Transfer)
        )

    async def RemoveTransferItem(self, request: pb.RemoveTransferItemRequest, context: Ctx) -> pb.Transfer:
        lic, tid = names.child(request.name, "transfers")

        async def run(uow: UnitOfWork) -> pb.Transfer:
            return transfer_pb(
                await transfers.remove_item(uow, lic, tid, request.item_id, request.etag, encode)
            )

        return await self._db.write(
            call(request.request_id), run, replay("RemoveTransferItem", request, pb.Transfer)
        )

    async def CommitTransfer(self, request: pb.CommitTransferRequest, context: Ctx) -> pb.Transfer:
        lic, tid = names.child(request.name, "transfers")
        signed = await signature(request.esignature)

        async def run(uow: UnitOfWork) -> pb.Transfer:
            return transfer_pb(await transfers.commit(uow, lic, tid, signed, request.etag, encode))

        return await self._db.write(
            call(request.request_id), run, replay("CommitTransfer", request, pb.Transfer)
        )

    async def VoidTransfer(self, request: pb.VoidTransferRequest, context: Ctx) -> pb.Transfer:
        lic, tid = names.child(request.name, "transfers")

        async def run(uow: UnitOfWork) -> pb.Transfer:
            return transfer_pb(await transfers.void(uow, lic, tid, request.reason, request.etag, encode))

        return await self._db.write(
            call(request.request_id), run, replay("VoidTransfer", request, pb.Transfer)
        )

    async def AcceptTransfer(self, request: pb.AcceptTransferRequest, context: Ctx) -> pb.Transfer:
        lic, tid = names.child(request.name, "transfers")
        section_license, section_id = names.child(request.section, "sections", "section")
        received = [
            transfers.Received(
                item_id=r.item_id,
                quantity=parse_quantity(r.received_quantity, f"items[{n}].received_quantity"),
                rejection_reason=r.rejection_reason,
            )
            for n, r in enumerate(request.items)
        ]

        async def run(uow: UnitOfWork) -> pb.Transfer:
            await _party(uow, lic, tid, "transfer.receive", source=False)
            view = await transfers.accept(
                uow, lic, tid, received, section_license, section_id, request.etag, encode
            )
            return transfer_pb(view)

        return await self._db.write(
            call(request.request_id), run, replay("AcceptTransfer", request, pb.Transfer)
        )

    async def RejectTransfer(self, request: pb.RejectTransferRequest, context: Ctx) -> pb.Transfer:
        lic, tid = names.child(request.name, "transfers")

        async def run(uow: UnitOfWork) -> pb.Transfer:
            await _party(uow, lic, tid, "transfer.receive", source=False)
            return transfer_pb(await transfers.reject(uow, lic, tid, request.reason, request.etag, encode))

        return await self._db.write(
            call(request.request_id), run, replay("RejectTransfer", request, pb.Transfer)
        )

    async def WatchTransfers(
        self, request: pb.WatchTransfersRequest, context: Ctx
    ) -> AsyncIterator[pb.TransferEvent]:
        lic = names.license_id(request.parent)

        async def exists(uow: UnitOfWork) -> None:
            await get_license(uow, lic)

        await self._db.read(call(), exists)
        after = await self._feed.start_after(request.resume_token, dt(request, "since_time"))
        sub = self._feed.subscribe(lic)  # before the replay: nothing committed meanwhile is missed
        try:
            async for ev in self._feed.history(lic, after):
                if (out := _event_pb(ev, lic, request.direction)) is not None:
                    yield out
                after = ev.seq
            while True:
                ev = await self._feed.next(sub)
                if ev.seq <= after:
                    continue
                after = ev.seq
                if (out := _event_pb(ev, lic, request.direction)) is not None:
                    yield out
        finally:
            self._feed.unsubscribe(sub)


def _event_pb(ev: Event, license_id: str, direction: int) -> pb.TransferEvent | None:
    side = (
        pb.TRANSFER_DIRECTION_OUTGOING
        if ev.source_license_id == license_id
        else pb.TRANSFER_DIRECTION_INCOMING
    )
    if direction and direction != side:
        return None
    return pb.TransferEvent(
        type=ev.type,  # type: ignore[arg-type]
        transfer=pb.Transfer.FromString(ev.snapshot),
        direction=side,
        event_time=ts(ev.event_time),
        resume_token=str(ev.seq),
    )
