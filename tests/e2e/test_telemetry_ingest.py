"""Telemetry end to end: sensors over gRPC, a simulated gateway streaming through IngestReadings
to the real server, live watch, aggregates, and a SIGKILL of the server mid-stream.

The gateway keeps every batch until it is acknowledged and, after a broken stream, replays the
unacknowledged ones with their original sequence numbers, as the contract asks of gateways.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.telemetry.v1 import telemetry_pb2 as pb
from seedline.telemetry.v1 import telemetry_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import auth
from tests.support.stack import EdgeProcess, ServerProcess

pytestmark = pytest.mark.e2e
ADMIN = auth.bearer(auth.mint())
CELSIUS = pb.MEASUREMENT_UNIT_CELSIUS


def telemetry(channel: grpc.Channel) -> telemetry_pb2_grpc.TelemetryServiceStub:
    return telemetry_pb2_grpc.TelemetryServiceStub(channel)


def make_site(channel: grpc.Channel) -> tuple[str, str]:
    """(license, section) names of a new license with one section."""
    stub = license_pb2_grpc.LicenseServiceStub(channel)
    company = stub.CreateCompany(lic.CreateCompanyRequest(company=lic.Company(display_name="Sensor Farms")))
    license_ = stub.CreateLicense(
        lic.CreateLicenseRequest(
            license=lic.License(
                company=company.name,
                license_number=f"CO-T-{uuid.uuid4().hex[:10].upper()}",
                display_name="Sensor Farms 1",
                type=lic.LICENSE_TYPE_GROWER_PROCESSOR,
                jurisdiction="US-CO",
                active=True,
            )
        )
    ).name
    section = stub.CreateSection(
        lic.CreateSectionRequest(
            parent=license_, section=lic.Section(display_name="Flower 2", type=lic.SECTION_TYPE_CROP)
        )
    ).name
    return license_, section


def new_sensor(channel: grpc.Channel, license_: str, section: str, name: str = "canopy temp") -> pb.Sensor:
    return telemetry(channel).CreateSensor(
        pb.CreateSensorRequest(
            parent=license_,
            sensor=pb.Sensor(
                display_name=name,
                section=section,
                metric=pb.METRIC_TEMPERATURE,
                unit=CELSIUS,
                reporting_interval=duration_pb2.Duration(seconds=5),
            ),
        )
    )


def reading(sensor_id: str, at: datetime, value: float, unit: int = CELSIUS) -> pb.Reading:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(at)
    return pb.Reading(sensor_id=sensor_id, observe_time=t, value=value, unit=unit)  # type: ignore[arg-type]


class Gateway:
    """A gateway: numbered batches, kept until acknowledged, replayed after a broken stream."""

    def __init__(self, license_: str, gateway_id: str, batches: list[list[pb.Reading]], window: int = 16):
        self.license = license_
        self.gateway_id = gateway_id
        self.unacked: dict[int, list[pb.Reading]] = {i + 1: b for i, b in enumerate(batches)}
        self.acks: dict[int, pb.IngestReadingsResponse] = {}
        self.window = window
        self.streams = 0

    def run(self, target: str, on_ack: Any = None) -> None:
        """One stream: send every unacknowledged batch in order, read acks until done or broken."""
        self.streams += 1
        slots = threading.Semaphore(self.window)
        stop = threading.Event()
        todo = sorted(self.unacked)

        def requests() -> Iterator[pb.IngestReadingsRequest]:
            for n, seq in enumerate(todo):
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                first = n == 0
                yield pb.IngestReadingsRequest(
                    parent=self.license if first else "",
                    gateway_id=self.gateway_id if first else "",
                    sequence=seq,
                    readings=self.unacked[seq],
                )

        with grpc.insecure_channel(target) as channel:
            try:
                for ack in telemetry(channel).IngestReadings(requests(), metadata=ADMIN, timeout=60):
                    assert ack.sequence == todo[len(self.acks_in(todo))], "acks come in sequence order"
                    self.acks[ack.sequence] = ack
                    del self.unacked[ack.sequence]
                    slots.release()
                    if on_ack is not None:
                        on_ack(ack)
            finally:
                stop.set()

    def acks_in(self, seqs: list[int]) -> list[int]:
        return [s for s in seqs if s in self.acks and s not in self.unacked]


def db_counts(url: str, sensor_ids: list[str]) -> tuple[int, int]:
    """(readings stored, distinct (sensor, observe_time)) of the sensors, read from PostgreSQL."""

    async def run() -> tuple[int, int]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(
                            "SELECT count(*), count(DISTINCT (r.sensor_key, r.observe_time)) FROM readings r "
                            "JOIN sensors s ON s.key = r.sensor_key WHERE s.id = ANY(:ids)"
                        ),
                        {"ids": sensor_ids},
                    )
                ).one()
        finally:
            await engine.dispose()
        return int(row[0]), int(row[1])

    return asyncio.run(run())


def test_sensor_lifecycle_and_access(channel: grpc.Channel) -> None:
    license_, section = make_site(channel)
    stub = telemetry(channel)
    sensor = new_sensor(channel, license_, section)
    assert sensor.status == pb.SENSOR_STATUS_NEVER_REPORTED
    assert stub.GetSensor(pb.GetSensorRequest(name=sensor.name)) == sensor
    listed = stub.ListSensors(
        pb.ListSensorsRequest(
            parent=license_, filter=f'section = "{section}" AND metric = METRIC_TEMPERATURE'
        )
    )
    assert [s.name for s in listed.sensors] == [sensor.name]
    assert not stub.ListSensors(pb.ListSensorsRequest(parent=license_, filter="metric = METRIC_CO2")).sensors
    with pytest.raises(grpc.RpcError) as err:  # the contract's CEL: a percent temperature sensor
        stub.CreateSensor(
            pb.CreateSensorRequest(
                parent=license_,
                sensor=pb.Sensor(
                    display_name="x",
                    section=section,
                    metric=pb.METRIC_TEMPERATURE,
                    unit=pb.MEASUREMENT_UNIT_PERCENT,
                    reporting_interval=duration_pb2.Duration(seconds=5),
                ),
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def changed(**fields: Any) -> pb.Sensor:  # only what changes, with the mask (AIP-134)
        return pb.Sensor(name=sensor.name, etag=sensor.etag, **fields)

    renamed = stub.UpdateSensor(
        pb.UpdateSensorRequest(
            sensor=changed(display_name="north"), update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
        )
    )
    assert (renamed.display_name, renamed.etag != sensor.etag) == ("north", True)
    assert (renamed.metric, renamed.unit, renamed.section) == (sensor.metric, sensor.unit, sensor.section)
    with pytest.raises(grpc.RpcError) as err:  # the old etag is stale now
        stub.UpdateSensor(
            pb.UpdateSensorRequest(
                sensor=changed(display_name="south"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
    assert err.value.code() == grpc.StatusCode.ABORTED
    other_license, _ = make_site(channel)
    stranger = auth.bearer(
        auth.mint(f"users/t-{uuid.uuid4().hex[:6]}", {other_license.split("/")[1]: ["admin"]})
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSensor(pb.GetSensorRequest(name=sensor.name), metadata=stranger)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stub.DeleteSensor(pb.DeleteSensorRequest(name=sensor.name, request_id="del-1"))
    stub.DeleteSensor(pb.DeleteSensorRequest(name=sensor.name, request_id="del-1"))  # a retry succeeds
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSensor(pb.GetSensorRequest(name=sensor.name))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_gateway_stream_stores_what_was_acknowledged(
    channel: grpc.Channel, stack: EdgeProcess, e2e_pg_url: str
) -> None:
    license_, section = make_site(channel)
    sensors = [new_sensor(channel, license_, section, f"probe {i}") for i in range(4)]
    ids = [s.name.rsplit("/", 1)[1] for s in sensors]
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    batches = [
        [reading(ids[j % 4], t0 + timedelta(seconds=b * 100 + j // 4), 20 + (j % 7)) for j in range(400)]
        + [reading(ids[0], t0, 500.0), pb.Reading(sensor_id=ids[1], value=1.0, unit=CELSIUS)]
        for b in range(12)
    ]
    seen: list[pb.SensorReading] = []
    watch = telemetry(channel).WatchReadings(
        pb.WatchReadingsRequest(parent=license_, sensors=[sensors[2].name]), timeout=30
    )

    def collect() -> None:
        for message in watch:
            seen.extend(message.readings)
            if len(seen) >= 12 * 100:
                return

    watcher = threading.Thread(target=collect)
    watcher.start()
    time.sleep(0.5)  # the watch is open before the first commit
    gateway = Gateway(license_, "gw-e2e", batches)
    gateway.run(stack.server.target)
    assert not gateway.unacked
    accepted = sum(a.accepted_count for a in gateway.acks.values())
    assert accepted == 12 * 400
    first = gateway.acks[1]
    assert [(r.index, r.reason) for r in first.rejected_readings] == [
        (400, pb.REJECTION_REASON_OUT_OF_RANGE),
        (401, pb.REJECTION_REASON_MALFORMED),
    ]
    assert db_counts(e2e_pg_url, ids) == (accepted, accepted)
    # Replaying acknowledged batches on a new stream stores nothing and repeats the acks.
    again = Gateway(license_, "gw-e2e", batches[:3])
    again.run(stack.server.target)
    assert [(a.replayed, a.accepted_count) for a in again.acks.values()] == [(True, 400)] * 3
    assert again.acks[1].rejected_readings == first.rejected_readings
    assert db_counts(e2e_pg_url, ids) == (accepted, accepted)
    watcher.join(10)
    assert len(seen) == 12 * 100
    assert {r.sensor for r in seen} == {sensors[2].name}
    # The aggregates agree with what was acknowledged.
    agg = telemetry(channel).QueryAggregates(
        pb.QueryAggregatesRequest(
            parent=license_,
            section=section,
            metric=pb.METRIC_TEMPERATURE,
            start_time=timestamp_pb2.Timestamp(seconds=int((t0 - timedelta(hours=1)).timestamp())),
            end_time=timestamp_pb2.Timestamp(seconds=int((t0 + timedelta(hours=2)).timestamp())),
            resolution=pb.RESOLUTION_HOUR,
            unit=pb.MEASUREMENT_UNIT_FAHRENHEIT,
        )
    )
    assert sum(b.count for b in agg.buckets) == accepted
    assert min(b.min for b in agg.buckets) == pytest.approx(68.0)  # 20 °C
    assert max(b.max for b in agg.buckets) == pytest.approx(78.8)  # 26 °C


def stored_values(url: str, sensor_id: str) -> list[tuple[datetime, float]]:
    """(observe_time, value) of a sensor's stored readings, oldest first."""

    async def run() -> list[tuple[datetime, float]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT r.observe_time, r.value FROM readings r "
                        "JOIN sensors s ON s.key = r.sensor_key WHERE s.id = :id ORDER BY r.observe_time"
                    ),
                    {"id": sensor_id},
                )
                return [(row[0], float(row[1])) for row in rows]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_columnar_batches_are_checked_reading_by_reading(
    channel: grpc.Channel, stack: EdgeProcess, e2e_pg_url: str
) -> None:
    license_, section = make_site(channel)
    a, b = (new_sensor(channel, license_, section, f"col {i}").name.rsplit("/", 1)[1] for i in range(2))
    unknown = "01JZ" + "0" * 22
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    us = int(t0.timestamp()) * 1_000_000
    old = us - 40 * 86_400 * 1_000_000
    columns = pb.ReadingColumns(
        sensor_ids=[a, b, unknown],
        units=[CELSIUS, pb.MEASUREMENT_UNIT_FAHRENHEIT, CELSIUS],
        #               ok     ok(°F)  unknown nan    range  dup    old    past the sensors  ok
        sensor_indexes=[0, 1, 2, 0, 0, 0, 0, 7, 0],
        observe_unix_micros=[us, us, us, us + 1, us + 2, us, old, us, us + 250_000],
        values=[21.5, 212.0, 20.0, math.nan, 500.0, 22.0, 20.0, 20.0, 23.0],
    )
    rows = [
        reading(a, t0 - timedelta(seconds=1), 20.0),
        reading(b, t0, 300.0),
    ]  # b's unit is °C: 300 is too hot
    first = pb.IngestReadingsRequest(
        parent=license_, gateway_id="gw-columns", sequence=1, readings=rows, columns=columns
    )
    with grpc.insecure_channel(stack.server.target) as ch:
        (ack,) = list(telemetry(ch).IngestReadings(iter([first]), metadata=ADMIN, timeout=30))
    reasons = [(r.index, r.sensor, r.reason) for r in ack.rejected_readings]
    assert reasons == [
        (1, b, pb.REJECTION_REASON_OUT_OF_RANGE),
        (4, unknown, pb.REJECTION_REASON_UNKNOWN_SENSOR),
        (5, a, pb.REJECTION_REASON_NON_FINITE),
        (6, a, pb.REJECTION_REASON_OUT_OF_RANGE),
        (7, a, pb.REJECTION_REASON_DUPLICATE),
        (8, a, pb.REJECTION_REASON_TOO_OLD),
        (9, "", pb.REJECTION_REASON_MALFORMED),
    ]
    assert ack.accepted_count == 4  # one row and three column readings
    assert stored_values(e2e_pg_url, a) == [
        (t0 - timedelta(seconds=1), 20.0),
        (t0, 21.5),
        (t0 + timedelta(microseconds=250_000), 23.0),
    ]
    assert stored_values(e2e_pg_url, b) == [(t0, pytest.approx(100.0))]  # 212 °F stored as the sensor's °C
    # A replay stores nothing and repeats the acknowledgement; bad columns end the stream.
    with grpc.insecure_channel(stack.server.target) as ch:
        (again,) = list(telemetry(ch).IngestReadings(iter([first]), metadata=ADMIN, timeout=30))
        assert (again.replayed, again.accepted_count) == (True, 4)
        assert again.rejected_readings == ack.rejected_readings
        uneven = pb.IngestReadingsRequest(
            parent=license_,
            gateway_id="gw-columns",
            sequence=2,
            columns=pb.ReadingColumns(sensor_ids=[a], units=[CELSIUS], sensor_indexes=[0, 0], values=[1.0]),
        )
        with pytest.raises(grpc.RpcError) as err:
            list(telemetry(ch).IngestReadings(iter([uneven]), metadata=ADMIN, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "columns" in (err.value.details() or "")
    assert db_counts(e2e_pg_url, [a, b]) == (4, 4)


def test_batch_ingest_is_idempotent_by_request_id(channel: grpc.Channel, e2e_pg_url: str) -> None:
    license_, section = make_site(channel)
    sensor_id = new_sensor(channel, license_, section).name.rsplit("/", 1)[1]
    now = datetime.now(UTC)
    request = pb.BatchIngestReadingsRequest(
        parent=license_,
        readings=[reading(sensor_id, now - timedelta(seconds=i), 21.0) for i in range(10)]
        + [reading(sensor_id, now, 21.0, pb.MEASUREMENT_UNIT_PPM)],
        request_id=f"batch-{uuid.uuid4()}",
    )
    first = telemetry(channel).BatchIngestReadings(request)
    retry = telemetry(channel).BatchIngestReadings(request)
    assert first.accepted_count == retry.accepted_count == 10
    assert [r.reason for r in retry.rejected_readings] == [pb.REJECTION_REASON_WRONG_UNIT]
    assert db_counts(e2e_pg_url, [sensor_id]) == (10, 10)


def test_stream_faults_end_the_stream(channel: grpc.Channel, stack: EdgeProcess) -> None:
    license_, _ = make_site(channel)
    other, _ = make_site(channel)

    def stream(
        messages: list[pb.IngestReadingsRequest], metadata: Any = ADMIN
    ) -> tuple[int, grpc.StatusCode]:
        acks = 0
        with grpc.insecure_channel(stack.server.target) as ch:
            try:
                for _ in telemetry(ch).IngestReadings(iter(messages), metadata=metadata, timeout=10):
                    acks += 1
            except grpc.RpcError as err:
                return acks, err.code()
        return acks, grpc.StatusCode.OK

    def msg(seq: int, parent: str = "", gw: str = "") -> pb.IngestReadingsRequest:
        return pb.IngestReadingsRequest(parent=parent, gateway_id=gw, sequence=seq)

    assert stream([msg(1, license_, "g1"), msg(2), msg(3, license_, "g1")]) == (3, grpc.StatusCode.OK)
    assert stream([msg(1, license_, "g2"), msg(2, other)]) == (1, grpc.StatusCode.FAILED_PRECONDITION)
    assert stream([msg(5, license_, "g3"), msg(5)]) == (1, grpc.StatusCode.FAILED_PRECONDITION)
    assert stream([msg(1)]) == (0, grpc.StatusCode.INVALID_ARGUMENT)
    too_many = pb.IngestReadingsRequest(sequence=2, readings=[pb.Reading(sensor_id="01JS" + "0" * 22)] * 5001)
    assert stream([msg(1, license_, "g4"), too_many]) == (1, grpc.StatusCode.INVALID_ARGUMENT)
    stranger = auth.bearer(auth.mint(f"users/t-{uuid.uuid4().hex[:6]}", {other.split("/")[1]: ["admin"]}))
    assert stream([msg(1, license_, "g5")], stranger) == (0, grpc.StatusCode.PERMISSION_DENIED)
    assert stream([msg(1, license_, "g5")], None) == (0, grpc.StatusCode.UNAUTHENTICATED)


def test_sigkill_mid_stream_then_replay_stores_every_reading_once(
    channel: grpc.Channel, e2e_pg_url: str, tmp_path: Path
) -> None:
    license_, section = make_site(channel)
    ids = [new_sensor(channel, license_, section, f"k{i}").name.rsplit("/", 1)[1] for i in range(5)]
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    batches = [
        [reading(ids[j % 5], t0 + timedelta(seconds=b * 200 + j // 5), 18 + (j % 9)) for j in range(1000)]
        for b in range(40)
    ]
    server = ServerProcess(database_url=e2e_pg_url, data_dir=tmp_path / "s1")
    server.start()
    killed = threading.Event()

    def kill_after_some(ack: pb.IngestReadingsResponse) -> None:
        if ack.sequence == 8 and not killed.is_set():
            killed.set()
            assert server.proc is not None
            server.proc.kill()  # SIGKILL: no graceful anything

    gateway = Gateway(license_, "gw-kill", batches, window=16)
    try:
        with pytest.raises(grpc.RpcError):
            gateway.run(server.target, on_ack=kill_after_some)
        server.stop()
        assert killed.is_set()
        assert gateway.unacked  # some batches were in flight, unacknowledged
        restarted = ServerProcess(database_url=e2e_pg_url, data_dir=tmp_path / "s2")
        restarted.start()
        try:
            gateway.run(restarted.target)
        finally:
            restarted.stop()
    finally:
        server.stop()
    assert not gateway.unacked
    assert gateway.streams == 2
    # Replays (batches committed but not acknowledged before the kill) repeat their original
    # counts, so every batch counts once whichever server committed it.
    assert sum(a.accepted_count for a in gateway.acks.values()) == 40 * 1000
    assert db_counts(e2e_pg_url, ids) == (40 * 1000, 40 * 1000)
