"""More quantity properties: every unit pair, monotonic rounding, equivalent inputs, full-range text.

Complements ``test_quantity.py`` (exact factors, the single half-even rounding, weight sums).
"""

from __future__ import annotations

import itertools
import operator
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from seedline_server.domain.errors import UnitMismatch
from seedline_server.domain.quantity import MAX_AMOUNT, SCALE, Dimension, Quantity, Unit, dimension_of, parse

HALF_STEP = Decimal("0.00005")
# Exact factors to the storage unit, written out independently of the module under test.
FACTORS = {
    Unit.GRAM: Decimal(1),
    Unit.MILLIGRAM: Decimal("0.001"),
    Unit.KILOGRAM: Decimal(1000),
    Unit.POUND: Decimal("453.59237"),
    Unit.OUNCE: Decimal("28.349523125"),
    Unit.LITER: Decimal(1),
    Unit.MILLILITER: Decimal("0.001"),
    Unit.FLUID_OUNCE: Decimal("0.0295735295625"),
    Unit.EACH: Decimal(1),
}
VOLUMES = [Unit.LITER, Unit.MILLILITER, Unit.FLUID_OUNCE]
MEASURED = [u for u in Unit if u is not Unit.EACH]
# The most integer digits a value may have in each unit while its storage amount stays below
# 10^12 (12 integer digits, what the contract's value pattern can carry back out).
MAX_INT_DIGITS = {
    Unit.GRAM: 12,
    Unit.MILLIGRAM: 12,
    Unit.KILOGRAM: 9,
    Unit.POUND: 9,
    Unit.OUNCE: 10,
    Unit.LITER: 12,
    Unit.MILLILITER: 12,
    Unit.FLUID_OUNCE: 12,
}


def contract_values(max_int_digits: int = 12, max_places: int = 9) -> st.SearchStrategy[str]:
    """Strings matching the contract pattern ``^[0-9]{1,12}(\\.[0-9]{1,9})?$``."""
    digits = st.text("0123456789", min_size=1, max_size=max_int_digits)
    places = st.one_of(
        st.just(""), st.text("0123456789", min_size=1, max_size=max_places).map(lambda s: "." + s)
    )
    return st.builds(lambda i, f: i + f, digits, places)


def exact_storage(value: str, unit: Unit) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 100
        return (Decimal(value) * FACTORS[unit]).quantize(SCALE, rounding=ROUND_HALF_EVEN)


def exact_product(value: str, unit: Unit) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 100
        return Decimal(value) * FACTORS[unit]


# ---------------------------------------------------------------------------------------------
# Every pair of units: combine exactly, or UNIT_MISMATCH


@pytest.mark.parametrize(("left", "right"), list(itertools.product(Unit, Unit)), ids=lambda u: u.name)
def test_every_unit_pair_combines_only_within_a_dimension(left: Unit, right: Unit) -> None:
    a, b = parse("3", left), parse("2", right)
    if dimension_of(left) is dimension_of(right):
        assert a + b == Quantity(a.amount + b.amount, dimension_of(left))
        assert a - b == Quantity(a.amount - b.amount, dimension_of(left))
        return
    for combine, x, y in itertools.product([operator.add, operator.sub], [a, b], [a, b]):
        if x is y:
            continue
        with pytest.raises(UnitMismatch) as info:
            combine(x, y)
        assert info.value.reason == "UNIT_MISMATCH"


@pytest.mark.parametrize(("source", "target"), list(itertools.product(Unit, Unit)), ids=lambda u: u.name)
def test_every_unit_pair_converts_only_within_a_dimension(source: Unit, target: Unit) -> None:
    q = parse("3", source)
    if dimension_of(source) is not dimension_of(target):
        with pytest.raises(UnitMismatch):
            q.to(target)
        return
    expressed = q.to(target)
    with localcontext() as ctx:
        ctx.prec = 100
        back = expressed * FACTORS[target]
    # to() divides in the default 28-digit context: exact up to the last of those digits.
    assert abs(back - q.amount) <= q.amount * Decimal("1e-26")


def storable(value: str, unit: Unit) -> bool:
    """Whether ``value`` in ``unit`` is within the largest amount stored (else parse refuses it)."""
    with localcontext() as ctx:
        ctx.prec = 100
        exact = Decimal(value) * FACTORS[unit]
    return exact.quantize(SCALE, rounding=ROUND_HALF_EVEN) <= MAX_AMOUNT


# ---------------------------------------------------------------------------------------------
# Rounding never reorders amounts; notation never changes them


@settings(max_examples=200)
@given(a=contract_values(), b=contract_values(), unit=st.sampled_from(MEASURED))
def test_parse_is_monotonic(a: str, b: str, unit: Unit) -> None:
    low, high = sorted([a, b], key=Decimal)
    assume(storable(high, unit))
    assert parse(low, unit).amount <= parse(high, unit).amount


@settings(max_examples=200)
@given(value=contract_values(), unit=st.sampled_from(list(Unit)))
def test_leading_and_trailing_zeros_do_not_change_the_quantity(value: str, unit: Unit) -> None:
    whole, _, places = value.partition(".")
    padded = whole.rjust(12, "0") + "." + places.ljust(9, "0")
    assume(storable(value, unit))
    try:
        q = parse(value, unit)
    except UnitMismatch:  # a fractional count: refused in either notation
        with pytest.raises(UnitMismatch):
            parse(padded, unit)
        return
    assert parse(padded, unit) == q


@pytest.mark.parametrize("unit", [Unit.GRAM, Unit.LITER], ids=lambda u: u.name)
@settings(max_examples=100)
@given(v=st.decimals(min_value=0, max_value=Decimal("999999999999.9999"), places=4, allow_nan=False))
def test_four_place_values_in_a_storage_unit_are_kept_exactly(unit: Unit, v: Decimal) -> None:
    q = parse(f"{v:f}", unit)
    assert q == Quantity(v, dimension_of(unit))
    assert q.text() == f"{v:.4f}"


# Inputs of up to 9 integer digits and 6 places: scaled by 1000 they stay within the pattern.
scalable = st.decimals(min_value=0, max_value=Decimal("999999999.999999"), places=6, allow_nan=False)


@settings(max_examples=150)
@given(v=scalable)
@example(v=Decimal("0.000050"))  # a tie in every pair
@example(v=Decimal("0.000150"))
def test_the_same_amount_in_related_units_is_the_same_quantity(v: Decimal) -> None:
    thousand = f"{v * 1000:f}"
    assert parse(f"{v:f}", Unit.KILOGRAM) == parse(thousand, Unit.GRAM)
    assert parse(f"{v:f}", Unit.GRAM) == parse(thousand, Unit.MILLIGRAM)
    assert parse(f"{v:f}", Unit.LITER) == parse(thousand, Unit.MILLILITER)


@settings(max_examples=150)
@given(v=st.decimals(min_value=0, max_value=Decimal("9999999999.999999999"), places=9, allow_nan=False))
@example(v=Decimal("0.000000001"))
def test_a_pound_is_sixteen_ounces_whatever_the_amount(v: Decimal) -> None:
    assume(storable(f"{v:f}", Unit.POUND))
    assert parse(f"{v:f}", Unit.POUND) == parse(f"{v * 16:f}", Unit.OUNCE)


# ---------------------------------------------------------------------------------------------
# Text round trip over the whole range the output pattern can carry


in_range = st.sampled_from(MEASURED).flatmap(
    lambda u: st.tuples(contract_values(max_int_digits=MAX_INT_DIGITS[u]), st.just(u))
)


@settings(max_examples=150)
@given(item=in_range)
@example(item=("999999999.999999999", Unit.POUND))  # 453592370000.0000 g
@example(item=("9999999999.999999999", Unit.OUNCE))  # 283495231250.0000 g
@example(item=("999999999999.99994", Unit.GRAM))  # the largest gram value below 13 digits
def test_text_round_trips_over_the_full_range(item: tuple[str, Unit]) -> None:
    value, unit = item
    q = parse(value, unit)
    assume(q.amount < 10**12)  # only 999999999999.99995 g (or l) and up round to 13 digits
    text = q.text()
    whole, places = text.split(".")
    assert 1 <= len(whole) <= 12
    assert len(places) == 4
    assert parse(text, q.unit) == q


# ---------------------------------------------------------------------------------------------
# Counts


@settings(max_examples=150)
@given(n=st.integers(min_value=0, max_value=10**12 - 1), zeros=st.integers(min_value=0, max_value=9))
def test_whole_counts_in_any_notation_are_kept(n: int, zeros: int) -> None:
    value = str(n) + ("." + "0" * zeros if zeros else "")
    q = parse(value, Unit.EACH)
    assert q == Quantity(Decimal(n), Dimension.COUNT)
    assert q.text() == str(n)


@settings(max_examples=150)
@given(
    n=st.integers(min_value=0, max_value=10**12 - 1),
    places=st.text("0123456789", min_size=1, max_size=9).filter(lambda s: s.strip("0")),
)
def test_any_fraction_of_a_count_is_a_unit_mismatch(n: int, places: str) -> None:
    with pytest.raises(UnitMismatch):
        parse(f"{n}.{places}", Unit.EACH)


# ---------------------------------------------------------------------------------------------
# Volumes and counts add as exactly as weights


@settings(max_examples=100)
@given(
    items=st.lists(
        st.tuples(contract_values(max_int_digits=9), st.sampled_from(VOLUMES)), min_size=1, max_size=30
    )
)
def test_volume_sums_are_the_sums_of_terms_rounded_once(items: list[tuple[str, Unit]]) -> None:
    total = parse("0", Unit.LITER)
    for value, unit in items:
        total = total + parse(value, unit)
    assert total.dimension is Dimension.VOLUME
    assert total.amount == sum((exact_storage(v, u) for v, u in items), Decimal(0))
    with localcontext() as ctx:
        ctx.prec = 100
        exact = sum((exact_product(v, u) for v, u in items), Decimal(0))
        assert abs(total.amount - exact) <= HALF_STEP * len(items)
    # Taking the terms back out leaves exactly nothing.
    for value, unit in items:
        total = total - parse(value, unit)
    assert total == Quantity(Decimal(0), Dimension.VOLUME)


@settings(max_examples=100)
@given(ns=st.lists(st.integers(min_value=0, max_value=10**12 - 1), min_size=1, max_size=30))
def test_count_sums_are_exact_whole_numbers(ns: list[int]) -> None:
    total = parse("0", Unit.EACH)
    for n in ns:
        total = total + parse(str(n), Unit.EACH)
    assert total == Quantity(Decimal(sum(ns)), Dimension.COUNT)
    assert total.text() == str(sum(ns))
