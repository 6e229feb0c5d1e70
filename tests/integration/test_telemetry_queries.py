"""QueryAggregates' engine against real PostgreSQL: roll-ups agree with raw readings, units
convert per sensor, day buckets follow the time zone, pages chain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.domain.errors import InvalidPageToken, UnitMismatch
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import db
from seedline_server.telemetry import queries, sensors
from seedline_server.telemetry.ingest import IngestPipeline, ReadingIn
from tests.integration.conftest import CTX, Farm

pytestmark = pytest.mark.asyncio(loop_scope="session")
CELSIUS, FAHRENHEIT, PERCENT = 1, 2, 3


@pytest_asyncio.fixture(loop_scope="session")
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    e = db.make_engine(migrated, pool_size=4)
    yield e
    await e.dispose()


async def add_sensor(database: Database, farm: Farm, unit: int) -> str:
    async def run(uow: UnitOfWork) -> str:
        new = sensors.NewSensor(farm.section_id, "probe", 1, unit, 10)
        return (await sensors.create_sensor(uow, farm.license_id, new)).id

    return await database.write(CTX, run)


def q(farm: Farm, start: datetime, end: datetime, resolution: int, **kw: object) -> queries.Query:
    fields: dict[str, object] = {
        "license_id": farm.license_id,
        "sensor_id": "",
        "section_id": farm.section_id,
        "metric": 1,
        "start": start,
        "end": end,
        "resolution": resolution,
        "unit": 0,
        "time_zone": "",
        "page_size": 0,
        "page_token": "",
    }
    fields.update(kw)
    return queries.Query(**fields)  # type: ignore[arg-type]


async def test_aggregates_from_rollups_and_raw(engine: AsyncEngine, database: Database, farm: Farm) -> None:
    c = await add_sensor(database, farm, CELSIUS)
    f = await add_sensor(database, farm, FAHRENHEIT)
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    pipeline = IngestPipeline(engine, writers=1)
    await pipeline.start()
    try:
        readings = [ReadingIn(c, base + timedelta(minutes=m), 10.0 + m % 3, CELSIUS) for m in range(180)]
        readings += [
            ReadingIn(f, base + timedelta(minutes=m, seconds=30), 68.0, FAHRENHEIT) for m in range(180)
        ]
        ack = await pipeline.submit(
            license_id=farm.license_id, gateway_id="q", sequence=None, readings=readings
        )
        assert ack.accepted == 360
    finally:
        await pipeline.stop()
    end = base + timedelta(hours=3)
    _, unit, hours, token = await queries.aggregate(engine, q(farm, base, end, queries.HOUR))
    assert (unit, token) == (CELSIUS, "")
    assert [b.start for b in hours] == [base + timedelta(hours=h) for h in range(3)]
    assert [b.count for b in hours] == [120, 120, 120]
    assert hours[0].min == pytest.approx(10.0)
    assert hours[0].max == pytest.approx(20.0)  # 68 °F
    assert hours[0].avg == pytest.approx((20 * 10 + 20 * 11 + 20 * 12 + 60 * 20.0) / 120)
    # Minute buckets (from readings_1m) and raw readings give the same totals.
    _, _, minutes, _ = await queries.aggregate(engine, q(farm, base, end, queries.MINUTE, page_size=10_000))
    assert sum(b.count for b in minutes) == 360
    assert len(minutes) == 180
    # Fahrenheit answer for one sensor, paged through raw readings.
    seen: list[queries.Bucket] = []
    token = ""
    while True:
        _, unit, page, token = await queries.aggregate(
            engine,
            q(
                farm,
                base,
                end,
                queries.RAW,
                sensor_id=c,
                section_id="",
                metric=0,
                unit=FAHRENHEIT,
                page_size=50,
                page_token=token,
            ),
        )
        seen += page
        if not token:
            break
    assert unit == FAHRENHEIT
    assert len(seen) == 180
    assert seen[0].min == pytest.approx(50.0)  # 10 °C
    assert [b.start for b in seen] == sorted(b.start for b in seen)
    assert {b.sensor_id for b in seen} == {c}
    # Day buckets in a zone west of UTC start at local midnight.
    _, _, days, _ = await queries.aggregate(
        engine, q(farm, base - timedelta(days=1), end, queries.DAY, time_zone="America/Denver")
    )
    assert sum(b.count for b in days) >= 360
    for b in days:
        local = b.start.astimezone(queries.zone("America/Denver"))
        assert (local.hour, local.minute) == (0, 0)
    # A zone with a half-hour offset falls back to minute roll-ups; its buckets start at :30 UTC,
    # and the bucket starting before the range (its first 30 minutes) is not returned.
    _, _, kolkata, _ = await queries.aggregate(
        engine, q(farm, base, end, queries.HOUR, time_zone="Asia/Kolkata")
    )
    assert sum(b.count for b in kolkata) == 360 - 2 * 30
    assert all(b.start.minute == 30 for b in kolkata)


async def test_bad_units_and_tokens(engine: AsyncEngine, database: Database, farm: Farm) -> None:
    c = await add_sensor(database, farm, CELSIUS)
    now = datetime.now(UTC)
    with pytest.raises(UnitMismatch):
        await queries.aggregate(
            engine,
            q(
                farm,
                now - timedelta(hours=1),
                now,
                queries.HOUR,
                sensor_id=c,
                section_id="",
                metric=0,
                unit=PERCENT,
            ),
        )
    with pytest.raises(InvalidPageToken):
        await queries.aggregate(
            engine, q(farm, now - timedelta(hours=1), now, queries.HOUR, page_token="bogus")
        )
