"""The first vertical slice over gRPC with the generated stubs, against the real server process."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from seedline.auth.v1 import auth_pb2, auth_pb2_grpc
from seedline.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.plant.v1 import plant_pb2 as pl
from seedline.plant.v1 import plant_pb2_grpc
from seedline.type.v1 import esignature_pb2, quantity_pb2

from tests.support import auth
from tests.support.stack import EdgeProcess

pytestmark = pytest.mark.e2e


def details(err: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, list[object]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "rich status details expected"
    info = error_details_pb2.ErrorInfo()
    others: list[object] = []
    for any_ in status.details:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            any_.Unpack(info)
        elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
            others.append(bad)
        elif any_.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            res = error_details_pb2.ResourceInfo()
            any_.Unpack(res)
            others.append(res)
    return info, others


def make_license(channel: grpc.Channel, number: str) -> tuple[str, str, str]:
    """A license with a crop section and a variety: (license, section, variety) names."""
    stub = license_pb2_grpc.LicenseServiceStub(channel)
    company = stub.CreateCompany(lic.CreateCompanyRequest(company=lic.Company(display_name="Green Acres")))
    license_ = stub.CreateLicense(
        lic.CreateLicenseRequest(
            license=lic.License(
                company=company.name,
                license_number=number,
                display_name="Green Acres Farm",
                type=lic.LICENSE_TYPE_GROWER,
                jurisdiction="US-CO",
                active=True,
            )
        )
    )
    section = stub.CreateSection(
        lic.CreateSectionRequest(
            parent=license_.name, section=lic.Section(display_name="Flower 1", type=lic.SECTION_TYPE_CROP)
        )
    )
    variety = stub.CreateVariety(
        lic.CreateVarietyRequest(parent=license_.name, variety=lic.Variety(display_name="Blue Dream"))
    )
    return license_.name, section.name, variety.name


def test_plant_lifecycle_over_grpc(channel: grpc.Channel) -> None:
    license_, section, variety = make_license(channel, "CO-GRPC-1")
    plants = plant_pb2_grpc.PlantServiceStub(channel)

    created = plants.CreatePlant(
        pl.CreatePlantRequest(
            parent=license_, plant=pl.Plant(variety=variety, section=section, display_name="P1")
        )
    )
    assert created.name.startswith(license_ + "/plants/")
    assert created.phase == pl.PLANT_PHASE_CLONE
    assert created.state == pl.PLANT_STATE_ACTIVE
    assert plants.GetPlant(pl.GetPlantRequest(name=created.name)) == created

    # Update with a field mask and the current etag; a stale etag is refused.
    updated = plants.UpdatePlant(
        pl.UpdatePlantRequest(
            plant=pl.Plant(name=created.name, display_name="P1-renamed", etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert updated.display_name == "P1-renamed"
    assert updated.etag != created.etag
    with pytest.raises(grpc.RpcError) as stale:
        plants.UpdatePlant(
            pl.UpdatePlantRequest(
                plant=pl.Plant(name=created.name, display_name="x", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert details(stale.value)[0].reason == "ETAG_MISMATCH"

    # Two-step destruction, then the plant is locked.
    pending = plants.DeletePlant(
        pl.DeletePlantRequest(
            name=created.name,
            waste=quantity_pb2.Quantity(value="1.5", unit=quantity_pb2.UNIT_KILOGRAM),
            reason="failed inspection",
            method=pl.DESTRUCTION_METHOD_GRIND_AND_MIX,
        )
    )
    assert pending.state == pl.PLANT_STATE_DESTRUCTION_PENDING
    assert pending.destruction.waste.value == "1500.0000"
    assert pending.destruction.waste.unit == quantity_pb2.UNIT_GRAM
    destroyed = plants.DeletePlant(
        pl.DeletePlantRequest(
            name=created.name,
            confirm=True,
            esignature=esignature_pb2.ESignatureInput(
                credential=auth.mint(),
                meaning=esignature_pb2.SIGNATURE_MEANING_APPROVED,
                reason="witnessed",
            ),
        )
    )
    assert destroyed.state == pl.PLANT_STATE_DESTROYED
    assert destroyed.destruction.confirmation.audit_event_id
    with pytest.raises(grpc.RpcError) as locked:
        plants.UpdatePlant(
            pl.UpdatePlantRequest(
                plant=pl.Plant(name=created.name, display_name="zombie"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
    assert locked.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(locked.value)[0].reason == "RESOURCE_LOCKED"

    history = plants.GetPlantHistory(pl.GetPlantHistoryRequest(name=created.name, include_audit=True))
    types = [e.type for e in history.events]
    assert types == [
        pl.PLANT_EVENT_TYPE_CREATED,
        pl.PLANT_EVENT_TYPE_UPDATED,
        pl.PLANT_EVENT_TYPE_DESTRUCTION_REQUESTED,
        pl.PLANT_EVENT_TYPE_DESTROYED,
    ]
    assert all(e.audit_entry["hash"] for e in history.events)


def test_list_plants_keyset_pages(channel: grpc.Channel) -> None:
    license_, section, variety = make_license(channel, "CO-GRPC-PAGES")
    plants = plant_pb2_grpc.PlantServiceStub(channel)
    batch = plants.BatchCreatePlants(
        pl.BatchCreatePlantsRequest(
            parent=license_, plant=pl.Plant(variety=variety, section=section), count=25
        )
    )
    assert len(batch.plants) == 25
    first = plants.ListPlants(pl.ListPlantsRequest(parent=license_))
    assert len(first.plants) == 20
    assert first.next_page_token
    second = plants.ListPlants(pl.ListPlantsRequest(parent=license_, page_token=first.next_page_token))
    assert len(second.plants) == 5
    assert not second.next_page_token
    seen = [p.name for p in first.plants] + [p.name for p in second.plants]
    assert seen == sorted(p.name for p in batch.plants)
    big = plants.ListPlants(pl.ListPlantsRequest(parent=license_, page_size=1000))
    assert len(big.plants) == 25  # capped at 100, all fit
    # A token is bound to its query: changing a filter between pages is refused.
    with pytest.raises(grpc.RpcError) as bad:
        plants.ListPlants(
            pl.ListPlantsRequest(
                parent=license_, page_token=first.next_page_token, phase=pl.PLANT_PHASE_CLONE
            )
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(bad.value)[0].reason == "INVALID_PAGE_TOKEN"


def test_invalid_input_lists_field_violations(channel: grpc.Channel) -> None:
    plants = plant_pb2_grpc.PlantServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        plants.ListPlants(pl.ListPlantsRequest(parent="licenses/x", page_size=-5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, others = details(err.value)
    assert info.reason == "VALIDATION_FAILED"
    (bad,) = [o for o in others if isinstance(o, error_details_pb2.BadRequest)]
    assert [v.field for v in bad.field_violations] == ["page_size"]


def test_missing_plant_is_not_found_with_error_info(channel: grpc.Channel) -> None:
    license_, _, _ = make_license(channel, "CO-GRPC-404")
    missing = f"{license_}/plants/01JD0000000000000000000000"
    with pytest.raises(grpc.RpcError) as err:
        plant_pb2_grpc.PlantServiceStub(channel).GetPlant(pl.GetPlantRequest(name=missing))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    info, others = details(err.value)
    assert info.reason == "RESOURCE_NOT_FOUND"
    assert info.domain == "seedline.dev"
    assert any(isinstance(o, error_details_pb2.ResourceInfo) and o.resource_name == missing for o in others)


def test_idempotent_create_returns_first_result(channel: grpc.Channel) -> None:
    license_, section, variety = make_license(channel, "CO-GRPC-IDEM")
    plants = plant_pb2_grpc.PlantServiceStub(channel)
    req = pl.CreatePlantRequest(
        parent=license_, plant=pl.Plant(variety=variety, section=section), request_id="r-1"
    )
    assert plants.CreatePlant(req) == plants.CreatePlant(req)
    assert len(plants.ListPlants(pl.ListPlantsRequest(parent=license_)).plants) == 1
    req.plant.display_name = "different body"
    with pytest.raises(grpc.RpcError) as err:
        plants.CreatePlant(req)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(err.value)[0].reason == "REQUEST_ID_REUSED"


def test_forwarded_cert_header_is_ignored_on_direct_listener(stack: EdgeProcess) -> None:
    forged = (("x-forwarded-client-cert", "URI=spiffe://seedline.dev/partner/acme"),)
    with grpc.insecure_channel(stack.server.target) as raw:
        stub = auth_pb2_grpc.AuthServiceStub(raw)
        reply = stub.PingSession(auth_pb2.PingSessionRequest(), metadata=forged)
        assert reply.principal == "anonymous"
        assert reply.principal_kind == auth_pb2.PRINCIPAL_KIND_ANONYMOUS
        # acme is an admin through Envoy; the forged header on the direct listener grants nothing.
        lots = inventory_pb2_grpc.InventoryServiceStub(raw)
        with pytest.raises(grpc.RpcError) as err:
            lots.ListLots(
                inventory_pb2.ListLotsRequest(parent="licenses/01JD0000000000000000000000"), metadata=forged
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert details(err.value)[0].reason == "CREDENTIALS_MISSING"
