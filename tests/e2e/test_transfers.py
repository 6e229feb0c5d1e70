"""Transfers end to end: drafts, commit, receipt, void and reject, refusals, concurrency, the
watch stream, and REST through Envoy.

Every expectation comes from the comments in proto/seedline/transfer/v1/transfer.proto (and the
lot statuses, origins and lineage of proto/seedline/inventory/v1/inventory.proto). Plant material
(clones) needs no lab testing; any other product type's lots start LOT_LAB_STATUS_REQUIRED, so
they are shipped only to a laboratory here.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from seedline.inventory.v1 import inventory_pb2 as inv
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.transfer.v1 import transfer_pb2 as tr
from seedline.transfer.v1 import transfer_pb2_grpc
from seedline.type.v1 import esignature_pb2
from seedline.type.v1 import quantity_pb2 as qty

from tests.e2e.test_grpc import details
from tests.e2e.test_inventory_cycle import (
    BULK_TYPE,
    CLONE_TYPE,
    EACH,
    EACH_TYPE,
    GRAM,
    MISSING_ID,
    jq,
    number,
    ok,
    outcome,
    q,
    refused,
)
from tests.e2e.test_rest import reason
from tests.support import auth
from tests.support.stack import EdgeProcess

pytestmark = pytest.mark.e2e

FP = grpc.StatusCode.FAILED_PRECONDITION
INVALID = (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
STATE = (FP, "INVALID_STATE_TRANSITION")
VEHICLE = tr.Vehicle(make="Ford", model="Transit 250", license_plate="CO ABC-1234", color="White")
DRIVER = tr.Driver(display_name="Dana Driver", license_number="D123-4567", phone="+13035550100")
SIGNATURE = esignature_pb2.ESignatureInput(
    credential=auth.mint(),
    meaning=esignature_pb2.SIGNATURE_MEANING_AUTHORED,
    reason="Manifest checked against the load",
)


# --- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A license with an inventory section, a variety and three products (resource names)."""

    license: str
    vault: str  # SECTION_TYPE_INVENTORY
    crop: str  # SECTION_TYPE_CROP
    variety: str
    clone: str  # plant material, bulk counted in UNIT_EACH: lab testing NOT_REQUIRED
    flower: str  # bulk in grams: lab testing REQUIRED
    jar: str  # each, 1 g: lab testing REQUIRED


def make_site(
    channel: grpc.Channel, kind: lic.LicenseType.ValueType = lic.LICENSE_TYPE_GROWER, name: str = "Farm"
) -> Site:
    stub = license_pb2_grpc.LicenseServiceStub(channel)
    company = stub.CreateCompany(lic.CreateCompanyRequest(company=lic.Company(display_name=f"{name} Co")))
    license_ = stub.CreateLicense(
        lic.CreateLicenseRequest(
            license=lic.License(
                company=company.name,
                license_number=number(),
                display_name=name,
                type=kind,
                jurisdiction="US-CO",
                active=True,
            )
        )
    ).name

    def section(title: str, section_type: lic.SectionType.ValueType) -> str:
        return stub.CreateSection(
            lic.CreateSectionRequest(
                parent=license_, section=lic.Section(display_name=title, type=section_type)
            )
        ).name

    def product(title: str, **fields: Any) -> str:
        return stub.CreateProduct(
            lic.CreateProductRequest(parent=license_, product=lic.Product(display_name=title, **fields))
        ).name

    bulk = lic.PACKAGE_TYPE_BULK
    return Site(
        license=license_,
        vault=section("Vault", lic.SECTION_TYPE_INVENTORY),
        crop=section("Canopy", lic.SECTION_TYPE_CROP),
        variety=stub.CreateVariety(
            lic.CreateVarietyRequest(parent=license_, variety=lic.Variety(display_name="Blue Dream"))
        ).name,
        clone=product("BD Clone", product_type=CLONE_TYPE, package_type=bulk, bulk_unit=EACH),
        flower=product("BD Flower", product_type=BULK_TYPE, package_type=bulk, bulk_unit=GRAM),
        jar=product(
            "BD 1g Jar", product_type=EACH_TYPE, package_type=lic.PACKAGE_TYPE_EACH, unit_size=q("1")
        ),
    )


def stubs(
    channel: grpc.Channel,
) -> tuple[transfer_pb2_grpc.TransferServiceStub, inventory_pb2_grpc.InventoryServiceStub]:
    return transfer_pb2_grpc.TransferServiceStub(channel), inventory_pb2_grpc.InventoryServiceStub(channel)


def ea(value: str) -> qty.Quantity:
    return q(value, EACH)


def new_lot(
    lots: inventory_pb2_grpc.InventoryServiceStub, site: Site, quantity: qty.Quantity, product: str = ""
) -> inv.Lot:
    return lots.CreateLot(
        inv.CreateLotRequest(
            parent=site.license,
            lot=inv.Lot(
                product=product or site.clone,
                variety=site.variety,
                section=site.vault,
                display_name="Opening stock",
                quantity=quantity,
                source=inv.LotSource(origin=inv.LOT_ORIGIN_INITIAL),
            ),
        )
    )


def stamp(delta: timedelta) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(datetime.now(UTC) + delta)
    return out


def manifest(
    target: str, items: Sequence[tuple[str, qty.Quantity]], depart: timedelta = timedelta(hours=1)
) -> tr.Transfer:
    """A transfer ready to commit (planned times, vehicle, driver) with ``items`` (lot, quantity)."""
    return tr.Transfer(
        target_license=target,
        items=[tr.TransferItem(lot=lot, quantity=quantity) for lot, quantity in items],
        planned_depart_time=stamp(depart),
        planned_arrive_time=stamp(depart + timedelta(hours=2)),
        vehicle=VEHICLE,
        driver=DRIVER,
        notes="Deliver to the loading dock",
    )


def draft(
    transfers: transfer_pb2_grpc.TransferServiceStub,
    source: Site,
    target: str,
    items: Sequence[tuple[str, qty.Quantity]],
    depart: timedelta = timedelta(hours=1),
) -> tr.Transfer:
    return transfers.CreateTransfer(
        tr.CreateTransferRequest(parent=source.license, transfer=manifest(target, items, depart))
    )


def commit_request(t: tr.Transfer, etag: str | None = None) -> tr.CommitTransferRequest:
    return tr.CommitTransferRequest(name=t.name, esignature=SIGNATURE, etag=t.etag if etag is None else etag)


def commit(transfers: transfer_pb2_grpc.TransferServiceStub, t: tr.Transfer) -> tr.Transfer:
    return transfers.CommitTransfer(commit_request(t))


def shipped(
    transfers: transfer_pb2_grpc.TransferServiceStub,
    source: Site,
    target: str,
    items: Sequence[tuple[str, qty.Quantity]],
    depart: timedelta = timedelta(hours=1),
) -> tr.Transfer:
    """A committed transfer."""
    return commit(transfers, draft(transfers, source, target, items, depart))


def accept_request(
    t: tr.Transfer, section: str, received: Sequence[str] | None = None, why: str = ""
) -> tr.AcceptTransferRequest:
    """Accept every item of ``t`` (in full unless ``received`` gives the quantities, item order)."""
    values = received if received is not None else [i.quantity.value for i in t.items]
    return tr.AcceptTransferRequest(
        name=t.name,
        items=[
            tr.ReceivedItem(
                item_id=i.item_id,
                received_quantity=qty.Quantity(value=v, unit=i.quantity.unit),
                rejection_reason=why if v != i.quantity.value else "",
            )
            for i, v in zip(t.items, values, strict=True)
        ],
        section=section,
        etag=t.etag,
    )


def get(transfers: transfer_pb2_grpc.TransferServiceStub, t: tr.Transfer) -> tr.Transfer:
    return transfers.GetTransfer(tr.GetTransferRequest(name=t.name))


def held(lots: inventory_pb2_grpc.InventoryServiceStub, lot: str) -> tuple[str, inv.LotStatus.ValueType]:
    """A lot's (quantity, status)."""
    got = lots.GetLot(inv.GetLotRequest(name=lot))
    return got.quantity.value, got.status


def violations(err: grpc.RpcError) -> set[str]:
    """The field paths of the BadRequest in ``err``'s details."""
    return {
        v.field
        for d in details(err)[1]
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    }


def incoming(transfers: transfer_pb2_grpc.TransferServiceStub, license_: str, **filters: Any) -> list[str]:
    listed = transfers.ListIncomingTransfers(tr.ListIncomingTransfersRequest(parent=license_, **filters))
    return [t.name for t in listed.transfers]


def outgoing(transfers: transfer_pb2_grpc.TransferServiceStub, license_: str, **filters: Any) -> list[str]:
    listed = transfers.ListTransfers(tr.ListTransfersRequest(parent=license_, **filters))
    return [t.name for t in listed.transfers]


class Watch:
    """A WatchTransfers stream read by a background thread."""

    def __init__(self, channel: grpc.Channel, request: tr.WatchTransfersRequest) -> None:
        self.call = transfer_pb2_grpc.TransferServiceStub(channel).WatchTransfers(request)
        self.events: list[tr.TransferEvent] = []
        self.error: grpc.RpcError | None = None
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self.call:
                with self._cv:
                    self.events.append(event)
                    self._cv.notify_all()
        except grpc.RpcError as err:
            with self._cv:
                self.error = err
                self._cv.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[tr.TransferEvent]:
        """The events once at least ``count`` arrived (fails after ``timeout``)."""
        with self._cv:
            self._cv.wait_for(lambda: len(self.events) >= count or self.error is not None, timeout)
            got = list(self.events)
        assert len(got) >= count, (
            f"{len(got)} of {count} events arrived: {[e.type for e in got]}; error: {self.error}"
        )
        return got

    def wait_until(
        self, done: Callable[[list[tr.TransferEvent]], bool], timeout: float = 10.0
    ) -> list[tr.TransferEvent]:
        """The events once ``done(events)`` holds (fails after ``timeout``)."""
        with self._cv:
            self._cv.wait_for(lambda: done(self.events) or self.error is not None, timeout)
            got = list(self.events)
        assert done(got), f"{[e.type for e in got]}; error: {self.error}"
        return got

    def failure(self, timeout: float = 10.0) -> grpc.RpcError:
        with self._cv:
            self._cv.wait_for(lambda: self.error is not None, timeout)
        assert self.error is not None, "the stream did not fail"
        return self.error

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(5)


def watch_since(channel: grpc.Channel, license_: str, **fields: Any) -> Watch:
    """Watch from a minute ago (licenses are fresh, so: every event of theirs, race-free)."""
    return Watch(
        channel, tr.WatchTransfersRequest(parent=license_, since_time=stamp(-timedelta(minutes=1)), **fields)
    )


# --- 1. the full flow over gRPC --------------------------------------------------------------


def test_transfer_flow_over_grpc(channel: grpc.Channel) -> None:
    src = make_site(channel, lic.LICENSE_TYPE_GROWER, "Source Farm")
    dst = make_site(channel, lic.LICENSE_TYPE_GROWER, "Target Farm")
    transfers, lots = stubs(channel)
    registry = license_pb2_grpc.LicenseServiceStub(channel)
    clones = new_lot(lots, src, ea("100"))
    spare = new_lot(lots, src, ea("20"))

    # A draft with one item and no manifest details yet: no material moves.
    created = transfers.CreateTransfer(
        tr.CreateTransferRequest(
            parent=src.license,
            transfer=tr.Transfer(
                target_license=dst.license,
                items=[tr.TransferItem(lot=clones.name, quantity=ea("30"))],
                notes="first load",
            ),
        )
    )
    assert created.name.startswith(src.license + "/transfers/")
    assert created.source_license == src.license
    assert created.target_license == dst.license
    assert created.state == tr.TRANSFER_STATE_DRAFT
    assert created.notes == "first load"
    assert created.etag
    assert created.HasField("create_time")
    assert not created.HasField("commit_signature")
    assert not created.HasField("depart_time")
    assert not created.HasField("receive_time")
    (item,) = created.items
    assert len(item.item_id) == 26
    assert item.lot == clones.name
    assert item.quantity == ea("30")
    assert item.state == tr.TRANSFER_ITEM_STATE_PENDING
    assert not item.HasField("received_quantity")
    assert not item.received_lot
    assert get(transfers, created) == created
    assert held(lots, clones.name) == ("100", inv.LOT_STATUS_AVAILABLE)
    assert outgoing(transfers, src.license) == [created.name]
    assert outgoing(transfers, src.license, state=tr.TRANSFER_STATE_COMMITTED) == []
    assert incoming(transfers, dst.license) == []  # drafts are never incoming

    # Items: add a second lot (with a price), change it, remove it.
    added = transfers.AddTransferItem(
        tr.AddTransferItemRequest(
            name=created.name,
            item=tr.TransferItem(lot=spare.name, quantity=ea("5"), unit_price="4.25", currency_code="USD"),
            etag=created.etag,
        )
    )
    assert added.etag != created.etag
    assert [i.lot for i in added.items] == [clones.name, spare.name]
    extra = added.items[1]
    assert (extra.quantity, extra.unit_price, extra.currency_code) == (ea("5"), "4.25", "USD")
    refused(
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        transfers.AddTransferItem,
        tr.AddTransferItemRequest(name=created.name, item=tr.TransferItem(lot=clones.name, quantity=ea("1"))),
    )
    refused(  # the lot holds 20
        FP,
        "INSUFFICIENT_QUANTITY",
        transfers.UpdateTransferItem,
        tr.UpdateTransferItemRequest(
            name=created.name,
            item_id=extra.item_id,
            item=tr.TransferItem(lot=spare.name, quantity=ea("21")),
            update_mask=field_mask_pb2.FieldMask(paths=["quantity"]),
        ),
    )
    changed = transfers.UpdateTransferItem(
        tr.UpdateTransferItemRequest(
            name=created.name,
            item_id=extra.item_id,
            item=tr.TransferItem(lot=spare.name, quantity=ea("8")),
            update_mask=field_mask_pb2.FieldMask(paths=["quantity"]),
            etag=added.etag,
        )
    )
    assert (changed.items[1].quantity, changed.items[1].unit_price) == (ea("8"), "4.25")
    assert changed.items[0] == added.items[0]
    refused(
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
        transfers.RemoveTransferItem,
        tr.RemoveTransferItemRequest(name=created.name, item_id=extra.item_id, etag=added.etag),
    )
    removed = transfers.RemoveTransferItem(
        tr.RemoveTransferItemRequest(name=created.name, item_id=extra.item_id, etag=changed.etag)
    )
    assert [i.item_id for i in removed.items] == [item.item_id]
    assert held(lots, spare.name) == ("20", inv.LOT_STATUS_AVAILABLE)

    # Not ready: every missing piece is listed at once.
    err = refused(*INVALID, transfers.CommitTransfer, commit_request(removed))
    missing = violations(err)
    for piece in ("planned_depart_time", "planned_arrive_time", "vehicle", "driver"):
        assert any(f.endswith(piece) for f in missing), (piece, missing)
    assert get(transfers, removed) == removed

    # The manifest details; `items` is not updatable.
    refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UPDATE_MASK",
        transfers.UpdateTransfer,
        tr.UpdateTransferRequest(
            transfer=tr.Transfer(name=created.name, target_license=dst.license),
            update_mask=field_mask_pb2.FieldMask(paths=["items"]),
        ),
    )
    ready = transfers.UpdateTransfer(
        tr.UpdateTransferRequest(
            transfer=tr.Transfer(
                name=created.name,
                target_license=dst.license,  # unchanged (see test_update_transfer_needs_only_masked_fields)
                planned_depart_time=stamp(timedelta(hours=1)),
                planned_arrive_time=stamp(timedelta(hours=3)),
                vehicle=VEHICLE,
                driver=DRIVER,
                etag=removed.etag,
            ),
            update_mask=field_mask_pb2.FieldMask(
                paths=["planned_depart_time", "planned_arrive_time", "vehicle", "driver"]
            ),
        )
    )
    assert ready.state == tr.TRANSFER_STATE_DRAFT
    assert ready.vehicle == VEHICLE
    assert ready.driver == DRIVER
    assert ready.notes == "first load"  # not in the mask
    assert ready.target_license == dst.license

    # Commit needs the current etag.
    refused(*INVALID, transfers.CommitTransfer, commit_request(ready, etag=""))
    refused(grpc.StatusCode.ABORTED, "ETAG_MISMATCH", transfers.CommitTransfer, commit_request(removed))
    assert get(transfers, ready) == ready
    assert held(lots, clones.name) == ("100", inv.LOT_STATUS_AVAILABLE)

    committed = commit(transfers, ready)
    assert committed.state == tr.TRANSFER_STATE_COMMITTED
    assert committed.etag != ready.etag
    assert committed.commit_signature.meaning == esignature_pb2.SIGNATURE_MEANING_AUTHORED
    assert committed.commit_signature.reason == SIGNATURE.reason
    assert committed.commit_signature.signer
    assert committed.commit_signature.HasField("sign_time")
    assert "fresh-token" not in str(committed)
    assert [i.state for i in committed.items] == [tr.TRANSFER_ITEM_STATE_PENDING]
    assert get(transfers, committed) == committed
    assert held(lots, clones.name) == ("70", inv.LOT_STATUS_AVAILABLE)
    assert incoming(transfers, dst.license) == [committed.name]
    assert outgoing(transfers, src.license, state=tr.TRANSFER_STATE_COMMITTED) == [committed.name]
    assert outgoing(transfers, src.license, target_license=dst.license) == [committed.name]
    assert outgoing(transfers, src.license, target_license=src.license) == []
    refused(*STATE, transfers.CommitTransfer, commit_request(committed))

    # Received in part (accepted straight from COMMITTED): 25 of 30.
    accepted = transfers.AcceptTransfer(accept_request(committed, dst.vault, ["25"], "5 clones wilted"))
    assert accepted.state == tr.TRANSFER_STATE_PARTIALLY_ACCEPTED
    assert accepted.HasField("receive_time")
    (got,) = accepted.items
    assert got.state == tr.TRANSFER_ITEM_STATE_PARTIALLY_ACCEPTED
    assert got.quantity == ea("30")
    assert got.received_quantity == ea("25")
    assert got.rejection_reason == "5 clones wilted"
    assert got.received_lot.startswith(dst.license + "/lots/")
    assert get(transfers, accepted) == accepted
    assert held(lots, clones.name) == ("75", inv.LOT_STATUS_AVAILABLE)  # the 5 came back

    received = lots.GetLot(inv.GetLotRequest(name=got.received_lot))
    assert received.quantity == ea("25")
    assert received.status == inv.LOT_STATUS_AVAILABLE
    assert received.section == dst.vault
    assert received.source.origin == inv.LOT_ORIGIN_TRANSFER
    assert list(received.source.lots) == [clones.name]
    assert received.source.transfer == accepted.name
    assert received.lab_status == inv.LOT_LAB_STATUS_NOT_REQUIRED
    assert received.product.startswith(dst.license + "/products/")
    mirrored = registry.GetProduct(lic.GetProductRequest(name=received.product))
    original = registry.GetProduct(lic.GetProductRequest(name=src.clone))
    assert (mirrored.display_name, mirrored.product_type, mirrored.package_type, mirrored.bulk_unit) == (
        original.display_name,
        original.product_type,
        original.package_type,
        original.bulk_unit,
    )
    assert received.variety.startswith(dst.license + "/varieties/")
    variety = registry.GetVariety(lic.GetVarietyRequest(name=received.variety))
    assert variety.display_name == "Blue Dream"
    assert received.name in [lot.name for lot in lots.ListLots(inv.ListLotsRequest(parent=dst.license)).lots]

    # Lineage crosses the licenses: shipped lot -> transfer -> received lot.
    fwd = lots.TraceLineage(inv.TraceLineageRequest(name=clones.name, direction=inv.TRACE_DIRECTION_FORWARD))
    assert {n.name: (n.kind, n.depth) for n in fwd.nodes} == {
        clones.name: (inv.LINEAGE_NODE_KIND_LOT, 0),
        accepted.name: (inv.LINEAGE_NODE_KIND_TRANSFER, 1),
        received.name: (inv.LINEAGE_NODE_KIND_LOT, 2),
    }
    assert {(e.source, e.target): e.operation for e in fwd.edges} == {
        (clones.name, accepted.name): inv.LINEAGE_OPERATION_TRANSFER,
        (accepted.name, received.name): inv.LINEAGE_OPERATION_TRANSFER,
    }
    into = next(e for e in fwd.edges if e.target == received.name)
    assert into.quantity == ea("25")
    by_name = {n.name: n for n in fwd.nodes}
    assert by_name[received.name].lot.quantity == ea("25")
    assert not fwd.truncated
    back = lots.TraceLineage(
        inv.TraceLineageRequest(name=received.name, direction=inv.TRACE_DIRECTION_BACKWARD)
    )
    assert {n.name: (n.kind, n.depth) for n in back.nodes} == {
        received.name: (inv.LINEAGE_NODE_KIND_LOT, 0),
        accepted.name: (inv.LINEAGE_NODE_KIND_TRANSFER, 1),
        clones.name: (inv.LINEAGE_NODE_KIND_LOT, 2),
    }
    assert back.nodes[0].name == received.name


def test_commit_signature_is_bound_to_its_audit_event(channel: grpc.Channel) -> None:
    """ESignature.audit_event_id: "The id of the audit event the signature is bound to"."""
    src = make_site(channel)
    dst = make_site(channel)
    transfers, lots = stubs(channel)
    lot = new_lot(lots, src, ea("3"))
    committed = shipped(transfers, src, dst.license, [(lot.name, ea("1"))])
    assert committed.commit_signature.audit_event_id
    assert get(transfers, committed).commit_signature == committed.commit_signature


def test_incoming_list_filters_by_state_and_source(channel: grpc.Channel) -> None:
    """ListIncomingTransfersRequest.state and .source_license filter the receiver's view."""
    dst = make_site(channel, name="Receiver")
    one = make_site(channel, name="Supplier One")
    two = make_site(channel, name="Supplier Two")
    transfers, lots = stubs(channel)
    a = shipped(transfers, one, dst.license, [(new_lot(lots, one, ea("5")).name, ea("1"))])
    b = shipped(transfers, two, dst.license, [(new_lot(lots, two, ea("5")).name, ea("1"))])
    draft(transfers, two, dst.license, [(new_lot(lots, two, ea("5")).name, ea("1"))])
    transfers.AcceptTransfer(accept_request(b, dst.vault))
    assert incoming(transfers, dst.license) == sorted([a.name, b.name])
    assert {
        "from one": incoming(transfers, dst.license, source_license=one.license),
        "accepted": incoming(transfers, dst.license, state=tr.TRANSFER_STATE_ACCEPTED),
        "drafts": incoming(transfers, dst.license, state=tr.TRANSFER_STATE_DRAFT),
    } == {"from one": [a.name], "accepted": [b.name], "drafts": []}


def test_update_transfer_needs_only_masked_fields(channel: grpc.Channel) -> None:
    """UpdateTransferRequest.transfer: "The transfer with `name` set and the fields to change"."""
    src = make_site(channel)
    dst = make_site(channel)
    transfers, _ = stubs(channel)
    plan = draft(transfers, src, dst.license, [])
    changed = transfers.UpdateTransfer(
        tr.UpdateTransferRequest(
            transfer=tr.Transfer(name=plan.name, notes="call ahead"),
            update_mask=field_mask_pb2.FieldMask(paths=["notes"]),
        )
    )
    assert changed.notes == "call ahead"
    assert changed.target_license == dst.license


# --- 2. void, reject, whole lots, final states -------------------------------------------------


def test_void_and_reject_restore_lots_and_whole_lots_transfer(channel: grpc.Channel) -> None:
    src = make_site(channel, name="Shipper")
    dst = make_site(channel, name="Receiver")
    transfers, lots = stubs(channel)

    # Departs a minute ago: the server moves it to IN_TRANSIT on its next sweep (checked last).
    swept_lot = new_lot(lots, src, ea("9"))
    departing = shipped(
        transfers, src, dst.license, [(swept_lot.name, ea("4"))], depart=-timedelta(minutes=1)
    )
    assert departing.state == tr.TRANSFER_STATE_COMMITTED
    assert not departing.HasField("depart_time")

    lot = new_lot(lots, src, ea("40"))

    # Void a draft: nothing had moved.
    plan = draft(transfers, src, dst.license, [(lot.name, ea("10"))])
    refused(*INVALID, transfers.VoidTransfer, tr.VoidTransferRequest(name=plan.name, reason="x"))
    voided = transfers.VoidTransfer(tr.VoidTransferRequest(name=plan.name, reason="Order cancelled"))
    assert voided.state == tr.TRANSFER_STATE_VOIDED
    assert voided.state_reason == "Order cancelled"
    assert [i.state for i in voided.items] == [tr.TRANSFER_ITEM_STATE_VOIDED]
    assert held(lots, lot.name) == ("40", inv.LOT_STATUS_AVAILABLE)
    refused(*STATE, transfers.CommitTransfer, commit_request(voided))

    # Void a committed transfer: the quantity comes back. (A retried commit applies once.)
    plan = draft(transfers, src, dst.license, [(lot.name, ea("15"))])
    retried = commit_request(plan)
    retried.request_id = "commit-once"
    sent = transfers.CommitTransfer(retried)
    assert transfers.CommitTransfer(retried) == sent
    assert held(lots, lot.name) == ("25", inv.LOT_STATUS_AVAILABLE)
    refused(
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
        transfers.VoidTransfer,
        tr.VoidTransferRequest(name=sent.name, reason="Truck broke down", etag=plan.etag),
    )
    voided = transfers.VoidTransfer(
        tr.VoidTransferRequest(name=sent.name, reason="Truck broke down", etag=sent.etag)
    )
    assert voided.state == tr.TRANSFER_STATE_VOIDED
    assert [i.state for i in voided.items] == [tr.TRANSFER_ITEM_STATE_VOIDED]
    assert held(lots, lot.name) == ("40", inv.LOT_STATUS_AVAILABLE)
    assert {departing.name, sent.name} <= set(incoming(transfers, dst.license))  # VOIDED: still listed
    refused(*STATE, transfers.VoidTransfer, tr.VoidTransferRequest(name=sent.name, reason="again"))
    refused(*STATE, transfers.AcceptTransfer, accept_request(voided, dst.vault))

    # Reject a committed transfer: the quantity comes back, every item records the reason.
    sent = shipped(transfers, src, dst.license, [(lot.name, ea("12"))])
    assert held(lots, lot.name) == ("28", inv.LOT_STATUS_AVAILABLE)
    rejected = transfers.RejectTransfer(tr.RejectTransferRequest(name=sent.name, reason="Not ordered"))
    assert rejected.state == tr.TRANSFER_STATE_REJECTED
    assert rejected.state_reason == "Not ordered"
    assert rejected.HasField("receive_time")
    (item,) = rejected.items
    assert item.state == tr.TRANSFER_ITEM_STATE_REJECTED
    assert item.received_quantity == ea("0")
    assert item.rejection_reason == "Not ordered"
    assert not item.received_lot
    assert held(lots, lot.name) == ("40", inv.LOT_STATUS_AVAILABLE)
    refused(*STATE, transfers.RejectTransfer, tr.RejectTransferRequest(name=sent.name, reason="again"))
    refused(*STATE, transfers.VoidTransfer, tr.VoidTransferRequest(name=sent.name, reason="too late"))
    assert get(transfers, rejected) == rejected

    # A whole lot: IN_TRANSIT at quantity 0 and locked, editing the transfer is over.
    whole = new_lot(lots, src, ea("6"))
    sent = shipped(transfers, src, dst.license, [(whole.name, ea("6"))])
    assert held(lots, whole.name) == ("0", inv.LOT_STATUS_IN_TRANSIT)
    assert (
        outcome(
            lots.AdjustLot,
            inv.AdjustLotRequest(
                name=whole.name, increase_by=ea("1"), reason=inv.ADJUSTMENT_REASON_ENTRY_ERROR
            ),
        )
        != "OK"
    )
    (item,) = sent.items
    edits = {
        "update": outcome(
            transfers.UpdateTransfer,
            tr.UpdateTransferRequest(
                transfer=tr.Transfer(name=sent.name, target_license=dst.license, notes="late change"),
                update_mask=field_mask_pb2.FieldMask(paths=["notes"]),
            ),
        ),
        "add": outcome(
            transfers.AddTransferItem,
            tr.AddTransferItemRequest(name=sent.name, item=tr.TransferItem(lot=lot.name, quantity=ea("1"))),
        ),
        "change": outcome(
            transfers.UpdateTransferItem,
            tr.UpdateTransferItemRequest(
                name=sent.name,
                item_id=item.item_id,
                item=tr.TransferItem(lot=whole.name, quantity=ea("5")),
                update_mask=field_mask_pb2.FieldMask(paths=["quantity"]),
            ),
        ),
        "remove": outcome(
            transfers.RemoveTransferItem, tr.RemoveTransferItemRequest(name=sent.name, item_id=item.item_id)
        ),
        "commit": outcome(transfers.CommitTransfer, commit_request(sent)),
    }
    assert edits == dict.fromkeys(edits, STATE)
    assert get(transfers, sent) == sent
    assert held(lots, lot.name) == ("40", inv.LOT_STATUS_AVAILABLE)

    # Accepted in full: the shipped lot is TRANSFERRED, the receiver holds everything.
    accepted = transfers.AcceptTransfer(accept_request(sent, dst.vault))
    assert accepted.state == tr.TRANSFER_STATE_ACCEPTED
    assert [i.state for i in accepted.items] == [tr.TRANSFER_ITEM_STATE_ACCEPTED]
    assert accepted.items[0].received_quantity == ea("6")
    assert held(lots, whole.name) == ("0", inv.LOT_STATUS_TRANSFERRED)
    assert held(lots, accepted.items[0].received_lot) == ("6", inv.LOT_STATUS_AVAILABLE)
    final = {
        "void": outcome(transfers.VoidTransfer, tr.VoidTransferRequest(name=sent.name, reason="too late")),
        "reject": outcome(transfers.RejectTransfer, tr.RejectTransferRequest(name=sent.name, reason="late")),
        "accept": outcome(transfers.AcceptTransfer, accept_request(accepted, dst.vault)),
    }
    assert final == dict.fromkeys(final, STATE)
    assert get(transfers, accepted) == accepted

    # A whole lot received in part: the remainder makes it AVAILABLE again.
    part = new_lot(lots, src, ea("5"))
    sent = shipped(transfers, src, dst.license, [(part.name, ea("5"))])
    assert held(lots, part.name) == ("0", inv.LOT_STATUS_IN_TRANSIT)
    accepted = transfers.AcceptTransfer(accept_request(sent, dst.vault, ["3"], "2 broken"))
    assert accepted.state == tr.TRANSFER_STATE_PARTIALLY_ACCEPTED
    assert held(lots, part.name) == ("2", inv.LOT_STATUS_AVAILABLE)

    # A whole lot rejected: AVAILABLE again with everything.
    back = new_lot(lots, src, ea("4"))
    sent = shipped(transfers, src, dst.license, [(back.name, ea("4"))])
    assert held(lots, back.name) == ("0", inv.LOT_STATUS_IN_TRANSIT)
    transfers.RejectTransfer(tr.RejectTransferRequest(name=sent.name, reason="Wrong strain"))
    assert held(lots, back.name) == ("4", inv.LOT_STATUS_AVAILABLE)

    # The sweep: COMMITTED -> IN_TRANSIT at the planned departure (every few seconds).
    deadline = time.monotonic() + 15
    while (now := get(transfers, departing)).state == tr.TRANSFER_STATE_COMMITTED:
        assert time.monotonic() < deadline, "never went IN_TRANSIT"
        time.sleep(0.25)
    assert now.state == tr.TRANSFER_STATE_IN_TRANSIT
    assert now.HasField("depart_time")
    assert now.etag != departing.etag
    assert held(lots, swept_lot.name) == ("5", inv.LOT_STATUS_AVAILABLE)
    refused(
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
        transfers.AcceptTransfer,
        accept_request(departing, dst.vault),
    )
    arrived = transfers.AcceptTransfer(accept_request(now, dst.vault))
    assert arrived.state == tr.TRANSFER_STATE_ACCEPTED
    assert arrived.depart_time == now.depart_time
    assert held(lots, swept_lot.name) == ("5", inv.LOT_STATUS_AVAILABLE)


def test_lot_emptied_by_two_transfers_takes_back_the_rejected_one(channel: grpc.Channel) -> None:
    """A lot emptied by two committed transfers: accepting one must not lock the lot against the
    return of the other ("RejectTransfer: every item quantity returns to its source lot")."""
    src = make_site(channel)
    dst = make_site(channel)
    transfers, lots = stubs(channel)
    lot = new_lot(lots, src, ea("10"))
    first = shipped(transfers, src, dst.license, [(lot.name, ea("3"))])
    second = shipped(transfers, src, dst.license, [(lot.name, ea("7"))])
    assert held(lots, lot.name) == ("0", inv.LOT_STATUS_IN_TRANSIT)
    transfers.AcceptTransfer(accept_request(first, dst.vault))
    rejected = outcome(
        transfers.RejectTransfer, tr.RejectTransferRequest(name=second.name, reason="Not ordered")
    )
    assert rejected == "OK"
    assert held(lots, lot.name) == ("7", inv.LOT_STATUS_AVAILABLE)


# --- 3. refusals change nothing ----------------------------------------------------------------


def test_refusals_change_nothing(channel: grpc.Channel) -> None:
    src = make_site(channel, lic.LICENSE_TYPE_GROWER_PROCESSOR, "Shipper")
    grower = make_site(channel, lic.LICENSE_TYPE_GROWER, "Grower")
    lab = make_site(channel, lic.LICENSE_TYPE_LABORATORY, "Lab")
    retail = make_site(channel, lic.LICENSE_TYPE_RETAIL, "Shop")
    carrier = make_site(channel, lic.LICENSE_TYPE_CARRIER, "Trucks")
    processor = make_site(channel, lic.LICENSE_TYPE_PROCESSOR, "Kitchen")
    stranger = make_site(channel, lic.LICENSE_TYPE_GROWER, "Stranger")
    transfers, lots = stubs(channel)
    clones = new_lot(lots, src, ea("50"))
    flower = new_lot(lots, src, q("100"), product=src.flower)
    assert flower.lab_status == inv.LOT_LAB_STATUS_REQUIRED
    assert clones.lab_status == inv.LOT_LAB_STATUS_NOT_REQUIRED

    def commit_outcome(target: Site, lot: str, amount: qty.Quantity) -> object:
        t = draft(transfers, src, target.license, [(lot, amount)])
        result = outcome(transfers.CommitTransfer, commit_request(t))
        if result != "OK":
            assert get(transfers, t) == t
        return result

    # Who may receive what, and lab testing: each refusal leaves the lots as they were.
    lab_required = (FP, "LAB_TESTING_REQUIRED")
    not_permitted = (FP, "LICENSE_NOT_PERMITTED")
    results = {
        "flower to grower": commit_outcome(grower, flower.name, q("10")),
        "clones to retail": commit_outcome(retail, clones.name, ea("1")),
        "clones to carrier": commit_outcome(carrier, clones.name, ea("1")),
        "clones to processor": commit_outcome(processor, clones.name, ea("1")),
        "flower to carrier": commit_outcome(carrier, flower.name, q("10")),
    }
    assert results == {
        "flower to grower": lab_required,
        "clones to retail": not_permitted,
        "clones to carrier": not_permitted,
        "clones to processor": not_permitted,
        "flower to carrier": not_permitted,
    }
    assert held(lots, clones.name) == ("50", inv.LOT_STATUS_AVAILABLE)
    assert held(lots, flower.name) == ("100.0000", inv.LOT_STATUS_AVAILABLE)
    # Labs may receive untested material; growers take clones.
    assert commit_outcome(lab, flower.name, q("10")) == "OK"
    assert commit_outcome(grower, clones.name, ea("5")) == "OK"
    assert held(lots, flower.name) == ("90.0000", inv.LOT_STATUS_AVAILABLE)
    assert held(lots, clones.name) == ("45", inv.LOT_STATUS_AVAILABLE)

    # The lot shrank after the item was added: INSUFFICIENT_QUANTITY at commit.
    short = draft(transfers, src, grower.license, [(clones.name, ea("40"))])
    lots.AdjustLot(
        inv.AdjustLotRequest(
            name=clones.name, decrease_by=ea("10"), reason=inv.ADJUSTMENT_REASON_HANDLING_LOSS
        )
    )
    refused(FP, "INSUFFICIENT_QUANTITY", transfers.CommitTransfer, commit_request(short))
    assert get(transfers, short) == short
    assert held(lots, clones.name) == ("35", inv.LOT_STATUS_AVAILABLE)

    # Items: more than the lot holds, a lot of another license, a quantity of another dimension.
    other_lot = new_lot(lots, stranger, ea("5"))
    item_outcomes = {
        "too much": outcome(
            transfers.AddTransferItem,
            tr.AddTransferItemRequest(
                name=short.name, item=tr.TransferItem(lot=flower.name, quantity=q("91"))
            ),
        ),
        "foreign lot": outcome(
            transfers.AddTransferItem,
            tr.AddTransferItemRequest(
                name=short.name, item=tr.TransferItem(lot=other_lot.name, quantity=ea("1"))
            ),
        ),
        "grams of clones": outcome(
            transfers.AddTransferItem,
            tr.AddTransferItemRequest(
                name=short.name,
                item=tr.TransferItem(lot=new_lot(lots, src, ea("5")).name, quantity=q("1")),
            ),
        ),
        "create with foreign lot": outcome(
            transfers.CreateTransfer,
            tr.CreateTransferRequest(
                parent=src.license, transfer=manifest(grower.license, [(other_lot.name, ea("1"))])
            ),
        ),
        "to itself": outcome(
            transfers.CreateTransfer,
            tr.CreateTransferRequest(parent=src.license, transfer=manifest(src.license, [])),
        ),
        "to no license": outcome(
            transfers.CreateTransfer,
            tr.CreateTransferRequest(parent=src.license, transfer=manifest(f"licenses/{MISSING_ID}", [])),
        ),
    }
    assert item_outcomes == {
        "too much": (FP, "INSUFFICIENT_QUANTITY"),
        "foreign lot": (FP, "REFERENCE_INVALID"),
        "grams of clones": (grpc.StatusCode.INVALID_ARGUMENT, "UNIT_MISMATCH"),
        "create with foreign lot": (FP, "REFERENCE_INVALID"),
        "to itself": INVALID,
        "to no license": (FP, "REFERENCE_INVALID"),
    }
    assert get(transfers, short) == short
    assert held(lots, other_lot.name) == ("5", inv.LOT_STATUS_AVAILABLE)
    assert outgoing(transfers, stranger.license) == []

    # Receiving: the section, the items and their quantities are checked before anything moves.
    spare = new_lot(lots, src, ea("8"))
    sent = shipped(transfers, src, grower.license, [(clones.name, ea("10")), (spare.name, ea("8"))])
    assert held(lots, clones.name) == ("25", inv.LOT_STATUS_AVAILABLE)
    assert held(lots, spare.name) == ("0", inv.LOT_STATUS_IN_TRANSIT)
    first, second = sent.items
    unknown = tr.ReceivedItem(item_id=MISSING_ID, received_quantity=ea("1"))

    def accepting(section: str, items: Sequence[tr.ReceivedItem], etag: str = "") -> object:
        return outcome(
            transfers.AcceptTransfer,
            tr.AcceptTransferRequest(name=sent.name, items=items, section=section, etag=etag),
        )

    def recv(i: tr.TransferItem, value: str, unit: qty.Unit.ValueType = EACH) -> tr.ReceivedItem:
        return tr.ReceivedItem(item_id=i.item_id, received_quantity=q(value, unit), rejection_reason="short")

    full = [recv(first, "10"), recv(second, "8")]
    accept_outcomes = {
        "source's section": accepting(src.vault, full),
        "crop section": accepting(grower.crop, full),
        "more than sent": accepting(grower.vault, [recv(first, "11"), recv(second, "8")]),
        "missing item": accepting(grower.vault, [recv(first, "10")]),
        "unknown item": accepting(grower.vault, [*full, unknown]),
        "item twice": accepting(grower.vault, [*full, recv(first, "1")]),
        "grams": accepting(grower.vault, [recv(first, "10", GRAM), recv(second, "8")]),
        "nothing": accepting(grower.vault, [recv(first, "0"), recv(second, "0")]),
        "stale etag": accepting(grower.vault, full, etag=short.etag),
    }
    assert accept_outcomes == {
        "source's section": (FP, "REFERENCE_INVALID"),
        "crop section": (FP, "REFERENCE_INVALID"),
        "more than sent": INVALID,
        "missing item": INVALID,
        "unknown item": INVALID,
        "item twice": INVALID,
        "grams": (grpc.StatusCode.INVALID_ARGUMENT, "UNIT_MISMATCH"),
        "nothing": INVALID,
        "stale etag": (grpc.StatusCode.ABORTED, "ETAG_MISMATCH"),
    }
    assert get(transfers, sent) == sent
    assert held(lots, clones.name) == ("25", inv.LOT_STATUS_AVAILABLE)
    assert held(lots, spare.name) == ("0", inv.LOT_STATUS_IN_TRANSIT)
    assert not lots.ListLots(inv.ListLotsRequest(parent=grower.license)).lots

    # One item refused entirely, the other received in full.
    done = transfers.AcceptTransfer(
        tr.AcceptTransferRequest(
            name=sent.name, items=[recv(first, "0"), recv(second, "8")], section=grower.vault, etag=sent.etag
        )
    )
    assert done.state == tr.TRANSFER_STATE_PARTIALLY_ACCEPTED
    assert [i.state for i in done.items] == [tr.TRANSFER_ITEM_STATE_REJECTED, tr.TRANSFER_ITEM_STATE_ACCEPTED]
    assert done.items[0].received_quantity == ea("0")
    assert not done.items[0].received_lot
    assert held(lots, clones.name) == ("35", inv.LOT_STATUS_AVAILABLE)
    assert held(lots, spare.name) == ("0", inv.LOT_STATUS_TRANSFERRED)


def test_accept_into_a_missing_section_is_reference_invalid(channel: grpc.Channel) -> None:
    """AcceptTransferRequest.section: "an active inventory or quarantine section;
    REFERENCE_INVALID otherwise"."""
    src = make_site(channel)
    dst = make_site(channel)
    transfers, lots = stubs(channel)
    lot = new_lot(lots, src, ea("5"))
    sent = shipped(transfers, src, dst.license, [(lot.name, ea("2"))])
    refused(
        FP,
        "REFERENCE_INVALID",
        transfers.AcceptTransfer,
        accept_request(sent, f"{dst.license}/sections/{MISSING_ID}"),
    )
    assert get(transfers, sent) == sent
    assert held(lots, lot.name) == ("3", inv.LOT_STATUS_AVAILABLE)


def test_target_never_sees_a_voided_draft(channel: grpc.Channel) -> None:
    """A draft is invisible to the target ("the target license cannot see it"); it starts to see
    a transfer when it is committed. A draft voided before commit was never incoming."""
    src = make_site(channel)
    dst = make_site(channel)
    transfers, lots = stubs(channel)
    lot = new_lot(lots, src, ea("5"))
    target_watch = watch_since(channel, dst.license)
    try:
        plan = draft(transfers, src, dst.license, [(lot.name, ea("1"))])
        transfers.VoidTransfer(tr.VoidTransferRequest(name=plan.name, reason="Never mind"))
        sent = shipped(transfers, src, dst.license, [(lot.name, ea("2"))])
        events = target_watch.wait(1)
        time.sleep(0.3)
        assert [(e.type, e.transfer.name) for e in target_watch.events] == [
            (tr.TRANSFER_EVENT_TYPE_COMMITTED, sent.name)
        ]
        assert events[0].transfer == sent
    finally:
        target_watch.close()
    assert incoming(transfers, dst.license) == [sent.name]


def test_unknown_transfer_is_not_found(channel: grpc.Channel) -> None:
    src = make_site(channel)
    transfers, _ = stubs(channel)
    missing = f"{src.license}/transfers/{MISSING_ID}"
    refused(
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        transfers.GetTransfer,
        tr.GetTransferRequest(name=missing),
    )
    refused(
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        transfers.VoidTransfer,
        tr.VoidTransferRequest(name=missing, reason="nothing"),
    )


# --- 4. concurrency ------------------------------------------------------------------------------


def test_concurrent_commits_never_oversell(channel: grpc.Channel) -> None:
    src = make_site(channel)
    dst = make_site(channel)
    transfers, lots = stubs(channel)
    lot = new_lot(lots, src, ea("10"))
    drafts = [draft(transfers, src, dst.license, [(lot.name, ea("3"))]) for _ in range(6)]
    gate = threading.Barrier(len(drafts))

    def race(t: tr.Transfer) -> object:
        gate.wait()
        return outcome(transfers.CommitTransfer, commit_request(t))

    with ThreadPoolExecutor(len(drafts)) as pool:
        results = list(pool.map(race, drafts))
    assert results.count("OK") == 3, results
    assert [r for r in results if r != "OK"] == [(FP, "INSUFFICIENT_QUANTITY")] * 3
    assert held(lots, lot.name) == ("1", inv.LOT_STATUS_AVAILABLE)
    states = [get(transfers, t).state for t in drafts]
    assert sorted(states) == [tr.TRANSFER_STATE_DRAFT] * 3 + [tr.TRANSFER_STATE_COMMITTED] * 3
    committed = [get(transfers, t) for t, r in zip(drafts, results, strict=True) if r == "OK"]

    # Accept and void racing on each committed transfer: exactly one of them wins each time.
    pairs: list[Callable[[], object]] = []
    for t in committed:
        pairs.append(partial(outcome, transfers.AcceptTransfer, accept_request(t, dst.vault)))
        pairs.append(
            partial(outcome, transfers.VoidTransfer, tr.VoidTransferRequest(name=t.name, reason="race"))
        )
    gate = threading.Barrier(len(pairs))

    def run(fn: Callable[[], object]) -> object:
        gate.wait()
        return fn()

    with ThreadPoolExecutor(len(pairs)) as pool:
        raced = list(pool.map(run, pairs))
    voids = 0
    for n, t in enumerate(committed):
        accepted, voided = raced[2 * n], raced[2 * n + 1]
        assert [accepted, voided].count("OK") == 1, (accepted, voided)
        state = get(transfers, t).state
        if voided == "OK":
            voids += 1
            assert state == tr.TRANSFER_STATE_VOIDED
            assert accepted in (STATE, (grpc.StatusCode.ABORTED, "ETAG_MISMATCH"))
        else:
            assert state == tr.TRANSFER_STATE_ACCEPTED
            assert voided == STATE
    assert held(lots, lot.name) == (str(1 + 3 * voids), inv.LOT_STATUS_AVAILABLE)
    received = lots.ListLots(inv.ListLotsRequest(parent=dst.license)).lots
    assert sorted(r.quantity.value for r in received) == ["3"] * (3 - voids)


# --- 5. WatchTransfers ---------------------------------------------------------------------------


def test_watch_transfers_streams_and_resumes(channel: grpc.Channel) -> None:
    src = make_site(channel, name="Watched Source")
    dst = make_site(channel, name="Watched Target")
    transfers, lots = stubs(channel)
    lot = new_lot(lots, src, ea("20"))
    source_watch = watch_since(channel, src.license)
    target_watch = watch_since(channel, dst.license)
    incoming_only = watch_since(channel, src.license, direction=tr.TRANSFER_DIRECTION_INCOMING)
    try:
        created = draft(transfers, src, dst.license, [(lot.name, ea("4"))])
        updated = transfers.UpdateTransfer(
            tr.UpdateTransferRequest(
                transfer=tr.Transfer(
                    name=created.name, target_license=dst.license, notes="call ahead", etag=created.etag
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["notes"]),
            )
        )
        committed = commit(transfers, updated)
        accepted = transfers.AcceptTransfer(accept_request(committed, dst.vault))

        seen = source_watch.wait(4)
        theirs = target_watch.wait(2)
        time.sleep(0.5)  # nothing else may follow
        assert len(source_watch.events) == 4
        assert len(target_watch.events) == 2
        assert not incoming_only.events  # the source license has no incoming transfers
        assert [e.type for e in seen] == [
            tr.TRANSFER_EVENT_TYPE_CREATED,
            tr.TRANSFER_EVENT_TYPE_UPDATED,
            tr.TRANSFER_EVENT_TYPE_COMMITTED,
            tr.TRANSFER_EVENT_TYPE_ACCEPTED,
        ]
        assert [e.transfer for e in seen] == [created, updated, committed, accepted]
        assert all(e.direction == tr.TRANSFER_DIRECTION_OUTGOING for e in seen)
        assert [e.type for e in theirs] == [tr.TRANSFER_EVENT_TYPE_COMMITTED, tr.TRANSFER_EVENT_TYPE_ACCEPTED]
        assert [e.transfer for e in theirs] == [committed, accepted]
        assert all(e.direction == tr.TRANSFER_DIRECTION_INCOMING for e in theirs)
        assert theirs[-1].transfer == get(transfers, accepted)
        for events in (seen, theirs):
            tokens = [e.resume_token for e in events]
            assert all(tokens)
            assert [int(t) for t in tokens] == sorted({int(t) for t in tokens})  # increasing (as issued)
            times = [e.event_time.ToDatetime() for e in events]
            assert times == sorted(times)
        assert [e.resume_token for e in theirs] == [e.resume_token for e in seen[2:]]
    finally:
        for w in (source_watch, target_watch, incoming_only):
            w.close()

    # Reconnect after the second event: exactly the two missed ones, then live events.
    resumed = Watch(channel, tr.WatchTransfersRequest(parent=src.license, resume_token=seen[1].resume_token))
    resumed_target = Watch(
        channel, tr.WatchTransfersRequest(parent=dst.license, resume_token=theirs[0].resume_token)
    )
    try:
        replay = resumed.wait(2)
        assert replay == seen[2:]
        assert resumed_target.wait(1) == theirs[1:]
        later = draft(transfers, src, dst.license, [(lot.name, ea("1"))])
        live = resumed.wait(3)
        time.sleep(0.3)
        assert len(resumed.events) == 3
        assert live[2].type == tr.TRANSFER_EVENT_TYPE_CREATED
        assert live[2].transfer == later
        assert int(live[2].resume_token) > int(seen[-1].resume_token)
        assert len(resumed_target.events) == 1  # a draft: not for the target
    finally:
        resumed.close()
        resumed_target.close()

    # Tokens that were never issued, and both starts at once.
    for bad in ("not-a-token", "99999999999999"):
        broken = Watch(channel, tr.WatchTransfersRequest(parent=src.license, resume_token=bad))
        err = broken.failure()
        broken.close()
        assert (err.code(), details(err)[0].reason) == INVALID, bad
    both = Watch(
        channel,
        tr.WatchTransfersRequest(
            parent=src.license, resume_token=seen[0].resume_token, since_time=stamp(-timedelta(minutes=1))
        ),
    )
    err = both.failure()
    both.close()
    assert (err.code(), details(err)[0].reason) == INVALID
    missing = Watch(channel, tr.WatchTransfersRequest(parent=f"licenses/{MISSING_ID}"))
    err = missing.failure()
    missing.close()
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_watch_since_time_older_than_retention_is_refused(channel: grpc.Channel) -> None:
    """WatchTransfersRequest.since_time: "events are retained for at least 7 days; older is
    INVALID_ARGUMENT"."""
    src = make_site(channel)
    old = Watch(channel, tr.WatchTransfersRequest(parent=src.license, since_time=stamp(-timedelta(days=30))))
    try:
        err = old.failure(timeout=3)
        assert (err.code(), details(err)[0].reason) == INVALID
    finally:
        old.close()


def test_many_watchers_all_receive_live_events(channel: grpc.Channel) -> None:
    src = make_site(channel, name="Busy Source")
    dst = make_site(channel, name="Busy Target")
    transfers, lots = stubs(channel)
    lot = new_lot(lots, src, ea("5"))
    before = draft(transfers, src, dst.license, [(lot.name, ea("1"))])  # not for "only new" watchers
    watchers = [Watch(channel, tr.WatchTransfersRequest(parent=src.license)) for _ in range(20)]
    try:
        # Nudge until every watcher is live (each saw some event), then one more change for all.
        current = before
        deadline = time.monotonic() + 10
        while any(not w.events for w in watchers):
            assert time.monotonic() < deadline, [len(w.events) for w in watchers]
            current = transfers.UpdateTransfer(
                tr.UpdateTransferRequest(
                    transfer=tr.Transfer(
                        name=current.name, target_license=dst.license, notes=f"nudge {time.monotonic()}"
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["notes"]),
                )
            )
            time.sleep(0.1)
        committed = commit(transfers, current)
        for w in watchers:
            events = w.wait_until(lambda got: bool(got) and got[-1].transfer == committed)
            assert events[-1].type == tr.TRANSFER_EVENT_TYPE_COMMITTED
            assert events[-1].transfer == committed
            assert tr.TRANSFER_EVENT_TYPE_CREATED not in [e.type for e in events]  # from now only
            assert all(e.type == tr.TRANSFER_EVENT_TYPE_UPDATED for e in events[:-1])
        assert len({w.events[-1].resume_token for w in watchers}) == 1
    finally:
        for w in watchers:
            w.close()


# --- 6. REST through Envoy -----------------------------------------------------------------------


def test_transfer_flow_over_rest(channel: grpc.Channel, rest: httpx.Client) -> None:
    src = make_site(channel, name="Rest Shipper")
    dst = make_site(channel, name="Rest Receiver")
    _, lots = stubs(channel)
    clones = new_lot(lots, src, ea("12"))
    flower = new_lot(lots, src, q("50"), product=src.flower)

    def when(hours: int) -> str:
        return (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")

    body = {
        "targetLicense": dst.license,
        "plannedDepartTime": when(1),
        "plannedArriveTime": when(2),
        "vehicle": {"make": "Ford", "model": "Transit", "licensePlate": "CO REST-1"},
        "driver": {"displayName": "Rita Rest", "licenseNumber": "R-42"},
    }
    created = ok(rest.post(f"/v1/{src.license}/transfers", json=body))
    assert created["state"] == "TRANSFER_STATE_DRAFT"
    assert created["name"].startswith(f"{src.license}/transfers/")
    name = created["name"]
    added = ok(
        rest.post(
            f"/v1/{name}:addItem",
            json={"item": {"lot": clones.name, "quantity": jq("12", "UNIT_EACH")}, "etag": created["etag"]},
        )
    )
    assert [i["quantity"] for i in added["items"]] == [jq("12", "UNIT_EACH")]
    signature = {
        "credential": auth.mint(auth.PARTNER),
        "meaning": "SIGNATURE_MEANING_AUTHORED",
        "reason": "Loaded and counted",
    }

    stale = rest.post(f"/v1/{name}:commit", json={"esignature": signature, "etag": created["etag"]})
    assert stale.status_code == 409, stale.text
    assert stale.json()["code"] == 10
    assert reason(stale.json()) == "ETAG_MISMATCH"

    committed = ok(rest.post(f"/v1/{name}:commit", json={"esignature": signature, "etag": added["etag"]}))
    assert committed["state"] == "TRANSFER_STATE_COMMITTED"
    assert committed["commitSignature"]["reason"] == "Loaded and counted"
    assert "fresh-token" not in str(committed)
    assert ok(rest.get(f"/v1/{clones.name}"))["status"] == "LOT_STATUS_IN_TRANSIT"

    listed = ok(rest.get(f"/v1/{dst.license}/incomingTransfers"))
    assert [t["name"] for t in listed["transfers"]] == [name]
    assert ok(rest.get(f"/v1/{name}")) == committed

    item = committed["items"][0]
    accepted = ok(
        rest.post(
            f"/v1/{name}:accept",
            json={
                "items": [{"itemId": item["itemId"], "receivedQuantity": jq("12", "UNIT_EACH")}],
                "section": dst.vault,
                "etag": committed["etag"],
            },
        )
    )
    assert accepted["state"] == "TRANSFER_STATE_ACCEPTED"
    received = ok(rest.get(f"/v1/{accepted['items'][0]['receivedLot']}"))
    assert received["quantity"] == jq("12", "UNIT_EACH")
    assert received["source"]["origin"] == "LOT_ORIGIN_TRANSFER"
    assert received["source"]["transfer"] == name
    assert ok(rest.get(f"/v1/{clones.name}"))["status"] == "LOT_STATUS_TRANSFERRED"

    # Untested flower to a grower: 400 with the FAILED_PRECONDITION reason; nothing moved.
    untested = ok(
        rest.post(
            f"/v1/{src.license}/transfers",
            json={**body, "items": [{"lot": flower.name, "quantity": jq("5")}]},
        )
    )
    refused_commit = rest.post(
        f"/v1/{untested['name']}:commit", json={"esignature": signature, "etag": untested["etag"]}
    )
    assert refused_commit.status_code == 400, refused_commit.text
    assert refused_commit.json()["code"] == 9
    assert reason(refused_commit.json()) == "LAB_TESTING_REQUIRED"
    assert ok(rest.get(f"/v1/{flower.name}"))["quantity"] == jq("50.0000")
    assert ok(rest.get(f"/v1/{untested['name']}"))["state"] == "TRANSFER_STATE_DRAFT"

    missing = rest.get(f"/v1/{src.license}/transfers/{MISSING_ID}")
    assert missing.status_code == 404
    assert reason(missing.json()) == "RESOURCE_NOT_FOUND"
    no_signature = rest.post(f"/v1/{untested['name']}:commit", json={"etag": untested["etag"]})
    assert no_signature.status_code == 400
    assert reason(no_signature.json()) == "VALIDATION_FAILED"


def test_only_the_parties_see_and_receive_a_transfer(stack: EdgeProcess, channel: grpc.Channel) -> None:
    transfers, lots = stubs(channel)
    source, target = make_site(channel), make_site(channel, name="Receiver")
    lot = new_lot(lots, source, ea("10"))
    t = shipped(transfers, source, target.license, [(lot.name, ea("4"))])
    src_id, tgt_id = source.license.split("/")[1], target.license.split("/")[1]

    def as_(grants: dict[str, list[str]]) -> transfer_pb2_grpc.TransferServiceStub:
        return transfer_pb2_grpc.TransferServiceStub(
            auth.with_bearer(raw, auth.mint(f"u-{uuid.uuid4().hex[:6]}", grants))
        )

    with grpc.insecure_channel(stack.server.target) as raw:
        stranger = as_({"01JF" + "0" * 22: ["admin"]})
        sender = as_({src_id: ["inventory_manager"]})
        receiver = as_({tgt_id: ["inventory_manager"]})
        missing = tr.GetTransferRequest(name=f"{source.license}/transfers/{'01JG' + '0' * 22}")
        # A stranger is refused alike whether the transfer exists or not (AIP-193).
        for request in (tr.GetTransferRequest(name=t.name), missing):
            with pytest.raises(grpc.RpcError) as err:
                stranger.GetTransfer(request)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert sender.GetTransfer(tr.GetTransferRequest(name=t.name)).name == t.name
        assert receiver.GetTransfer(tr.GetTransferRequest(name=t.name)).name == t.name
        # The sender cannot receive its own shipment; the receiver can.
        with pytest.raises(grpc.RpcError) as err:
            sender.AcceptTransfer(accept_request(t, target.vault))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert receiver.AcceptTransfer(accept_request(t, target.vault)).state == tr.TRANSFER_STATE_ACCEPTED
