"""The issue's walk across services: a failed lab result blocks shipping; a passing retest
releases the lot, which ships and is received in part at another license; a recall trace from the
original lot finds the receiver's lot."""

from __future__ import annotations

import grpc
from seedline.inventory.v1 import inventory_pb2 as inv
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.lab.v1 import lab_pb2 as lb
from seedline.license.v1 import license_pb2 as lic
from seedline.transfer.v1 import transfer_pb2 as tr
from seedline.transfer.v1 import transfer_pb2_grpc

from tests.e2e.test_inventory_cycle import make_farm, q, refused
from tests.e2e.test_lab import (
    MOISTURE,
    harvested_flower,
    labs,
    make_lab,
    metric,
    panel_metrics,
    result_request,
)
from tests.e2e.test_transfers import accept_request, commit_request, make_site, manifest


def test_failed_result_blocks_shipping_until_a_retest_passes_then_recall_crosses_licenses(
    channel: grpc.Channel,
) -> None:
    farm, lab = make_farm(channel), make_lab(channel)
    processor = make_site(channel, lic.LICENSE_TYPE_PROCESSOR, "Processor")
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)
    transfers = transfer_pb2_grpc.TransferServiceStub(channel)
    stub = labs(channel)

    # harvest → lot → sample → failing result → quarantined
    flower = harvested_flower(channel, farm)
    sample = stub.CreateSample(
        lb.CreateSampleRequest(
            parent=farm.license,
            sample=lb.Sample(
                source_lot=flower.name,
                quantity=q("5"),
                lab_license=lab,
                purpose=lb.SAMPLE_PURPOSE_COMPLIANCE,
                requested_metric_types=[lb.LAB_METRIC_TYPE_CANNABINOID, lb.LAB_METRIC_TYPE_PESTICIDE],
            ),
        )
    )
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
    held = lots.GetLot(inv.GetLotRequest(name=flower.name))
    assert (held.status, held.lab_status) == (inv.LOT_STATUS_QUARANTINED, inv.LOT_LAB_STATUS_FAILED)

    # → commit refused, and nothing moved
    draft = transfers.CreateTransfer(
        tr.CreateTransferRequest(
            parent=farm.license, transfer=manifest(processor.license, [(flower.name, q("400"))])
        )
    )
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "LAB_TESTING_REQUIRED",
        transfers.CommitTransfer,
        commit_request(draft),
    )
    assert lots.GetLot(inv.GetLotRequest(name=flower.name)).quantity == q("995.0000")
    assert transfers.GetTransfer(tr.GetTransferRequest(name=draft.name)).state == tr.TRANSFER_STATE_DRAFT

    # a new passing result → released
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
    passing = stub.CreateLabResult(result_request(farm, lab, panel_metrics(), sample=retest.name))
    assert passing.status == lb.LAB_RESULT_STATUS_PASS
    released = lots.GetLot(inv.GetLotRequest(name=flower.name))
    assert (released.status, released.lab_status) == (inv.LOT_STATUS_AVAILABLE, inv.LOT_LAB_STATUS_PASSED)

    # → transfer committed (the same draft, re-read for its etag) → received in part
    committed = transfers.CommitTransfer(
        commit_request(transfers.GetTransfer(tr.GetTransferRequest(name=draft.name)))
    )
    assert committed.state == tr.TRANSFER_STATE_COMMITTED
    assert lots.GetLot(inv.GetLotRequest(name=flower.name)).quantity == q("590.0000")
    received = transfers.AcceptTransfer(accept_request(committed, processor.vault, ["350"], why="50 g wet"))
    assert received.state == tr.TRANSFER_STATE_PARTIALLY_ACCEPTED
    (item,) = received.items
    assert item.received_quantity == q("350.0000")
    at_processor = lots.GetLot(inv.GetLotRequest(name=item.received_lot))
    assert at_processor.name.startswith(processor.license + "/lots/")
    assert at_processor.quantity == q("350.0000")
    # The lab facts travel with the material.
    assert (at_processor.lab_status, at_processor.lab_result) == (inv.LOT_LAB_STATUS_PASSED, passing.name)
    assert lots.GetLot(inv.GetLotRequest(name=flower.name)).quantity == q("640.0000")

    # TraceLineage forward from the original lot lists the receiver's lot (and the samples).
    trace = lots.TraceLineage(
        inv.TraceLineageRequest(name=flower.name, direction=inv.TRACE_DIRECTION_FORWARD)
    )
    found = {n.name: n for n in trace.nodes}
    assert found[item.received_lot].kind == inv.LINEAGE_NODE_KIND_LOT
    assert found[item.received_lot].depth == 2
    assert found[item.received_lot].lot.quantity == q("350.0000")
    assert found[committed.name].kind == inv.LINEAGE_NODE_KIND_TRANSFER
    assert {sample.name, retest.name} <= set(found)
    assert (flower.name, committed.name, inv.LINEAGE_OPERATION_TRANSFER) in {
        (e.source, e.target, e.operation) for e in trace.edges
    }
