"""Exact quantities: parsing, exact conversion factors, the one half-even rounding, arithmetic."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from seedline.type.v1 import quantity_pb2

from seedline_server.domain.errors import InvalidArgument, UnitMismatch
from seedline_server.domain.quantity import (
    MAX_AMOUNT,
    SCALE,
    STORAGE_UNIT,
    Dimension,
    Quantity,
    Unit,
    dimension_of,
    parse,
    round_storage,
)

HALF_STEP = Decimal("0.00005")

# Exact factors to the storage unit, written out independently of the module under test.
FACTORS = {
    Unit.GRAM: Decimal(1),
    Unit.MILLIGRAM: Decimal("0.001"),
    Unit.KILOGRAM: Decimal(1000),
    Unit.POUND: Decimal("453.59237"),
    Unit.OUNCE: Decimal("453.59237") / 16,  # 28.349523125 exactly
    Unit.LITER: Decimal(1),
    Unit.MILLILITER: Decimal("0.001"),
    Unit.FLUID_OUNCE: Decimal("0.0295735295625"),
}
WEIGHTS = [Unit.GRAM, Unit.MILLIGRAM, Unit.KILOGRAM, Unit.POUND, Unit.OUNCE]
VOLUMES = [Unit.LITER, Unit.MILLILITER, Unit.FLUID_OUNCE]
MEASURED = WEIGHTS + VOLUMES


def exact_storage(value: str, unit: Unit) -> Decimal:
    """The reference: value x factor computed without any intermediate rounding, rounded once."""
    with localcontext() as ctx:
        ctx.prec = 100
        return (Decimal(value) * FACTORS[unit]).quantize(SCALE, rounding=ROUND_HALF_EVEN)


def exact_product(value: str, unit: Unit) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 100
        return Decimal(value) * FACTORS[unit]


def contract_values(max_int_digits: int = 12, max_places: int = 9) -> st.SearchStrategy[str]:
    """Strings matching the contract pattern ``^[0-9]{1,12}(\\.[0-9]{1,9})?$``."""
    digits = st.text("0123456789", min_size=1, max_size=max_int_digits)
    places = st.one_of(
        st.just(""), st.text("0123456789", min_size=1, max_size=max_places).map(lambda s: "." + s)
    )
    return st.builds(lambda i, f: i + f, digits, places)


def grams_4dp() -> st.SearchStrategy[Decimal]:
    """Non-negative decimals with at most 4 places and at most 12 integer digits."""
    return st.builds(
        lambda units, places: Decimal(units).scaleb(-places),
        st.integers(min_value=0, max_value=10**12 - 1),
        st.integers(min_value=0, max_value=4),
    )


# ---------------------------------------------------------------------------------------------
# Units and dimensions


def test_unit_numbers_match_the_contract_enum() -> None:
    for unit in Unit:
        assert quantity_pb2.Unit.Value(f"UNIT_{unit.name}") == unit.value


@pytest.mark.parametrize(
    ("unit", "dimension"),
    [(u, Dimension.WEIGHT) for u in WEIGHTS]
    + [(u, Dimension.VOLUME) for u in VOLUMES]
    + [(Unit.EACH, Dimension.COUNT)],
)
def test_dimension_of(unit: Unit, dimension: Dimension) -> None:
    assert dimension_of(unit) is dimension


def test_storage_units() -> None:
    assert STORAGE_UNIT == {
        Dimension.WEIGHT: Unit.GRAM,
        Dimension.VOLUME: Unit.LITER,
        Dimension.COUNT: Unit.EACH,
    }
    assert Quantity(Decimal(1), Dimension.WEIGHT).unit is Unit.GRAM
    assert Quantity(Decimal(1), Dimension.VOLUME).unit is Unit.LITER
    assert Quantity(Decimal(1), Dimension.COUNT).unit is Unit.EACH


# ---------------------------------------------------------------------------------------------
# (a) Conversion round trips


@settings(max_examples=200)
@given(grams_4dp())
def test_grams_with_four_places_round_trip_exactly(v: Decimal) -> None:
    q = parse(str(v), Unit.GRAM)
    assert q.amount == v
    assert q.dimension is Dimension.WEIGHT
    assert q.to(Unit.GRAM) == v


@settings(max_examples=200)
@given(value=contract_values(), unit=st.sampled_from(MEASURED))
def test_conversion_error_is_at_most_half_a_storage_step(value: str, unit: Unit) -> None:
    if exact_storage(value, unit) > MAX_AMOUNT:
        with pytest.raises(ValueError, match="largest amount stored"):
            parse(value, unit)
        return
    q = parse(value, unit)
    assert q.dimension is dimension_of(unit)
    # Stored with exactly 4 places.
    assert q.amount.as_tuple().exponent == -4
    # Re-expressed in the storage unit, the round trip is off by at most half a step (0.00005 g or l).
    with localcontext() as ctx:
        ctx.prec = 100
        error_in_storage = abs(q.to(unit) - Decimal(value)) * FACTORS[unit]
    # to() divides in the default 28-digit context; allow for that last-digit noise only.
    assert error_in_storage <= HALF_STEP + Decimal("1e-12")


@settings(max_examples=200)
@given(value=contract_values(), unit=st.sampled_from(MEASURED))
@example(value="999999999896.835396173", unit=Unit.POUND)  # exact product needs > 28 digits
@example(value="999999999999.999999999", unit=Unit.FLUID_OUNCE)
@example(value="999999999999.999999999", unit=Unit.OUNCE)
def test_parse_equals_exact_product_rounded_once(value: str, unit: Unit) -> None:
    expected = exact_storage(value, unit)
    if expected > MAX_AMOUNT:  # beyond what a Quantity can carry back: refused, never truncated
        with pytest.raises(ValueError, match="largest amount stored"):
            parse(value, unit)
        return
    assert parse(value, unit).amount == expected


@pytest.mark.parametrize(
    ("value", "unit", "grams_or_liters"),
    [
        ("1", Unit.POUND, "453.5924"),  # 453.59237 exactly, then rounded
        ("1", Unit.OUNCE, "28.3495"),  # 28.349523125
        ("16", Unit.OUNCE, "453.5924"),  # 16 oz = 1 lb exactly
        ("1", Unit.KILOGRAM, "1000.0000"),
        ("1", Unit.MILLIGRAM, "0.0010"),
        ("1", Unit.LITER, "1.0000"),
        ("1", Unit.MILLILITER, "0.0010"),
        ("1", Unit.FLUID_OUNCE, "0.0296"),  # 0.0295735295625
        ("128", Unit.FLUID_OUNCE, "3.7854"),  # 1 US gallon = 3.785411784 l
        ("100000", Unit.POUND, "45359237.0000"),  # exact factor: no drift at scale
        ("2.204622622", Unit.POUND, "1000.0000"),
    ],
)
def test_exact_factors(value: str, unit: Unit, grams_or_liters: str) -> None:
    q = parse(value, unit)
    assert q.amount == Decimal(grams_or_liters)
    assert q.text() == grams_or_liters


def test_pound_is_exactly_453_59237_grams_before_rounding() -> None:
    # 100000 lb carries all five places of the factor: any approximation of it would show.
    assert parse("100000", Unit.POUND).amount == Decimal("45359237")
    assert parse("1", Unit.POUND).amount == Decimal("453.5924")
    assert parse("1", Unit.POUND).to(Unit.POUND) == Decimal("453.5924") / Decimal("453.59237")


def test_to_expresses_in_other_units_of_the_same_dimension() -> None:
    q = parse("1", Unit.KILOGRAM)
    assert q.to(Unit.GRAM) == 1000
    assert q.to(Unit.MILLIGRAM) == 1_000_000
    assert q.to(Unit.KILOGRAM) == 1
    assert parse("1", Unit.LITER).to(Unit.MILLILITER) == 1000


# ---------------------------------------------------------------------------------------------
# (b) One half-even rounding to 4 places


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("0.00005", Unit.GRAM, "0.0000"),  # tie, 0 is even
        ("0.00015", Unit.GRAM, "0.0002"),  # tie, 2 is even
        ("0.00025", Unit.GRAM, "0.0002"),
        ("0.00035", Unit.GRAM, "0.0004"),
        ("1.00005", Unit.GRAM, "1.0000"),
        ("0.000050001", Unit.GRAM, "0.0001"),  # just above the tie
        ("0.000149999", Unit.GRAM, "0.0001"),  # just below the tie
        ("0.000149", Unit.GRAM, "0.0001"),  # rounding twice (5 then 4 places) would give 0.0002
        ("0.00004999", Unit.GRAM, "0.0000"),
        ("0.05", Unit.MILLIGRAM, "0.0000"),  # 0.00005 g
        ("0.15", Unit.MILLIGRAM, "0.0002"),  # 0.00015 g
        ("0.25", Unit.MILLIGRAM, "0.0002"),
        ("0.00000005", Unit.KILOGRAM, "0.0000"),
        ("0.00000015", Unit.KILOGRAM, "0.0002"),
        ("0.05", Unit.MILLILITER, "0.0000"),
        ("0.15", Unit.MILLILITER, "0.0002"),
        ("0.00005", Unit.LITER, "0.0000"),
        ("0.00015", Unit.LITER, "0.0002"),
    ],
)
def test_rounding_is_half_even_to_four_places(value: str, unit: Unit, expected: str) -> None:
    assert parse(value, unit).amount == Decimal(expected)
    assert parse(value, unit).text() == expected


def test_double_rounding_does_not_happen_for_large_pound_values() -> None:
    # 999999999896.835396173 lb = 453592369953205.32285000000001... g exactly: multiplying in a
    # 28-digit context would round it to an exact tie and then half-even down. It is now above
    # the largest amount stored, so it is refused outright; the largest storable pound value
    # still converts exactly.
    with pytest.raises(ValueError, match="largest amount stored"):
        parse("999999999896.835396173", Unit.POUND)
    assert parse("2204622621.848775586", Unit.POUND).amount == exact_storage(
        "2204622621.848775586", Unit.POUND
    )
    assert parse("2204622621.848775586", Unit.POUND).amount == MAX_AMOUNT


@settings(max_examples=200)
@given(st.decimals(min_value=-(10**9), max_value=10**9, places=9, allow_nan=False))
def test_round_storage_is_half_even_quantize_and_idempotent(d: Decimal) -> None:
    rounded = round_storage(d)
    assert rounded == d.quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)
    assert abs(rounded - d) <= HALF_STEP
    assert round_storage(rounded) == rounded


# ---------------------------------------------------------------------------------------------
# (c) Arithmetic


quantities = st.builds(parse, contract_values(max_int_digits=9), st.sampled_from(WEIGHTS))


@settings(max_examples=200)
@given(quantities, quantities, quantities)
def test_addition_is_exact_commutative_and_associative(a: Quantity, b: Quantity, c: Quantity) -> None:
    assert (a + b).amount == a.amount + b.amount
    assert (a + b) == (b + a)
    assert (a + b) + c == a + (b + c)
    assert (a + b) - b == a
    assert (a - a).amount == 0
    assert (a + b).dimension is Dimension.WEIGHT
    # Sums stay on the 0.0001 grid: no rounding is needed, none happens.
    assert (a + b + c).amount == round_storage((a + b + c).amount)


@settings(max_examples=100)
@given(
    st.lists(st.tuples(contract_values(max_int_digits=9), st.sampled_from(WEIGHTS)), min_size=1, max_size=30)
)
def test_sums_of_parsed_quantities_drift_at_most_half_a_step_per_term(items: list[tuple[str, Unit]]) -> None:
    total = parse("0", Unit.GRAM)
    for value, unit in items:
        total = total + parse(value, unit)
    exact = sum((exact_product(v, u) for v, u in items), Decimal(0))
    n = len(items)
    assert abs(total.amount - exact) <= HALF_STEP * n
    # Every term is rounded once, at parse; the sum is exactly the sum of those rounded terms.
    assert total.amount == sum((exact_storage(v, u) for v, u in items), Decimal(0))


def test_subtraction_can_go_below_zero_exactly() -> None:
    a, b = parse("1", Unit.GRAM), parse("1.0001", Unit.GRAM)
    assert (a - b).amount == Decimal("-0.0001")
    assert (a - b).text() == "-0.0001"


# ---------------------------------------------------------------------------------------------
# (d) Dimension mismatches


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("1", Unit.GRAM), ("1", Unit.LITER)),
        (("1", Unit.POUND), ("1", Unit.FLUID_OUNCE)),
        (("1", Unit.MILLILITER), ("1", Unit.GRAM)),
        (("1", Unit.GRAM), ("1", Unit.EACH)),
        (("1", Unit.EACH), ("1", Unit.LITER)),
    ],
)
def test_combining_different_dimensions_raises_unit_mismatch(
    left: tuple[str, Unit], right: tuple[str, Unit]
) -> None:
    a, b = parse(*left), parse(*right)
    with pytest.raises(UnitMismatch):
        _ = a + b
    with pytest.raises(UnitMismatch):
        _ = a - b
    with pytest.raises(UnitMismatch):
        _ = b + a


@pytest.mark.parametrize(
    ("value", "unit", "target"),
    [
        ("1", Unit.GRAM, Unit.LITER),
        ("1", Unit.GRAM, Unit.FLUID_OUNCE),
        ("1", Unit.GRAM, Unit.EACH),
        ("1", Unit.LITER, Unit.GRAM),
        ("1", Unit.MILLILITER, Unit.POUND),
        ("1", Unit.EACH, Unit.GRAM),
    ],
)
def test_to_another_dimension_raises_unit_mismatch(value: str, unit: Unit, target: Unit) -> None:
    with pytest.raises(UnitMismatch) as info:
        parse(value, unit).to(target)
    assert info.value.reason == "UNIT_MISMATCH"
    assert isinstance(info.value, InvalidArgument)  # so the API maps it to INVALID_ARGUMENT


# ---------------------------------------------------------------------------------------------
# (e) Counts, malformed values, text()


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("0", 0), ("3.0", 3), ("3.000000000", 3)])
def test_whole_counts_are_accepted(value: str, expected: int) -> None:
    q = parse(value, Unit.EACH)
    assert q.amount == expected
    assert q.dimension is Dimension.COUNT
    assert q.unit is Unit.EACH
    assert q.text() == str(expected)


@pytest.mark.parametrize("value", ["2.5", "0.1", "1.000000001", "999999999999.5"])
def test_fractional_counts_raise_unit_mismatch(value: str) -> None:
    with pytest.raises(UnitMismatch):
        parse(value, Unit.EACH)


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "+1",
        "1e3",
        "1E3",
        "1,000",
        "1_000",
        "",
        " 1",
        "1 ",
        "1\n",  # a trailing newline must not slip past the pattern's `$`
        ".5",
        "5.",
        "1.2.3",
        "NaN",
        "Infinity",
        "0x10",
        "\u0661",  # Arabic-Indic digit one: Decimal() accepts it, the contract does not
        "1234567890123",  # 13 integer digits
        "1.1234567890",  # 10 decimal places
    ],
)
@pytest.mark.parametrize("unit", [Unit.GRAM, Unit.POUND, Unit.LITER, Unit.EACH])
def test_malformed_values_raise_value_error(value: str, unit: Unit) -> None:
    with pytest.raises(ValueError, match="plain decimal"):
        parse(value, unit)


def test_largest_storable_values_are_accepted_and_larger_ones_refused() -> None:
    # Every stored amount must fit the contract's value pattern (12 integer digits) on the way out.
    assert parse("999999999999.9999", Unit.GRAM).amount == MAX_AMOUNT
    assert parse("999999999999", Unit.EACH).amount == Decimal("999999999999")
    assert parse("999999999.9999999", Unit.KILOGRAM).amount == MAX_AMOUNT
    for value, unit in [
        ("999999999999.99995", Unit.GRAM),  # rounds up to 10^12
        ("999999999999.9999", Unit.KILOGRAM),
        ("1000000000", Unit.KILOGRAM),
        ("999999999999.999999999", Unit.LITER),
    ]:
        with pytest.raises(ValueError, match="largest amount stored"):
            parse(value, unit)


@pytest.mark.parametrize(
    ("q", "text"),
    [
        (Quantity(Decimal(1), Dimension.WEIGHT), "1.0000"),
        (Quantity(Decimal("0"), Dimension.VOLUME), "0.0000"),
        (Quantity(Decimal("1E+3"), Dimension.WEIGHT), "1000.0000"),  # never scientific notation
        (Quantity(Decimal("12.5"), Dimension.VOLUME), "12.5000"),
        (Quantity(Decimal("7"), Dimension.COUNT), "7"),
        (Quantity(Decimal("7.0000"), Dimension.COUNT), "7"),
        (Quantity(Decimal("1E+6"), Dimension.COUNT), "1000000"),
    ],
)
def test_text_formats_four_places_and_whole_counts(q: Quantity, text: str) -> None:
    assert q.text() == text


def test_text_of_parsed_large_quantity_is_fixed_point() -> None:
    assert parse("1000000", Unit.KILOGRAM).text() == "1000000000.0000"
    assert parse("0.0001", Unit.GRAM).text() == "0.0001"


@settings(max_examples=200)
@given(value=contract_values(max_int_digits=8), unit=st.sampled_from(MEASURED))
def test_text_round_trips_through_parse_in_storage_unit(value: str, unit: Unit) -> None:
    q = parse(value, unit)
    text = q.text()
    assert "E" not in text
    assert "e" not in text
    assert len(text.split(".")[1]) == 4
    assert parse(text, q.unit) == q
