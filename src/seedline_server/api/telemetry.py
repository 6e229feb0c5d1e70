"""TelemetryService over gRPC: sensors, streaming and batch ingest, live readings, aggregates.

The alert RPCs live in :mod:`seedline_server.api.telemetry_alerts` (:class:`AlertRpcs`), combined
with the core ones in :class:`TelemetryServicer`.

IngestReadings binds the stream to the ``parent`` and ``gateway_id`` of its first message: the
interceptor authorizes the caller on that license once, at the start, and this servicer refuses
(ending the stream) any later message that names another license or gateway, so one check covers
every batch. At most ``stream_window`` batches of a stream are being committed at once; while the
window is full the servicer stops reading the stream, and HTTP/2 flow control slows the gateway.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
import numpy as np
from google.protobuf import duration_pb2, empty_pb2
from seedline.telemetry.v1 import telemetry_pb2 as pb
from seedline.telemetry.v1 import telemetry_pb2_grpc

from seedline_server.api import names
from seedline_server.api.convert import call, dt, replay, ts
from seedline_server.api.interceptor import check_with, validate_masked_only
from seedline_server.api.telemetry_alerts import AlertRpcs
from seedline_server.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
)
from seedline_server.service.registry import etag
from seedline_server.service.uow import Database, UnitOfWork, now
from seedline_server.store.telemetry_models import Sensor
from seedline_server.telemetry import ingest, queries, sensors
from seedline_server.telemetry.alerts import AlertHub
from seedline_server.telemetry.ingest import Ack, Columns, IngestPipeline, Rejected
from seedline_server.telemetry.watch import Interest, ReadingFeed

Ctx = grpc.aio.ServicerContext[Any, Any]
_SENSOR_NAME = re.compile(r"^licenses/([0-9A-HJKMNP-TV-Z]{26})/sensors/([0-9A-HJKMNP-TV-Z]{26})$")
_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
_PARENT = re.compile(r"^licenses/[^/]+$")
_GATEWAY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._:-]{0,63})?$")
MAX_READINGS = 5000
_METRICS = {v.name: v.number for v in pb.Metric.DESCRIPTOR.values if v.number}
_STATUSES = {v.name: v.number for v in pb.SensorStatus.DESCRIPTOR.values if v.number}
_UNITS = frozenset(v.number for v in pb.MeasurementUnit.DESCRIPTOR.values if v.number)


def ingest_violations(request: Any) -> list[FieldViolation]:
    """The contract's rules of IngestReadingsRequest / BatchIngestReadingsRequest, checked by hand.

    Equivalent to protovalidate on these messages (readings are exempt item by item there:
    ``IGNORE_ALWAYS``), at a fraction of its cost per message; tests compare the two.
    """
    out = []
    batch = isinstance(request, pb.BatchIngestReadingsRequest)
    if (request.parent or batch) and _PARENT.match(request.parent) is None:
        out.append(FieldViolation("parent", "value does not match regex pattern [string.pattern]"))
    if _GATEWAY.match(request.gateway_id) is None:
        out.append(FieldViolation("gateway_id", "value does not match regex pattern [string.pattern]"))
    n = len(request.readings)
    if n > MAX_READINGS:
        out.append(FieldViolation("readings", f"value must contain no more than {MAX_READINGS} item(s)"))
    if batch:
        if n < 1:
            out.append(FieldViolation("readings", "value must contain at least 1 item(s)"))
        if len(request.request_id) > 64:
            out.append(FieldViolation("request_id", "value length must be at most 64 characters"))
    else:
        if request.sequence <= 0:
            out.append(FieldViolation("sequence", "value must be greater than 0 [uint64.gt]"))
        rows = 0
        if request.HasField("columns"):
            out.extend(_column_violations(request.columns))
            rows = len(request.columns.sensor_indexes)
        if n + rows > MAX_READINGS:
            out.append(
                FieldViolation(
                    "(request)", f"readings and columns together hold at most {MAX_READINGS} readings"
                )
            )
    return out


def _column_violations(columns: pb.ReadingColumns) -> list[FieldViolation]:
    """The contract's rules of ReadingColumns (see :func:`ingest_violations`)."""
    out = []
    ids, units = columns.sensor_ids, columns.units
    rows = len(columns.sensor_indexes)
    if len(units) != len(ids) or len(columns.observe_unix_micros) != rows or len(columns.values) != rows:
        out.append(
            FieldViolation(
                "columns",
                "sensor_ids and units have the same length, and so have sensor_indexes, "
                "observe_unix_micros and values",
            )
        )
    for name, size in (
        ("sensor_ids", len(ids)),
        ("units", len(units)),
        ("sensor_indexes", rows),
        ("observe_unix_micros", len(columns.observe_unix_micros)),
        ("values", len(columns.values)),
    ):
        if size > MAX_READINGS:
            out.append(
                FieldViolation(f"columns.{name}", f"value must contain no more than {MAX_READINGS} item(s)")
            )
    for i, sensor_id in enumerate(ids):
        if _ULID.match(sensor_id) is None:
            out.append(
                FieldViolation(
                    f"columns.sensor_ids[{i}]", "value does not match regex pattern [string.pattern]"
                )
            )
    for i, unit in enumerate(units):
        if unit not in _UNITS:
            out.append(
                FieldViolation(f"columns.units[{i}]", "value must be a defined unit other than 0 [enum]")
            )
    return out


check_with(pb.IngestReadingsRequest, ingest_violations)
check_with(pb.BatchIngestReadingsRequest, ingest_violations)


def sensor_pb(row: Sensor, at: datetime | None = None) -> pb.Sensor:
    """Wire form of a sensor."""
    lic = row.license_id
    return pb.Sensor(
        name=sensors.sensor_name(lic, row.id),
        display_name=row.display_name,
        section=f"licenses/{lic}/sections/{row.section_id}",
        metric=row.metric,  # type: ignore[arg-type]
        unit=row.unit,  # type: ignore[arg-type]
        reporting_interval=duration_pb2.Duration(seconds=row.reporting_interval_seconds),
        last_observe_time=ts(row.last_observe_time),
        status=sensors.status_of(row, at or now()),  # type: ignore[arg-type]
        create_time=ts(row.create_time),
        update_time=ts(row.update_time),
        etag=etag(row.id, row.version),
    )


def parse_readings(license_id: str, readings: Any) -> tuple[Columns, list[int], list[Rejected]]:
    """Split a protobuf batch into (readings as columns, their batch positions, refused ones).

    Refused here: malformed readings and sensor names of another license; the pipeline
    validates the rest.
    """
    ids: list[str] = []
    micros: list[int] = []
    values: list[float] = []
    units: list[int] = []
    where: list[int] = []
    refused: list[Rejected] = []
    good_ids: set[str] = set()  # short ids already seen to be ULIDs (a batch repeats few sensors)
    for i, r in enumerate(readings):
        sensor_id = r.sensor_id  # the oneof's usual member; empty when the reading uses `sensor`
        if sensor_id:
            label = sensor_id
            if sensor_id not in good_ids:
                if _ULID.match(sensor_id) is None:
                    refused.append(Rejected(i, label, ingest.MALFORMED, "sensor_id is not a ULID"))
                    continue
                good_ids.add(sensor_id)
        elif label := r.sensor:
            match = _SENSOR_NAME.match(label)
            if match is None:
                refused.append(Rejected(i, label, ingest.MALFORMED, "sensor is not a sensor resource name"))
                continue
            if match.group(1) != license_id:
                refused.append(
                    Rejected(i, label, ingest.OTHER_LICENSE, f"the sensor is not of licenses/{license_id}")
                )
                continue
            sensor_id = match.group(2)
        else:
            refused.append(Rejected(i, "", ingest.MALFORMED, "the reading names no sensor"))
            continue
        unit = r.unit
        t = r.observe_time
        whole, nanos = t.seconds, t.nanos
        if unit == 0 or (not whole and not nanos and not r.HasField("observe_time")):
            missing = "unit" if unit == 0 else "observe_time"
            refused.append(Rejected(i, label, ingest.MALFORMED, f"the reading has no {missing}"))
            continue
        ids.append(sensor_id)
        micros.append(whole * 1_000_000 + nanos // 1000)
        values.append(r.value)
        units.append(unit)
        where.append(i)
    return Columns.build(ids, micros, values, units), where, refused


def parse_columns(columns: pb.ReadingColumns, offset: int) -> tuple[Columns, list[int], list[Rejected]]:
    """The readings of a batch's ``columns`` (batch indexes from ``offset``), like :func:`parse_readings`.

    The message was validated (equal lengths, ULIDs, units); a ``sensor_indexes`` entry past
    ``sensor_ids`` is refused as malformed.
    """
    sensor_ids = list(columns.sensor_ids)
    index = np.array(columns.sensor_indexes, dtype=np.int64)
    micros = np.array(columns.observe_unix_micros, dtype=np.int64)
    values = np.array(columns.values, dtype=np.float64)
    units = np.array(columns.units, dtype=np.int64)
    where = np.arange(offset, offset + len(index), dtype=np.int64)
    refused: list[Rejected] = []
    bad = index >= len(sensor_ids)
    if bad.any():
        refused = [
            Rejected(offset + i, "", ingest.MALFORMED, f"sensor_indexes[{i}] is past the end of sensor_ids")
            for i in np.flatnonzero(bad).tolist()
        ]
        good = ~bad
        index, micros, values, where = index[good], micros[good], values[good], where[good]
    return Columns(sensor_ids, index, micros, values, units[index]), where.tolist(), refused


def rejections(ack: Ack, readings: Any) -> list[pb.RejectedReading]:
    """The batch's rejections (in batch order), naming the sensor as the reading did."""
    out = []
    for r in ack.rejected:
        label = r.sensor
        if 0 <= r.index < len(readings) and readings[r.index].WhichOneof("sensor_ref") == "sensor":
            label = readings[r.index].sensor
        out.append(pb.RejectedReading(index=r.index, sensor=label, reason=r.reason, message=r.message))  # type: ignore[arg-type]
    return out


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Mark a batch task's outcome as seen (its stream may have ended before its ack)."""
    if not task.cancelled():
        task.exception()


validate_masked_only(pb.UpdateSensorRequest, "sensor")


class TelemetryCore(telemetry_pb2_grpc.TelemetryServiceServicer):
    """Sensors, IngestReadings, BatchIngestReadings, WatchReadings and QueryAggregates."""

    def __init__(
        self,
        db: Database,
        pipeline: IngestPipeline,
        feed: ReadingFeed,
        *,
        stream_window: int = 4,
        heartbeat_seconds: float = 30.0,
    ) -> None:
        self._db = db
        self._pipeline = pipeline
        self._feed = feed
        self._window = stream_window
        self._heartbeat = heartbeat_seconds

    # --- sensors -------------------------------------------------------------------------------

    async def CreateSensor(self, request: pb.CreateSensorRequest, context: Ctx) -> pb.Sensor:
        license_id = names.license_id(request.parent)
        s = request.sensor
        new = sensors.NewSensor(
            section_id=names.same_license(license_id, s.section, "sections", "sensor.section"),
            display_name=s.display_name,
            metric=s.metric,
            unit=s.unit,
            reporting_interval_seconds=s.reporting_interval.seconds,
        )

        async def run(uow: UnitOfWork) -> pb.Sensor:
            return sensor_pb(await sensors.create_sensor(uow, license_id, new))

        return await self._db.write(call(request.request_id), run, replay("CreateSensor", request, pb.Sensor))

    async def GetSensor(self, request: pb.GetSensorRequest, context: Ctx) -> pb.Sensor:
        license_id, sensor_id = names.child(request.name, "sensors")

        async def run(uow: UnitOfWork) -> pb.Sensor:
            return sensor_pb(await sensors.get_sensor(uow, license_id, sensor_id))

        return await self._db.read(call(), run)

    async def ListSensors(self, request: pb.ListSensorsRequest, context: Ctx) -> pb.ListSensorsResponse:
        license_id = names.license_id(request.parent)
        clauses = sensors.parse_filter(request.filter, _METRICS, _STATUSES)

        async def run(uow: UnitOfWork) -> pb.ListSensorsResponse:
            page = await sensors.list_sensors(
                uow, license_id, clauses, request.page_size, request.page_token, request.filter
            )
            at = now()
            return pb.ListSensorsResponse(
                sensors=[sensor_pb(r, at) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def UpdateSensor(self, request: pb.UpdateSensorRequest, context: Ctx) -> pb.Sensor:
        s = request.sensor
        license_id, sensor_id = names.child(s.name, "sensors", "sensor.name")
        mask = list(request.update_mask.paths)
        section_id = ""
        if s.section and (not mask or "section" in mask or mask == ["*"]):
            section_id = names.same_license(license_id, s.section, "sections", "sensor.section")
        changes = sensors.SensorChanges(
            display_name=s.display_name,
            section_id=section_id,
            reporting_interval_seconds=s.reporting_interval.seconds
            if s.HasField("reporting_interval")
            else None,
        )
        if not section_id and (not mask or "section" in mask or mask == ["*"]):
            raise InvalidArgument(
                "sensor.section is required", [FieldViolation("sensor.section", "must be set when updated")]
            )

        async def run(uow: UnitOfWork) -> pb.Sensor:
            return sensor_pb(await sensors.update_sensor(uow, license_id, sensor_id, changes, mask, s.etag))

        out = await self._db.write(call(), run)
        self._pipeline.sensors.invalidate(sensor_id)
        return out

    async def DeleteSensor(self, request: pb.DeleteSensorRequest, context: Ctx) -> empty_pb2.Empty:
        license_id, sensor_id = names.child(request.name, "sensors")

        async def run(uow: UnitOfWork) -> empty_pb2.Empty:
            await sensors.delete_sensor(uow, license_id, sensor_id, request.etag)
            return empty_pb2.Empty()

        out = await self._db.write(
            call(request.request_id), run, replay("DeleteSensor", request, empty_pb2.Empty)
        )
        self._pipeline.sensors.invalidate(sensor_id)
        return out

    # --- ingest --------------------------------------------------------------------------------

    async def _batch(
        self,
        license_id: str,
        gateway_id: str,
        sequence: int | None,
        readings: Any,
        columns: pb.ReadingColumns | None = None,
    ) -> tuple[Ack, list[pb.RejectedReading]]:
        parts = [parse_readings(license_id, readings)]
        if columns is not None:
            parts.append(parse_columns(columns, len(readings)))
        ack = await self._pipeline.submit_columns(
            license_id=license_id,
            gateway_id=gateway_id,
            sequence=sequence,
            columns=Columns.concat([p[0] for p in parts]),
            positions=[i for p in parts for i in p[1]],
            refused=[r for p in parts for r in p[2]],
        )
        return ack, rejections(ack, readings)

    async def IngestReadings(
        self, request_iterator: AsyncIterator[pb.IngestReadingsRequest], context: Ctx
    ) -> AsyncIterator[pb.IngestReadingsResponse]:
        window = asyncio.Semaphore(self._window)
        acks: asyncio.Queue[asyncio.Task[pb.IngestReadingsResponse] | BaseException | None] = asyncio.Queue()

        async def one(
            license_id: str, gateway_id: str, req: pb.IngestReadingsRequest
        ) -> pb.IngestReadingsResponse:
            try:
                ack, rejected = await self._batch(
                    license_id,
                    gateway_id,
                    req.sequence,
                    req.readings,
                    req.columns if req.HasField("columns") else None,
                )
            finally:
                window.release()
            return pb.IngestReadingsResponse(
                sequence=req.sequence,
                accepted_count=ack.accepted,
                rejected_readings=rejected,
                replayed=ack.replayed,
            )

        async def read() -> None:
            license_id = gateway_id = ""
            last = 0
            try:
                async for req in request_iterator:
                    if not license_id:
                        if not req.parent or not req.gateway_id:
                            raise InvalidArgument(
                                "the first message of a stream names the license (parent) and the gateway",
                                [FieldViolation("parent" if not req.parent else "gateway_id", "required")],
                            )
                        license_id, gateway_id = names.license_id(req.parent), req.gateway_id
                    elif (req.parent and req.parent != f"licenses/{license_id}") or (
                        req.gateway_id and req.gateway_id != gateway_id
                    ):
                        raise FailedPrecondition(
                            "parent and gateway_id bind the whole stream; open another stream to change them"
                        )
                    if req.sequence <= last:
                        raise FailedPrecondition(
                            f"sequence {req.sequence} does not increase (last {last}) within the stream",
                            metadata={"sequence": str(req.sequence), "last": str(last)},
                        )
                    last = req.sequence
                    await window.acquire()
                    task = asyncio.create_task(one(license_id, gateway_id, req))
                    task.add_done_callback(_retrieved)  # a stream cut short never reads its result
                    await acks.put(task)
                await acks.put(None)
            except BaseException as exc:
                await acks.put(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await acks.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield await item
        finally:
            reader.cancel()

    async def BatchIngestReadings(
        self, request: pb.BatchIngestReadingsRequest, context: Ctx
    ) -> pb.BatchIngestReadingsResponse:
        license_id = names.license_id(request.parent)
        # A request id is de-duplicated like a gateway's single batch: "~" keeps it apart from
        # real gateway ids (which cannot contain it).
        if request.request_id:
            gateway, sequence = f"~{request.request_id}", 1
        else:
            gateway, sequence = request.gateway_id, None
        ack, rejected = await self._batch(license_id, gateway, sequence, request.readings)
        return pb.BatchIngestReadingsResponse(accepted_count=ack.accepted, rejected_readings=rejected)

    # --- read-back -----------------------------------------------------------------------------

    async def WatchReadings(
        self, request: pb.WatchReadingsRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchReadingsResponse]:
        license_id = names.license_id(request.parent)
        interest = Interest(
            license_id=license_id,
            section_ids=frozenset(
                names.same_license(license_id, s, "sections", f"sections[{i}]")
                for i, s in enumerate(request.sections)
            ),
            sensor_ids=frozenset(
                names.same_license(license_id, s, "sensors", f"sensors[{i}]")
                for i, s in enumerate(request.sensors)
            ),
            metrics=frozenset(int(m) for m in request.metrics),
        )
        watcher = self._feed.open(interest)
        try:
            while True:
                try:
                    batch = await asyncio.wait_for(watcher.queue.get(), self._heartbeat)
                except TimeoutError:
                    yield pb.WatchReadingsResponse()
                    continue
                yield pb.WatchReadingsResponse(
                    readings=[
                        pb.SensorReading(
                            sensor=sensors.sensor_name(r.license_id, r.sensor_id),
                            section=f"licenses/{r.license_id}/sections/{r.section_id}",
                            metric=r.metric,  # type: ignore[arg-type]
                            observe_time=ts(r.observe_time),
                            value=r.value,
                            unit=r.unit,  # type: ignore[arg-type]
                        )
                        for r in batch
                    ]
                )
        finally:
            self._feed.close(watcher)

    async def QueryAggregates(
        self, request: pb.QueryAggregatesRequest, context: Ctx
    ) -> pb.QueryAggregatesResponse:
        license_id = names.license_id(request.parent)
        start, end = dt(request, "start_time"), dt(request, "end_time")
        assert start is not None
        assert end is not None
        q = queries.Query(
            license_id=license_id,
            sensor_id=names.same_license(license_id, request.sensor, "sensors", "sensor")
            if request.sensor
            else "",
            section_id=names.same_license(license_id, request.section, "sections", "section")
            if request.section
            else "",
            metric=request.metric,
            start=start,
            end=end,
            resolution=request.resolution,
            unit=request.unit,
            time_zone=request.time_zone,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        s, unit, buckets, token = await queries.aggregate(self._pipeline.engine, q)
        return pb.QueryAggregatesResponse(
            metric=s.metric,  # type: ignore[arg-type]
            unit=unit,  # type: ignore[arg-type]
            buckets=[
                pb.AggregateBucket(
                    start_time=ts(b.start),
                    min=b.min,
                    avg=b.avg,
                    max=b.max,
                    count=b.count,
                    sensor=sensors.sensor_name(license_id, b.sensor_id) if b.sensor_id else "",
                )
                for b in buckets
            ],
            next_page_token=token,
        )


class TelemetryServicer(AlertRpcs, TelemetryCore):
    """Implements seedline.telemetry.v1.TelemetryService: the core RPCs and the alert RPCs."""

    def __init__(
        self,
        db: Database,
        pipeline: IngestPipeline,
        feed: ReadingFeed,
        alerts: AlertHub,
        *,
        stream_window: int = 4,
        heartbeat_seconds: float = 30.0,
    ) -> None:
        super().__init__(db, pipeline, feed, stream_window=stream_window, heartbeat_seconds=heartbeat_seconds)
        self._alerts = alerts
