"""Lot rules: counting, statuses, takes and adjustments, mass balance (pure, no database)."""

from __future__ import annotations

import itertools
import re
from decimal import ROUND_DOWN, Decimal, localcontext

import pytest
from buf.validate import validate_pb2
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from seedline.inventory.v1 import inventory_pb2
from seedline.license.v1 import license_pb2

from seedline_server.domain.errors import (
    DestructionPending,
    DomainError,
    FailedPrecondition,
    InsufficientQuantity,
    InvalidArgument,
    InvalidStateTransition,
    MassBalanceViolation,
    ReferenceInvalid,
    ResourceLocked,
    UnitMismatch,
)
from seedline_server.domain.lot import (
    DEPLETED_CORRECTIONS,
    INCREASE_REASONS,
    TOLERANCE,
    USABLE,
    AdjustReason,
    Balance,
    Change,
    Counting,
    LabStatus,
    Origin,
    Package,
    SectionKind,
    Status,
    adjusted,
    check_balance,
    check_not_more,
    check_section_holds_lots,
    check_usable,
    lab_status_for,
    settled,
    take,
)
from seedline_server.domain.quantity import MAX_AMOUNT, SCALE, Dimension, Quantity, Unit, dimension_of, parse

LOT = "licenses/L1/lots/LOT1"
STEP = Decimal("0.0001")

# Storage amounts (g or l, 4 places) over the contract's whole range: up to 12 integer digits in
# the input unit, i.e. up to 10^15 g for kilogram input (999999999999.999999999 kg).
MAX_STORED = MAX_AMOUNT  # the largest amount stored
stored = st.decimals(min_value=0, max_value=MAX_STORED, places=4, allow_nan=False, allow_infinity=False)
positive = st.decimals(min_value=STEP, max_value=MAX_STORED, places=4, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=10**12 - 1).map(Decimal)

DECREASE_ONLY = [
    AdjustReason.DRYING,
    AdjustReason.MOISTURE_LOSS,
    AdjustReason.THEFT,
    AdjustReason.HANDLING_LOSS,
]
USABLE_STATUSES = [Status.AVAILABLE, Status.QUARANTINED]
NOT_USABLE = [s for s in Status if s not in USABLE]


def on_grid(d: Decimal) -> bool:
    return d == d.quantize(SCALE)


def exact_product(*factors: Decimal | int) -> Decimal:
    """The product computed with 100 digits: the reference for products that must not round."""
    with localcontext() as ctx:
        ctx.prec = 100
        result = Decimal(1)
        for f in factors:
            result *= f
        return result


def exact_difference(consumed: list[Decimal], produced: Decimal, waste: Decimal) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 100
        return sum(consumed, Decimal(0)) - produced - waste


# ---------------------------------------------------------------------------------------------
# The domain enums are the contract's enums


@pytest.mark.parametrize(
    ("domain", "contract", "prefix"),
    [
        (Status, inventory_pb2.LotStatus, "LOT_STATUS_"),
        (LabStatus, inventory_pb2.LotLabStatus, "LOT_LAB_STATUS_"),
        (Origin, inventory_pb2.LotOrigin, "LOT_ORIGIN_"),
        (AdjustReason, inventory_pb2.AdjustmentReason, "ADJUSTMENT_REASON_"),
        (Package, license_pb2.PackageType, "PACKAGE_TYPE_"),
        (SectionKind, license_pb2.SectionType, "SECTION_TYPE_"),
    ],
    ids=["Status", "LabStatus", "Origin", "AdjustReason", "Package", "SectionKind"],
)
def test_enum_numbers_match_the_contract(domain: type, contract: object, prefix: str) -> None:
    items = dict(contract.items())  # type: ignore[attr-defined]
    expected = {name.removeprefix(prefix): number for name, number in items.items() if number}
    assert {m.name: m.value for m in domain} == expected  # type: ignore[attr-defined]


def _increase_reasons_in_contract() -> set[int]:
    rules = inventory_pb2.AdjustLotRequest.DESCRIPTOR.GetOptions().Extensions[validate_pb2.message]
    (expression,) = [c.expression for c in rules.cel if c.id == "adjust_lot.increase_reason"]
    found = re.search(r"this\.reason in \[([0-9, ]+)\]", expression)
    assert found is not None, expression
    return {int(n) for n in found.group(1).split(",")}


def test_increase_reasons_are_the_contracts() -> None:
    assert {r.value for r in INCREASE_REASONS} == _increase_reasons_in_contract() == {3, 4, 7, 8}
    assert set(DECREASE_ONLY) == set(AdjustReason) - INCREASE_REASONS


def test_status_sets_and_tolerance() -> None:
    assert frozenset(USABLE_STATUSES) == USABLE
    assert frozenset({AdjustReason.ENTRY_ERROR, AdjustReason.INVENTORY_COUNT}) == DEPLETED_CORRECTIONS
    assert Decimal("0.0001") == TOLERANCE == SCALE


# ---------------------------------------------------------------------------------------------
# check_usable


@pytest.mark.parametrize("status", USABLE_STATUSES, ids=lambda s: s.name)
def test_available_and_quarantined_lots_are_usable(status: Status) -> None:
    check_usable(status, "split")  # no error


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (Status.DESTRUCTION_PENDING, DestructionPending, "DESTRUCTION_PENDING"),
        (Status.DESTROYED, ResourceLocked, "RESOURCE_LOCKED"),
        (Status.TRANSFERRED, ResourceLocked, "RESOURCE_LOCKED"),
        (Status.DEPLETED, ResourceLocked, "RESOURCE_LOCKED"),
        (Status.IN_TRANSIT, InvalidStateTransition, "INVALID_STATE_TRANSITION"),
    ],
    ids=lambda x: getattr(x, "name", None) or getattr(x, "__name__", None) or str(x),
)
def test_other_statuses_are_refused(status: Status, error: type[DomainError], reason: str) -> None:
    with pytest.raises(error) as info:
        check_usable(status, "convert")
    assert type(info.value) is error  # not merely a subclass: the API maps the exact reason
    assert info.value.reason == reason
    assert isinstance(info.value, FailedPrecondition)
    assert "cannot convert" in info.value.message
    if error is not DestructionPending:
        assert info.value.metadata == {"status": status.name}


def test_every_status_is_classified() -> None:
    assert len(USABLE) + len(NOT_USABLE) == len(Status) == 7


# ---------------------------------------------------------------------------------------------
# settled


def _expected_settled(quantity: Decimal, section: SectionKind, lab: LabStatus) -> Status:
    if quantity == 0:
        return Status.DEPLETED
    if section is SectionKind.QUARANTINE or lab is LabStatus.FAILED:
        return Status.QUARANTINED
    return Status.AVAILABLE


@pytest.mark.parametrize(
    ("quantity", "section", "lab"),
    list(
        itertools.product(
            [Decimal(0), Decimal("0.0000"), Decimal("0.0001"), Decimal(1), Decimal("999999999999999.9999")],
            SectionKind,
            LabStatus,
        )
    ),
)
def test_settled_status(quantity: Decimal, section: SectionKind, lab: LabStatus) -> None:
    assert settled(quantity, section, lab) is _expected_settled(quantity, section, lab)


def test_settled_examples() -> None:
    # Empty wins over held; held by section or by a failed result; anything else is available.
    assert settled(Decimal(0), SectionKind.QUARANTINE, LabStatus.FAILED) is Status.DEPLETED
    assert settled(Decimal("0.0001"), SectionKind.QUARANTINE, LabStatus.PASSED) is Status.QUARANTINED
    assert settled(Decimal(5), SectionKind.INVENTORY, LabStatus.FAILED) is Status.QUARANTINED
    assert settled(Decimal(5), SectionKind.INVENTORY, LabStatus.REQUIRED) is Status.AVAILABLE
    assert settled(Decimal(5), SectionKind.INVENTORY, LabStatus.SAMPLED) is Status.AVAILABLE


# ---------------------------------------------------------------------------------------------
# check_section_holds_lots


@pytest.mark.parametrize(("kind", "active"), list(itertools.product(SectionKind, [True, False])))
def test_only_active_inventory_or_quarantine_sections_hold_lots(kind: SectionKind, active: bool) -> None:
    name = "licenses/L1/sections/S1"
    if active and kind in (SectionKind.INVENTORY, SectionKind.QUARANTINE):
        check_section_holds_lots(kind, active, name)  # no error
        return
    with pytest.raises(ReferenceInvalid) as info:
        check_section_holds_lots(kind, active, name)
    assert info.value.reason == "REFERENCE_INVALID"
    assert info.value.metadata == {"section": name}
    assert name in info.value.message


# ---------------------------------------------------------------------------------------------
# lab_status_for


@pytest.mark.parametrize(
    "product_type",
    [
        "018NY6XC00PTY9THKSEQ8NFS1J",  # Plant/Seed
        "018NY6XC00PT3EZZ4GN6105M64",  # Plant/Clone
    ],
)
def test_plant_material_needs_no_testing(product_type: str) -> None:
    assert lab_status_for(product_type) is LabStatus.NOT_REQUIRED


@pytest.mark.parametrize(
    "product_type",
    [
        "018NY6XC00PTZZWCH7XVREHK6T",  # Flower
        "018NY6XC00PTYM8J81K9HFGEMQ",  # Wet flower / Grade A
        "018NY6XC00PTR9M5Z9S4T31C4R",  # CO2 extract
        "018NY6XC00PT7N83PFNCX8ZFEF",  # Liquid edible
        "018NY6XC00PT0000000000BULK",  # the contract's example
        "018ny6xc00pty9thkseq8nfs1j",  # a seed id in the wrong case is not the seed type
        "",
    ],
)
def test_other_product_types_need_testing(product_type: str) -> None:
    assert lab_status_for(product_type) is LabStatus.REQUIRED


# ---------------------------------------------------------------------------------------------
# take: exact, all or nothing


@settings(max_examples=200)
@given(available=stored, amount=stored)
@example(available=Decimal("0.0001"), amount=Decimal("0.0001"))
@example(available=Decimal("0.0001"), amount=Decimal("0.0002"))
@example(available=MAX_STORED, amount=STEP)
def test_take_is_exact_or_refused_whole(available: Decimal, amount: Decimal) -> None:
    if amount <= available:
        rest = take(available, amount, LOT)
        assert rest + amount == available
        assert rest >= 0
        assert on_grid(rest)
        return
    with pytest.raises(InsufficientQuantity) as info:
        take(available, amount, LOT)
    assert info.value.reason == "INSUFFICIENT_QUANTITY"
    assert info.value.metadata == {"lot": LOT, "available": str(available), "requested": str(amount)}
    assert LOT in info.value.message


def test_take_everything_leaves_exactly_zero_and_depletes() -> None:
    rest = take(Decimal("453.5924"), Decimal("453.5924"), LOT)
    assert rest == 0
    assert settled(rest, SectionKind.INVENTORY, LabStatus.PASSED) is Status.DEPLETED
    with pytest.raises(InsufficientQuantity):
        take(rest, STEP, LOT)


@settings(max_examples=100)
@given(start=positive, data=st.data())
def test_any_split_into_parts_sums_back_exactly(start: Decimal, data: st.DataObject) -> None:
    steps = int(start / STEP)
    cuts = sorted(data.draw(st.lists(st.integers(0, steps), max_size=20), label="cuts"))
    bounds = [0, *cuts, steps]
    parts = [Decimal(b - a).scaleb(-4) for a, b in itertools.pairwise(bounds)]
    assert sum(parts, Decimal(0)) == start
    remaining = start
    for part in parts:
        before = remaining
        remaining = take(remaining, part, LOT)
        assert remaining == before - part
    assert remaining == 0
    assert settled(remaining, SectionKind.INVENTORY, LabStatus.PASSED) is Status.DEPLETED


@settings(max_examples=100)
@given(
    start=stored,
    parts=st.lists(
        st.tuples(
            st.decimals(min_value=0, max_value=10**6, places=9, allow_nan=False, allow_infinity=False),
            st.sampled_from([Unit.GRAM, Unit.MILLIGRAM, Unit.KILOGRAM, Unit.POUND, Unit.OUNCE]),
        ),
        max_size=15,
    ),
)
def test_takes_in_any_input_unit_conserve_material(start: Decimal, parts: list[tuple[Decimal, Unit]]) -> None:
    # Each part is rounded once when parsed; after that, taking it from the lot is exact.
    remaining = start
    taken = Decimal(0)
    for value, unit in parts:
        q = parse(f"{value:f}", unit)
        try:
            remaining = take(remaining, q.amount, LOT)
        except InsufficientQuantity:
            continue
        taken += q.amount
    assert taken + remaining == start
    assert on_grid(remaining)
    assert remaining >= 0


# ---------------------------------------------------------------------------------------------
# adjusted


@pytest.mark.parametrize("reason", DECREASE_ONLY, ids=lambda r: r.name)
@pytest.mark.parametrize("status", USABLE_STATUSES, ids=lambda s: s.name)
def test_decrease_only_reasons_refuse_increases(reason: AdjustReason, status: Status) -> None:
    current = Decimal("10.0000")
    for change, amount in [(Change.INCREASE, Decimal("0.0001")), (Change.SET, Decimal("10.0001"))]:
        with pytest.raises(InvalidStateTransition) as info:
            adjusted(status, reason, current, change, amount, LOT)
        assert info.value.metadata == {"reason": reason.name}
        assert reason.name in info.value.message
    assert adjusted(status, reason, current, Change.DECREASE, Decimal("0.0001"), LOT) == Decimal("9.9999")
    assert adjusted(status, reason, current, Change.SET, Decimal("2.5"), LOT) == Decimal("2.5")
    assert adjusted(status, reason, current, Change.SET, Decimal(0), LOT) == 0


@pytest.mark.parametrize("reason", [r for r in AdjustReason if r in INCREASE_REASONS], ids=lambda r: r.name)
def test_increase_reasons_allow_increases(reason: AdjustReason) -> None:
    current = Decimal("10.0000")
    assert adjusted(Status.AVAILABLE, reason, current, Change.INCREASE, STEP, LOT) == Decimal("10.0001")
    assert adjusted(Status.QUARANTINED, reason, current, Change.SET, Decimal(12), LOT) == 12
    assert adjusted(Status.AVAILABLE, reason, current, Change.DECREASE, Decimal(10), LOT) == 0


@pytest.mark.parametrize("reason", list(AdjustReason), ids=lambda r: r.name)
def test_depleted_lots_accept_only_corrections(reason: AdjustReason) -> None:
    if reason in DEPLETED_CORRECTIONS:
        assert adjusted(Status.DEPLETED, reason, Decimal(0), Change.SET, Decimal(5), LOT) == 5
        assert adjusted(Status.DEPLETED, reason, Decimal(0), Change.INCREASE, STEP, LOT) == STEP
        # Nothing to remove from an empty lot.
        with pytest.raises(InsufficientQuantity):
            adjusted(Status.DEPLETED, reason, Decimal(0), Change.DECREASE, STEP, LOT)
        return
    for change, amount in [(Change.SET, Decimal(5)), (Change.INCREASE, STEP), (Change.DECREASE, STEP)]:
        with pytest.raises(ResourceLocked) as info:
            adjusted(Status.DEPLETED, reason, Decimal(0), change, amount, LOT)
        assert info.value.metadata == {"status": "DEPLETED"}
        assert LOT in info.value.message


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (Status.IN_TRANSIT, InvalidStateTransition),
        (Status.DESTRUCTION_PENDING, DestructionPending),
        (Status.DESTROYED, ResourceLocked),
        (Status.TRANSFERRED, ResourceLocked),
    ],
    ids=lambda x: getattr(x, "name", None) or getattr(x, "__name__", ""),
)
@pytest.mark.parametrize("reason", list(AdjustReason), ids=lambda r: r.name)
def test_locked_statuses_refuse_adjustments_before_any_amount_check(
    status: Status, error: type[DomainError], reason: AdjustReason
) -> None:
    # Each of these would otherwise fail on its amount (too much, no-op, or a forbidden increase):
    # the status is reported first.
    for change, amount in [
        (Change.DECREASE, Decimal(11)),
        (Change.SET, Decimal(10)),
        (Change.INCREASE, Decimal(1)),
        (Change.SET, Decimal(3)),
    ]:
        with pytest.raises(error) as info:
            adjusted(status, reason, Decimal(10), change, amount, LOT)
        assert type(info.value) is error
        assert "adjust" in info.value.message


@pytest.mark.parametrize("reason", [r for r in AdjustReason if r not in DEPLETED_CORRECTIONS])
def test_depleted_status_is_reported_before_the_amount(reason: AdjustReason) -> None:
    with pytest.raises(ResourceLocked):
        adjusted(Status.DEPLETED, reason, Decimal(0), Change.DECREASE, Decimal(1), LOT)


@pytest.mark.parametrize("status", USABLE_STATUSES, ids=lambda s: s.name)
@pytest.mark.parametrize("reason", list(AdjustReason), ids=lambda r: r.name)
def test_decreasing_beyond_the_quantity_is_insufficient(status: Status, reason: AdjustReason) -> None:
    with pytest.raises(InsufficientQuantity) as info:
        adjusted(status, reason, Decimal("5.0000"), Change.DECREASE, Decimal("5.0001"), LOT)
    assert info.value.metadata == {"lot": LOT, "available": "5.0000", "requested": "5.0001"}


@pytest.mark.parametrize(
    "status", [Status.AVAILABLE, Status.QUARANTINED, Status.DEPLETED], ids=lambda s: s.name
)
@pytest.mark.parametrize("reason", list(AdjustReason), ids=lambda r: r.name)
def test_a_no_op_adjustment_is_refused(status: Status, reason: AdjustReason) -> None:
    current = Decimal(0) if status is Status.DEPLETED else Decimal("7.2500")
    noops = [
        (Change.SET, current),
        (Change.SET, Decimal(f"{current:.9f}")),  # same number, other exponent
        (Change.INCREASE, Decimal("0.0000")),
        (Change.DECREASE, Decimal("0.0000")),
    ]
    locked = status is Status.DEPLETED and reason not in DEPLETED_CORRECTIONS
    for change, amount in noops:
        with pytest.raises(ResourceLocked if locked else InvalidStateTransition) as info:
            adjusted(status, reason, current, change, amount, LOT)
        if not locked:
            assert type(info.value) is InvalidStateTransition
            assert "nothing to adjust" in info.value.message


@settings(max_examples=200)
@given(
    status=st.sampled_from(USABLE_STATUSES),
    reason=st.sampled_from(list(AdjustReason)),
    change=st.sampled_from(list(Change)),
    current=stored,
    amount=stored,
)
def test_adjusted_applies_exactly_the_requested_change_or_refuses(
    status: Status, reason: AdjustReason, change: Change, current: Decimal, amount: Decimal
) -> None:
    target = {Change.SET: amount, Change.INCREASE: current + amount, Change.DECREASE: current - amount}[
        change
    ]
    if target < 0:
        expected: type[DomainError] | None = InsufficientQuantity
    elif target == current or (target > current and reason not in INCREASE_REASONS):
        expected = InvalidStateTransition  # a no-op, or an increase for a decrease-only reason
    elif target > MAX_AMOUNT:
        expected = InvalidArgument  # above the largest amount a Quantity can carry back
    else:
        expected = None
    if expected is None:
        new = adjusted(status, reason, current, change, amount, LOT)
        assert new == target
        assert new >= 0
        assert on_grid(new)
        return
    with pytest.raises(expected) as info:
        adjusted(status, reason, current, change, amount, LOT)
    assert type(info.value) is expected


_ops = st.lists(
    st.tuples(
        st.sampled_from(["take", *Change]),
        st.sampled_from(list(AdjustReason)),
        st.integers(0, 120),  # percent of the current quantity (over 100: more than it holds)
        stored,
        st.booleans(),  # use the percentage or the absolute amount
    ),
    max_size=40,
)


@settings(max_examples=100)
@given(start=stored, ops=_ops, section=st.sampled_from([SectionKind.INVENTORY, SectionKind.QUARANTINE]))
def test_no_sequence_of_takes_and_adjustments_creates_or_loses_material(
    start: Decimal, ops: list[tuple[object, AdjustReason, int, Decimal, bool]], section: SectionKind
) -> None:
    quantity = start
    status = settled(quantity, section, LabStatus.PASSED)
    taken = added = removed = Decimal(0)
    for op, reason, percent, absolute, relative in ops:
        amount = (quantity * percent / 100).quantize(SCALE, rounding=ROUND_DOWN) if relative else absolute
        before = quantity
        try:
            if op == "take":
                check_usable(status, "split")
                quantity = take(quantity, amount, LOT)
                taken += amount
            else:
                assert isinstance(op, Change)
                quantity = adjusted(status, reason, quantity, op, amount, LOT)
                delta = {Change.SET: amount - before, Change.INCREASE: amount, Change.DECREASE: -amount}[op]
                assert quantity == before + delta
                added += max(delta, Decimal(0))
                removed += max(-delta, Decimal(0))
        except (
            InsufficientQuantity,
            InvalidStateTransition,
            ResourceLocked,
            InvalidArgument,
        ):  # refused whole
            assert quantity == before  # refused: nothing changed
            continue
        status = settled(quantity, section, LabStatus.PASSED)
        assert quantity >= 0
        assert on_grid(quantity)
    assert start + added - removed - taken == quantity
    assert status is settled(quantity, section, LabStatus.PASSED)


# ---------------------------------------------------------------------------------------------
# check_balance


@settings(max_examples=150)
@given(
    consumed=st.lists(stored, min_size=1, max_size=100),
    offset=st.integers(-5, 5),
    share=st.integers(0, 100),
)
@example(consumed=[Decimal("0.0001")], offset=1, share=0)
@example(consumed=[Decimal("0.0001")], offset=-1, share=100)
def test_check_balance_accepts_exactly_within_one_storage_step(
    consumed: list[Decimal], offset: int, share: int
) -> None:
    total = sum(consumed, Decimal(0))
    waste = (total * share / 100).quantize(SCALE, rounding=ROUND_DOWN)
    # produced + waste = total - offset steps: the difference is exactly offset steps.
    assume(total - offset * STEP >= 0)  # outputs are never negative
    produced = total - waste - offset * STEP
    if produced < 0:
        produced, waste = Decimal(0), total - offset * STEP
    assert total - produced - waste == offset * STEP
    if abs(offset) <= 1:
        balance = check_balance(iter(consumed), produced, waste)  # any iterable
        assert balance == Balance(total, produced, waste)
        assert balance.difference == offset * STEP
        return
    with pytest.raises(MassBalanceViolation) as info:
        check_balance(consumed, produced, waste)
    assert info.value.reason == "MASS_BALANCE_VIOLATION"
    meta = info.value.metadata
    assert Decimal(meta["difference_g"]) == offset * STEP
    assert Decimal(meta["consumed_g"]) == total
    assert Decimal(meta["produced_g"]) == produced
    assert Decimal(meta["waste_g"]) == waste
    assert meta["difference_g"] in info.value.message


@settings(max_examples=150)
@given(consumed=st.lists(stored, max_size=20), produced=stored, waste=stored)
def test_check_balance_decides_on_the_exact_difference(
    consumed: list[Decimal], produced: Decimal, waste: Decimal
) -> None:
    difference = exact_difference(consumed, produced, waste)
    if abs(difference) <= Decimal("0.0001"):
        assert check_balance(consumed, produced, waste).difference == difference
    else:
        with pytest.raises(MassBalanceViolation) as info:
            check_balance(consumed, produced, waste)
        assert Decimal(info.value.metadata["difference_g"]) == difference


@pytest.mark.parametrize(
    ("produced", "waste", "ok"),
    [
        ("900.0000", "7.1848", True),  # exact
        ("900.0000", "7.1847", True),  # 0.0001 unaccounted for
        ("900.0000", "7.1849", True),  # 0.0001 too much
        ("900.0000", "7.1846", False),
        ("900.0000", "7.1850", False),
        ("900.0000", "7.18469", False),  # just over the tolerance (not on the grid)
        ("907.1848", "0", True),
        ("0", "0", False),
    ],
)
def test_check_balance_of_parsed_weights(produced: str, waste: str, ok: bool) -> None:
    # 1 lb + 16 oz = 2 x 453.59237 g, each rounded once: 453.5924 + 453.5924 = 907.1848 g.
    consumed = [parse("1", Unit.POUND).amount, parse("16", Unit.OUNCE).amount]
    assert sum(consumed) == Decimal("907.1848")
    if ok:
        check_balance(consumed, Decimal(produced), Decimal(waste))
    else:
        with pytest.raises(MassBalanceViolation):
            check_balance(consumed, Decimal(produced), Decimal(waste))


def test_check_balance_with_nothing_consumed() -> None:
    assert check_balance([], Decimal(0), Decimal(0)) == Balance(Decimal(0), Decimal(0), Decimal(0))
    with pytest.raises(MassBalanceViolation) as info:
        check_balance([], Decimal("0.0002"), Decimal(0))
    assert Decimal(info.value.metadata["difference_g"]) == Decimal("-0.0002")


# ---------------------------------------------------------------------------------------------
# check_not_more


@settings(max_examples=100)
@given(collected=stored, produced=stored, waste=stored)
@example(collected=Decimal(10), produced=Decimal(7), waste=Decimal(3))
@example(collected=Decimal(10), produced=Decimal(7), waste=Decimal("3.0001"))
def test_check_not_more_refuses_only_outputs_beyond_what_was_collected(
    collected: Decimal, produced: Decimal, waste: Decimal
) -> None:
    if produced + waste <= collected:
        check_not_more(collected, produced, waste, "net collect")  # no error
        return
    with pytest.raises(MassBalanceViolation) as info:
        check_not_more(collected, produced, waste, "net collect")
    assert info.value.metadata == {
        "collected_g": str(collected),
        "produced_g": str(produced),
        "waste_g": str(waste),
    }
    assert "net collect" in info.value.message


# ---------------------------------------------------------------------------------------------
# Counting: net weight/volume of bulk, each and pack products


@pytest.mark.parametrize("unit", list(Unit), ids=lambda u: u.name)
def test_bulk_products_count_in_their_bulk_units_dimension(unit: Unit) -> None:
    count = Counting.of(Package.BULK.value, unit.value, Decimal("3.5"), Unit.GRAM.value, 10)
    assert count == Counting(Package.BULK, dimension_of(unit))
    assert count.unit_size is None  # ignored for bulk
    assert count.pack_count == 1


def test_each_and_pack_products_count_units() -> None:
    each = Counting.of(Package.EACH.value, Unit.EACH.value, Decimal("3.5000"), Unit.GRAM.value, 7)
    assert each == Counting(Package.EACH, Dimension.COUNT, Quantity(Decimal("3.5"), Dimension.WEIGHT), 1)
    pack = Counting.of(Package.PACK.value, Unit.EACH.value, Decimal("0.0100"), Unit.LITER.value, 10)
    assert pack == Counting(Package.PACK, Dimension.COUNT, Quantity(Decimal("0.01"), Dimension.VOLUME), 10)
    # No unit size recorded: no net amount.
    for size, unit in [(None, Unit.GRAM.value), (Decimal(1), 0)]:
        bare = Counting.of(Package.EACH.value, Unit.EACH.value, size, unit, 0)
        assert bare.unit_size is None
        assert bare.net(Decimal(5)) is None
        assert bare.weight(Decimal(5)) is None


@settings(max_examples=50)
@given(amount=stored)
def test_bulk_net_is_the_quantity_itself(amount: Decimal) -> None:
    by_weight = Counting(Package.BULK, Dimension.WEIGHT)
    assert by_weight.net(amount) == Quantity(amount, Dimension.WEIGHT)
    assert by_weight.weight(amount) == amount
    by_volume = Counting(Package.BULK, Dimension.VOLUME)
    assert by_volume.net(amount) == Quantity(amount, Dimension.VOLUME)
    assert by_volume.weight(amount) is None
    by_count = Counting(Package.BULK, Dimension.COUNT)
    assert by_count.net(amount) is None
    assert by_count.weight(amount) is None


# Unit sizes up to 999999.9999 g (or l) per unit: with up to 12-digit counts and 5-digit pack
# counts the exact product has at most 27 significant digits.
unit_sizes = st.decimals(min_value=0, max_value=Decimal("999999.9999"), places=4, allow_nan=False)
pack_counts = st.integers(min_value=2, max_value=100_000)


@settings(max_examples=150)
@given(
    count=counts,
    size=unit_sizes,
    pack=pack_counts,
    package=st.sampled_from([Package.EACH, Package.PACK]),
    dimension=st.sampled_from([Dimension.WEIGHT, Dimension.VOLUME]),
)
@example(count=Decimal(999999999999), size=Decimal("999999.9999"), pack=99_999, package=Package.PACK,
         dimension=Dimension.WEIGHT)  # fmt: skip
def test_each_and_pack_net_is_count_times_size_times_pack_exactly(
    count: Decimal, size: Decimal, pack: int, package: Package, dimension: Dimension
) -> None:
    unit = Unit.GRAM if dimension is Dimension.WEIGHT else Unit.LITER
    rule = Counting.of(package.value, Unit.EACH.value, size, unit.value, pack)
    per_unit = pack if package is Package.PACK else 1
    expected = exact_product(count, size, per_unit)
    net = rule.net(count)
    assert net is not None
    assert net.amount == expected
    assert net.dimension is dimension
    assert on_grid(net.amount)
    assert rule.weight(count) == (expected if dimension is Dimension.WEIGHT else None)


@settings(max_examples=100)
@given(a=counts, b=counts, size=unit_sizes, pack=st.integers(min_value=2, max_value=99_999))
def test_net_weight_is_additive_over_splits(a: Decimal, b: Decimal, size: Decimal, pack: int) -> None:
    # Splitting a lot of packs never changes the total net weight.
    rule = Counting(Package.PACK, Dimension.COUNT, Quantity(size, Dimension.WEIGHT), pack)
    left, right, whole = rule.weight(a), rule.weight(b), rule.weight(a + b)
    assert left is not None
    assert right is not None
    assert left + right == whole


def test_net_weight_examples() -> None:
    eighths = Counting.of(Package.EACH.value, Unit.EACH.value, Decimal("3.5000"), Unit.GRAM.value, 0)
    assert eighths.weight(Decimal(12)) == Decimal("42.0000")
    prerolls = Counting.of(Package.PACK.value, Unit.EACH.value, Decimal("0.5000"), Unit.GRAM.value, 10)
    assert prerolls.net(Decimal(3)) == Quantity(Decimal(15), Dimension.WEIGHT)
    # 1 oz jars, rounded once at the unit size: 28.3495 g each.
    jars = Counting.of(Package.EACH.value, Unit.EACH.value, parse("1", Unit.OUNCE).amount, Unit.GRAM.value, 0)
    assert jars.weight(Decimal(1000)) == Decimal("28349.5")
    tinctures = Counting.of(Package.EACH.value, Unit.EACH.value, Decimal("0.0300"), Unit.LITER.value, 0)
    assert tinctures.net(Decimal(100)) == Quantity(Decimal(3), Dimension.VOLUME)
    assert tinctures.weight(Decimal(100)) is None


@pytest.mark.parametrize(
    ("counted", "given_as"),
    list(itertools.product(Dimension, Dimension)),
    ids=lambda d: d.value,
)
def test_check_fits_refuses_other_dimensions(counted: Dimension, given_as: Dimension) -> None:
    rule = Counting(Package.BULK, counted)
    q = Quantity(Decimal(1), given_as)
    if counted is given_as:
        rule.check_fits(q, "quantity")  # no error
        return
    with pytest.raises(UnitMismatch) as info:
        rule.check_fits(q, "inputs[2].quantity")
    assert info.value.reason == "UNIT_MISMATCH"
    assert isinstance(info.value, InvalidArgument)
    assert info.value.metadata == {
        "field": "inputs[2].quantity",
        "expected": counted.value,
        "got": given_as.value,
    }


@pytest.mark.parametrize("package", [Package.EACH, Package.PACK], ids=lambda p: p.name)
@pytest.mark.parametrize(
    "unit", [Unit.GRAM, Unit.KILOGRAM, Unit.LITER, Unit.FLUID_OUNCE], ids=lambda u: u.name
)
def test_each_and_pack_lots_take_only_counts(package: Package, unit: Unit) -> None:
    # A 3.5 g each product is still counted in units: "7 g" of it is a unit mismatch.
    rule = Counting.of(package.value, Unit.EACH.value, Decimal("3.5"), Unit.GRAM.value, 10)
    rule.check_fits(parse("7", Unit.EACH), "quantity")
    with pytest.raises(UnitMismatch):
        rule.check_fits(parse("7", unit), "quantity")
