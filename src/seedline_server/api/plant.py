"""PlantService over gRPC (and REST through Envoy).

Implemented here: create (one or a batch), get, list, update, two-step delete, cancel destruction,
phase changes and history. Notes, grow materials and collections belong to the plants-and-inventory
issue and answer UNIMPLEMENTED until then.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import grpc
from seedline.plant.v1 import plant_pb2 as pb
from seedline.plant.v1 import plant_pb2_grpc
from seedline.type.v1 import esignature_pb2

from seedline_server.api import names
from seedline_server.api.convert import call, dt, parse_quantity, replay, to_quantity, ts
from seedline_server.api.interceptor import current
from seedline_server.domain import plant as rules
from seedline_server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    InvalidUpdateMask,
    NotImplementedYet,
)
from seedline_server.domain.quantity import Dimension, Quantity
from seedline_server.service import plants, registry
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


def _signature(esig: esignature_pb2.ESignatureInput) -> plants.Signature:
    """The signature of the caller.

    The signer is the authenticated principal of the call. Re-proving identity with
    ``credential`` (a fresh token or signing credential) is enforced by the identity layer; until
    it exists the credential must merely be present (the contract requires it).
    """
    return plants.Signature(signer=current().principal.name, meaning=esig.meaning, reason=esig.reason)


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
            signature = _signature(request.esignature)

            async def confirm(uow: UnitOfWork) -> pb.Plant:
                row = await plants.confirm_destruction(uow, license_id, plant_id, signature, request.etag)
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
        raise NotImplementedYet("AddPlantNote lands with the plants-and-inventory work (issue #3)")

    async def ApplyGrowMaterial(
        self, request: pb.ApplyGrowMaterialRequest, context: Ctx
    ) -> pb.ApplyGrowMaterialResponse:
        raise NotImplementedYet("ApplyGrowMaterial lands with the plants-and-inventory work (issue #3)")

    async def CollectRaw(self, request: pb.CollectRawRequest, context: Ctx) -> pb.Collection:
        raise NotImplementedYet("CollectRaw lands with the plants-and-inventory work (issue #3)")

    async def CollectNet(self, request: pb.CollectNetRequest, context: Ctx) -> pb.CollectNetResponse:
        raise NotImplementedYet("CollectNet lands with the plants-and-inventory work (issue #3)")

    async def GetCollection(self, request: pb.GetCollectionRequest, context: Ctx) -> pb.Collection:
        raise NotImplementedYet("GetCollection lands with the plants-and-inventory work (issue #3)")

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: Ctx
    ) -> pb.ListCollectionsResponse:
        raise NotImplementedYet("ListCollections lands with the plants-and-inventory work (issue #3)")
