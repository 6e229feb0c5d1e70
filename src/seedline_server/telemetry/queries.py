"""QueryAggregates: time-bucketed min / avg / max / count of a sensor or of a section's metric.

Minute buckets come from ``readings_1m``; hour and day buckets from ``readings_1h`` when the time
zone's offset is a whole number of hours over the range (else from ``readings_1m``); RAW reads
``readings``. Values are converted to the requested unit per sensor with the affine map of
:mod:`seedline_server.telemetry.ranges` (``a > 0``, so the minimum stays the minimum and a sum
converts as ``a * sum + b * count``).

A section's aggregate at minute, hour or day resolution comes from ``section_readings_1m/1h``,
kept by the writers per section and metric with each reading counted in the section its sensor
was in when the reading was stored (values in the metric's first unit). RAW lists the readings
of the sensors of the metric whose current section it is, deleted ones included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.domain import paging
from seedline_server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    InvalidPageToken,
    NotFound,
    UnitMismatch,
)
from seedline_server.telemetry import ranges

RAW, MINUTE, HOUR, DAY = 1, 2, 3, 4
DEFAULT_PAGE, MAX_PAGE = 1000, 10_000


@dataclass(frozen=True)
class Scope:
    """The sensors aggregated: their keys, ids and units (all of one metric)."""

    metric: int
    sensors: tuple[tuple[int, str, int], ...]  # (key, id, unit)


@dataclass(frozen=True)
class Bucket:
    """One bucket of the answer (``sensor_id`` only for RAW)."""

    start: datetime
    min: float
    avg: float
    max: float
    count: int
    sensor_id: str = ""


@dataclass(frozen=True)
class Query:
    """A validated QueryAggregates request."""

    license_id: str
    sensor_id: str
    section_id: str
    metric: int
    start: datetime
    end: datetime
    resolution: int
    unit: int
    time_zone: str
    page_size: int
    page_token: str

    def fingerprint(self) -> dict[str, str]:
        """What a page token is bound to."""
        return {
            "l": self.license_id,
            "s": self.sensor_id,
            "c": self.section_id,
            "m": str(self.metric),
            "t": f"{self.start.isoformat()}/{self.end.isoformat()}",
            "r": str(self.resolution),
            "u": str(self.unit),
            "z": self.time_zone,
        }


def zone(name: str) -> ZoneInfo:
    """The IANA zone (UTC when empty), or INVALID_ARGUMENT."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument(
            f"unknown time zone {name!r}", [FieldViolation("time_zone", "not an IANA time zone")]
        ) from exc


def whole_hours(tz: ZoneInfo, start: datetime, end: datetime) -> bool:
    """Whether the zone's offset is a whole number of hours at every day boundary of the range."""
    t = start
    while True:
        offset = t.astimezone(tz).utcoffset() or timedelta()
        if offset.total_seconds() % 3600:
            return False
        if t >= end:
            return True
        t = min(t + timedelta(days=1), end)


async def scope(engine: AsyncEngine, q: Query) -> Scope:
    """The sensors of the query; NOT_FOUND for a sensor not of the license."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        apg: Any = raw.driver_connection
        if q.sensor_id:
            rows = await apg.fetch(
                "SELECT key, id, unit, metric FROM sensors WHERE id = $1 AND license_id = $2",
                q.sensor_id,
                q.license_id,
            )
            if not rows:
                raise NotFound("sensor", f"licenses/{q.license_id}/sensors/{q.sensor_id}")
            metric = int(rows[0][3])
            if q.metric and q.metric != metric:
                raise InvalidArgument(
                    "metric is not the sensor's metric",
                    [FieldViolation("metric", "must be the sensor's metric")],
                )
        else:
            metric = q.metric
            rows = await apg.fetch(
                "SELECT key, id, unit, metric FROM sensors WHERE license_id = $1 AND section_id = $2 "
                "AND metric = $3 ORDER BY key",
                q.license_id,
                q.section_id,
                q.metric,
            )
    return Scope(metric, tuple((int(r[0]), r[1], int(r[2])) for r in rows))


def target_unit(q: Query, s: Scope) -> int:
    """The unit of the answer: the requested one, else the sensor's, else the metric's first."""
    if q.unit:
        if not ranges.fits(s.metric, q.unit):
            raise UnitMismatch(
                f"{ranges.unit_name(q.unit)} is not a unit of the metric",
                [FieldViolation("unit", "unit is not a unit of the metric (see Metric)")],
            )
        return q.unit
    if q.sensor_id and s.sensors:
        return s.sensors[0][2]
    return ranges.default_unit(s.metric)


def _bucket_sql(resolution: int, use_hours: bool) -> tuple[str, str]:
    """(source table, bucket expression over ``r.bucket_start``; ``$6`` is the zone)."""
    if resolution == MINUTE:
        return "readings_1m", "r.bucket_start"
    if resolution == HOUR:
        if use_hours:
            return "readings_1h", "r.bucket_start"
        return "readings_1m", "date_trunc('hour', r.bucket_start AT TIME ZONE $6::text) AT TIME ZONE $6::text"
    table = "readings_1h" if use_hours else "readings_1m"
    return table, "date_trunc('day', r.bucket_start AT TIME ZONE $6::text) AT TIME ZONE $6::text"


async def aggregate(engine: AsyncEngine, q: Query) -> tuple[Scope, int, list[Bucket], str]:
    """(scope, unit, one page of buckets, next page token)."""
    tz = zone(q.time_zone)
    s = await scope(engine, q)
    unit = target_unit(q, s)
    limit = DEFAULT_PAGE if q.page_size == 0 else min(q.page_size, MAX_PAGE)
    after = paging.decode_token(q.page_token, q.fingerprint())
    if not s.sensors and (q.sensor_id or q.resolution == RAW):
        return s, unit, [], ""
    keys = [k for k, _, _ in s.sensors]
    coeffs = [ranges.affine(u, unit) for _, _, u in s.sensors]
    a_s, b_s = [c[0] for c in coeffs], [c[1] for c in coeffs]
    ids = {k: i for k, i, _ in s.sensors}
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        apg: Any = raw.driver_connection
        if q.resolution == RAW:
            after_time, after_key = _raw_after(after)
            rows = await apg.fetch(
                "SELECT r.observe_time, r.value * v.a + v.b, r.sensor_key FROM readings r "
                "JOIN unnest($1::bigint[], $2::float8[], $3::float8[]) AS v(k, a, b) ON r.sensor_key = v.k "
                "WHERE r.observe_time >= $4 AND r.observe_time < $5 "
                "AND (r.observe_time, r.sensor_key) > ($6::timestamptz, $7::bigint) "
                "ORDER BY r.observe_time, r.sensor_key LIMIT $8",
                keys,
                a_s,
                b_s,
                q.start,
                q.end,
                after_time or q.start - timedelta(microseconds=1),
                after_key,
                limit + 1,
            )
            buckets = [Bucket(r[0], r[1], r[1], r[1], 1, ids[int(r[2])]) for r in rows]
            token = ""
            if len(buckets) > limit:
                buckets = buckets[:limit]
                last = buckets[-1]
                last_key = next(k for k, i, _ in s.sensors if i == last.sensor_id)
                token = paging.next_token(f"{last.start.isoformat()}|{last_key}", q.fingerprint())
            return s, unit, buckets, token
        table, bucket = _bucket_sql(q.resolution, whole_hours(tz, q.start, q.end))
        after_time = datetime.fromisoformat(after) if after else None
        if not q.sensor_id:
            a, b = ranges.affine(ranges.default_unit(s.metric), unit)
            rows = await apg.fetch(
                f"SELECT b, mn, mx, sm, ct FROM (SELECT {bucket} AS b, min(r.min) * $2 + $3 AS mn, "  # noqa: S608
                "max(r.max) * $2 + $3 AS mx, sum(r.sum) * $2 + $3 * sum(r.count) AS sm, "
                "sum(r.count)::bigint AS ct "
                f"FROM section_{table} r WHERE r.section_id = $1 AND r.metric = $9 "
                "AND r.bucket_start >= $4 AND r.bucket_start < $5 GROUP BY 1) q "
                "WHERE b >= $4 AND b > $7 AND $6::text <> '' ORDER BY b LIMIT $8",
                q.section_id,
                a,
                b,
                q.start,
                q.end,
                tz.key,
                after_time or q.start - timedelta(microseconds=1),
                limit + 1,
                s.metric,
            )
        else:
            rows = await _sensor_buckets(apg, table, bucket, s, unit, q, tz.key, after_time, limit)
    buckets = [Bucket(r[0], r[1], r[3] / r[4], r[2], int(r[4])) for r in rows]
    token = ""
    if len(buckets) > limit:
        buckets = buckets[:limit]
        token = paging.next_token(buckets[-1].start.isoformat(), q.fingerprint())
    return s, unit, buckets, token


async def _sensor_buckets(
    apg: Any,
    table: str,
    bucket: str,
    s: Scope,
    unit: int,
    q: Query,
    zone_name: str,
    after_time: datetime | None,
    limit: int,
) -> list[Any]:
    """Rolled-up buckets of the scope's sensors from the per-sensor roll-ups."""
    keys = [k for k, _, _ in s.sensors]
    coeffs = [ranges.affine(u, unit) for _, _, u in s.sensors]
    a_s, b_s = [c[0] for c in coeffs], [c[1] for c in coeffs]
    return list(
        await apg.fetch(
            f"SELECT b, mn, mx, sm, ct FROM (SELECT {bucket} AS b, min(r.min * v.a + v.b) AS mn, "  # noqa: S608
            "max(r.max * v.a + v.b) AS mx, sum(r.sum * v.a + v.b * r.count) AS sm, "
            "sum(r.count)::bigint AS ct "
            f"FROM {table} r JOIN unnest($1::bigint[], $2::float8[], $3::float8[]) AS v(k, a, b) "
            "ON r.sensor_key = v.k WHERE r.bucket_start >= $4 AND r.bucket_start < $5 GROUP BY 1) q "
            "WHERE b >= $4 AND b > $7 AND $6::text <> '' ORDER BY b LIMIT $8",
            keys,
            a_s,
            b_s,
            q.start,
            q.end,
            zone_name,
            after_time or q.start - timedelta(microseconds=1),
            limit + 1,
        )
    )


def _raw_after(after: str | None) -> tuple[datetime | None, int]:
    if after is None:
        return None, 0
    try:
        t, _, k = after.partition("|")
        return datetime.fromisoformat(t), int(k)
    except ValueError as exc:
        raise InvalidPageToken("page_token is malformed") from exc
