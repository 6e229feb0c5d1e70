"""Telemetry ingest and SQL statements under in-memory trace and metric readers, on real PostgreSQL.

One ``telemetry.commit`` span per commit of the pipeline (a group of batches, not per reading),
the readings counter counting what was stored (a replay stores nothing), and the SQL statements
of an engine made while tracing is on as CLIENT spans.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text

from seedline_server.observability import instruments
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import db
from seedline_server.telemetry import sensors
from seedline_server.telemetry.ingest import IngestPipeline, ReadingIn
from tests.integration.conftest import CTX, Farm

pytestmark = pytest.mark.asyncio(loop_scope="session")
TEMPERATURE, CELSIUS = 1, 1


@pytest_asyncio.fixture(loop_scope="session")
async def traced(
    migrated: str,
) -> AsyncIterator[tuple[IngestPipeline, InMemorySpanExporter, InMemoryMetricReader]]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    previous = instruments.install(
        instruments.Telemetry(tracer_provider, MeterProvider(metric_readers=[reader]))
    )
    engine = db.make_engine(migrated, pool_size=4)  # instrumented: tracing is on
    pipeline = IngestPipeline(engine, writers=1)
    try:
        await pipeline.start()
        yield pipeline, spans, reader
    finally:
        await pipeline.stop()
        await engine.dispose()
        instruments.install(previous)


async def test_one_span_per_commit_and_the_readings_counter(
    traced: tuple[IngestPipeline, InMemorySpanExporter, InMemoryMetricReader], database: Database, farm: Farm
) -> None:
    pipeline, spans, reader = traced

    async def add(uow: UnitOfWork) -> str:
        row = await sensors.create_sensor(
            uow, farm.license_id, sensors.NewSensor(farm.section_id, "probe", TEMPERATURE, CELSIUS, 10)
        )
        return row.id

    sensor = await database.write(CTX, add)
    t0 = datetime.now(UTC) - timedelta(minutes=30)
    readings = [ReadingIn(sensor, t0 + timedelta(seconds=i), 20.0 + i % 5, CELSIUS) for i in range(40)]
    first = await pipeline.submit(
        license_id=farm.license_id, gateway_id="gw-obs", sequence=1, readings=readings
    )
    replay = await pipeline.submit(
        license_id=farm.license_id, gateway_id="gw-obs", sequence=1, readings=readings
    )
    assert (first.accepted, first.replayed) == (40, False)
    assert replay.replayed

    commits = [s for s in spans.get_finished_spans() if s.name == "telemetry.commit"]
    assert len(commits) == 2  # one per commit, not one per reading
    assert [dict(s.attributes or {})["seedline.telemetry.readings"] for s in commits] == [40, 40]
    data = reader.get_metrics_data()
    assert data is not None
    counted = [
        p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "seedline.telemetry.readings"
        for p in m.data.data_points
    ]
    assert counted == [40]  # the replay stored nothing
    # The writers' COPY goes through asyncpg directly: no statement spans from the commits.
    assert not [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]


async def test_an_engine_made_while_tracing_is_on_traces_its_statements(
    traced: tuple[IngestPipeline, InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    pipeline, spans, _reader = traced
    with instruments.current().tracer.start_as_current_span("work") as parent:
        async with pipeline.engine.connect() as conn:
            assert await conn.scalar(text("SELECT 41 + 1")) == 42
    (statement,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert dict(statement.attributes or {})["db.statement"] == "SELECT 41 + 1"
    assert statement.parent is not None
    assert statement.parent.span_id == parent.get_span_context().span_id
