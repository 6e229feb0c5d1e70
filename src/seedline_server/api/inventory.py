"""InventoryService over gRPC (and REST through Envoy)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import grpc
from seedline.inventory.v1 import inventory_pb2 as pb
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.type.v1 import quantity_pb2

from seedline_server.api import names
from seedline_server.api.convert import call, dt, parse_quantity, replay, signature, to_quantity, ts
from seedline_server.domain import lot as rules
from seedline_server.domain.errors import ReferenceInvalid
from seedline_server.domain.quantity import Dimension, Quantity, Unit, dimension_of
from seedline_server.service import inventory, lineage
from seedline_server.service.registry import etag
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import models

Ctx = grpc.aio.ServicerContext[Any, Any]
# Lineage traces: defaults and the contract's ceilings.
_DEFAULT_DEPTH, _DEFAULT_NODES = 10, 1000


def _grams(text: str) -> quantity_pb2.Quantity:
    return to_quantity(Quantity(Decimal(text), Dimension.WEIGHT))


def _destruction_pb(row: models.Lot, count: rules.Counting) -> pb.LotDestruction | None:
    data = row.destruction
    if not data:
        return None
    out = pb.LotDestruction(
        reason=data["reason"],
        method=data["method"],
        waste=_grams(data["waste_g"]),
        note=data.get("note", ""),
        requested_by=data.get("requested_by", ""),
    )
    out.request_time.FromJsonString(data["request_time"])
    if "confirm_time" in data:
        out.destroyed_quantity.CopyFrom(
            to_quantity(Quantity(Decimal(data["destroyed_quantity"]), count.dimension))
        )
        out.confirm_time.FromJsonString(data["confirm_time"])
        out.confirmation.signer = data.get("signer", "")
        out.confirmation.meaning = data.get("meaning", 0)
        out.confirmation.reason = data.get("signature_reason", "")
        out.confirmation.sign_time.FromJsonString(data["confirm_time"])
        out.confirmation.audit_event_id = data.get("audit_event_id", "")
    return out


def lot_pb(row: models.Lot, product: models.Product) -> pb.Lot:
    """Wire form of a lot; ``product`` decides its counting unit and net weight/volume."""
    lic = row.license_id
    count = inventory.counting(product)
    net = count.net(row.quantity)
    out = pb.Lot(
        name=inventory.lot_name(lic, row.id),
        display_name=row.display_name,
        product=f"licenses/{lic}/products/{row.product_id}",
        variety=f"licenses/{lic}/varieties/{row.variety_id}" if row.variety_id else "",
        section=f"licenses/{lic}/sections/{row.section_id}",
        quantity=to_quantity(Quantity(row.quantity, count.dimension)),
        status=row.status,  # type: ignore[arg-type]
        lab_status=row.lab_status,  # type: ignore[arg-type]
        lab_result=row.lab_result,
        source=pb.LotSource(
            origin=row.origin,  # type: ignore[arg-type]
            lots=row.source_lots,
            collection=row.source_collection,
            transfer=row.source_transfer,
            supplier_license_number=row.supplier_license_number,
            manifest_number=row.manifest_number,
        ),
        state_tag=row.state_tag,
        state_system_id=row.state_system_id,
        destruction=_destruction_pb(row, count),
        create_time=ts(row.create_time),
        update_time=ts(row.update_time),
        etag=etag(row.id, row.version),
    )
    if net is not None:
        # Exact: whole units times a 4-place unit size times a whole pack count.
        target = out.net_weight if net.dimension is Dimension.WEIGHT else out.net_volume
        target.CopyFrom(to_quantity(net))
    return out


async def _lot_pb(uow: UnitOfWork, row: models.Lot) -> pb.Lot:
    product = await uow.session.get(models.Product, row.product_id)
    assert product is not None
    return lot_pb(row, product)


def _opt_quantity(msg: Any, field: str) -> Quantity | None:
    return parse_quantity(getattr(msg, field), field) if msg.HasField(field) else None


def _new_lot(license_id: str, lot: pb.Lot, field: str) -> inventory.NewLot:
    return inventory.NewLot(
        product_id=names.same_license(license_id, lot.product, "products", f"{field}.product"),
        section_id=names.same_license(license_id, lot.section, "sections", f"{field}.section"),
        quantity=parse_quantity(lot.quantity, f"{field}.quantity"),
        variety_id=names.same_license(license_id, lot.variety, "varieties", f"{field}.variety")
        if lot.variety
        else None,
        display_name=lot.display_name,
        state_tag=lot.state_tag,
        origin=rules.Origin(lot.source.origin) if lot.source.origin else rules.Origin.INITIAL,
        supplier_license_number=lot.source.supplier_license_number,
        manifest_number=lot.source.manifest_number,
    )


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    """Implements seedline.inventory.v1.InventoryService."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def CreateLot(self, request: pb.CreateLotRequest, context: Ctx) -> pb.Lot:
        license_id = names.license_id(request.parent)
        new = _new_lot(license_id, request.lot, "lot")

        async def run(uow: UnitOfWork) -> pb.Lot:
            return await _lot_pb(uow, await inventory.create_lot(uow, license_id, new))

        return await self._db.write(call(request.request_id), run, replay("CreateLot", request, pb.Lot))

    async def GetLot(self, request: pb.GetLotRequest, context: Ctx) -> pb.Lot:
        license_id, lot_id = names.child(request.name, "lots")

        async def run(uow: UnitOfWork) -> pb.Lot:
            return await _lot_pb(uow, await inventory.get_lot(uow, license_id, lot_id))

        return await self._db.read(call(), run)

    async def ListLots(self, request: pb.ListLotsRequest, context: Ctx) -> pb.ListLotsResponse:
        license_id = names.license_id(request.parent)

        def ref(value: str, coll: str, field: str) -> str:
            return names.same_license(license_id, value, coll, field) if value else ""

        flt = inventory.LotFilter(
            product_id=ref(request.product, "products", "product"),
            variety_id=ref(request.variety, "varieties", "variety"),
            section_id=ref(request.section, "sections", "section"),
            statuses=tuple(sorted(set(request.statuses))),
            create_start=dt(request, "create_time_start"),
            create_end=dt(request, "create_time_end"),
        )

        async def run(uow: UnitOfWork) -> pb.ListLotsResponse:
            page = await inventory.list_lots(uow, license_id, flt, request.page_size, request.page_token)
            products = await inventory.products_of(uow, page.rows)
            return pb.ListLotsResponse(
                lots=[lot_pb(r, products[r.product_id]) for r in page.rows],
                next_page_token=page.next_page_token,
            )

        return await self._db.read(call(), run)

    async def AdjustLot(self, request: pb.AdjustLotRequest, context: Ctx) -> pb.Lot:
        license_id, lot_id = names.child(request.name, "lots")
        kind = request.WhichOneof("change")
        assert kind is not None
        adj = inventory.Adjustment(
            change=rules.Change(kind),
            amount=parse_quantity(getattr(request, kind), kind),
            reason=rules.AdjustReason(request.reason),
            note=request.note,
        )

        async def run(uow: UnitOfWork) -> pb.Lot:
            return await _lot_pb(uow, await inventory.adjust_lot(uow, license_id, lot_id, adj, request.etag))

        return await self._db.write(call(request.request_id), run, replay("AdjustLot", request, pb.Lot))

    async def MoveLot(self, request: pb.MoveLotRequest, context: Ctx) -> pb.Lot:
        license_id, lot_id = names.child(request.name, "lots")
        section_license, section_id = names.child(request.section, "sections", "section")
        if section_license != license_id:
            # The contract names this REFERENCE_INVALID: the section exists or not, it cannot hold the lot.
            raise ReferenceInvalid(
                f"section {request.section} is not a section of the lot's license licenses/{license_id}",
                metadata={"section": request.section},
            )

        async def run(uow: UnitOfWork) -> pb.Lot:
            row = await inventory.move_lot(uow, license_id, lot_id, section_id, request.etag)
            return await _lot_pb(uow, row)

        return await self._db.write(call(request.request_id), run, replay("MoveLot", request, pb.Lot))

    async def SplitLot(self, request: pb.SplitLotRequest, context: Ctx) -> pb.SplitLotResponse:
        license_id, lot_id = names.child(request.name, "lots")
        spec = inventory.SplitSpec(
            quantity=parse_quantity(request.quantity, "quantity"),
            product_id=names.same_license(license_id, request.product, "products", "product")
            if request.product
            else "",
            section_id=names.same_license(license_id, request.section, "sections", "section")
            if request.section
            else "",
            display_name=request.display_name,
            state_tag=request.state_tag,
        )

        async def run(uow: UnitOfWork) -> pb.SplitLotResponse:
            source, new = await inventory.split_lot(uow, license_id, lot_id, spec, request.etag)
            return pb.SplitLotResponse(source_lot=await _lot_pb(uow, source), new_lot=await _lot_pb(uow, new))

        return await self._db.write(
            call(request.request_id), run, replay("SplitLot", request, pb.SplitLotResponse)
        )

    async def ConvertLots(self, request: pb.ConvertLotsRequest, context: Ctx) -> pb.ConvertLotsResponse:
        license_id = names.license_id(request.parent)
        inputs = [
            inventory.ConversionInput(
                lot_id=names.same_license(license_id, i.lot, "lots", f"inputs[{n}].lot"),
                quantity=parse_quantity(i.quantity, f"inputs[{n}].quantity"),
                measured_weight=_opt_quantity(i, "measured_weight"),
                etag=i.etag,
            )
            for n, i in enumerate(request.inputs)
        ]
        output = _new_lot(license_id, request.output_lot, "output_lot")
        measured = _opt_quantity(request, "output_measured_weight")
        waste = parse_quantity(request.waste, "waste")

        async def run(uow: UnitOfWork) -> pb.ConvertLotsResponse:
            out, consumed = await inventory.convert_lots(
                uow, license_id, inputs, output, measured, waste, request.note
            )
            return pb.ConvertLotsResponse(
                output_lot=await _lot_pb(uow, out), input_lots=[await _lot_pb(uow, r) for r in consumed]
            )

        return await self._db.write(
            call(request.request_id), run, replay("ConvertLots", request, pb.ConvertLotsResponse)
        )

    async def DeleteLot(self, request: pb.DeleteLotRequest, context: Ctx) -> pb.Lot:
        license_id, lot_id = names.child(request.name, "lots")
        if request.confirm:
            signed = await signature(request.esignature)

            async def confirm(uow: UnitOfWork) -> pb.Lot:
                row = await inventory.confirm_destruction(uow, license_id, lot_id, signed, request.etag)
                return await _lot_pb(uow, row)

            return await self._db.write(
                call(request.request_id), confirm, replay("DeleteLot", request, pb.Lot)
            )
        req = inventory.DestructionRequest(
            reason=request.reason,
            method=request.method,
            waste=parse_quantity(request.waste, "waste"),
            note=request.note,
        )

        async def ask(uow: UnitOfWork) -> pb.Lot:
            row = await inventory.request_destruction(uow, license_id, lot_id, req, request.etag)
            return await _lot_pb(uow, row)

        return await self._db.write(call(request.request_id), ask, replay("DeleteLot", request, pb.Lot))

    async def CancelLotDestruction(self, request: pb.CancelLotDestructionRequest, context: Ctx) -> pb.Lot:
        license_id, lot_id = names.child(request.name, "lots")

        async def run(uow: UnitOfWork) -> pb.Lot:
            return await _lot_pb(
                uow, await inventory.cancel_destruction(uow, license_id, lot_id, request.etag)
            )

        return await self._db.write(
            call(request.request_id), run, replay("CancelLotDestruction", request, pb.Lot)
        )

    async def TraceLineage(self, request: pb.TraceLineageRequest, context: Ctx) -> pb.TraceLineageResponse:
        license_id, lot_id = names.child(request.name, "lots")
        forward = request.direction == pb.TRACE_DIRECTION_FORWARD
        depth = request.max_depth or _DEFAULT_DEPTH
        limit = request.max_nodes or _DEFAULT_NODES

        async def run(uow: UnitOfWork) -> pb.TraceLineageResponse:
            await inventory.get_lot(uow, license_id, lot_id)
            found = await lineage.trace(uow, request.name, forward, depth, limit)
            lot_ids = [n.name.rsplit("/", 1)[1] for n in found.nodes if n.kind is lineage.Kind.LOT]
            lots = {r.id: r for r in await inventory.lots_by_id(uow, lot_ids)}
            products = await inventory.products_of(uow, list(lots.values()))
            out = pb.TraceLineageResponse(truncated=found.truncated)
            for node in found.nodes:
                item = out.nodes.add(name=node.name, kind=node.kind.value, depth=node.depth)
                row = lots.get(node.name.rsplit("/", 1)[1]) if node.kind is lineage.Kind.LOT else None
                if row is not None:
                    item.lot.CopyFrom(lot_pb(row, products[row.product_id]))
            for edge in found.edges:
                out.edges.add(
                    source=edge.source,
                    target=edge.target,
                    operation=edge.operation,
                    quantity=_edge_quantity(edge),
                    time=ts(edge.time),
                )
            return out

        return await self._db.read(call(), run)


def _edge_quantity(edge: models.LineageEdge) -> quantity_pb2.Quantity | None:
    if edge.quantity is None or not edge.unit:
        return None
    return to_quantity(Quantity(edge.quantity, dimension_of(Unit(edge.unit))))
