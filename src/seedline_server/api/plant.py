"""PlantService over gRPC (and REST through Envoy).

Create (one or a batch, optionally from a seed/clone lot), get, list, update, two-step delete,
cancel destruction, phase changes, notes, grow materials, raw and net collection, collections,
and history.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import grpc
from seedline.plant.v1 import plant_pb2 as pb
from seedline.plant.v1 import plant_pb2_grpc
from seedline.type.v1 import quantity_pb2

from seedline_server.api import names
from seedline_server.api.convert import call, dt, parse_quantity, replay, signature, to_quantity, ts
from seedline_server.domain import plant as rules
from seedline_server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    InvalidUpdateMask,
)
from seedline_server.domain.quantity import Dimension, Quantity
from seedline_server.service import harvest, plants, registry
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import models

Ctx = grpc.aio.ServicerContext[Any, Any]
_UPDATE_FIELDS = {"variety": "variety_id", "section": "section_id", "display_name": "display_name"}


def _destruction_pb(data: dict[str, Any]) -> pb.Destruction:
    out = pb.Destruction(
        waste=to_quantity(Quantity(Decimal(data["waste_g"]), Dimension.WEIGHT)),
        reason=data.get("reason", ""),
        method=data.get("method", 0),
        requested_by=data.get("requested_by", ""),
    )
    out.request_time.FromJsonString(data["request_time"])
    if "confirm_time" in data:
        out.confirm_time.FromJsonString(data["confirm_time"])
        out.confirmation.signer = data.get("signer", "")
        out.confirmation.meaning = data.get("meaning", 0)
        out.confirmation.reason = data.get("signature_reason", "")
        out.confirmation.sign_time.FromJsonString(data["confirm_time"])
        out.confirmation.audit_event_id = data.get("audit_event_id", "")
    return out


def plant_pb(row: models.Plant) -> pb.Plant:
    """Wire form of a plant."""
    lic = row.license_id
    return pb.Plant(
        name=f"licenses/{lic}/plants/{row.id}",
        display_name=row.display_name,
        variety=f"licenses/{lic}/varieties/{row.variety_id}",
        section=f"licenses/{lic}/sections/{row.section_id}",
        source_lot=row.source_lot,
        batch=row.batch,
        phase=row.phase,  # type: ignore[arg-type]
        state=row.state,  # type: ignore[arg-type]
        plant_time=ts(row.plant_time),
        vegetative_time=ts(row.vegetative_time),
        flowering_time=ts(row.flowering_time),
        harvest_time=ts(row.harvest_time),
        destruction=_destruction_pb(row.destruction) if row.destruction else None,
        create_time=ts(row.create_time),
        update_time=ts(row.update_time),
        etag=registry.etag(row.id, row.version),
    )


class PlantServicer(plant_pb2_grpc.PlantServiceServicer):
    """Implements seedline.plant.v1.PlantService."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _new_plant(self, license_id: str, p: pb.Plant) -> plants.NewPlant:
        violations: list[FieldViolation] = []
        if not p.variety:
            violations.append(FieldViolation("plant.variety", "is required"))
        if not p.section:
            violations.append(FieldViolation("plant.section", "is required"))
        if violations:
            raise InvalidArgument("a plant needs a variety and a section", violations)
        phase = rules.Phase(p.phase) if p.phase else rules.Phase.CLONE
        if phase not in rules.INITIAL_PHASES:
            raise InvalidArgument(
                "a new plant starts as CLONE or SEEDLING",
                [
                    FieldViolation(
                        "plant.phase", "must be PLANT_PHASE_CLONE or PLANT_PHASE_SEEDLING on create"
                    )
                ],
            )
        if p.source_lot:
            names.same_license(license_id, p.source_lot, "lots", "plant.source_lot")
        return plants.NewPlant(
            display_name=p.display_name,
            variety_id=names.same_license(license_id, p.variety, "varieties", "plant.variety"),
            section_id=names.same_license(license_id, p.section, "sections", "plant.section"),
            source_lot=p.source_lot,
            batch=p.batch,
            phase=phase,
            plant_time=dt(p, "plant_time"),
        )

    async def CreatePlant(self, request: pb.CreatePlantRequest, context: Ctx) -> pb.Plant:
        license_id = names.license_id(request.parent)
        new = self._new_plant(license_id, request.plant)

        async def run(uow: UnitOfWork) -> pb.Plant:
            (row,) = await plants.create_plants(uow, license_id, new)
            return plant_pb(row)

        return await self._db.write(call(request.request_id), run, replay("CreatePlant", request, pb.Plant))

    async def BatchCreatePlants(
        self, request: pb.BatchCreatePlantsRequest, context: Ctx
    ) -> pb.BatchCreatePlantsResponse:
        license_id = names.license_id(request.parent)
        new = self._new_plant(license_id, request.plant)

        async def run(uow: UnitOfWork) -> pb.BatchCreatePlantsResponse:
            rows = await plants.create_plants(uow, license_id, new, request.count)
            return pb.BatchCreatePlantsResponse(plants=[plant_pb(r) for r in rows])

        return await self._db.write(
            call(request.request_id), run, replay("BatchCreatePlants", request, pb.BatchCreatePlantsResponse)
        )

    async def GetPlant(self, request: pb.GetPlantRequest, context: Ctx) -> pb.Plant:
        license_id, plant_id = names.child(request.name, "plants")

        async def run(uow: UnitOfWork) -> pb.Plant:
            return plant_pb(await plants.get_plant(uow, license_id, plant_id))

        return await self._db.read(call(), run)

    async def ListPlants(self, request: pb.ListPlantsRequest, context: Ctx) -> pb.ListPlantsResponse:
        license_id = names.license_id(request.parent)
        flt = plants.PlantFilter(
            phase=request.phase,
            state=request.state,
            section_id=names.same_license(license_id, request.section, "sections", "section")
            if request.section
            else "",
            variety_id=names.same_license(license_id, request.variety, "varieties", "variety")
            if request.variety
            else "",
        )

        async def run(uow: UnitOfWork) -> pb.ListPlantsResponse:
            page = await plants.list_plants(uow, license_id, flt, request.page_size, request.page_token)
            return pb.ListPlantsResponse(
                plants=[plant_pb(r) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def UpdatePlant(self, request: pb.UpdatePlantRequest, context: Ctx) -> pb.Plant:
        p = request.plant
        license_id, plant_id = names.child(p.name, "plants", "plant.name")
        paths = list(request.update_mask.paths)
        if paths == ["*"]:
            paths = list(_UPDATE_FIELDS)
        unknown = [x for x in paths if x not in _UPDATE_FIELDS]
        if unknown or not paths:
            raise InvalidUpdateMask(
                "update_mask may name variety, section, display_name (or *)",
                [FieldViolation("update_mask", f"unknown or immutable: {', '.join(unknown) or '(empty)'}")],
            )
        changes: dict[str, Any] = {"display_name": p.display_name}
        if "variety" in paths:
            changes["variety_id"] = names.same_license(license_id, p.variety, "varieties", "plant.variety")
        if "section" in paths:
            changes["section_id"] = names.same_license(license_id, p.section, "sections", "plant.section")
        mask = [_UPDATE_FIELDS[x] for x in paths]

        async def run(uow: UnitOfWork) -> pb.Plant:
            return plant_pb(await plants.update_plant(uow, license_id, plant_id, changes, mask, p.etag))

        return await self._db.write(call(request.request_id), run, replay("UpdatePlant", request, pb.Plant))

    async def DeletePlant(self, request: pb.DeletePlantRequest, context: Ctx) -> pb.Plant:
        license_id, plant_id = names.child(request.name, "plants")
        if request.confirm:
            signed = await signature(request.esignature)

            async def confirm(uow: UnitOfWork) -> pb.Plant:
                row = await plants.confirm_destruction(uow, license_id, plant_id, signed, request.etag)
                return plant_pb(row)

            return await self._db.write(
                call(request.request_id), confirm, replay("DeletePlant", request, pb.Plant)
            )
        waste = parse_quantity(request.waste, "waste")
        req = plants.DestructionRequest(waste=waste, reason=request.reason, method=request.method)

        async def ask(uow: UnitOfWork) -> pb.Plant:
            return plant_pb(await plants.request_destruction(uow, license_id, plant_id, req, request.etag))

        return await self._db.write(call(request.request_id), ask, replay("DeletePlant", request, pb.Plant))

    async def CancelPlantDestruction(
        self, request: pb.CancelPlantDestructionRequest, context: Ctx
    ) -> pb.Plant:
        license_id, plant_id = names.child(request.name, "plants")

        async def run(uow: UnitOfWork) -> pb.Plant:
            return plant_pb(await plants.cancel_destruction(uow, license_id, plant_id, request.etag))

        return await self._db.write(
            call(request.request_id), run, replay("CancelPlantDestruction", request, pb.Plant)
        )

    async def ChangePlantPhase(self, request: pb.ChangePlantPhaseRequest, context: Ctx) -> pb.Plant:
        license_id, plant_id = names.child(request.name, "plants")
        phase = rules.Phase(request.phase)
        when = dt(request, "phase_time")

        async def run(uow: UnitOfWork) -> pb.Plant:
            return plant_pb(await plants.change_phase(uow, license_id, plant_id, phase, when, request.etag))

        return await self._db.write(
            call(request.request_id), run, replay("ChangePlantPhase", request, pb.Plant)
        )

    async def GetPlantHistory(
        self, request: pb.GetPlantHistoryRequest, context: Ctx
    ) -> pb.GetPlantHistoryResponse:
        license_id, plant_id = names.child(request.name, "plants")
        start, end = dt(request, "start_time"), dt(request, "end_time")
        if start and end and end <= start:
            raise InvalidArgument(
                "end_time must be after start_time", [FieldViolation("end_time", "must be > start_time")]
            )

        async def run(uow: UnitOfWork) -> pb.GetPlantHistoryResponse:
            found = await plants.history(uow, license_id, plant_id, start, end, request.include_audit)
            out = pb.GetPlantHistoryResponse()
            for event, audit in found:
                item = out.events.add(
                    type=event.type,
                    actor=event.actor,
                    summary=event.summary,
                    audit_event_id=event.audit_event_id,
                    event_time=ts(event.event_time),
                )
                item.details.update(event.details)
                if audit is not None:
                    item.audit_entry.update(
                        {
                            "id": audit.id,
                            "event_time": audit.event_time.isoformat(),
                            "principal": audit.principal,
                            "method": audit.method,
                            "action": audit.action,
                            "request_id": audit.request_id,
                            "before": audit.before,
                            "after": audit.after,
                            "prev_hash": audit.prev_hash,
                            "hash": audit.hash,
                        }
                    )
            return out

        return await self._db.read(call(), run)

    async def AddPlantNote(self, request: pb.AddPlantNoteRequest, context: Ctx) -> pb.AddPlantNoteResponse:
        license_id = names.license_id(request.parent)
        ids = _plant_ids(license_id, request.plants)

        async def run(uow: UnitOfWork) -> pb.AddPlantNoteResponse:
            return pb.AddPlantNoteResponse(
                plant_count=await plants.add_note(uow, license_id, ids, request.text)
            )

        return await self._db.write(
            call(request.request_id), run, replay("AddPlantNote", request, pb.AddPlantNoteResponse)
        )

    async def ApplyGrowMaterial(
        self, request: pb.ApplyGrowMaterialRequest, context: Ctx
    ) -> pb.ApplyGrowMaterialResponse:
        license_id = names.license_id(request.parent)
        ids = _plant_ids(license_id, request.plants)
        material = plants.GrowMaterial(
            kind=pb.GrowMaterialKind.Name(request.kind).removeprefix("GROW_MATERIAL_KIND_"),
            material=request.material,
            quantity=parse_quantity(request.quantity, "quantity"),
            applied_by=request.applied_by,
            apply_time=dt(request, "apply_time"),
        )

        async def run(uow: UnitOfWork) -> pb.ApplyGrowMaterialResponse:
            count = await plants.apply_material(uow, license_id, ids, material)
            return pb.ApplyGrowMaterialResponse(plant_count=count)

        return await self._db.write(
            call(request.request_id), run, replay("ApplyGrowMaterial", request, pb.ApplyGrowMaterialResponse)
        )

    async def CollectRaw(self, request: pb.CollectRawRequest, context: Ctx) -> pb.Collection:
        license_id = names.license_id(request.parent)
        collection_id = (
            names.same_license(license_id, request.collection, "collections", "collection")
            if request.collection
            else ""
        )
        weights = [
            harvest.RawWeight(
                plant_id=names.same_license(license_id, w.plant, "plants", f"weights[{n}].plant"),
                wet_weight=parse_quantity(w.wet_weight, f"weights[{n}].wet_weight"),
            )
            for n, w in enumerate(request.weights)
        ]
        when = dt(request, "collect_time")

        async def run(uow: UnitOfWork) -> pb.Collection:
            done = await harvest.collect_raw(
                uow, license_id, collection_id, request.display_name, weights, request.harvest, when
            )
            return collection_pb(done.collection, done.weights)

        return await self._db.write(
            call(request.request_id), run, replay("CollectRaw", request, pb.Collection)
        )

    async def CollectNet(self, request: pb.CollectNetRequest, context: Ctx) -> pb.CollectNetResponse:
        license_id, collection_id = names.child(request.name, "collections")
        outputs = [
            harvest.NetOutput(
                product_id=names.same_license(license_id, o.product, "products", f"outputs[{n}].product"),
                dry_weight=parse_quantity(o.dry_weight, f"outputs[{n}].dry_weight"),
                section_id=names.same_license(license_id, o.section, "sections", f"outputs[{n}].section"),
            )
            for n, o in enumerate(request.outputs)
        ]
        waste = parse_quantity(request.waste, "waste") if request.HasField("waste") else None
        when = dt(request, "collect_time")

        async def run(uow: UnitOfWork) -> pb.CollectNetResponse:
            done, lots = await harvest.collect_net(uow, license_id, collection_id, outputs, waste, when)
            return pb.CollectNetResponse(
                collection=collection_pb(done.collection, done.weights),
                lots=[f"licenses/{license_id}/lots/{lot.id}" for lot in lots],
            )

        return await self._db.write(
            call(request.request_id), run, replay("CollectNet", request, pb.CollectNetResponse)
        )

    async def GetCollection(self, request: pb.GetCollectionRequest, context: Ctx) -> pb.Collection:
        license_id, collection_id = names.child(request.name, "collections")

        async def run(uow: UnitOfWork) -> pb.Collection:
            found = await harvest.get_collection(uow, license_id, collection_id)
            return collection_pb(found.collection, found.weights)

        return await self._db.read(call(), run)

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: Ctx
    ) -> pb.ListCollectionsResponse:
        license_id = names.license_id(request.parent)

        async def run(uow: UnitOfWork) -> pb.ListCollectionsResponse:
            page, weights = await harvest.list_collections(
                uow, license_id, request.state, request.page_size, request.page_token
            )
            return pb.ListCollectionsResponse(
                collections=[collection_pb(c, weights[c.id]) for c in page.rows],
                next_page_token=page.next_page_token,
            )

        return await self._db.read(call(), run)


def _plant_ids(license_id: str, plant_names: Sequence[str]) -> list[str]:
    ids = [names.same_license(license_id, p, "plants", f"plants[{n}]") for n, p in enumerate(plant_names)]
    if len(set(ids)) != len(ids):
        raise InvalidArgument("each plant may be listed once", [FieldViolation("plants", "must be unique")])
    return ids


def _grams(amount: Decimal | None) -> quantity_pb2.Quantity | None:
    return None if amount is None else to_quantity(Quantity(amount, Dimension.WEIGHT))


def collection_pb(row: models.Collection, weights: Sequence[models.CollectionWeight]) -> pb.Collection:
    """Wire form of a collection with its raw weighings."""
    lic = row.license_id
    return pb.Collection(
        name=harvest.collection_name(lic, row.id),
        display_name=row.display_name,
        state=row.state,  # type: ignore[arg-type]
        total_wet_weight=_grams(row.total_wet),
        raw_weights=[
            pb.RawWeight(plant=f"licenses/{lic}/plants/{w.plant_id}", wet_weight=_grams(w.wet_weight))
            for w in weights
        ],
        output_lots=row.output_lots,
        create_time=ts(row.create_time),
        close_time=ts(row.close_time),
        total_dry_weight=_grams(row.total_dry),
        waste=_grams(row.waste),
    )
