"""Transfer rules: lifecycle guards, who may receive what, what a commit needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from seedline.license.v1 import license_pb2
from seedline.transfer.v1 import transfer_pb2

from seedline_server.domain import transfer as rules
from seedline_server.domain.errors import (
    InvalidArgument,
    InvalidStateTransition,
    LabTestingRequired,
    LicenseNotPermitted,
)
from seedline_server.domain.lot import LabStatus, Package

T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)
T = rules.LicenseType


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (rules.State, transfer_pb2.TransferState),
        (rules.ItemState, transfer_pb2.TransferItemState),
        (rules.Event, transfer_pb2.TransferEventType),
        (rules.LicenseType, license_pb2.LicenseType),
    ],
)
def test_enums_match_the_contract(ours: type, theirs: object) -> None:
    names = {v.name: v.value for v in ours}  # type: ignore[attr-defined]
    prefix = {
        rules.State: "TRANSFER_STATE_",
        rules.ItemState: "TRANSFER_ITEM_STATE_",
        rules.Event: "TRANSFER_EVENT_TYPE_",
        rules.LicenseType: "LICENSE_TYPE_",
    }[ours]  # type: ignore[index]
    contract = {n.removeprefix(prefix): v for n, v in theirs.items() if not n.endswith("UNSPECIFIED")}  # type: ignore[attr-defined]
    assert names == contract


@pytest.mark.parametrize("state", list(rules.State), ids=lambda s: s.name)
def test_only_drafts_are_edited(state: rules.State) -> None:
    if state is rules.State.DRAFT:
        rules.check_draft(state, "update")
        return
    with pytest.raises(InvalidStateTransition, match=state.name):
        rules.check_draft(state, "update")


@pytest.mark.parametrize("state", list(rules.State), ids=lambda s: s.name)
def test_receiving_needs_a_shipped_transfer_and_voiding_an_unfinished_one(state: rules.State) -> None:
    if state in (rules.State.COMMITTED, rules.State.IN_TRANSIT):
        rules.check_shipped(state, "accept")
    else:
        with pytest.raises(InvalidStateTransition):
            rules.check_shipped(state, "accept")
    if state in (rules.State.DRAFT, rules.State.COMMITTED, rules.State.IN_TRANSIT):
        rules.check_voidable(state)
    else:
        with pytest.raises(InvalidStateTransition, match="final"):
            rules.check_voidable(state)


def test_a_committed_transfer_is_in_transit_once_its_departure_passed() -> None:
    c = rules.State.COMMITTED
    assert rules.effective_state(c, T0, T0 - timedelta(seconds=1)) is c
    assert rules.effective_state(c, T0, T0) is rules.State.IN_TRANSIT
    assert rules.effective_state(c, None, T0) is c
    assert rules.effective_state(rules.State.DRAFT, T0, T0 + timedelta(days=1)) is rules.State.DRAFT


def test_an_incomplete_manifest_names_every_missing_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        rules.check_manifest(rules.Manifest(0, None, None, False, False))
    assert {v.field for v in err.value.violations} == {
        "transfer.items",
        "transfer.planned_depart_time",
        "transfer.planned_arrive_time",
        "transfer.vehicle",
        "transfer.driver",
    }
    with pytest.raises(InvalidArgument) as err:
        rules.check_manifest(rules.Manifest(1, T0, T0, True, True))
    assert [v.field for v in err.value.violations] == ["transfer.planned_arrive_time"]
    rules.check_manifest(rules.Manifest(1, T0, T0 + timedelta(hours=1), True, True))


# (target license type, package, plant material) → may receive
_ALLOWED = {
    (T.CARRIER, Package.BULK, False): False,
    (T.CARRIER, Package.EACH, False): False,
    (T.RETAIL, Package.EACH, False): True,
    (T.RETAIL, Package.PACK, False): True,
    (T.RETAIL, Package.BULK, False): False,
    (T.RETAIL, Package.BULK, True): False,
    (T.GROWER, Package.BULK, True): True,
    (T.GROWER_PROCESSOR, Package.BULK, True): True,
    (T.LABORATORY, Package.BULK, True): True,
    (T.DISTRIBUTOR, Package.BULK, True): True,
    (T.PROCESSOR, Package.BULK, True): False,
    (T.PROCESSOR, Package.BULK, False): True,
    (T.PROCESSOR, Package.EACH, False): True,
    (T.GROWER, Package.BULK, False): True,
    (T.LABORATORY, Package.EACH, False): True,
}


@pytest.mark.parametrize(("case", "allowed"), list(_ALLOWED.items()), ids=lambda c: str(c))
def test_who_may_receive_what(case: tuple[rules.LicenseType, Package, bool], allowed: bool) -> None:
    target_type, package, plant = case
    if allowed:
        rules.check_receivable(target_type, package, plant, "licenses/T", "licenses/S/products/P")
        return
    with pytest.raises(LicenseNotPermitted) as err:
        rules.check_receivable(target_type, package, plant, "licenses/T", "licenses/S/products/P")
    assert err.value.metadata == {
        "target_license": "licenses/T",
        "license_type": target_type.name,
        "product": "licenses/S/products/P",
    }


@pytest.mark.parametrize("lab", list(LabStatus), ids=lambda s: s.name)
@pytest.mark.parametrize("target", [T.PROCESSOR, T.LABORATORY], ids=lambda t: t.name)
def test_untested_material_ships_only_to_a_laboratory(lab: LabStatus, target: rules.LicenseType) -> None:
    if target is T.LABORATORY or lab in (LabStatus.NOT_REQUIRED, LabStatus.PASSED):
        rules.check_lab(lab, target, "licenses/S/lots/L")
        return
    with pytest.raises(LabTestingRequired) as err:
        rules.check_lab(lab, target, "licenses/S/lots/L")
    assert err.value.metadata == {"lot": "licenses/S/lots/L", "lab_status": lab.name}


def test_receiving_more_than_was_sent_is_refused() -> None:
    rules.check_received(Decimal(5), Decimal(5), "items[0].received_quantity")
    rules.check_received(Decimal(5), Decimal(0), "items[0].received_quantity")
    with pytest.raises(InvalidArgument) as err:
        rules.check_received(Decimal(5), Decimal("5.0001"), "items[0].received_quantity")
    assert err.value.violations[0].field == "items[0].received_quantity"
