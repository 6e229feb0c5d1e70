"""The integrations hub end to end: real server (with its in-process worker), real Envoy, real fakes.

- A harvest, a lab result and a transfer in Seedline appear in the fake METRC, mapped as METRC
  records them (plant batch → tagged plant → harvest → package from the harvest → lab test →
  outgoing transfer template).
- The fake LIMS receives the sample registration, then publishes a signed, failing lab result
  to Seedline's REST face through Envoy with its client certificate; it lands as a LabResult and
  quarantines the lot; a replay of the same event is refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import pytest
from seedline.integration.v1 import integration_pb2 as ig
from seedline.integration.v1 import integration_pb2_grpc
from seedline.inventory.v1 import inventory_pb2 as inv
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.lab.v1 import lab_pb2 as lb
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.transfer.v1 import transfer_pb2 as tr
from seedline.transfer.v1 import transfer_pb2_grpc

from seedline_server.integrations import metrc_mapping
from tests.e2e.test_inventory_cycle import make_farm, q
from tests.e2e.test_lab import MOISTURE, harvested_flower, labs, make_lab, panel_metrics, result_request
from tests.e2e.test_transfers import commit_request, make_site, manifest
from tests.support.fakes import FakeProcess
from tests.support.stack import EdgeProcess

T = TypeVar("T")
VENDOR, USER = "e2e-vendor-key", "e2e-user-key"


def eventually(probe: Callable[[], T | None], what: str, within: float = 60.0) -> T:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def fake(stack: EdgeProcess, module: str, config: dict[str, Any], tmp: Any) -> FakeProcess:
    pki = stack.server.integration_pki
    assert pki is not None
    return FakeProcess(
        module, pki.server_cert, pki.server_key, pki.ca_cert, config=config, workdir=tmp
    ).start()


def license_number(channel: grpc.Channel, name: str) -> str:
    stub = license_pb2_grpc.LicenseServiceStub(channel)
    return str(stub.GetLicense(lic.GetLicenseRequest(name=name)).license_number)


@pytest.fixture
def integrations(channel: grpc.Channel) -> integration_pb2_grpc.IntegrationServiceStub:
    return integration_pb2_grpc.IntegrationServiceStub(channel)


def _id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def test_harvest_lab_result_and_transfer_appear_in_metrc(
    stack: EdgeProcess, channel: grpc.Channel, integrations: Any, tmp_path: Any
) -> None:
    farm = make_farm(channel)
    facility = license_number(channel, farm.license)
    metrc = fake(
        stack,
        "metrc",
        {
            "vendor_keys": [VENDOR],
            "users": {USER: [facility]},
            "facilities": [{"Number": facility, "Name": "Cycle Farms 1", "LicenseType": "Cultivator"}],
        },
        tmp_path,
    )
    try:
        integration = integrations.CreateIntegration(
            ig.CreateIntegrationRequest(
                parent=farm.license,
                integration=ig.Integration(
                    kind=ig.INTEGRATION_KIND_METRC,
                    display_name="METRC (fake)",
                    endpoint_uri=metrc.base_url,
                    enabled=True,
                    metrc=ig.MetrcConfig(
                        state_code="CO", facility_license_number=facility, api_version=ig.METRC_API_VERSION_V2
                    ),
                    credentials=ig.Credentials(metrc=ig.MetrcCredentials(vendor_key=VENDOR, user_key=USER)),
                ),
            )
        )
        report = integrations.TestIntegration(ig.TestIntegrationRequest(name=integration.name))
        assert report.reachable
        assert report.authenticated
        assert report.license_visible

        lab = make_lab(channel)
        processor = make_site(channel, lic.LICENSE_TYPE_PROCESSOR, "Processor")
        flower = harvested_flower(channel, farm)
        sample = labs(channel).CreateSample(
            lb.CreateSampleRequest(
                parent=farm.license,
                sample=lb.Sample(
                    source_lot=flower.name,
                    quantity=q("5"),
                    lab_license=lab,
                    purpose=lb.SAMPLE_PURPOSE_COMPLIANCE,
                    requested_metric_types=[lb.LAB_METRIC_TYPE_CANNABINOID],
                ),
            )
        )
        labs(channel).CreateLabResult(result_request(farm, lab, panel_metrics(), sample=sample.name))
        transfers = transfer_pb2_grpc.TransferServiceStub(channel)
        draft = transfers.CreateTransfer(
            tr.CreateTransferRequest(
                parent=farm.license, transfer=manifest(processor.license, [(flower.name, q("400"))])
            )
        )
        committed = transfers.CommitTransfer(commit_request(draft))
        assert committed.state == tr.TRANSFER_STATE_COMMITTED

        package = metrc_mapping.label_for(_id(flower.name))
        processor_number = license_number(channel, processor.license)

        def arrived() -> dict[str, Any] | None:
            state = metrc.state()
            templates = state.get("templates", {})
            return state if templates and state.get("lab_results") else None

        state = eventually(arrived, "the transfer template and lab results at the fake METRC", within=90)

        # three plants: batches of one, tagged, flowering, harvested into one METRC harvest
        plants = [p for p in state["plants"].values()]
        assert len(plants) == 3
        harvest_names = {p.get("HarvestId") for p in plants}
        assert len(harvest_names) == 1
        assert all(p["HarvestedDate"] for p in plants)
        (harvest,) = state["harvests"].values()
        assert harvest["TotalWetWeight"] == pytest.approx(4500)
        assert set(state["plant_batches"]) == {p["PlantBatchName"] for p in plants}
        # the net collection became one package from that harvest, in grams
        pkg = state["packages"][package]
        assert pkg["UnitOfMeasureName"] == "Grams"
        assert harvest["Name"] in (pkg.get("SourceHarvestNames") or "")
        # the lab result recorded against the package with METRC's test type names
        assert pkg["LabTestingState"] == "TestPassed"
        # the committed transfer as an outgoing template to the processor, carrying the package
        (template,) = state["templates"].values()
        (destination,) = template["Destinations"]
        assert destination["RecipientLicenseNumber"] == processor_number
        assert [p["PackageLabel"] for p in destination["Packages"]] == [package]
        assert all(n == 1 for n in state["create_counts"].values())

        deliveries = integrations.ListDeliveries(
            ig.ListDeliveriesRequest(parent=integration.name, page_size=100)
        )
        assert deliveries.deliveries
        logs = integrations.ListIntegrationLogs(
            ig.ListIntegrationLogsRequest(parent=integration.name, page_size=50)
        )
        assert any(e.endpoint.endswith("/transfers/v2/templates/outgoing") for e in logs.logs)
    finally:
        metrc.stop()


def test_lims_registers_the_sample_and_its_failing_result_quarantines_the_lot(
    stack: EdgeProcess, channel: grpc.Channel, integrations: Any, tmp_path: Any
) -> None:
    farm, lab = make_farm(channel), make_lab(channel)
    lab_number = license_number(channel, lab)
    lims = fake(stack, "lims", {"api_keys": {"e2e-lims-key": lab_number}}, tmp_path)
    try:
        secret = "inbound-" + uuid.uuid4().hex + uuid.uuid4().hex
        integration = integrations.CreateIntegration(
            ig.CreateIntegrationRequest(
                parent=farm.license,
                integration=ig.Integration(
                    kind=ig.INTEGRATION_KIND_LIMS,
                    display_name="Acme LIMS (fake)",
                    endpoint_uri=lims.base_url,
                    enabled=True,
                    lims=ig.LimsConfig(vendor="openthc", lab_license_number=lab_number),
                    credentials=ig.Credentials(
                        lims=ig.LimsCredentials(api_key="e2e-lims-key", webhook_signing_secret=secret)
                    ),
                ),
            )
        )
        flower = harvested_flower(channel, farm)
        sample = labs(channel).CreateSample(
            lb.CreateSampleRequest(
                parent=farm.license,
                sample=lb.Sample(
                    source_lot=flower.name,
                    quantity=q("5"),
                    lab_license=lab,
                    purpose=lb.SAMPLE_PURPOSE_COMPLIANCE,
                    requested_metric_types=[lb.LAB_METRIC_TYPE_CANNABINOID],
                ),
            )
        )
        sample_id = _id(sample.name)
        eventually(lambda: sample_id in str(lims.state().get("samples", {})), "the sample at the fake LIMS")

        assert stack.pki is not None
        lims.post(
            "/_fake/configure",
            {
                "seedline": {
                    "receive_url": f"{stack.base_url}/v1/{integration.name}:receive",
                    "signing_secret": secret,
                    "ca": str(stack.pki.ca_cert),
                    "client_cert": str(stack.pki.partner_cert),
                    "client_key": str(stack.pki.partner_key),
                }
            },
        )
        answer = lims.post(
            "/_fake/publish",
            {
                "sample_id": sample_id,
                "metrics": [{"id": MOISTURE, "qom": 17.5, "uom": "pct", "status": "fail"}],
                "replay": True,
            },
        )
        assert answer["status"] == 200, answer
        assert answer["replay"]["status"] == 409, answer["replay"]  # ALREADY_EXISTS: replay refused

        lot = inventory_pb2_grpc.InventoryServiceStub(channel).GetLot(inv.GetLotRequest(name=flower.name))
        assert lot.status == inv.LOT_STATUS_QUARANTINED
        assert lot.lab_status == inv.LOT_LAB_STATUS_FAILED
        results = labs(channel).ListLabResults(lb.ListLabResultsRequest(parent=farm.license))
        assert [r.status for r in results.lab_results] == [lb.LAB_RESULT_STATUS_FAIL]
        logs = integrations.ListIntegrationLogs(
            ig.ListIntegrationLogsRequest(parent=integration.name, page_size=50)
        )
        directions = {e.direction for e in logs.logs}
        assert ig.EXCHANGE_DIRECTION_INBOUND in directions
        assert ig.EXCHANGE_DIRECTION_OUTBOUND in directions
    finally:
        lims.stop()
