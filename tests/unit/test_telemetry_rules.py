"""Pure telemetry rules: physical ranges and units, roll-up arithmetic, reading parsing, feeds."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from seedline.telemetry.v1 import telemetry_pb2 as pb

from seedline_server.api.telemetry import parse_readings
from seedline_server.domain.errors import InvalidArgument
from seedline_server.store.telemetry_models import include_name
from seedline_server.telemetry import ingest, queries, ranges, rollup, sensors
from seedline_server.telemetry.ingest import CommittedReading
from seedline_server.telemetry.watch import Interest, ReadingFeed

LIC = "01JD" + "0" * 22
SENSOR = "01JS" + "0" * 22
# The contract's CEL list of (metric * 100 + unit) pairs that fit.
CONTRACT_FITS = {
    101,
    102,
    203,
    304,
    405,
    506,
    607,
    708,
    803,
    906,
    911,
    1009,
    1101,
    1102,
    1201,
    1202,
    1307,
    1408,
    1510,
}


def test_units_of_metrics_match_the_contract() -> None:
    pairs = {m * 100 + u for m in range(0, 17) for u in range(0, 13) if ranges.fits(m, u)}
    assert pairs == CONTRACT_FITS
    assert ranges.default_unit(1) == ranges.CELSIUS
    assert ranges.default_unit(9) == ranges.KPA


@pytest.mark.parametrize(
    ("metric", "unit", "value", "reason"),
    [
        (1, ranges.CELSIUS, 150.0, None),
        (1, ranges.CELSIUS, 150.01, ranges.OUT_OF_RANGE),
        (1, ranges.CELSIUS, -50.0, None),
        (1, ranges.FAHRENHEIT, 302.0, None),
        (1, ranges.FAHRENHEIT, -58.5, ranges.OUT_OF_RANGE),
        (2, ranges.PERCENT, 100.0, None),
        (2, ranges.PERCENT, -0.1, ranges.OUT_OF_RANGE),
        (3, ranges.PPM, 100_001.0, ranges.OUT_OF_RANGE),
        (4, ranges.UMOL_PER_M2_S, 5000.0, None),
        (5, ranges.KPA, 10.5, ranges.OUT_OF_RANGE),
        (6, ranges.MS_PER_CM, 50.0, None),
        (7, ranges.PH, 14.01, ranges.OUT_OF_RANGE),
        (7, ranges.PH, 0.0, None),
        (8, ranges.PERCENT, 101.0, ranges.OUT_OF_RANGE),
        (9, ranges.KPA, 49.0, ranges.OUT_OF_RANGE),
        (9, ranges.HPA, 1013.0, None),
        (10, ranges.MOL_PER_M2_DAY, 100.0, None),
        (15, ranges.MG_PER_L, 51.0, ranges.OUT_OF_RANGE),
        (1, ranges.PERCENT, 20.0, ranges.WRONG_UNIT),
        (2, ranges.PERCENT, math.nan, ranges.NON_FINITE),
        (2, ranges.PERCENT, -math.inf, ranges.NON_FINITE),
    ],
)
def test_physical_ranges(metric: int, unit: int, value: float, reason: int | None) -> None:
    problem = ranges.check(metric, unit, value)
    assert (problem.reason if problem else None) == reason


def test_out_of_range_message_names_value_range_and_unit() -> None:
    problem = ranges.check(1, ranges.CELSIUS, 212.0)
    assert problem is not None
    assert problem.message == "value 212 outside -50..150 CELSIUS"


@given(st.floats(min_value=-58, max_value=302))
def test_fahrenheit_round_trips_and_keeps_the_range(f: float) -> None:
    c = ranges.convert(f, ranges.FAHRENHEIT, ranges.CELSIUS)
    assert ranges.convert(c, ranges.CELSIUS, ranges.FAHRENHEIT) == pytest.approx(f, abs=1e-9)
    assert -50 - 1e-9 <= c <= 150 + 1e-9


def test_conversions() -> None:
    assert ranges.convert(212.0, ranges.FAHRENHEIT, ranges.CELSIUS) == pytest.approx(100.0)
    assert ranges.convert(1013.0, ranges.HPA, ranges.KPA) == pytest.approx(101.3)
    assert ranges.convert(5.0, ranges.PH, ranges.PH) == 5.0
    with pytest.raises(KeyError):
        ranges.affine(ranges.PH, ranges.CELSIUS)


rows_strategy = st.lists(
    st.tuples(
        st.integers(1, 4),
        st.floats(min_value=1.7e9, max_value=1.7e9 + 3 * 86400, allow_nan=False),
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    ),
    max_size=200,
)


@given(rows_strategy, st.integers(0, 200), st.sampled_from([rollup.MINUTE, rollup.HOUR]))
def test_folding_in_batches_and_merging_equals_folding_at_once(
    rows: list[tuple[int, float, float]], cut: int, width: int
) -> None:
    whole = rollup.fold(rows, width)
    as_writer = rollup.fold_rows(
        [
            ([(k, None, v) for k, _, v in rows[:cut]], [s for _, s, _ in rows[:cut]]),
            ([(k, None, v) for k, _, v in rows[cut:]], [s for _, s, _ in rows[cut:]]),
        ],
        width,
    )
    assert as_writer.keys() == whole.keys()
    assert all(as_writer[k][:2] == whole[k][:2] and as_writer[k][3] == whole[k][3] for k in whole)
    left, right = rollup.fold(rows[:cut], width), rollup.fold(rows[cut:], width)
    merged = dict(left)
    for key, bucket in right.items():
        merged[key] = rollup.merge(merged[key], bucket) if key in merged else bucket
    assert merged.keys() == whole.keys()
    for key, (lo, hi, total, n) in whole.items():
        m = merged[key]
        assert (m[0], m[1], m[3]) == (lo, hi, n)
        assert m[2] == pytest.approx(total, rel=1e-9, abs=1e-6)
        values = [v for k, s, v in rows if (k, int(s // width) * width) == key]
        assert (lo, hi, n) == (min(values), max(values), len(values))


@given(rows_strategy)
def test_hours_from_minutes_equal_hours_from_readings(rows: list[tuple[int, float, float]]) -> None:
    direct = rollup.fold(rows, rollup.HOUR)
    coarse = rollup.coarsen(rollup.fold(rows, rollup.MINUTE), rollup.HOUR)
    assert coarse.keys() == direct.keys()
    for key, (lo, hi, total, n) in direct.items():
        assert (coarse[key][0], coarse[key][1], coarse[key][3]) == (lo, hi, n)
        assert coarse[key][2] == pytest.approx(total, rel=1e-9, abs=1e-6)


def test_rollup_columns_are_sorted_and_timestamped() -> None:
    buckets = rollup.fold([(2, 120.5, 1.0), (1, 61.0, 3.0), (1, 59.0, 2.0), (1, 65.0, 5.0)], rollup.MINUTE)
    keys, starts, mins, maxs, sums, counts = rollup.columns(buckets)
    assert keys == [1, 1, 2]
    assert starts == [datetime.fromtimestamp(s, UTC) for s in (0, 60, 120)]
    assert (mins, maxs, sums, counts) == ([2.0, 3.0, 1.0], [2.0, 5.0, 1.0], [2.0, 8.0, 1.0], [1, 2, 1])


def test_parse_readings_refuses_what_cannot_be_validated() -> None:
    t = datetime(2026, 12, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    good_name = pb.Reading(sensor=f"licenses/{LIC}/sensors/{SENSOR}", value=1.0, unit=1)
    good_name.observe_time.FromDatetime(t)
    good_id = pb.Reading(sensor_id=SENSOR, value=2.0, unit=1)
    good_id.observe_time.FromDatetime(t)
    other = pb.Reading(sensor=f"licenses/01JE{'0' * 22}/sensors/{SENSOR}", value=1.0, unit=1)
    other.observe_time.FromDatetime(t)
    no_time = pb.Reading(sensor_id=SENSOR, value=1.0, unit=1)
    no_unit = pb.Reading(sensor_id=SENSOR, value=1.0)
    no_unit.observe_time.FromDatetime(t)
    no_sensor = pb.Reading(value=1.0, unit=1)
    bad_id = pb.Reading(sensor_id="nope", value=1.0, unit=1)
    parsed, where, refused = parse_readings(
        LIC, [good_name, other, no_time, good_id, no_unit, no_sensor, bad_id]
    )
    assert (parsed.sensor_ids, parsed.times, parsed.values) == ([SENSOR] * 2, [t, t], [1.0, 2.0])
    assert parsed.seconds == [t.timestamp()] * 2
    assert where == [0, 3]
    assert [(r.index, r.reason) for r in refused] == [
        (1, ingest.OTHER_LICENSE),
        (2, ingest.MALFORMED),
        (4, ingest.MALFORMED),
        (5, ingest.MALFORMED),
        (6, ingest.MALFORMED),
    ]


def test_sensor_filter() -> None:
    metrics, statuses = {"METRIC_TEMPERATURE": 1}, {"SENSOR_STATUS_STALE": 3}
    assert sensors.parse_filter("", metrics, statuses) == []
    assert sensors.parse_filter(
        'section = "licenses/A/sections/B" AND metric != METRIC_TEMPERATURE AND status = SENSOR_STATUS_STALE',
        metrics,
        statuses,
    ) == [("section", "=", "licenses/A/sections/B"), ("metric", "!=", 1), ("status", "=", 3)]
    with pytest.raises(InvalidArgument):
        sensors.parse_filter("color = red", metrics, statuses)
    with pytest.raises(InvalidArgument):
        sensors.parse_filter("metric = METRIC_NOPE", metrics, statuses)


def test_whole_hour_zones() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    assert queries.whole_hours(ZoneInfo("America/Denver"), start, start + timedelta(days=60))
    assert not queries.whole_hours(ZoneInfo("Asia/Kolkata"), start, start + timedelta(days=2))
    with pytest.raises(InvalidArgument):
        queries.zone("Mars/Olympus")


def test_partitions_are_left_out_of_autogenerate() -> None:
    assert not include_name("readings_p20261206", "table", {})
    assert include_name("readings", "table", {})
    assert not include_name(
        "readings_p20261206_observe_time_idx", "index", {"table_name": "readings_p20261206"}
    )
    assert include_name("ix_readings_time_brin", "index", {"table_name": "readings"})


async def test_a_slow_watcher_loses_readings_not_memory() -> None:
    feed = ReadingFeed(max_queued=2)
    t = datetime(2026, 12, 1, tzinfo=UTC)
    mine = feed.open(Interest(LIC, sensor_ids=frozenset({SENSOR})))
    other = feed.open(Interest("01JE" + "0" * 22))
    reading = CommittedReading(SENSOR, LIC, "SEC", 1, 1, t, 20.0)
    elsewhere = CommittedReading("01JX" + "0" * 22, LIC, "SEC", 1, 1, t, 20.0)
    for _ in range(5):
        feed([reading, elsewhere])
    assert mine.queue.qsize() == 2
    assert mine.dropped == 3
    assert await asyncio.wait_for(mine.queue.get(), 1) == [reading]
    assert other.queue.empty()
    feed.close(mine)
    feed.close(other)
    assert feed.watchers == 0
