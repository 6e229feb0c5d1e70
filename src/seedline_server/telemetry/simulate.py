"""Simulated gateways for demos, tests and benchmarks (``seedline telemetry simulate``).

:func:`simulate` optionally registers sensors (``CreateSensor``), then runs ``gateways``
simulated gateways, each on its own channel and ``IngestReadings`` stream, as the contract asks
of a real gateway: numbered batches with strictly increasing sequences, at most ``window``
batches unacknowledged, each batch kept until it is acknowledged, and after a broken stream a new
stream that replays the unacknowledged batches with their original sequences (the server
de-duplicates them, so the database holds every reading exactly once). It returns a
:class:`Summary`.

Values drift around plausible set points per metric (a mean-reverting random walk with a
lights-on/lights-off cycle and occasional spikes), clamped to the metric's physical range.
Each gateway owns a share of the sensors; every sensor gets one reading per tick of the
gateway's clock. When the number of readings is known in advance (``readings``, or
``duration`` with ``rate``) the clock is a compressed history ending now, one tick per sensor
reporting interval (at most 7 days back); otherwise the ticks follow the wall clock (never
repeating a time).
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from seedline.telemetry.v1 import telemetry_pb2 as pb
from seedline.telemetry.v1 import telemetry_pb2_grpc

from seedline_server.cli_grpc import status_details
from seedline_server.telemetry import ranges

__all__ = ["MAX_BATCH", "MAX_WINDOW", "SimulationError", "Summary", "describe", "simulate"]

MAX_BATCH = 5000  # readings per message (the contract's limit)
MAX_WINDOW = 16  # unacknowledged batches per stream (the contract's rule)
_INGEST = "/seedline.telemetry.v1.TelemetryService/IngestReadings"
_MAX_SPAN_US = 7 * 86_400 * 1_000_000  # how far back a compressed history may start
_MIN_STEP_US = 1000  # compressed ticks are at least 1 ms apart
_UNBOUNDED_RATE = 300_000.0  # readings/s assumed when sizing a clock whose total is unknown
_SPIKE_PROBABILITY = 1 / 2000
# A broken stream is retried; these end the gateway (they would fail again the same way).
_FATAL = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
_REASONS = {v.number: v.name.removeprefix("REJECTION_REASON_") for v in pb.RejectionReason.DESCRIPTOR.values}


class SimulationError(Exception):
    """The simulation could not start (bad arguments, no sensors, a refused registration)."""


class _Broken(Exception):
    """A stream ended without an error status: cancelled here, or closed early by the server."""


@dataclass(frozen=True)
class _Profile:
    """A metric's behaviour in its default unit: set points with lights on/off, noise, spike."""

    day: float
    night: float
    noise: float  # standard deviation of one step of the random walk
    spike: float  # size (and sign) of an occasional excursion


# Metric number -> profile, in the metric's default unit (ranges.default_unit).
_PROFILES: dict[int, _Profile] = {
    1: _Profile(25.5, 21.0, 0.08, 4.0),  # air temperature, °C
    2: _Profile(58.0, 65.0, 0.4, 12.0),  # relative humidity, %
    3: _Profile(1000.0, 480.0, 8.0, 400.0),  # CO2, ppm (enriched while the lights are on)
    4: _Profile(850.0, 0.0, 6.0, -500.0),  # PPFD, µmol/m²/s
    5: _Profile(1.2, 0.8, 0.01, 0.5),  # VPD, kPa
    6: _Profile(2.4, 2.4, 0.01, 0.8),  # substrate EC, mS/cm
    7: _Profile(6.0, 6.0, 0.01, 0.6),  # substrate pH
    8: _Profile(48.0, 52.0, 0.2, -12.0),  # substrate moisture, %
    9: _Profile(101.3, 101.3, 0.01, 0.8),  # air pressure, kPa
    10: _Profile(38.0, 38.0, 0.05, 5.0),  # DLI, mol/m²/d
    11: _Profile(20.0, 19.5, 0.03, 2.0),  # water temperature, °C
    12: _Profile(23.0, 21.0, 0.04, 2.5),  # substrate temperature, °C
    13: _Profile(1.8, 1.8, 0.01, 0.5),  # water EC, mS/cm
    14: _Profile(5.9, 5.9, 0.01, 0.5),  # water pH
    15: _Profile(8.0, 8.4, 0.03, -2.0),  # dissolved oxygen, mg/L
}


def _lights_on(t_us: int) -> bool:
    """An 18/6 photoperiod: lights on from 06:00 to 24:00 UTC."""
    return (t_us // 3_600_000_000) % 24 >= 6


class _SimSensor:
    """One sensor's value model: a mean-reverting walk around its set point, with spikes."""

    __slots__ = ("day", "high", "id", "low", "noise", "rng", "spike", "spike_size", "unit", "wrong_unit", "x")

    def __init__(self, sensor_id: str, metric: int, unit: int, rng: random.Random) -> None:
        profile = _PROFILES[metric]
        a, b = ranges.affine(ranges.default_unit(metric), unit)
        self.id = sensor_id
        self.unit = unit
        self.rng = rng
        self.noise = profile.noise * abs(a)
        self.spike_size = profile.spike * a
        bias = rng.uniform(-1.0, 1.0) * self.noise * 10
        self.day = (a * profile.day + b + bias, a * profile.night + b + bias)
        self.low, self.high = ranges.BOUNDS[(metric, unit)]
        self.x = self.day[0]
        self.spike = 0.0
        self.wrong_unit = ranges.CELSIUS if metric not in (1, 11, 12) else ranges.PPM

    def next(self, lights: bool) -> float:
        """The next value, in the sensor's unit."""
        target = self.day[0] if lights else self.day[1]
        rng = self.rng
        self.x += 0.05 * (target - self.x) + self.noise * rng.gauss(0.0, 1.0)
        if self.spike:
            self.spike *= 0.85
            if abs(self.spike) < self.noise:
                self.spike = 0.0
        elif rng.random() < _SPIKE_PROBABILITY:
            self.spike = self.spike_size * rng.uniform(0.6, 1.2)
        value = round(self.x + self.spike, 3)
        return self.low if value < self.low else self.high if value > self.high else value


@dataclass
class Summary:
    """What a simulation did. Readings "acknowledged" are those of acknowledged batches."""

    target: str
    license: str
    gateways: int
    sensors: list[str]  # resource names of the sensors the gateways reported for
    registered: int = 0  # sensors created by this run
    batches_sent: int = 0  # distinct batches (a batch sent again counts once)
    readings_sent: int = 0
    batches_acknowledged: int = 0
    readings_acknowledged: int = 0
    accepted: int = 0  # stored by the server (counting replayed acknowledgements' original counts)
    rejected: dict[str, int] = field(default_factory=dict)  # reason (e.g. OUT_OF_RANGE) -> readings
    resent_batches: int = 0  # batches sent again on a new stream after a broken one
    resent_readings: int = 0
    replayed_batches: int = 0  # acknowledgements marked `replayed` (committed before the break)
    reconnects: int = 0
    wall_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds, send to ack
    errors: list[str] = field(default_factory=list)  # gateways that gave up, and why

    @property
    def rejected_total(self) -> int:
        """Readings the server refused, all reasons."""
        return sum(self.rejected.values())

    @property
    def unacknowledged(self) -> int:
        """Readings sent but never acknowledged (only when a gateway gave up)."""
        return self.readings_sent - self.readings_acknowledged

    @property
    def readings_per_second(self) -> float:
        """Readings acknowledged per second of wall time."""
        return self.readings_acknowledged / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def latency(self, q: float) -> float | None:
        """The ``q`` quantile (0..1, nearest rank) of the acknowledgement latency in seconds."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class _Pending:
    """A batch kept until it is acknowledged."""

    data: bytes
    readings: int
    sent: float = 0.0


@dataclass
class _Run:
    """What the gateways share: the settings of the run and its summary."""

    target: str
    license: str
    metadata: tuple[tuple[str, str], ...]
    batch: int
    window: int
    rate: float | None  # readings/s per gateway
    deadline: float | None  # monotonic time after which no new batch starts
    stop: asyncio.Event
    invalid_fraction: float
    ack_timeout: float
    give_up_after: float
    summary: Summary
    on_progress: Callable[[int], None] | None
    columnar: bool = True


def _identity(data: bytes) -> bytes:
    return data


def _retry_delay(err: grpc.aio.AioRpcError) -> float | None:
    """The server's RetryInfo delay, if the error carries one."""
    for detail in status_details(err):
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


def _backoff(failures: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter: up to 0.1 s doubling per failure, at most 5 s."""
    return rng.uniform(0.05, min(5.0, 0.1 * 2 ** min(failures, 10)))


class _Gateway:
    """One simulated gateway: its sensors, clock, batches, window and reconnections."""

    def __init__(
        self,
        run: _Run,
        gateway_id: str,
        sensors: list[_SimSensor],
        quota: int | None,
        clock: tuple[int, int] | None,
        rng: random.Random,
    ) -> None:
        self.run = run
        self.gateway_id = gateway_id
        self.sensors = sensors
        self.quota = quota  # readings to generate; None: until the deadline or the stop event
        self.clock = clock  # (start, step) in µs of a compressed history; None: wall clock
        self.rng = rng
        self.unacked: dict[int, _Pending] = {}  # by sequence, in sequence order
        self.space = asyncio.Event()
        self.next_sequence = 1
        self.generated = 0
        self.tick = 0
        self.position = 0  # next sensor of the current tick
        self.tick_time = (0, 0, True)  # seconds, nanos, lights of the current tick
        self.last_us = 0
        self.last_progress = time.monotonic()
        self.paced_from = 0.0

    # --- generation ----------------------------------------------------------------------------

    def finished(self) -> bool:
        """Whether no new batch is to be generated."""
        run = self.run
        if self.quota is not None and self.generated >= self.quota:
            return True
        if run.deadline is not None and time.monotonic() >= run.deadline:
            return True
        return run.stop.is_set()

    def _start_tick(self) -> None:
        if self.clock is not None:
            start, step = self.clock
            t_us = start + self.tick * step
        else:
            t_us = max(time.time_ns() // 1000, self.last_us + 1)
        self.last_us = t_us
        self.tick_time = (t_us // 1_000_000, (t_us % 1_000_000) * 1000, _lights_on(t_us))

    def _make_batch(self) -> _Pending:
        n = self.run.batch if self.quota is None else min(self.run.batch, self.quota - self.generated)
        run = self.run
        request = pb.IngestReadingsRequest(
            parent=run.license, gateway_id=self.gateway_id, sequence=self.next_sequence
        )
        if run.columnar:
            self._fill_columns(request.columns, n)
        else:
            add = request.readings.add
            for _ in range(n):
                sensor, value, unit, (seconds, nanos, _lights) = self._next_reading(True)
                reading = add(sensor_id=sensor.id, value=value, unit=unit)
                reading.observe_time.seconds = seconds
                reading.observe_time.nanos = nanos
        # Every message repeats parent and gateway_id (allowed), so any batch can open a stream.
        pending = _Pending(request.SerializeToString(), n)
        self.next_sequence += 1
        self.generated += n
        run.summary.batches_sent += 1
        run.summary.readings_sent += n
        return pending

    def _next_reading(self, wrong_units: bool) -> tuple[_SimSensor, float, int, tuple[int, int, bool]]:
        """The next reading of the gateway's round over its sensors (some made invalid on purpose)."""
        if self.position == 0:
            self._start_tick()
        tick = self.tick_time
        sensor = self.sensors[self.position]
        value, unit = sensor.next(tick[2]), sensor.unit
        invalid = self.run.invalid_fraction
        if invalid and self.rng.random() < invalid:
            kind = self.rng.randrange(3 if wrong_units else 2)
            if kind == 0:
                value = sensor.high + (sensor.high - sensor.low) + 1.0  # OUT_OF_RANGE
            elif kind == 1:
                value = math.nan  # NON_FINITE
            else:
                unit = sensor.wrong_unit  # WRONG_UNIT
        self.position += 1
        if self.position == len(self.sensors):
            self.position = 0
            self.tick += 1
        return sensor, value, unit, tick

    def _fill_columns(self, columns: pb.ReadingColumns, n: int) -> None:
        """``n`` readings in columnar form (units are per sensor there, so no wrong-unit ones)."""
        index = {s.id: i for i, s in enumerate(self.sensors)}
        columns.sensor_ids.extend(index)
        columns.units.extend(s.unit for s in self.sensors)  # type: ignore[misc]
        rows, times, values = [], [], []
        for _ in range(n):
            sensor, value, _unit, (seconds, nanos, _lights) = self._next_reading(False)
            rows.append(index[sensor.id])
            times.append(seconds * 1_000_000 + nanos // 1000)
            values.append(value)
        columns.sensor_indexes.extend(rows)
        columns.observe_unix_micros.extend(times)
        columns.values.extend(values)

    async def _pace(self) -> None:
        """Wait until the next batch is due at the gateway's share of the rate."""
        rate = self.run.rate
        if rate is None:
            return
        now = time.monotonic()
        if not self.paced_from:
            self.paced_from = now
        due = self.paced_from + self.generated / rate
        if now - due > 1.0:  # after a stall, do not burst to catch up more than a second
            self.paced_from += now - due - 1.0
        elif due > now:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.run.stop.wait(), due - now)

    # --- streams -------------------------------------------------------------------------------

    async def _write(self, call: Any) -> None:
        run, summary = self.run, self.run.summary
        for pending in list(self.unacked.values()):  # replay, original sequences, in order
            pending.sent = time.monotonic()
            summary.resent_batches += 1
            summary.resent_readings += pending.readings
            await call.write(pending.data)
        while True:
            while len(self.unacked) >= run.window:
                self.space.clear()
                await self.space.wait()
            if self.finished():
                break
            await self._pace()
            if self.finished():
                break
            pending = self._make_batch()
            self.unacked[self.next_sequence - 1] = pending
            pending.sent = time.monotonic()
            await call.write(pending.data)
        await call.done_writing()

    async def _read(self, call: Any) -> None:
        summary = self.run.summary
        while True:
            try:
                ack = await call.read()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                raise _Broken("the stream was cancelled (no acknowledgement in time)") from None
            if ack is grpc.aio.EOF:
                return
            pending = self.unacked.pop(ack.sequence, None)
            if pending is None:  # not ours to count (cannot happen with a conforming server)
                continue
            now = time.monotonic()
            self.last_progress = now
            summary.latencies.append(now - pending.sent)
            summary.batches_acknowledged += 1
            summary.readings_acknowledged += pending.readings
            summary.accepted += ack.accepted_count
            if ack.replayed:
                summary.replayed_batches += 1
            for rejected in ack.rejected_readings:
                reason = _REASONS.get(rejected.reason, str(rejected.reason))
                summary.rejected[reason] = summary.rejected.get(reason, 0) + 1
            self.space.set()
            if self.run.on_progress is not None:
                self.run.on_progress(pending.readings)

    async def _watchdog(self, call: Any) -> None:
        """Cancel a stream whose oldest unacknowledged batch waits longer than ``ack_timeout``."""
        timeout = self.run.ack_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            oldest = next(iter(self.unacked.values()), None)
            if oldest is not None and oldest.sent and time.monotonic() - oldest.sent > timeout:
                call.cancel()
                return

    async def _stream(self, method: Any) -> None:
        """One stream: replay what is unacknowledged, send new batches, read the acks."""
        call = method(metadata=self.run.metadata)
        writer = asyncio.create_task(self._write(call))
        # A writer that fails ends the call, so the reader does not wait for acks forever.
        writer.add_done_callback(lambda t: t.cancelled() or t.exception() is None or call.cancel())
        watchdog = asyncio.create_task(self._watchdog(call))
        try:
            await self._read(call)
        finally:
            for task in (writer, watchdog):
                task.cancel()
            await asyncio.wait([writer, watchdog])
            if not call.done():
                call.cancel()
            failure = None if writer.cancelled() else writer.exception()
            if failure is not None and not isinstance(
                failure, grpc.aio.AioRpcError | asyncio.InvalidStateError | grpc.aio.UsageError
            ):
                raise failure  # a bug, not a broken stream: do not retry it

    async def run_gateway(self) -> None:
        """Stream until everything generated is acknowledged; reconnect after broken streams."""
        run, summary = self.run, self.run.summary
        failures = 0
        async with grpc.aio.insecure_channel(run.target, options=_CHANNEL_OPTIONS) as channel:
            method = channel.stream_stream(
                _INGEST,
                request_serializer=_identity,
                response_deserializer=pb.IngestReadingsResponse.FromString,
            )
            while True:
                acked_before = summary.batches_acknowledged
                delay: float | None = None
                try:
                    await self._stream(method)
                    if not self.unacked and self.finished():
                        return
                    problem = "the server ended the stream early"
                except _Broken as err:
                    problem = str(err)
                except grpc.aio.AioRpcError as err:
                    if err.code() in _FATAL:
                        summary.errors.append(f"{self.gateway_id}: {err.code().name}: {err.details()}")
                        return
                    delay = _retry_delay(err)
                    problem = f"{err.code().name}: {err.details()}"
                if summary.batches_acknowledged > acked_before:
                    failures = 0
                failures += 1
                if time.monotonic() - self.last_progress > run.give_up_after:
                    summary.errors.append(
                        f"{self.gateway_id}: gave up after {run.give_up_after:g} s without an "
                        f"acknowledgement ({len(self.unacked)} batches unacknowledged); last: {problem}"
                    )
                    return
                await asyncio.sleep(delay if delay is not None else _backoff(failures, self.rng))
                summary.reconnects += 1


# --- set-up ------------------------------------------------------------------------------------


def _license_name(license_: str) -> str:
    name = license_ if license_.startswith("licenses/") else f"licenses/{license_}"
    if name.count("/") != 1 or not name.split("/")[1]:
        raise SimulationError(f"not a license: {license_!r} (licenses/ID or ID)")
    return name


def _section_name(license_name: str, section: str) -> str:
    name = section if section.startswith("licenses/") else f"{license_name}/sections/{section}"
    if not name.startswith(f"{license_name}/sections/") or name.count("/") != 3:
        raise SimulationError(f"not a section of {license_name}: {section!r}")
    return name


async def _unary(call: Callable[[], Any]) -> Any:
    """A unary call, retried after RESOURCE_EXHAUSTED (rate limits) and briefly after UNAVAILABLE."""
    unavailable = 0
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            code = err.code()
            unavailable += code == grpc.StatusCode.UNAVAILABLE
            retryable = code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
            if not retryable or unavailable > 4:
                raise SimulationError(f"{code.name}: {err.details()}") from err
            delay = _retry_delay(err)  # rate limited: the server says when to come back
            await asyncio.sleep(delay if delay is not None else 0.2 * 2**unavailable)


async def _register(
    stub: telemetry_pb2_grpc.TelemetryServiceStub,
    license_name: str,
    section: str,
    n: int,
    interval: int,
    metadata: tuple[tuple[str, str], ...],
) -> list[pb.Sensor]:
    """Create ``n`` sensors in ``section``, alternately temperature (°C) and humidity (%)."""
    run = uuid.uuid4().hex[:8]
    slots = asyncio.Semaphore(8)

    async def one(i: int) -> pb.Sensor:
        temperature = i % 2 == 0
        sensor = pb.Sensor(
            display_name=f"sim {'temp' if temperature else 'RH'} {i // 2 + 1} ({run})",
            section=section,
            metric=pb.METRIC_TEMPERATURE if temperature else pb.METRIC_RELATIVE_HUMIDITY,
            unit=pb.MEASUREMENT_UNIT_CELSIUS if temperature else pb.MEASUREMENT_UNIT_PERCENT,
            reporting_interval=duration_pb2.Duration(seconds=interval),
        )
        request = pb.CreateSensorRequest(parent=license_name, sensor=sensor, request_id=f"sim-{run}-{i}")
        async with slots:
            created: pb.Sensor = await _unary(lambda: stub.CreateSensor(request, metadata=metadata))
        return created

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _existing(
    stub: telemetry_pb2_grpc.TelemetryServiceStub,
    license_name: str,
    section: str | None,
    metadata: tuple[tuple[str, str], ...],
) -> list[pb.Sensor]:
    """The license's sensors (of ``section`` if given)."""
    out: list[pb.Sensor] = []
    token = ""
    while True:
        request = pb.ListSensorsRequest(
            parent=license_name,
            page_size=100,
            page_token=token,
            filter=f'section = "{section}"' if section else "",
        )
        page = await _unary(functools.partial(stub.ListSensors, request, metadata=metadata))
        out.extend(page.sensors)
        token = page.next_page_token
        if not token:
            return out


def _clock(readings: int | None, sensors: int, interval_us: int, now_us: int) -> tuple[int, int] | None:
    """(start, step) in µs of a compressed history ending now for ``readings`` readings."""
    if readings is None:
        return None
    ticks = max(1, math.ceil(readings / sensors))
    step = max(_MIN_STEP_US, min(interval_us, _MAX_SPAN_US // ticks))
    return now_us - ticks * step, step


async def simulate(
    target: str,
    license: str,
    *,
    sensors: int = 0,
    section: str | None = None,
    gateways: int = 1,
    batch: int = 1000,
    window: int = MAX_WINDOW,
    rate: float | None = None,
    duration: float | None = None,
    readings: int | None = None,
    token: str | None = None,
    interval: int = 5,
    invalid_fraction: float = 0.0,
    gateway_prefix: str | None = None,
    seed: int | None = None,
    ack_timeout: float = 30.0,
    give_up_after: float = 60.0,
    stop: asyncio.Event | None = None,
    on_start: Callable[[Summary], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    columnar: bool = True,
) -> Summary:
    """Register sensors if asked, stream simulated readings from ``gateways`` gateways, summarize.

    Args:
        target: ``host:port`` of the server's direct (plaintext) gRPC listener.
        license: ``licenses/ID`` or ``ID``.
        sensors: Sensors to create in ``section`` first (alternately temperature and humidity);
            0 uses the license's existing sensors (of ``section`` if given).
        section: ``licenses/ID/sections/ID`` or the section id.
        gateways: Concurrent gateways, each with its own channel and stream and its own share of
            the sensors (so at most as many gateways as sensors).
        batch: Readings per message (1..5000).
        window: Unacknowledged batches per stream (1..16).
        rate: Readings per second over all gateways; None: as fast as acknowledgements allow.
        duration: Seconds after which no new batch starts (then the acknowledgements drain).
        readings: Readings to send over all gateways. With neither ``readings`` nor ``duration``
            the gateways run until ``stop`` is set.
        token: Bearer token sent with every call.
        interval: Reporting interval of created sensors, in seconds (also the spacing of the
            compressed history, up to the sensors' own interval).
        invalid_fraction: Share of readings made invalid on purpose (out of range, wrong unit,
            not finite), to exercise rejections; they are never resent.
        gateway_prefix: Gateway ids are ``{prefix}-{n}``; default a fresh random prefix, so each
            run starts its sequences at 1.
        seed: Seed of the value model (reproducible values).
        columnar: Send readings in the compact columnar form (``IngestReadingsRequest.columns``);
            False sends one ``Reading`` message per reading.
        ack_timeout: Seconds the oldest batch may wait for its acknowledgement before the stream
            is cancelled and reopened.
        give_up_after: Seconds without any acknowledgement after which a gateway stops retrying
            (reported in ``Summary.errors``).
        stop: Set to stop generating; what was sent is still acknowledged before returning.
        on_start: Called with the (empty) summary once the sensors are known, before streaming.
        on_progress: Called with the readings of each acknowledged batch.

    Raises:
        SimulationError: Bad arguments, no usable sensors, or a refused registration or listing.

    """
    if not 1 <= batch <= MAX_BATCH:
        raise SimulationError(f"batch must be 1..{MAX_BATCH}")
    if not 1 <= window <= MAX_WINDOW:
        raise SimulationError(f"window must be 1..{MAX_WINDOW}")
    if gateways < 1 or sensors < 0:
        raise SimulationError("gateways must be at least 1 and sensors not negative")
    if rate is not None and rate <= 0:
        raise SimulationError("rate must be positive")
    if readings is not None and readings < 0:
        raise SimulationError("readings must not be negative")
    if not 0.0 <= invalid_fraction <= 1.0:
        raise SimulationError("invalid_fraction must be 0..1")
    if sensors and not section:
        raise SimulationError("registering sensors needs a section")
    license_name = _license_name(license)
    section_name = _section_name(license_name, section) if section else None
    metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
    rng = random.Random(seed)  # noqa: S311 - simulated values, not secrets
    summary = Summary(target=target, license=license_name, gateways=gateways, sensors=[])

    async with grpc.aio.insecure_channel(target) as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        if sensors:
            assert section_name is not None
            found = await _register(stub, license_name, section_name, sensors, interval, metadata)
            summary.registered = len(found)
        else:
            found = await _existing(stub, license_name, section_name, metadata)
    usable = [s for s in found if s.metric in _PROFILES and ranges.fits(s.metric, s.unit)]
    if not usable:
        raise SimulationError(f"no sensors to simulate in {section_name or license_name}")
    if len(usable) < gateways:
        raise SimulationError(f"{gateways} gateways need at least as many sensors (found {len(usable)})")
    summary.sensors = [s.name for s in usable]

    start = time.monotonic()
    prefix = gateway_prefix or f"sim-{uuid.uuid4().hex[:8]}"
    run = _Run(
        target=target,
        license=license_name,
        metadata=metadata,
        batch=batch,
        window=window,
        rate=rate / gateways if rate is not None else None,
        deadline=start + duration if duration is not None else None,
        stop=stop or asyncio.Event(),
        invalid_fraction=invalid_fraction,
        columnar=columnar,
        ack_timeout=ack_timeout,
        give_up_after=give_up_after,
        summary=summary,
        on_progress=on_progress,
    )
    expected: float | None = None
    if readings is not None:
        expected = readings
    elif duration is not None:
        expected = duration * (rate if rate is not None else _UNBOUNDED_RATE) * 1.05
    now_us = time.time_ns() // 1000
    members: list[_Gateway] = []
    for g in range(gateways):
        own = usable[g::gateways]
        quota = None if readings is None else readings // gateways + (1 if g < readings % gateways else 0)
        share = None if expected is None else math.ceil(expected / gateways)
        interval_us = min(s.reporting_interval.seconds for s in own) * 1_000_000 or 1_000_000
        clock = _clock(share, len(own), interval_us, now_us)
        model = [_SimSensor(s.name.rsplit("/", 1)[1], s.metric, s.unit, rng) for s in own]
        own_rng = random.Random(rng.random())  # noqa: S311
        members.append(_Gateway(run, f"{prefix}-{g + 1}", model, quota, clock, own_rng))
    if on_start is not None:
        on_start(summary)
    await asyncio.gather(*(m.run_gateway() for m in members))
    summary.wall_seconds = time.monotonic() - start
    return summary


def describe(summary: Summary) -> list[str]:
    """The summary as lines for people."""
    s = summary
    p50, p99 = s.latency(0.5), s.latency(0.99)
    rejected = ", ".join(f"{reason} {n:,}" for reason, n in sorted(s.rejected.items())) or "none"
    lines = [
        f"target        {s.target}, {s.license}: {s.gateways} gateways, {len(s.sensors)} sensors"
        + (f" ({s.registered} registered now)" if s.registered else ""),
        f"sent          {s.readings_sent:,} readings in {s.batches_sent:,} batches",
        f"acknowledged  {s.readings_acknowledged:,} readings in {s.batches_acknowledged:,} batches",
        f"accepted      {s.accepted:,}",
        f"rejected      {s.rejected_total:,} ({rejected})",
        f"replayed      {s.resent_batches:,} batches ({s.resent_readings:,} readings) resent after "
        f"{s.reconnects} reconnects; {s.replayed_batches:,} already committed (de-duplicated)",
        f"wall time     {s.wall_seconds:.2f} s",
        f"rate          {s.readings_per_second:,.0f} readings/s acknowledged",
    ]
    if p50 is not None and p99 is not None:
        lines.append(f"ack latency   p50 {p50 * 1e3:.1f} ms   p99 {p99 * 1e3:.1f} ms")
    if s.unacknowledged:
        lines.append(f"unacknowledged {s.unacknowledged:,} readings")
    lines.extend(f"error         {e}" for e in s.errors)
    return lines
