"""The ingest pipeline against real PostgreSQL: exactly-once replay, rejections, roll-ups,
partitions, backpressure and shutdown."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.domain.errors import DependencyUnavailable
from seedline_server.service import registry
from seedline_server.service.registry import etag
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import db, models
from seedline_server.telemetry import ingest, partitions, queries, sensors
from seedline_server.telemetry.ingest import CommittedReading, IngestPipeline, ReadingIn
from tests.integration.conftest import CTX, Farm, make_farm

pytestmark = pytest.mark.asyncio(loop_scope="session")
TEMPERATURE, RH = 1, 2
CELSIUS, FAHRENHEIT, PERCENT = 1, 2, 3


@pytest_asyncio.fixture(loop_scope="session")
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    e = db.make_engine(migrated, pool_size=6)
    yield e
    await e.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def pipeline(engine: AsyncEngine) -> AsyncIterator[IngestPipeline]:
    p = IngestPipeline(engine, writers=2)
    await p.start()
    yield p
    await p.stop()


async def add_sensor(database: Database, farm: Farm, metric: int = TEMPERATURE, unit: int = CELSIUS) -> str:
    async def run(uow: UnitOfWork) -> str:
        row = await sensors.create_sensor(
            uow, farm.license_id, sensors.NewSensor(farm.section_id, "probe", metric, unit, 10)
        )
        return row.id

    return await database.write(CTX, run)


async def count(engine: AsyncEngine, sensor_id: str) -> int:
    async with engine.connect() as conn:
        n = await conn.scalar(
            text("SELECT count(*) FROM readings r JOIN sensors s ON s.key = r.sensor_key WHERE s.id = :id"),
            {"id": sensor_id},
        )
    return int(n or 0)


def batch(sensor_id: str, n: int, start: datetime, step: float = 1.0, base: float = 20.0) -> list[ReadingIn]:
    return [
        ReadingIn(sensor_id, start + timedelta(seconds=i * step), base + (i % 10) * 0.5, CELSIUS)
        for i in range(n)
    ]


async def test_replayed_sequences_are_stored_once(
    pipeline: IngestPipeline, database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    sid = await add_sensor(database, farm)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    bad = [ReadingIn(sid, t0, math.nan, CELSIUS)]
    first = await pipeline.submit(
        license_id=farm.license_id, gateway_id="gw-1", sequence=1, readings=batch(sid, 50, t0) + bad
    )
    second = await pipeline.submit(
        license_id=farm.license_id,
        gateway_id="gw-1",
        sequence=2,
        readings=batch(sid, 30, t0 + timedelta(hours=1, minutes=-59)),
    )
    assert (first.accepted, first.replayed, second.accepted) == (50, False, 30)
    assert [r.reason for r in first.rejected] == [ingest.NON_FINITE]
    # The gateway reconnects and replays both, concurrently with a new batch.
    again = await asyncio.gather(
        pipeline.submit(
            license_id=farm.license_id, gateway_id="gw-1", sequence=1, readings=batch(sid, 50, t0) + bad
        ),
        pipeline.submit(
            license_id=farm.license_id, gateway_id="gw-1", sequence=2, readings=batch(sid, 30, t0)
        ),
        pipeline.submit(
            license_id=farm.license_id,
            gateway_id="gw-1",
            sequence=3,
            readings=batch(sid, 5, t0 + timedelta(minutes=30)),
        ),
    )
    assert [a.replayed for a in again] == [True, True, False]
    # A replay repeats the original acknowledgement.
    assert (again[0].accepted, again[0].rejected) == (first.accepted, first.rejected)
    assert again[1].accepted == 30
    assert await count(engine, sid) == 85
    # Another gateway's sequence 1 is its own.
    other = await pipeline.submit(
        license_id=farm.license_id,
        gateway_id="gw-2",
        sequence=1,
        readings=batch(sid, 3, t0 + timedelta(minutes=40)),
    )
    assert (other.replayed, other.accepted) == (False, 3)
    assert await count(engine, sid) == 88


async def test_a_replay_while_the_original_is_still_queued_is_not_stored_twice(
    pipeline: IngestPipeline, database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    sid = await add_sensor(database, farm)
    t0 = datetime.now(UTC) - timedelta(minutes=20)
    rows = batch(sid, 200, t0)
    acks = await asyncio.gather(
        *(
            pipeline.submit(license_id=farm.license_id, gateway_id="gw-r", sequence=7, readings=rows)
            for _ in range(4)
        )
    )
    assert sorted(a.replayed for a in acks) == [False, True, True, True]
    # Every copy is answered with the original acknowledgement, also one committed in the same
    # transaction as the original (its acknowledgement was not stored yet when it was looked up).
    assert [(a.accepted, a.rejected) for a in acks] == [(200, ())] * 4
    assert await count(engine, sid) == 200


async def test_two_processes_committing_one_batch_store_it_once(
    database: Database, farm: Farm, engine: AsyncEngine, migrated: str
) -> None:
    # Two pipelines on their own engines stand for two server processes: a gateway reconnected
    # to the second while the first still commits its batches.
    sid = await add_sensor(database, farm)
    t0 = datetime.now(UTC) - timedelta(minutes=40)
    other_engine = db.make_engine(migrated, pool_size=2)
    first, second = IngestPipeline(engine, writers=1), IngestPipeline(other_engine, writers=1)
    await first.start()
    await second.start()
    try:
        for sequence in range(1, 6):
            rows = batch(sid, 300, t0 + timedelta(minutes=sequence))
            acks = await asyncio.gather(
                *(
                    p.submit(
                        license_id=farm.license_id, gateway_id="gw-twice", sequence=sequence, readings=rows
                    )
                    for p in (first, second)
                )
            )
            assert sorted(a.replayed for a in acks) == [False, True]
            assert [a.accepted for a in acks] == [300, 300]
        assert await count(engine, sid) == 5 * 300
    finally:
        await first.stop()
        await second.stop()
        await other_engine.dispose()


async def test_a_failed_batch_is_stored_by_its_resend_after_later_ones_committed(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    # The database refuses sequence 3 of this gateway once (a failover, a full disk...), while
    # 4 and 5 commit after it, in commits of their own.
    async with engine.begin() as conn:
        await conn.execute(text("CREATE SEQUENCE IF NOT EXISTS fail_once_seq"))
        await conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.gateway_id = 'gw-fails' AND NEW.sequence = 3 AND nextval('fail_once_seq') = 1 "
                "THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER fail_once BEFORE INSERT ON ingest_batches "
                "FOR EACH ROW EXECUTE FUNCTION fail_once()"
            )
        )
    sid = await add_sensor(database, farm)
    t0 = datetime.now(UTC) - timedelta(minutes=30)
    lone = IngestPipeline(engine, writers=1, group_rows=1)  # one batch per commit
    await lone.start()
    try:

        async def send(sequence: int) -> ingest.Ack:
            return await lone.submit(
                license_id=farm.license_id,
                gateway_id="gw-fails",
                sequence=sequence,
                readings=batch(sid, 10, t0 + timedelta(minutes=sequence)),
            )

        outcomes = await asyncio.gather(*(send(n) for n in range(1, 6)), return_exceptions=True)
        assert isinstance(outcomes[2], DependencyUnavailable)
        assert [(a.accepted, a.replayed) for a in outcomes if isinstance(a, ingest.Ack)] == [(10, False)] * 4
        assert await count(engine, sid) == 40
        # The gateway reconnects and replays what was not acknowledged (3), and one that was.
        resent, repeat = await send(3), await send(4)
        assert (resent.accepted, resent.replayed) == (10, False)
        assert (repeat.accepted, repeat.replayed) == (10, True)
        assert await count(engine, sid) == 50
    finally:
        await lone.stop()
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER fail_once ON ingest_batches"))


async def test_bad_readings_are_rejected_one_by_one(
    pipeline: IngestPipeline, database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    sid = await add_sensor(database, farm)
    rh = await add_sensor(database, farm, RH, PERCENT)
    other_farm = await make_farm(database, f"IT-T-{random.randrange(10**9)}")
    foreign = await add_sensor(database, other_farm)
    now = datetime.now(UTC)
    readings = [
        ReadingIn(sid, now - timedelta(minutes=1), 21.5, CELSIUS),  # ok
        ReadingIn("01J" + "Z" * 23, now, 20.0, CELSIUS),  # unknown
        ReadingIn(foreign, now, 20.0, CELSIUS),  # another license's short id: unknown here
        ReadingIn(sid, now, 40.0, PERCENT),  # wrong unit
        ReadingIn(sid, now, math.inf, CELSIUS),  # non-finite
        ReadingIn(sid, now, 212.0, CELSIUS),  # out of range
        ReadingIn(rh, now, 100.5, PERCENT),  # out of range (RH)
        ReadingIn(sid, now - timedelta(days=31), 20.0, CELSIUS),  # too old
        ReadingIn(sid, now + timedelta(minutes=10), 20.0, CELSIUS),  # in the future
        ReadingIn(sid, now - timedelta(minutes=1), 22.0, CELSIUS),  # duplicate of the first
        ReadingIn(sid, now - timedelta(minutes=2), 212.0, FAHRENHEIT),  # ok: 100 °C
        ReadingIn(rh, now, 55.0, PERCENT),  # ok
    ]
    ack = await pipeline.submit(
        license_id=farm.license_id, gateway_id="gw-b", sequence=None, readings=readings
    )
    assert ack.accepted == 3
    assert [(r.index, r.reason) for r in ack.rejected] == [
        (1, ingest.UNKNOWN_SENSOR),
        (2, ingest.UNKNOWN_SENSOR),
        (3, ingest.WRONG_UNIT),
        (4, ingest.NON_FINITE),
        (5, ingest.OUT_OF_RANGE),
        (6, ingest.OUT_OF_RANGE),
        (7, ingest.TOO_OLD),
        (8, ingest.IN_FUTURE),
        (9, ingest.DUPLICATE),
    ]
    assert "212" in ack.rejected[4].message
    async with engine.connect() as conn:
        values = sorted(
            v
            for (v,) in await conn.execute(
                text("SELECT value FROM readings r JOIN sensors s ON s.key = r.sensor_key WHERE s.id = :id"),
                {"id": sid},
            )
        )
        last = await conn.scalar(text("SELECT last_observe_time FROM sensors WHERE id = :id"), {"id": sid})
    assert values == pytest.approx([21.5, 100.0])  # °F converted to the sensor's °C
    assert last == now - timedelta(minutes=1)


async def test_rollups_equal_the_raw_aggregates(
    pipeline: IngestPipeline, database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    ids = [await add_sensor(database, farm) for _ in range(3)]
    rng = random.Random(7)
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    submits = []
    for sequence in range(1, 13):  # batches from two gateways, overlapping buckets, several commits
        readings = [
            ReadingIn(
                rng.choice(ids),
                base + timedelta(seconds=rng.randrange(0, 3 * 3600), microseconds=rng.randrange(10**6)),
                rng.uniform(-10, 40),
                CELSIUS,
            )
            for _ in range(rng.randrange(1, 300))
        ]
        gw = f"gw-{sequence % 2}"
        submits.append(
            pipeline.submit(license_id=farm.license_id, gateway_id=gw, sequence=sequence, readings=readings)
        )
    await asyncio.gather(*submits)
    for table, unit in (("readings_1m", "minute"), ("readings_1h", "hour")):
        async with engine.connect() as conn:
            rolled = (
                await conn.execute(
                    text(
                        f"SELECT r.sensor_key, r.bucket_start, r.min, r.max, r.sum, r.count FROM {table} r "
                        "JOIN sensors s ON s.key = r.sensor_key WHERE s.id = ANY(:ids) ORDER BY 1, 2"
                    ),
                    {"ids": ids},
                )
            ).all()
            raw = (
                await conn.execute(
                    text(
                        f"SELECT r.sensor_key, date_trunc('{unit}', r.observe_time), min(value), max(value), "
                        "sum(value), count(*) FROM readings r JOIN sensors s ON s.key = r.sensor_key "
                        "WHERE s.id = ANY(:ids) GROUP BY 1, 2 ORDER BY 1, 2"
                    ),
                    {"ids": ids},
                )
            ).all()
        assert len(rolled) == len(raw) > 0
        for a, b in zip(rolled, raw, strict=True):
            assert a[:2] == b[:2]
            assert a[2:4] == b[2:4]
            assert a[4] == pytest.approx(b[4])
            assert a[5] == b[5]


async def test_listeners_get_what_was_committed(
    pipeline: IngestPipeline, database: Database, farm: Farm
) -> None:
    sid = await add_sensor(database, farm)
    seen: list[CommittedReading] = []
    pipeline.add_listener(seen.extend)
    try:
        t0 = datetime.now(UTC) - timedelta(minutes=5)
        await pipeline.submit(
            license_id=farm.license_id, gateway_id="gw-l", sequence=1, readings=batch(sid, 4, t0)
        )
        await pipeline.submit(
            license_id=farm.license_id, gateway_id="gw-l", sequence=1, readings=batch(sid, 4, t0)
        )
    finally:
        pipeline.remove_listener(seen.extend)
    mine = [r for r in seen if r.sensor_id == sid]
    assert len(mine) == 4  # the replay was not stored, so not announced
    assert {(r.license_id, r.section_id, r.metric, r.unit) for r in mine} == {
        (farm.license_id, farm.section_id, TEMPERATURE, CELSIUS)
    }


async def test_a_deleted_sensor_refuses_readings(
    pipeline: IngestPipeline, database: Database, farm: Farm
) -> None:
    sid = await add_sensor(database, farm)
    now = datetime.now(UTC)
    ok = await pipeline.submit(
        license_id=farm.license_id, gateway_id="g", sequence=None, readings=batch(sid, 1, now)
    )
    assert ok.accepted == 1

    async def delete(uow: UnitOfWork) -> None:
        await sensors.delete_sensor(uow, farm.license_id, sid, "")

    await database.write(CTX, delete)
    pipeline.sensors.invalidate(sid)
    ack = await pipeline.submit(
        license_id=farm.license_id, gateway_id="g", sequence=None, readings=batch(sid, 1, now)
    )
    assert (ack.accepted, ack.rejected[0].reason) == (0, ingest.UNKNOWN_SENSOR)


async def test_backpressure_bounds_the_queued_readings(
    engine: AsyncEngine, database: Database, farm: Farm
) -> None:
    sid = await add_sensor(database, farm)
    p = IngestPipeline(engine, writers=1, max_pending=2500)
    await p.start()
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, p.pending)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    t0 = datetime.now(UTC) - timedelta(hours=2)
    try:
        acks = await asyncio.gather(
            *(
                p.submit(
                    license_id=farm.license_id,
                    gateway_id=f"bp-{i}",
                    sequence=1,
                    readings=batch(sid, 1000, t0 + timedelta(minutes=20 * i), step=1.0),
                )
                for i in range(6)
            )
        )
    finally:
        done.set()
        await watcher
        await p.stop()
    assert sum(a.accepted for a in acks) == 6000
    assert 1000 <= peak <= 2500


async def test_stop_commits_and_acks_what_it_accepted(
    engine: AsyncEngine, database: Database, farm: Farm
) -> None:
    sid = await add_sensor(database, farm)
    p = IngestPipeline(engine, writers=2, max_pending=50_000)
    await p.start()
    t0 = datetime.now(UTC) - timedelta(hours=5)
    tasks = [
        asyncio.create_task(
            p.submit(
                license_id=farm.license_id,
                gateway_id="stop",
                sequence=i + 1,
                readings=batch(sid, 500, t0 + timedelta(minutes=10 * i), step=1.0),
            )
        )
        for i in range(20)
    ]
    while p.pending == 0:  # noqa: ASYNC110  (stop while some batches are queued, others not yet)
        await asyncio.sleep(0)
    await p.stop()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    acked = sum(r.accepted for r in results if isinstance(r, ingest.Ack))
    refused = [r for r in results if not isinstance(r, ingest.Ack)]
    assert all(isinstance(r, DependencyUnavailable) for r in refused)
    assert acked > 0
    assert await count(engine, sid) == acked  # nothing committed without its acknowledgement
    with pytest.raises(DependencyUnavailable):
        await p.submit(license_id=farm.license_id, gateway_id="stop", sequence=99, readings=batch(sid, 1, t0))


async def test_partitions_are_created_ahead_and_dropped_after_retention(engine: AsyncEngine) -> None:
    manager = partitions.PartitionManager(engine, ahead_days=2, behind_days=1, retention_days=30)
    created, _ = await manager.run_once(today=date(2001, 1, 10))
    assert created == [date(2001, 1, 9), date(2001, 1, 10), date(2001, 1, 11), date(2001, 1, 12)]
    again, _ = await manager.run_once(today=date(2001, 1, 10))
    assert again == []
    have = await partitions.existing(engine)
    assert date(2001, 1, 12) in have
    # 40 days later the January partitions are past the 30-day retention.
    created, dropped = await manager.run_once(today=date(2001, 2, 19))
    assert dropped == [date(2001, 1, 9), date(2001, 1, 10), date(2001, 1, 11), date(2001, 1, 12)]
    have = await partitions.existing(engine)
    assert not [d for d in have if d < date(2001, 1, 20)]
    async with engine.begin() as conn:  # leave no 2001 partitions to other tests
        for d in have:
            if d.year == 2001:
                await conn.execute(text(f"DROP TABLE {partitions.partition_name(d)}"))


async def section_rollup(
    engine: AsyncEngine, table: str, section_id: str
) -> list[tuple[datetime, float, float, float, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                f"SELECT bucket_start, min, max, sum, count FROM {table} "
                "WHERE section_id = :s AND metric = :m ORDER BY 1"
            ),
            {"s": section_id, "m": TEMPERATURE},
        )
        return [(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]


async def test_section_rollups_count_each_reading_in_the_section_it_was_taken_in(
    pipeline: IngestPipeline, database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    celsius = await add_sensor(database, farm)
    fahrenheit = await add_sensor(database, farm, unit=FAHRENHEIT)
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    first = [ReadingIn(celsius, t0 + timedelta(seconds=i), 20.0 + i, CELSIUS) for i in range(3)] + [
        ReadingIn(fahrenheit, t0 + timedelta(seconds=i), 68.0 + 9 * i, FAHRENHEIT) for i in range(3)
    ]
    await pipeline.submit(license_id=farm.license_id, gateway_id="gw-sec", sequence=1, readings=first)
    [(start, low, high, total, n)] = await section_rollup(engine, "section_readings_1m", farm.section_id)
    # 68, 77, 86 °F are 20, 25, 30 °C: the section's roll-up is in the metric's first unit.
    assert (start, n) == (t0, 6)
    assert (low, high, total) == (pytest.approx(20.0), pytest.approx(30.0), pytest.approx(63.0 + 75.0))

    # The °F sensor moves to another section: its later readings count there, its history stays.
    async def move(uow: UnitOfWork) -> str:
        room = await registry.create_scoped(
            uow,
            farm.license_id,
            models.Section(display_name="Dry room", type=1, active=True, version=1),
            "section",
            "sections",
        )
        row = await sensors.get_sensor(uow, farm.license_id, fahrenheit)
        await sensors.update_sensor(
            uow,
            farm.license_id,
            fahrenheit,
            sensors.SensorChanges("probe", room.id, None),
            ["section"],
            etag(row.id, row.version),
        )
        return room.id

    room = await database.write(CTX, move)
    pipeline.sensors.invalidate(fahrenheit)
    later = [ReadingIn(fahrenheit, t0 + timedelta(minutes=70), 50.0, FAHRENHEIT)]
    await pipeline.submit(license_id=farm.license_id, gateway_id="gw-sec", sequence=2, readings=later)
    hours = await section_rollup(engine, "section_readings_1h", farm.section_id)
    assert [h[4] for h in hours] == [6]
    [(_, low, high, _, n)] = await section_rollup(engine, "section_readings_1h", room)
    assert (n, low, high) == (1, pytest.approx(10.0), pytest.approx(10.0))
    # QueryAggregates of the first section still counts the moved sensor's earlier readings.
    query = queries.Query(
        license_id=farm.license_id,
        sensor_id="",
        section_id=farm.section_id,
        metric=TEMPERATURE,
        start=t0 - timedelta(hours=1),
        end=t0 + timedelta(hours=3),
        resolution=queries.HOUR,
        unit=FAHRENHEIT,
        time_zone="",
        page_size=0,
        page_token="",
    )
    _, unit, [bucket], _ = await queries.aggregate(engine, query)
    assert (unit, bucket.count) == (FAHRENHEIT, 6)
    assert (bucket.min, bucket.max) == (pytest.approx(68.0), pytest.approx(86.0))
    assert bucket.avg == pytest.approx((63.0 + 75.0) / 6 * 9 / 5 + 32)
