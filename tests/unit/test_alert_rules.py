"""The alert state machine: thresholds, hold duration, hysteresis, ordering (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedline_server.telemetry.alerts import (
    Closed,
    Comparator,
    Condition,
    Machine,
    Opened,
    Phase,
    convert,
    default_hysteresis,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
GT28 = Condition(Comparator.GT, threshold=28.0, hold=timedelta(minutes=5), hysteresis=0.5)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(machine: Machine, series: list[tuple[float, float]]) -> list[Opened | Closed]:
    out = []
    for t, v in series:
        change = machine.feed(at(t), v)
        if change is not None:
            out.append(change)
    return out


values = st.floats(min_value=-1000, max_value=1000, allow_nan=False)
steps = st.floats(min_value=0.001, max_value=600)


@st.composite
def conditions(draw: st.DrawFn) -> Condition:
    comparator = draw(st.sampled_from(list(Comparator)))
    hold = timedelta(seconds=draw(st.floats(min_value=0, max_value=3600)))
    h = draw(st.floats(min_value=0, max_value=10))
    if comparator is Comparator.OUTSIDE_RANGE:
        lower = draw(st.floats(min_value=-500, max_value=400))
        upper = lower + draw(st.floats(min_value=0.1, max_value=500))
        return Condition(comparator, lower=lower, upper=upper, hold=hold, hysteresis=h)
    return Condition(comparator, threshold=draw(values), hold=hold, hysteresis=h)


@st.composite
def series(draw: st.DrawFn, value: st.SearchStrategy[float] = values) -> list[tuple[float, float]]:
    n = draw(st.integers(min_value=0, max_value=60))
    t, out = 0.0, []
    for _ in range(n):
        t += draw(steps)
        out.append((t, draw(value)))
    return out


# --- examples -----------------------------------------------------------------------------------


def test_opens_after_the_hold_duration_with_the_first_crossing_as_start() -> None:
    m = Machine(GT28)
    assert run(m, [(0, 27.0), (60, 28.5), (120, 29.0), (299, 29.0)]) == []
    assert m.phase is Phase.PENDING
    assert m.feed(at(360), 28.2) == Opened(at(60), at(360), 28.2)
    assert m.phase is Phase.FIRING


def test_an_interruption_restarts_the_hold() -> None:
    m = Machine(GT28)
    assert run(m, [(0, 29.0), (200, 27.9), (250, 29.0), (500, 29.0)]) == []
    assert m.feed(at(550), 29.0) == Opened(at(250), at(550), 29.0)


def test_closes_only_back_inside_by_the_margin() -> None:
    m = Machine(GT28, firing_since=at(0))
    assert run(m, [(10, 27.9), (20, 27.6), (30, 28.4)]) == []
    assert m.feed(at(40), 27.5) == Closed(at(0), at(40), 27.5)
    assert m.phase is Phase.CLEAR


def test_zero_hold_fires_on_the_first_reading_and_zero_margin_closes_on_the_first_inside() -> None:
    m = Machine(Condition(Comparator.LT, threshold=40.0))
    assert m.feed(at(0), 39.9) == Opened(at(0), at(0), 39.9)
    assert m.feed(at(1), 40.0) == Closed(at(0), at(1), 40.0)


def test_outside_range_both_sides_and_margin_capped() -> None:
    cond = Condition(Comparator.OUTSIDE_RANGE, lower=5.5, upper=6.5, hysteresis=10.0)
    assert cond.margin == pytest.approx(0.25)
    assert [cond.meets(v) for v in (5.4, 6.6, 6.0)] == [True, True, False]
    assert [cond.cleared(v) for v in (5.6, 5.75, 6.25, 6.3)] == [False, True, True, False]
    m = Machine(cond)
    assert run(m, [(0, 7.0), (1, 6.4), (2, 6.0), (3, 5.0)]) == [
        Opened(at(0), at(0), 7.0),
        Closed(at(0), at(2), 6.0),
        Opened(at(3), at(3), 5.0),
    ]


def test_a_rules_own_outside_range_margin_is_used_as_given() -> None:
    cond = Condition(Comparator.OUTSIDE_RANGE, lower=18.0, upper=28.0, hysteresis=4.0, default_margin=False)
    assert cond.margin == 4.0  # a default would be capped at a quarter of the range (2.5)
    assert [cond.cleared(v) for v in (21.9, 22.0, 24.0, 24.1)] == [False, True, True, False]


def test_late_and_repeated_readings_are_ignored() -> None:
    m = Machine(Condition(Comparator.GT, threshold=1.0, hold=timedelta(seconds=10)))
    assert m.feed(at(10), 2.0) is None
    assert m.feed(at(5), 0.0) is None  # older: ignored, the pending run is not broken
    assert m.feed(at(10), 0.0) is None  # same time: ignored
    assert m.feed(at(20), 2.0) == Opened(at(10), at(20), 2.0)
    assert m.feed(at(25), float("nan")) is None


def test_adopt_and_reset() -> None:
    m = Machine(GT28)
    m.adopt(at(0))
    assert m.feed(at(1), 20.0) == Closed(at(0), at(1), 20.0)
    m.adopt(at(2))
    m.reset()
    assert m.feed(at(3), 20.0) is None


def test_units() -> None:
    assert convert(100.0, 1, 2) == pytest.approx(212.0)
    assert convert(212.0, 2, 1) == pytest.approx(100.0)
    assert convert(101.3, 6, 11) == pytest.approx(1013.0)
    assert convert(1013.0, 11, 6) == pytest.approx(101.3)
    assert convert(55.0, 3, 3) == 55.0
    assert default_hysteresis(1, 1) == 0.5
    assert default_hysteresis(1, 2) == pytest.approx(0.9)
    assert default_hysteresis(9, 11) == pytest.approx(5.0)
    assert default_hysteresis(2, 3) == 2.0


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(conditions(), series())
def test_changes_alternate_and_open_respects_the_hold(cond: Condition, s: list[tuple[float, float]]) -> None:
    changes = run(Machine(cond), s)
    for i, change in enumerate(changes):
        assert isinstance(change, Opened if i % 2 == 0 else Closed)
        if isinstance(change, Opened):
            assert change.time - change.start_time >= cond.hold
            assert cond.meets(change.value)
        else:
            assert cond.cleared(change.value)
            assert change.start_time == changes[i - 1].start_time


@settings(max_examples=200, deadline=None)
@given(conditions(), st.data())
def test_a_series_that_stays_inside_never_opens(cond: Condition, data: st.DataObject) -> None:
    inside = values.filter(lambda v: not cond.meets(v))
    assert run(Machine(cond), data.draw(series(inside))) == []


@settings(max_examples=200, deadline=None)
@given(conditions(), series())
def test_runs_shorter_than_the_hold_never_open(cond: Condition, s: list[tuple[float, float]]) -> None:
    # Break every run of readings that meet the condition before it lasts the hold duration.
    kept: list[tuple[float, float]] = []
    run_start: float | None = None
    for t, v in s:
        if cond.meets(v):
            run_start = t if run_start is None else run_start
            if timedelta(seconds=t - run_start) >= cond.hold:
                continue  # drop it: the run would have lasted long enough
        else:
            run_start = None
        kept.append((t, v))
    if cond.hold > timedelta(0):
        assert run(Machine(cond), kept) == []


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=-100, max_value=100),
    st.floats(min_value=0.01, max_value=5),
    st.sampled_from([Comparator.GT, Comparator.LT]),
    st.data(),
)
def test_oscillating_within_the_margin_never_flaps(
    threshold: float, h: float, comparator: Comparator, data: st.DataObject
) -> None:
    cond = Condition(comparator, threshold=threshold, hysteresis=h)
    sign = 1 if comparator is Comparator.GT else -1
    # Strictly inside the band (threshold - h, threshold + h) on the resolving side of the margin.
    band = st.floats(min_value=-0.99, max_value=0.99).map(lambda x: threshold + x * h)
    s = [(0.0, threshold + sign * (h + 1))] + [(t + 1, v) for t, v in data.draw(series(band))]
    changes = run(Machine(cond), s)
    assert [type(c) for c in changes] == [Opened]


@settings(max_examples=200, deadline=None)
@given(conditions(), series())
def test_zero_margin_resolves_at_the_first_reading_that_does_not_meet(
    cond: Condition, s: list[tuple[float, float]]
) -> None:
    cond = Condition(cond.comparator, cond.threshold, cond.lower, cond.upper, cond.hold, 0.0)
    m = Machine(cond)
    for t, v in s:
        firing = m.phase is Phase.FIRING
        change = m.feed(at(t), v)
        if firing:
            assert isinstance(change, Closed) == (not cond.meets(v))
