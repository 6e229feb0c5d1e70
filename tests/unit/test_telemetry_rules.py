"""Pure telemetry rules: physical ranges and units, roll-up arithmetic, reading parsing, feeds."""

from __future__ import annotations

import asyncio
import math
import struct
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from seedline.telemetry.v1 import telemetry_pb2 as pb

from seedline_server.api.telemetry import parse_columns, parse_readings
from seedline_server.domain.errors import InvalidArgument
from seedline_server.store.telemetry_models import include_name
from seedline_server.telemetry import ingest, queries, ranges, rollup, sensors, writer
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
        st.integers(1_700_000_000_000_000, 1_700_000_000_000_000 + 3 * 86_400_000_000),
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    ),
    max_size=200,
)
Row = tuple[int, int, float]


def reference(rows: list[Row], width: int) -> dict[tuple[int, int], list[float]]:
    """The roll-up by definition: one Python loop, bucket by bucket."""
    out: dict[tuple[int, int], list[float]] = {}
    for key, micros, value in rows:
        bucket = out.setdefault((key, micros // 1_000_000 // width * width), [])
        bucket.append(value)
    return {k: [min(v), max(v), math.fsum(v), len(v)] for k, v in out.items()}


def fold(rows: list[Row], width: int) -> rollup.Buckets:
    return rollup.fold(
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64),
        width,
    )


def as_dict(b: rollup.Buckets) -> dict[tuple[int, int], list[float]]:
    keys, starts, mins, maxs, sums, counts = b.columns()
    return {
        (k, s): [lo, hi, t, n]
        for k, s, lo, hi, t, n in zip(keys, starts, mins, maxs, sums, counts, strict=True)
    }


def assert_same(got: dict[tuple[int, int], list[float]], want: dict[tuple[int, int], list[float]]) -> None:
    assert got.keys() == want.keys()
    for key, (lo, hi, total, n) in want.items():
        assert (got[key][0], got[key][1], got[key][3]) == (lo, hi, n)
        assert got[key][2] == pytest.approx(total, rel=1e-9, abs=1e-6)


@given(rows_strategy, st.integers(0, 200), st.sampled_from([rollup.MINUTE, rollup.HOUR]))
def test_fold_is_the_definition_and_batches_merge_like_the_upsert(
    rows: list[Row], cut: int, width: int
) -> None:
    whole = fold(rows, width)
    assert_same(as_dict(whole), reference(rows, width))
    keys = list(zip(whole.keys.tolist(), whole.starts.tolist(), strict=True))
    assert keys == sorted(keys)  # the upserts' lock order
    # Two batches upserted one after the other (LEAST, GREATEST, +, +) equal one batch.
    merged = as_dict(fold(rows[:cut], width))
    for key, (lo, hi, total, n) in as_dict(fold(rows[cut:], width)).items():
        have = merged.get(key)
        merged[key] = (
            [lo, hi, total, n]
            if have is None
            else [min(have[0], lo), max(have[1], hi), have[2] + total, have[3] + n]
        )
    assert_same(merged, reference(rows, width))


@given(rows_strategy)
def test_hours_from_minutes_equal_hours_from_readings(rows: list[Row]) -> None:
    assert_same(as_dict(rollup.coarsen(fold(rows, rollup.MINUTE), rollup.HOUR)), reference(rows, rollup.HOUR))


@given(rows_strategy)
def test_newest_is_each_sensors_latest_time(rows: list[Row]) -> None:
    keys, times = rollup.newest(
        np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.int64)
    )
    want: dict[int, int] = {}
    for key, micros, _ in rows:
        want[key] = max(want.get(key, micros), micros)
    assert keys == sorted(want)
    assert times == [want[k] for k in keys]


def test_rollup_columns_are_sorted_epoch_seconds() -> None:
    buckets = fold(
        [(2, 120_500_000, 1.0), (1, 61_000_000, 3.0), (1, 59_000_000, 2.0), (1, 65_000_000, 5.0)], 60
    )
    keys, starts, mins, maxs, sums, counts = buckets.columns()
    assert keys == [1, 1, 2]
    assert starts == [0, 60, 120]
    assert (mins, maxs, sums, counts) == ([2.0, 3.0, 1.0], [2.0, 5.0, 1.0], [2.0, 8.0, 1.0], [1, 2, 1])


def test_copy_data_is_postgres_binary_copy() -> None:
    data = writer.copy_data(
        np.array([7], dtype=np.int64), np.array([946_684_800_000_001], dtype=np.int64), np.array([1.5])
    )
    header = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
    row = (3).to_bytes(2, "big") + b"".join(
        (8).to_bytes(4, "big") + v
        for v in ((7).to_bytes(8, "big"), (1).to_bytes(8, "big"), struct.pack(">d", 1.5))
    )
    assert data == header + row + b"\xff\xff"


def test_parse_readings_refuses_what_cannot_be_validated() -> None:
    t = datetime(2026, 12, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    us = int(t.timestamp()) * 1_000_000 + 250_000
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
    assert parsed.sensor_ids == [SENSOR]
    assert parsed.sensor_index.tolist() == [0, 0]
    assert parsed.micros.tolist() == [us, us]
    assert parsed.values.tolist() == [1.0, 2.0]
    assert where == [0, 3]
    assert [(r.index, r.reason) for r in refused] == [
        (1, ingest.OTHER_LICENSE),
        (2, ingest.MALFORMED),
        (4, ingest.MALFORMED),
        (5, ingest.MALFORMED),
        (6, ingest.MALFORMED),
    ]


def test_parse_columns_spreads_units_and_refuses_indexes_past_the_sensors() -> None:
    other = "01JT" + "0" * 22
    cols = pb.ReadingColumns(
        sensor_ids=[SENSOR, other],
        units=[ranges.CELSIUS, ranges.PERCENT],
        sensor_indexes=[1, 0, 2, 1],
        observe_unix_micros=[10, 20, 30, 40],
        values=[50.0, 21.5, 1.0, 51.0],
    )
    parsed, where, refused = parse_columns(cols, offset=3)
    assert parsed.sensor_ids == [SENSOR, other]
    assert parsed.sensor_index.tolist() == [1, 0, 1]
    assert parsed.units.tolist() == [ranges.PERCENT, ranges.CELSIUS, ranges.PERCENT]
    assert parsed.micros.tolist() == [10, 20, 40]
    assert parsed.values.tolist() == [50.0, 21.5, 51.0]
    assert where == [3, 4, 6]
    assert [(r.index, r.reason) for r in refused] == [(5, ingest.MALFORMED)]


def test_columns_concat_reindexes_the_sensors() -> None:
    a = ingest.Columns.build(["A", "B", "A"], [1, 2, 3], [1.0, 2.0, 3.0], [1, 1, 1])
    b = ingest.Columns.build(["B", "C"], [4, 5], [4.0, 5.0], [2, 2])
    c = ingest.Columns.concat([a, b])
    assert c.sensor_ids == ["A", "B", "C"]
    assert [c.sensor_ids[i] for i in c.sensor_index.tolist()] == ["A", "B", "A", "B", "C"]
    assert c.micros.tolist() == [1, 2, 3, 4, 5]
    assert c.units.tolist() == [1, 1, 1, 2, 2]


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
