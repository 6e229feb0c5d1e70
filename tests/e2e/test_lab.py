"""Lab testing end to end, over gRPC and REST: harvest → lot → sample → failing result →
quarantine → passing retest → release; certificates of analysis; metric validation; voids.

Expectations come from the comments in proto/seedline/lab/v1/lab.proto and the default testing
panel shipped in seedline_server/store/reference/lab-panels.json.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format, timestamp_pb2
from google.rpc import error_details_pb2
from seedline.inventory.v1 import inventory_pb2 as inv
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.lab.v1 import lab_pb2 as lb
from seedline.lab.v1 import lab_pb2_grpc
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.plant.v1 import plant_pb2 as pl
from seedline.plant.v1 import plant_pb2_grpc
from seedline.type.v1 import esignature_pb2

from seedline_server.store import reference
from tests.e2e.test_grpc import details
from tests.e2e.test_inventory_cycle import Farm, flowering_plants, make_farm, new_lot, q, refused
from tests.e2e.test_rest import reason
from tests.support import auth

pytestmark = pytest.mark.e2e

MOISTURE = "018NY6XC00LM0PXPG4592M8J14"
BIFENAZATE = "018NY6XC001CR4C8SJEZQE1NYD"
THC = "018NY6XC00PXG4PH0TXS014VVW"
BULK_TYPE = "018NY6XC00PT0000000000BULK"  # the e2e farm's flower product type
UNITS = {
    "pct": lb.LAB_UNIT_PERCENT,
    "ppm": lb.LAB_UNIT_PPM,
    "ppb": lb.LAB_UNIT_PPB,
    "aw": lb.LAB_UNIT_WATER_ACTIVITY,
}
PANEL = next(
    p for p in json.loads(reference.DEFAULT_LAB_PANELS.read_text())["panels"] if p["id"] == "default"
)
PDF = (
    b"%PDF-1.7\n" + b"% Seedline test certificate\n" * 8000 + b"%%EOF\n"
)  # ~220 KB: larger than Envoy's buffers


def labs(channel: grpc.Channel) -> lab_pb2_grpc.LabResultServiceStub:
    return lab_pb2_grpc.LabResultServiceStub(channel)


def make_lab(channel: grpc.Channel) -> str:
    stub = license_pb2_grpc.LicenseServiceStub(channel)
    company = stub.CreateCompany(lic.CreateCompanyRequest(company=lic.Company(display_name="Acme Testing")))
    return stub.CreateLicense(
        lic.CreateLicenseRequest(
            license=lic.License(
                company=company.name,
                license_number=f"CO-LAB-{uuid.uuid4().hex[:10].upper()}",
                display_name="Acme Testing Lab",
                type=lic.LICENSE_TYPE_LABORATORY,
                jurisdiction="US-CO",
                active=True,
            )
        )
    ).name


def metric(
    metric_id: str, status: lb.LabMetricStatus.ValueType, qom: str = "", uom: Any = 0, **kw: str
) -> lb.LabResultMetric:
    return lb.LabResultMetric(lab_metric=f"labMetrics/{metric_id}", status=status, qom=qom, uom=uom, **kw)


def panel_metrics(**override: lb.LabResultMetric) -> list[lb.LabResultMetric]:
    """The default panel, every metric passing (``override`` replaces some, keyed by metric id)."""
    out = []
    for m in PANEL["metrics"]:
        mid = m["metric"]
        if "limit" not in m:
            item = metric(mid, lb.LAB_METRIC_STATUS_PASS, "21.5", lb.LAB_UNIT_PERCENT)
        elif m["uom"] == "cfu/g":
            item = metric(mid, lb.LAB_METRIC_STATUS_NOT_DETECTED)
        else:
            half = f"{float(m['limit']) / 2:.4f}"
            item = metric(mid, lb.LAB_METRIC_STATUS_PASS, half, UNITS[m["uom"]], limit=m["limit"])
        out.append(override.get(mid, item))
    return out


def yesterday() -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    return t


def result_request(
    farm: Farm,
    lab: str,
    metrics: list[lb.LabResultMetric],
    sample: str = "",
    lots: tuple[str, ...] = (),
    **kw: Any,
) -> lb.CreateLabResultRequest:
    return lb.CreateLabResultRequest(
        parent=farm.license,
        lab_result=lb.LabResult(
            lab_license=lab,
            sample=sample,
            lots=list(lots),
            metrics=metrics,
            test_time=yesterday(),
            certificate_number="ACME-2026-0001",
            **kw,
        ),
    )


def harvested_flower(channel: grpc.Channel, farm: Farm) -> inv.Lot:
    """Three flowering plants harvested and net collected into one flower lot of 1000 g."""
    plants = plant_pb2_grpc.PlantServiceStub(channel)
    names = flowering_plants(channel, farm, 3)
    collection = plants.CollectRaw(
        pl.CollectRawRequest(
            parent=farm.license,
            harvest=True,
            weights=[pl.RawWeight(plant=n, wet_weight=q("1500")) for n in names],
        )
    )
    net = plants.CollectNet(
        pl.CollectNetRequest(
            name=collection.name,
            outputs=[pl.NetOutput(product=farm.flower, dry_weight=q("1000"), section=farm.vault)],
            waste=q("500"),
        )
    )
    (lot_name,) = net.lots
    return inventory_pb2_grpc.InventoryServiceStub(channel).GetLot(inv.GetLotRequest(name=lot_name))


# --- 1. the walk over gRPC ---------------------------------------------------------------


def test_harvest_sample_fail_quarantine_retest_release_over_grpc(channel: grpc.Channel) -> None:
    farm, lab = make_farm(channel), make_lab(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    stub = labs(channel)

    flower = harvested_flower(channel, farm)
    assert flower.status == inv.LOT_STATUS_AVAILABLE
    assert flower.lab_status == inv.LOT_LAB_STATUS_REQUIRED

    sample = stub.CreateSample(
        lb.CreateSampleRequest(
            parent=farm.license,
            sample=lb.Sample(
                source_lot=flower.name,
                quantity=q("5"),
                lab_license=lab,
                purpose=lb.SAMPLE_PURPOSE_COMPLIANCE,
                requested_metric_types=[lb.LAB_METRIC_TYPE_CANNABINOID, lb.LAB_METRIC_TYPE_PESTICIDE],
                requested_metrics=[f"labMetrics/{MOISTURE}"],
                state_tag="SAMPLE-0001",
            ),
            request_id="sample-1",
        )
    )
    assert sample.name.startswith(farm.license + "/samples/")
    assert sample.source_lot == flower.name
    assert sample.quantity == q("5.0000")
    assert sample.status == lb.SAMPLE_STATUS_ACTIVE
    assert list(sample.requested_metric_types) == [
        lb.LAB_METRIC_TYPE_CANNABINOID,
        lb.LAB_METRIC_TYPE_PESTICIDE,
    ]
    assert list(sample.requested_metrics) == [f"labMetrics/{MOISTURE}"]
    assert stub.GetSample(lb.GetSampleRequest(name=sample.name)) == sample
    # A retry with the same request id takes nothing more.
    assert (
        stub.CreateSample(
            lb.CreateSampleRequest(parent=farm.license, sample=sample_input(sample), request_id="sample-1")
        )
        == sample
    )
    sampled = lots.GetLot(inv.GetLotRequest(name=flower.name))
    assert sampled.quantity == q("995.0000")
    assert sampled.lab_status == inv.LOT_LAB_STATUS_SAMPLED

    # Lineage: the sample hangs off the lot.
    trace = lots.TraceLineage(
        inv.TraceLineageRequest(name=flower.name, direction=inv.TRACE_DIRECTION_FORWARD)
    )
    assert {(n.name, n.kind) for n in trace.nodes} == {
        (flower.name, inv.LINEAGE_NODE_KIND_LOT),
        (sample.name, inv.LINEAGE_NODE_KIND_SAMPLE),
    }
    (edge,) = trace.edges
    assert (edge.operation, edge.quantity) == (inv.LINEAGE_OPERATION_SAMPLE, q("5.0000"))

    # The laboratory reports 17.5 % moisture against the panel's 15 %: FAIL, quarantined.
    failing = stub.CreateLabResult(
        result_request(
            farm,
            lab,
            panel_metrics(
                **{MOISTURE: metric(MOISTURE, lb.LAB_METRIC_STATUS_FAIL, "17.5", lb.LAB_UNIT_PERCENT)}
            ),
            sample=sample.name,
        )
    )
    assert failing.status == lb.LAB_RESULT_STATUS_FAIL
    assert failing.state == lb.LAB_RESULT_STATE_ACTIVE
    assert failing.panel == "default"
    assert list(failing.lots) == [flower.name]
    assert not failing.missing_metrics
    assert failing.metrics[2] == metric(MOISTURE, lb.LAB_METRIC_STATUS_FAIL, "17.5", lb.LAB_UNIT_PERCENT)
    held = lots.GetLot(inv.GetLotRequest(name=flower.name))
    assert held.status == inv.LOT_STATUS_QUARANTINED
    assert held.lab_status == inv.LOT_LAB_STATUS_FAILED
    assert held.lab_result == failing.name
    tested = stub.GetSample(lb.GetSampleRequest(name=sample.name))
    assert (tested.status, tested.lab_result) == (lb.SAMPLE_STATUS_TESTED, failing.name)
    consumed = stub.DestroySample(
        lb.DestroySampleRequest(name=sample.name, note="consumed", etag=tested.etag)
    )
    assert consumed.status == lb.SAMPLE_STATUS_DESTROYED
    assert consumed.close_note == "consumed"

    # A permitted retest: the lot stays held while the retest sample is at the lab.
    retest = stub.CreateSample(
        lb.CreateSampleRequest(
            parent=farm.license,
            sample=lb.Sample(
                source_lot=flower.name,
                quantity=q("5"),
                lab_license=lab,
                purpose=lb.SAMPLE_PURPOSE_RETEST,
                requested_metrics=[f"labMetrics/{MOISTURE}"],
            ),
        )
    )
    still = lots.GetLot(inv.GetLotRequest(name=flower.name))
    assert (still.status, still.lab_status) == (inv.LOT_STATUS_QUARANTINED, inv.LOT_LAB_STATUS_FAILED)

    passing = stub.CreateLabResult(
        result_request(farm, lab, panel_metrics(), sample=retest.name, status=lb.LAB_RESULT_STATUS_PASS)
    )
    assert passing.status == lb.LAB_RESULT_STATUS_PASS
    released = lots.GetLot(inv.GetLotRequest(name=flower.name))
    assert released.status == inv.LOT_STATUS_AVAILABLE
    assert released.lab_status == inv.LOT_LAB_STATUS_PASSED
    assert released.lab_result == passing.name
    assert released.quantity == q("990.0000")

    # Both results are listed for the lot, oldest first; the failing one alone for its sample.
    listed = stub.ListLabResults(lb.ListLabResultsRequest(parent=farm.license, lot=flower.name))
    assert [r.name for r in listed.lab_results] == [failing.name, passing.name]
    assert listed.lab_results[1] == passing
    by_sample = stub.ListLabResults(lb.ListLabResultsRequest(parent=farm.license, sample=sample.name))
    assert [r.name for r in by_sample.lab_results] == [failing.name]
    samples = stub.ListSamples(lb.ListSamplesRequest(parent=farm.license, source_lot=flower.name))
    assert [s.name for s in samples.samples] == [sample.name, retest.name]
    at_lab = stub.ListSamples(lb.ListSamplesRequest(parent="licenses/-", lab_license=lab))
    assert [s.name for s in at_lab.samples] == [sample.name, retest.name]

    # Void the passing result (two steps, e-signed): the failing one governs again.
    pending = stub.VoidLabResult(
        lb.VoidLabResultRequest(name=passing.name, reason="wrong sample id on certificate", etag=passing.etag)
    )
    assert pending.state == lb.LAB_RESULT_STATE_VOID_PENDING
    assert pending.void_reason == "wrong sample id on certificate"
    assert lots.GetLot(inv.GetLotRequest(name=flower.name)).lab_status == inv.LOT_LAB_STATUS_PASSED
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "DESTRUCTION_PENDING",
        stub.AttachLabResult,
        lb.AttachLabResultRequest(name=passing.name, lots=[flower.name]),
    )
    voided = stub.VoidLabResult(
        lb.VoidLabResultRequest(
            name=passing.name,
            confirm=True,
            esignature=esignature_pb2.ESignatureInput(
                credential=auth.mint(),
                meaning=esignature_pb2.SIGNATURE_MEANING_APPROVED,
                reason="void per SOP-7",
            ),
        )
    )
    assert voided.state == lb.LAB_RESULT_STATE_VOIDED
    assert voided.void_confirmation.signer == f"users/{auth.ADMIN}"
    assert voided.void_confirmation.audit_event_id
    assert voided.HasField("void_time")
    again = lots.GetLot(inv.GetLotRequest(name=flower.name))
    assert (again.status, again.lab_status, again.lab_result) == (
        inv.LOT_STATUS_QUARANTINED,
        inv.LOT_LAB_STATUS_FAILED,
        failing.name,
    )
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE_TRANSITION",
        stub.CancelLabResultVoid,
        lb.CancelLabResultVoidRequest(name=passing.name),
    )
    assert stub.GetLabResult(lb.GetLabResultRequest(name=passing.name)) == voided


def sample_input(sample: lb.Sample) -> lb.Sample:
    """The input fields of a created sample, as first sent."""
    return lb.Sample(
        source_lot=sample.source_lot,
        quantity=q("5"),
        lab_license=sample.lab_license,
        purpose=sample.purpose,
        requested_metric_types=sample.requested_metric_types,
        requested_metrics=sample.requested_metrics,
        state_tag=sample.state_tag,
    )


# --- 2. certificates of analysis ------------------------------------------------------------------


def test_certificate_of_analysis_digest_over_grpc_and_rest(channel: grpc.Channel, rest: httpx.Client) -> None:
    farm, lab = make_farm(channel), make_lab(channel)
    stub = labs(channel)
    lot = new_lot(inventory_pb2_grpc.InventoryServiceStub(channel), farm, q("250"))
    result = stub.CreateLabResult(result_request(farm, lab, panel_metrics(), lots=(lot.name,)))
    assert result.coa_sha256 == ""
    digest = hashlib.sha256(PDF).hexdigest()

    # Nothing imported yet: NOT_FOUND, over both faces.
    refused(
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        stub.GetCertificateOfAnalysis,
        lb.GetCertificateOfAnalysisRequest(name=result.name),
    )
    missing = rest.get(f"/v1/{result.name}:certificate")
    assert missing.status_code == 404
    assert reason(missing.json()) == "RESOURCE_NOT_FOUND"

    # A wrong expected digest is refused and stores nothing.
    err = refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        stub.ImportCertificateOfAnalysis,
        lb.ImportCertificateOfAnalysisRequest(name=result.name, pdf=PDF, expected_sha256="0" * 64),
    )
    assert "expected_sha256" in [v.field for v in details(err)[1][0].field_violations]  # type: ignore[attr-defined]

    imported = stub.ImportCertificateOfAnalysis(
        lb.ImportCertificateOfAnalysisRequest(
            name=result.name, pdf=PDF, expected_sha256=digest, etag=result.etag, request_id="coa-1"
        )
    )
    assert imported.sha256 == digest
    assert imported.lab_result.coa_sha256 == digest
    assert stub.GetLabResult(lb.GetLabResultRequest(name=result.name)).coa_sha256 == digest

    body = stub.GetCertificateOfAnalysis(lb.GetCertificateOfAnalysisRequest(name=result.name))
    assert body.content_type == "application/pdf"
    assert hashlib.sha256(body.data).hexdigest() == digest

    # REST: the raw PDF itself, byte for byte.
    fetched = rest.get(f"/v1/{result.name}:certificate")
    assert fetched.status_code == 200, fetched.text[:500]
    assert fetched.headers["content-type"] == "application/pdf"
    assert fetched.content == PDF
    assert hashlib.sha256(fetched.content).hexdigest() == digest

    # The same document again (over REST, base64 in JSON) changes nothing; another is refused.
    same = rest.post(
        f"/v1/{result.name}:importCertificate",
        json={"pdf": base64.b64encode(PDF).decode(), "expectedSha256": digest},
    )
    assert same.status_code == 200, same.text[:500]
    assert same.json()["sha256"] == digest
    assert same.json()["labResult"]["etag"] == imported.lab_result.etag
    other = rest.post(
        f"/v1/{result.name}:importCertificate", json={"pdf": base64.b64encode(b"%PDF-other").decode()}
    )
    assert other.status_code == 400
    assert reason(other.json()) == "INVALID_STATE_TRANSITION"

    # Not a PDF: refused by the contract.
    not_pdf = rest.post(
        f"/v1/{result.name}:importCertificate", json={"pdf": base64.b64encode(b"hello").decode()}
    )
    assert not_pdf.status_code == 400
    assert reason(not_pdf.json()) == "VALIDATION_FAILED"
    # A URL the server would have to fetch from its own network is refused.
    ssrf = rest.post(f"/v1/{result.name}:importCertificate", json={"uri": "https://127.0.0.1/coa.pdf"})
    assert ssrf.status_code == 400
    assert reason(ssrf.json()) == "VALIDATION_FAILED"
    assert "non-public" in ssrf.json()["message"]


def test_certificate_import_over_rest_first(channel: grpc.Channel, rest: httpx.Client) -> None:
    farm, lab = make_farm(channel), make_lab(channel)
    lot = new_lot(inventory_pb2_grpc.InventoryServiceStub(channel), farm, q("250"))
    result = labs(channel).CreateLabResult(result_request(farm, lab, panel_metrics(), lots=(lot.name,)))
    small = b"%PDF-1.4\n%%EOF\n"
    digest = hashlib.sha256(small).hexdigest()
    imported = rest.post(
        f"/v1/{result.name}:importCertificate",
        json={"pdf": base64.b64encode(small).decode(), "expectedSha256": digest, "etag": result.etag},
    )
    assert imported.status_code == 200, imported.text
    assert imported.json()["sha256"] == digest
    assert imported.json()["labResult"]["coaSha256"] == digest
    fetched = rest.get(f"/v1/{result.name}:certificate")
    assert fetched.status_code == 200
    assert fetched.content == small


# --- 3. metric validation, over both faces --------------------------------------------------------


def bad_request(err: grpc.RpcError) -> dict[str, str]:
    (bad,) = [d for d in details(err)[1] if isinstance(d, error_details_pb2.BadRequest)]
    return {v.field: v.description for v in bad.field_violations}


def test_invalid_metrics_name_the_offending_metric(channel: grpc.Channel, rest: httpx.Client) -> None:
    farm, lab = make_farm(channel), make_lab(channel)
    stub = labs(channel)
    lot = new_lot(inventory_pb2_grpc.InventoryServiceStub(channel), farm, q("100"))
    cases = {
        # more precision than the contract allows (caught by the contract's pattern)
        "lab_result.metrics[0].qom": metric(THC, lb.LAB_METRIC_STATUS_PASS, "21.12345", lb.LAB_UNIT_PERCENT),
        # percent above 100
        "lab_result.metrics[2].qom": metric(
            MOISTURE, lb.LAB_METRIC_STATUS_PASS, "100.5", lb.LAB_UNIT_PERCENT
        ),
        # a pesticide in percent
        "lab_result.metrics[4].uom": metric(
            BIFENAZATE, lb.LAB_METRIC_STATUS_PASS, "0.1", lb.LAB_UNIT_PERCENT
        ),
    }
    for path, bad in cases.items():
        mid = bad.lab_metric.removeprefix("labMetrics/")
        err = refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "VALIDATION_FAILED",
            stub.CreateLabResult,
            result_request(farm, lab, panel_metrics(**{mid: bad}), lots=(lot.name,)),
        )
        found = bad_request(err)
        assert list(found) == [path], found
        assert f"labMetrics/{mid}" in found[path]

    unknown = metric("01JD0000000000000000000000", lb.LAB_METRIC_STATUS_PASS, "1", lb.LAB_UNIT_PERCENT)
    err = refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        stub.CreateLabResult,
        result_request(farm, lab, [*panel_metrics(), unknown], lots=(lot.name,)),
    )
    path = f"lab_result.metrics[{len(PANEL['metrics'])}].lab_metric"
    assert "labMetrics/01JD0000000000000000000000" in bad_request(err)[path]

    # A PASS over the panel's limit (0.25 ppm bifenazate > 0.2 ppm), and a claim that contradicts.
    over = metric(BIFENAZATE, lb.LAB_METRIC_STATUS_PASS, "250", lb.LAB_UNIT_PPB)
    err = refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        stub.CreateLabResult,
        result_request(farm, lab, panel_metrics(**{BIFENAZATE: over}), lots=(lot.name,)),
    )
    assert list(bad_request(err)) == ["lab_result.metrics[4].status"]
    err = refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        stub.CreateLabResult,
        result_request(farm, lab, panel_metrics()[:3], lots=(lot.name,), status=lb.LAB_RESULT_STATUS_PASS),
    )
    assert "INCOMPLETE" in bad_request(err)["lab_result.status"]

    # Over REST: the same violation, the same field path, in the JSON error body.
    body = json_format.MessageToDict(
        result_request(
            farm,
            lab,
            panel_metrics(
                **{MOISTURE: metric(MOISTURE, lb.LAB_METRIC_STATUS_PASS, "101", lb.LAB_UNIT_PERCENT)}
            ),
            lots=(lot.name,),
        ).lab_result
    )
    response = rest.post(f"/v1/{farm.license}/labResults", json=body)
    assert response.status_code == 400
    payload = response.json()
    assert reason(payload) == "VALIDATION_FAILED"
    (bad,) = [d for d in payload["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    (violation,) = bad["fieldViolations"]
    assert violation["field"] == "lab_result.metrics[2].qom"
    assert f"labMetrics/{MOISTURE}" in violation["description"]
    # Nothing was recorded by any of the refusals.
    assert not labs(channel).ListLabResults(lb.ListLabResultsRequest(parent=farm.license)).lab_results


# --- 4. the walk over REST ------------------------------------------------------------------------


def test_sample_result_attach_and_void_over_rest(channel: grpc.Channel, rest: httpx.Client) -> None:
    farm, lab = make_farm(channel), make_lab(channel)
    inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
    lot = new_lot(inventory, farm, q("300"))
    other = new_lot(inventory, farm, q("40"))

    metrics = rest.get("/v1/labMetrics", params={"type": "LAB_METRIC_TYPE_HEAVY_METAL", "pageSize": 5})
    assert metrics.status_code == 200, metrics.text
    page = metrics.json()
    assert len(page["labMetrics"]) == 5
    assert {m["type"] for m in page["labMetrics"]} == {"LAB_METRIC_TYPE_HEAVY_METAL"}
    assert page["nextPageToken"]
    everything = []
    token = ""
    while True:
        got = rest.get("/v1/labMetrics", params={"pageSize": 100, "pageToken": token}).json()
        everything.extend(got["labMetrics"])
        token = got["nextPageToken"]
        if not token:
            break
    assert len(everything) == 363
    moisture = next(m for m in everything if m["name"] == f"labMetrics/{MOISTURE}")
    assert moisture["displayName"] == "Moisture"
    assert moisture["defaultUom"] == "LAB_UNIT_PERCENT"
    assert moisture["metrcName"] == "Moisture Content"

    created = rest.post(
        f"/v1/{farm.license}/samples",
        json={
            "sourceLot": lot.name,
            "quantity": {"value": "0.01", "unit": "UNIT_KILOGRAM"},
            "labLicense": lab,
            "purpose": "SAMPLE_PURPOSE_COMPLIANCE",
            "requestedMetricTypes": ["LAB_METRIC_TYPE_GENERAL", "LAB_METRIC_TYPE_MICROBE"],
        },
    )
    assert created.status_code == 200, created.text
    sample = created.json()
    assert sample["quantity"] == {"value": "10.0000", "unit": "UNIT_GRAM"}
    assert sample["status"] == "SAMPLE_STATUS_ACTIVE"
    assert rest.get(f"/v1/{lot.name}").json()["labStatus"] == "LOT_LAB_STATUS_SAMPLED"

    # Over-sampling is refused and changes nothing.
    too_much = rest.post(
        f"/v1/{farm.license}/samples",
        json={
            "sourceLot": lot.name,
            "quantity": {"value": "291", "unit": "UNIT_GRAM"},
            "labLicense": lab,
            "purpose": "SAMPLE_PURPOSE_COMPLIANCE",
            "requestedMetricTypes": ["LAB_METRIC_TYPE_GENERAL"],
        },
    )
    assert too_much.status_code == 400
    assert reason(too_much.json()) == "INSUFFICIENT_QUANTITY"
    not_a_lab = rest.post(
        f"/v1/{farm.license}/samples",
        json={
            "sourceLot": lot.name,
            "quantity": {"value": "1", "unit": "UNIT_GRAM"},
            "labLicense": farm.license,
            "purpose": "SAMPLE_PURPOSE_COMPLIANCE",
            "requestedMetricTypes": ["LAB_METRIC_TYPE_GENERAL"],
        },
    )
    assert not_a_lab.status_code == 400
    assert reason(not_a_lab.json()) == "REFERENCE_INVALID"
    assert rest.get(f"/v1/{lot.name}").json()["quantity"] == {"value": "290.0000", "unit": "UNIT_GRAM"}

    failing_metrics = panel_metrics(
        **{MOISTURE: metric(MOISTURE, lb.LAB_METRIC_STATUS_FAIL, "16", lb.LAB_UNIT_PERCENT, limit="15")}
    )
    result_body = json_format.MessageToDict(
        result_request(farm, lab, failing_metrics, sample=sample["name"]).lab_result
    )
    recorded = rest.post(f"/v1/{farm.license}/labResults", json=result_body)
    assert recorded.status_code == 200, recorded.text
    result = recorded.json()
    assert result["status"] == "LAB_RESULT_STATUS_FAIL"
    assert result["state"] == "LAB_RESULT_STATE_ACTIVE"
    assert result["lots"] == [lot.name]
    held = rest.get(f"/v1/{lot.name}").json()
    assert (held["status"], held["labStatus"]) == ("LOT_STATUS_QUARANTINED", "LOT_LAB_STATUS_FAILED")

    attached = rest.post(f"/v1/{result['name']}:attach", json={"lots": [other.name], "etag": result["etag"]})
    assert attached.status_code == 200, attached.text
    assert attached.json()["lots"] == [lot.name, other.name]
    assert rest.get(f"/v1/{other.name}").json()["status"] == "LOT_STATUS_QUARANTINED"
    stale = rest.post(f"/v1/{result['name']}:attach", json={"lots": [other.name], "etag": result["etag"]})
    assert stale.status_code == 409
    assert reason(stale.json()) == "ETAG_MISMATCH"
    foreign = rest.post(
        f"/v1/{result['name']}:attach",
        json={"lots": ["licenses/01JD0000000000000000000000/lots/01JD0000000000000000000000"]},
    )
    assert foreign.status_code == 400
    assert reason(foreign.json()) == "REFERENCE_INVALID"

    # Two-step void: the first call needs a reason, the second an e-signature.
    no_reason = rest.post(f"/v1/{result['name']}:void", json={})
    assert no_reason.status_code == 400
    asked = rest.post(f"/v1/{result['name']}:void", json={"reason": "lab mixed up the samples"})
    assert asked.status_code == 200, asked.text
    assert asked.json()["state"] == "LAB_RESULT_STATE_VOID_PENDING"
    cancelled = rest.post(f"/v1/{result['name']}:cancelVoid", json={})
    assert cancelled.json()["state"] == "LAB_RESULT_STATE_ACTIVE"
    unsigned = rest.post(f"/v1/{result['name']}:void", json={"confirm": True})
    assert unsigned.status_code == 400
    not_pending = rest.post(
        f"/v1/{result['name']}:void",
        json={
            "confirm": True,
            "esignature": {
                "credential": auth.mint(auth.PARTNER),
                "meaning": "SIGNATURE_MEANING_APPROVED",
                "reason": "void per SOP",
            },
        },
    )
    assert not_pending.status_code == 400
    assert reason(not_pending.json()) == "INVALID_STATE_TRANSITION"
    rest.post(f"/v1/{result['name']}:void", json={"reason": "lab mixed up the samples"})
    confirmed = rest.post(
        f"/v1/{result['name']}:void",
        json={
            "confirm": True,
            "esignature": {
                "credential": auth.mint(auth.PARTNER),
                "meaning": "SIGNATURE_MEANING_APPROVED",
                "reason": "void per SOP",
            },
        },
    )
    assert confirmed.status_code == 200, confirmed.text
    voided = confirmed.json()
    assert voided["state"] == "LAB_RESULT_STATE_VOIDED"
    assert voided["voidConfirmation"]["signer"] == "partners/acme"
    for name in (lot.name, other.name):
        back = rest.get(f"/v1/{name}").json()
        assert back["status"] == "LOT_STATUS_AVAILABLE"
        assert back["labStatus"] == "LOT_LAB_STATUS_REQUIRED"
        assert "labResult" not in back or back["labResult"] == ""
    locked = rest.post(f"/v1/{result['name']}:attach", json={"lots": [lot.name]})
    assert locked.status_code == 400
    assert reason(locked.json()) == "RESOURCE_LOCKED"
    assert rest.get(f"/v1/{result['name']}").json()["state"] == "LAB_RESULT_STATE_VOIDED"


def test_voiding_a_sample_over_rest_returns_the_material(channel: grpc.Channel, rest: httpx.Client) -> None:
    farm, lab = make_farm(channel), make_lab(channel)
    lot = new_lot(inventory_pb2_grpc.InventoryServiceStub(channel), farm, q("3"))
    sample = rest.post(
        f"/v1/{farm.license}/samples",
        json={
            "sourceLot": lot.name,
            "quantity": {"value": "3", "unit": "UNIT_GRAM"},
            "labLicense": lab,
            "purpose": "SAMPLE_PURPOSE_COMPLIANCE",
            "requestedMetricTypes": ["LAB_METRIC_TYPE_CANNABINOID"],
        },
    ).json()
    assert rest.get(f"/v1/{lot.name}").json()["status"] == "LOT_STATUS_DEPLETED"
    voided = rest.post(
        f"/v1/{sample['name']}:void", json={"reason": "returned unopened", "etag": sample["etag"]}
    )
    assert voided.status_code == 200, voided.text
    assert voided.json()["status"] == "SAMPLE_STATUS_VOIDED"
    assert voided.json()["closeNote"] == "returned unopened"
    back = rest.get(f"/v1/{lot.name}").json()
    assert back["status"] == "LOT_STATUS_AVAILABLE"
    assert back["quantity"] == {"value": "3.0000", "unit": "UNIT_GRAM"}
    assert back["labStatus"] == "LOT_LAB_STATUS_REQUIRED"
    again = rest.post(f"/v1/{sample['name']}:void", json={"reason": "twice"})
    assert again.status_code == 400
    assert reason(again.json()) == "RESOURCE_LOCKED"
    missing = rest.get(f"/v1/{farm.license}/samples/01JD0000000000000000000000")
    assert missing.status_code == 404
    assert reason(missing.json()) == "RESOURCE_NOT_FOUND"


def test_the_largest_certificate_travels_over_rest(channel: grpc.Channel, rest: httpx.Client) -> None:
    farm, lab = make_farm(channel), make_lab(channel)
    lot = new_lot(inventory_pb2_grpc.InventoryServiceStub(channel), farm, q("250"))
    result = labs(channel).CreateLabResult(result_request(farm, lab, panel_metrics(), lots=(lot.name,)))
    largest = b"%PDF-" + bytes(range(256)) * (8 * 1024 * 1024 // 256 - 1) + b"\n%%EOF" + b"\n" * 245
    assert len(largest) == 8 * 1024 * 1024
    digest = hashlib.sha256(largest).hexdigest()
    imported = rest.post(
        f"/v1/{result.name}:importCertificate", json={"pdf": base64.b64encode(largest).decode()}
    )
    assert imported.status_code == 200, imported.text[:500]
    assert imported.json()["sha256"] == digest
    fetched = rest.get(f"/v1/{result.name}:certificate")
    assert fetched.status_code == 200, fetched.text[:500]
    assert hashlib.sha256(fetched.content).hexdigest() == digest
    one_more = rest.post(
        f"/v1/{result.name}:importCertificate", json={"pdf": base64.b64encode(largest + b"x").decode()}
    )
    assert one_more.status_code == 400
    assert reason(one_more.json()) == "VALIDATION_FAILED"
