"""The telemetry ingest pipeline: validate readings, commit them in batches, acknowledge.

:meth:`IngestPipeline.submit` validates a batch column by column against a short-lived cache of
the sensors, queues the good readings on one of a few writer tasks and returns once they are
durably committed. Each writer takes everything queued on it (up to ``group_rows`` readings, from
several streams) and commits it in one transaction (:mod:`seedline_server.telemetry.writer`).
While a gateway has batches queued or committing they all go to the same writer, in submission
order, so its sequences commit in order; replays are found by the batches' stored
acknowledgements (one key per batch, not a unique index on ``readings``). A gateway with
nothing in flight goes to the least loaded writer, so the writers share the work evenly.
Memory is bounded by ``max_pending`` queued readings: ``submit`` waits while the queues are full,
and callers that wait stop reading from the network.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import numpy as np
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.domain.errors import DependencyUnavailable
from seedline_server.observability import hooks
from seedline_server.telemetry import partitions, ranges, rollup, writer

log = structlog.get_logger("seedline.telemetry.ingest")

# RejectionReason numbers (seedline.telemetry.v1).
UNKNOWN_SENSOR, OTHER_LICENSE, WRONG_UNIT, NON_FINITE, OUT_OF_RANGE = 1, 2, 3, 4, 5
DUPLICATE, TOO_OLD, IN_FUTURE, MALFORMED = 6, 7, 8, 9
MAX_AGE = timedelta(days=30)
MAX_AHEAD = timedelta(minutes=5)
# Serialization failure, deadlock, and a unique violation: another process committed the same
# batch meanwhile (its acknowledgement's key), which the retry finds as a replay.
_RETRYABLE = frozenset({"40001", "40P01", "23505"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class ReadingIn:
    """One reading as a gateway sent it (already parsed)."""

    sensor_id: str
    observe_time: datetime
    value: float
    unit: int


@dataclass(frozen=True)
class Rejected:
    """One reading of a batch that was not stored."""

    index: int
    sensor: str
    reason: int
    message: str


@dataclass(frozen=True)
class Ack:
    """The answer to one submitted batch, given once it is durably committed."""

    sequence: int | None
    accepted: int
    rejected: tuple[Rejected, ...]
    replayed: bool


@dataclass(frozen=True)
class CommittedReading:
    """What listeners get after a commit."""

    sensor_id: str
    license_id: str
    section_id: str
    metric: int
    unit: int
    observe_time: datetime
    value: float


@dataclass
class Columns:
    """A batch of readings column by column: what :meth:`IngestPipeline.submit_columns` takes.

    ``sensor_ids`` lists the batch's sensors once each; the other columns have one entry per
    reading: ``sensor_index`` (into ``sensor_ids``), ``micros`` (observe time, epoch
    microseconds, UTC), ``values`` and ``units``. Validation, encoding and roll-ups work on whole
    columns, not reading by reading.
    """

    sensor_ids: list[str]
    sensor_index: rollup.Ints
    micros: rollup.Ints
    values: rollup.Floats
    units: rollup.Ints

    @classmethod
    def build(
        cls, ids: Sequence[str], micros: Sequence[int], values: Sequence[float], units: Sequence[int]
    ) -> Columns:
        """Columns from per-reading lists (``ids`` repeats sensor ids; they are indexed here)."""
        index: dict[str, int] = {}
        positions = [index.setdefault(sid, len(index)) for sid in ids]
        return cls(
            list(index),
            np.array(positions, dtype=np.int64),
            np.array(micros, dtype=np.int64),
            np.array(values, dtype=np.float64),
            np.array(units, dtype=np.int64),
        )

    @classmethod
    def of(cls, readings: Sequence[ReadingIn]) -> Columns:
        """The columns of ``readings`` (their observe times must carry a time zone)."""
        return cls.build(
            [r.sensor_id for r in readings],
            [(r.observe_time - _EPOCH) // _MICROSECOND for r in readings],
            [r.value for r in readings],
            [r.unit for r in readings],
        )

    @classmethod
    def concat(cls, parts: Sequence[Columns]) -> Columns:
        """One batch of the readings of ``parts`` (at least one), in order."""
        ids: dict[str, int] = {}
        index = [
            np.array([ids.setdefault(sid, len(ids)) for sid in p.sensor_ids], dtype=np.int64)[p.sensor_index]
            for p in parts
        ]
        return cls(
            list(ids),
            np.concatenate(index),
            np.concatenate([p.micros for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.units for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.sensor_index)


@dataclass(frozen=True)
class SensorInfo:
    """What validation needs to know about a sensor."""

    id: str
    key: int
    license_id: str
    section_id: str
    metric: int
    unit: int


# Stands in for an unknown sensor in a job's sensor list (none of its readings is stored).
_NO_SENSOR = SensorInfo("", -1, "", "", 0, 0)


class SensorCache:
    """Sensors by id, loaded on demand and kept ``ttl`` seconds (unknown ids ``negative_ttl``).

    Changes made in this process are seen at once (:meth:`invalidate`); changes made by another
    process (or a deleted sensor) within ``ttl`` seconds.
    """

    def __init__(self, engine: AsyncEngine, ttl: float = 5.0, negative_ttl: float = 1.0) -> None:
        self._engine = engine
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._entries: dict[str, tuple[float, SensorInfo | None]] = {}

    def invalidate(self, sensor_id: str | None = None) -> None:
        """Forget one sensor (or all)."""
        if sensor_id is None:
            self._entries.clear()
        else:
            self._entries.pop(sensor_id, None)

    async def resolve(self, ids: set[str]) -> dict[str, SensorInfo | None]:
        """The live sensors among ``ids`` (None for unknown or deleted ones)."""
        now = time.monotonic()
        out: dict[str, SensorInfo | None] = {}
        missing = []
        for sid in ids:
            entry = self._entries.get(sid)
            if entry is not None and entry[0] > now:
                out[sid] = entry[1]
            else:
                missing.append(sid)
        if missing:
            async with self._engine.connect() as conn:
                raw = await conn.get_raw_connection()
                apg: Any = raw.driver_connection
                rows = await apg.fetch(
                    "SELECT id, key, license_id, section_id, metric, unit FROM sensors "
                    "WHERE id = ANY($1::text[]) AND delete_time IS NULL",
                    missing,
                )
            found = {r[0]: SensorInfo(r[0], int(r[1]), r[2], r[3], int(r[4]), int(r[5])) for r in rows}
            for sid in missing:
                info = found.get(sid)
                self._entries[sid] = (now + (self._ttl if info else self._negative_ttl), info)
                out[sid] = info
            if len(self._entries) > 200_000:
                self._entries.clear()
        return out


class _Committed(Sequence[CommittedReading]):
    """The readings of one commit, built only when a listener looks at them.

    Most commits have no live watcher, and building a million small objects a second is not free.
    """

    def __init__(self) -> None:
        self._parts: list[tuple[list[SensorInfo], rollup.Ints, writer.Batch]] = []
        self._count = 0
        self._items: list[CommittedReading] | None = None

    def add(self, infos: list[SensorInfo], sensor_index: rollup.Ints, batch: writer.Batch) -> None:
        self._parts.append((infos, sensor_index, batch))
        self._count += len(batch)

    def _all(self) -> list[CommittedReading]:
        if self._items is None:
            self._items = []
            for infos, index, b in self._parts:
                for i, us, value in zip(index.tolist(), b.micros.tolist(), b.values.tolist(), strict=True):
                    s = infos[i]
                    t = _EPOCH + timedelta(microseconds=us)
                    self._items.append(
                        CommittedReading(s.id, s.license_id, s.section_id, s.metric, s.unit, t, value)
                    )
        return self._items

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> CommittedReading: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[CommittedReading]: ...
    def __getitem__(self, index: int | slice) -> CommittedReading | Sequence[CommittedReading]:
        return self._all()[index]

    def __iter__(self) -> Iterator[CommittedReading]:
        return iter(self._all())


@dataclass
class _Job:
    batch: writer.Batch
    sensors: list[SensorInfo]  # the batch's sensors; ``sensor_index`` points into it
    sensor_index: rollup.Ints  # per stored reading
    future: asyncio.Future[Ack]
    route: tuple[str, str] = ("", "")  # (license, gateway): which writer it was queued on


def _check(
    sensor_id: str,
    micros: int,
    value: float,
    unit: int,
    info: SensorInfo | None,
    license_id: str | None,
    now: datetime,
    max_age: timedelta,
) -> tuple[int, str] | None:
    """Why a reading is refused (reason, message), or None."""
    if info is None:
        return UNKNOWN_SENSOR, f"no sensor {sensor_id}"
    if license_id is not None and info.license_id != license_id:
        return UNKNOWN_SENSOR, f"no sensor {sensor_id} in licenses/{license_id}"
    if not ranges.fits(info.metric, unit):
        return WRONG_UNIT, f"{ranges.unit_name(unit)} is not a unit of the sensor's metric"
    if not math.isfinite(value):
        return NON_FINITE, f"value {value} is not finite"
    problem = ranges.check(info.metric, unit, value)
    if problem is not None:
        return problem.reason, problem.message
    if micros < (now - max_age - _EPOCH) // _MICROSECOND:
        return TOO_OLD, f"observe_time {_iso(micros)} is more than {max_age.days} days old"
    if micros > (now + MAX_AHEAD - _EPOCH) // _MICROSECOND:
        return IN_FUTURE, f"observe_time {_iso(micros)} is ahead of the server's clock"
    return None


def _iso(micros: int) -> str:
    try:
        return (_EPOCH + timedelta(microseconds=micros)).isoformat()
    except OverflowError:
        return f"{micros} µs after 1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class _SensorColumns:
    """Per sensor of a batch (unusable ones: key -1 and an empty range)."""

    keys: rollup.Ints
    units: rollup.Ints
    lows: rollup.Floats  # the plausible range in the sensor's unit
    highs: rollup.Floats
    sections: list[tuple[str, int]]  # the batch's (section id, metric) pairs
    section_index: rollup.Ints  # each sensor's pair
    scale: rollup.Floats  # a, b: the sensor's unit -> its metric's first unit
    shift: rollup.Floats

    @classmethod
    def of(cls, infos: list[SensorInfo | None], license_id: str | None) -> _SensorColumns:
        keys, units, lows, highs, index, scale, shift = [], [], [], [], [], [], []
        pairs: dict[tuple[str, int], int] = {}
        for info in infos:
            if info is None or (license_id is not None and info.license_id != license_id):
                keys.append(-1)
                units.append(-1)
                lows.append(math.inf)
                highs.append(-math.inf)
                index.append(0)
                scale.append(1.0)
                shift.append(0.0)
                continue
            low, high = ranges.BOUNDS[(info.metric, info.unit)]
            a, b = ranges.affine(info.unit, ranges.default_unit(info.metric))
            keys.append(info.key)
            units.append(info.unit)
            lows.append(low)
            highs.append(high)
            index.append(pairs.setdefault((info.section_id, info.metric), len(pairs)))
            scale.append(a)
            shift.append(b)
        return cls(
            np.array(keys, dtype=np.int64),
            np.array(units, dtype=np.int64),
            np.array(lows, dtype=np.float64),
            np.array(highs, dtype=np.float64),
            list(pairs),
            np.array(index, dtype=np.int64),
            np.array(scale, dtype=np.float64),
            np.array(shift, dtype=np.float64),
        )


class IngestPipeline:
    """Validates readings and commits them through a small pool of writer tasks."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        writers: int = 2,
        max_pending: int = 200_000,
        group_rows: int = 20_000,
        retention_days: int = 90,
        sensor_ttl: float = 5.0,
    ) -> None:
        self._engine = engine
        self._writers = max(1, writers)
        self._max_pending = max_pending
        self._group_rows = group_rows
        self._max_age = min(MAX_AGE, timedelta(days=retention_days))
        self.sensors = SensorCache(engine, ttl=sensor_ttl)
        self._queues: list[asyncio.Queue[_Job | None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[Sequence[CommittedReading]], None]] = []
        self._gateway_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        # (license, gateway) -> (writer, batches queued or committing there); readings per writer.
        self._routes: dict[tuple[str, str], tuple[int, int]] = {}
        self._load: list[int] = []
        self._pending = 0
        self._space = asyncio.Condition()
        self._closed = True
        self._days: set[Any] = set()

    @property
    def engine(self) -> AsyncEngine:
        """The database the pipeline writes to."""
        return self._engine

    @property
    def pending(self) -> int:
        """Readings queued and not yet committed."""
        return self._pending

    async def start(self) -> None:
        """Starts the writer tasks."""
        self._closed = False
        self._queues = [asyncio.Queue() for _ in range(self._writers)]
        self._load = [0] * self._writers
        self._routes = {}
        self._tasks = [asyncio.create_task(self._write_loop(q)) for q in self._queues]

    async def stop(self) -> None:
        """Commits what it accepted (then acks it), refuses new work."""
        if self._closed:
            return
        self._closed = True
        for q in self._queues:
            q.put_nowait(None)
        for task in self._tasks:
            with suppress(Exception):
                await task
        self._tasks = []

    def add_listener(self, callback: Callable[[Sequence[CommittedReading]], None]) -> None:
        """Called (synchronously, must be fast) after each commit with the readings it wrote."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[Sequence[CommittedReading]], None]) -> None:
        """Stop calling ``callback``."""
        with suppress(ValueError):
            self._listeners.remove(callback)

    async def submit(
        self,
        *,
        license_id: str | None,
        gateway_id: str,
        sequence: int | None,
        readings: Sequence[ReadingIn],
        positions: Sequence[int] | None = None,
        refused: Sequence[Rejected] = (),
    ) -> Ack:
        """Validates, writes and returns only after the good readings are durably committed.

        Each reading is checked on its own (unknown sensor, other license when ``license_id`` is
        given, wrong unit, non-finite, outside the metric's physical range, duplicate within the
        batch, too old, in the future); the rest are written. ``sequence=None``: no
        de-duplication (MQTT); otherwise a ``(license, gateway_id, sequence)`` already committed
        is answered ``replayed=True`` with the original counts, without writing. Waits
        (backpressure) while more than ``max_pending`` readings are queued.

        ``positions`` (the batch index of each reading) and ``refused`` (readings of the batch
        the caller could not even parse) let the acknowledgement, and its repetition on a
        replay, list every rejection of the batch at its batch index.

        Raises:
            DependencyUnavailable: the pipeline is stopped, or the database failed the commit
                (nothing of the batch was stored; the caller may retry it).
            ValueError: a sequence without a license.

        """
        where = list(positions) if positions is not None else list(range(len(readings)))
        naive = [i for i, r in enumerate(readings) if r.observe_time.tzinfo is None]
        if naive:
            skip = set(naive)
            refused = [
                *refused,
                *(
                    Rejected(where[i], readings[i].sensor_id, MALFORMED, "observe_time has no time zone")
                    for i in naive
                ),
            ]
            readings = [r for i, r in enumerate(readings) if i not in skip]
            where = [p for i, p in enumerate(where) if i not in skip]
        return await self.submit_columns(
            license_id=license_id,
            gateway_id=gateway_id,
            sequence=sequence,
            columns=Columns.of(readings),
            positions=where,
            refused=refused,
        )

    async def submit_columns(
        self,
        *,
        license_id: str | None,
        gateway_id: str,
        sequence: int | None,
        columns: Columns,
        positions: Sequence[int] | None = None,
        refused: Sequence[Rejected] = (),
    ) -> Ack:
        """:meth:`submit` for a batch already in columns (the gRPC servicer's fast path)."""
        if sequence is not None and license_id is None:
            raise ValueError("a sequenced batch needs its license")
        lock_key = (license_id or "", gateway_id)
        lock, users = self._gateway_locks.get(lock_key) or (asyncio.Lock(), 0)
        self._gateway_locks[lock_key] = (lock, users + 1)
        try:
            job = await self._enqueue(
                lock, lock_key, license_id, gateway_id, sequence, columns, positions, refused
            )
        finally:
            lock, users = self._gateway_locks[lock_key]
            if users == 1:
                del self._gateway_locks[lock_key]
            else:
                self._gateway_locks[lock_key] = (lock, users - 1)
        return await job.future

    async def _enqueue(
        self,
        lock: asyncio.Lock,
        lock_key: tuple[str, str],
        license_id: str | None,
        gateway_id: str,
        sequence: int | None,
        columns: Columns,
        positions: Sequence[int] | None,
        refused: Sequence[Rejected],
    ) -> _Job:
        async with lock:  # a gateway's batches are queued in the order they were submitted
            job = await self._prepare(license_id, gateway_id, sequence, columns, positions, refused)
            n = len(job.batch)
            async with self._space:
                await self._space.wait_for(
                    lambda: self._pending == 0 or self._pending + n <= self._max_pending
                )
            if self._closed:
                raise DependencyUnavailable("the server is shutting down; resend the batch to another")
            self._pending += n
            index, in_flight = self._routes.get(lock_key, (-1, 0))
            if in_flight == 0:  # free to move: nothing of this gateway can commit after it elsewhere
                index = min(range(len(self._queues)), key=self._load.__getitem__)
            self._routes[lock_key] = (index, in_flight + 1)
            self._load[index] += n
            job.route = lock_key
            self._queues[index].put_nowait(job)
        return job

    async def _prepare(
        self,
        license_id: str | None,
        gateway_id: str,
        sequence: int | None,
        c: Columns,
        positions: Sequence[int] | None,
        refused: Sequence[Rejected],
    ) -> _Job:
        if self._closed:
            raise DependencyUnavailable("the server is shutting down; resend the batch to another")
        known = await self.sensors.resolve(set(c.sensor_ids))
        infos = [known.get(sid) for sid in c.sensor_ids]
        now = datetime.now(UTC)
        oldest = (now - self._max_age - _EPOCH) // _MICROSECOND
        newest = (now + MAX_AHEAD - _EPOCH) // _MICROSECOND
        per = _SensorColumns.of(infos, license_id)
        s_key = per.keys
        si, micros, values = c.sensor_index, c.micros, c.values
        # Fast path, whole columns at once: a known sensor of the license, in its own unit,
        # plausible (NaN fails every comparison), on time. The rest is looked at one by one.
        keep = (
            (c.units == per.units[si])
            & (micros >= oldest)
            & (micros <= newest)
            & (values >= per.lows[si])
            & (values <= per.highs[si])
        )
        rejected: list[Rejected] = list(refused)

        def position(i: int) -> int:
            return int(positions[i]) if positions is not None else i

        slow = np.flatnonzero(~keep)
        if len(slow):
            values = values.copy()
            for i in slow.tolist():
                j = int(si[i])
                sid, info, unit, value = c.sensor_ids[j], infos[j], int(c.units[i]), float(values[i])
                problem = _check(sid, int(micros[i]), value, unit, info, license_id, now, self._max_age)
                if problem is not None or info is None:
                    reason, message = problem or (UNKNOWN_SENSOR, "")
                    rejected.append(Rejected(position(i), sid, reason, message))
                    continue
                values[i] = ranges.convert(value, unit, info.unit)
                keep[i] = True
        # The same sensor and observe time twice in a batch: the first one counts.
        index = np.flatnonzero(keep)
        keys, times = s_key[si[index]], micros[index]
        order = np.lexsort((index, times, keys))
        same = (keys[order][1:] == keys[order][:-1]) & (times[order][1:] == times[order][:-1])
        if same.any():
            for i in index[order[1:][same]].tolist():
                keep[i] = False
                rejected.append(
                    Rejected(
                        position(i),
                        c.sensor_ids[int(si[i])],
                        DUPLICATE,
                        "the same sensor and observe_time appear earlier in the batch",
                    )
                )
            index = np.flatnonzero(keep)
        rejected.sort(key=lambda r: r.index)  # the acknowledgement lists them in batch order
        kept, stored = si[index], values[index]
        batch = writer.Batch(
            license_id=license_id or "",
            gateway_id=gateway_id,
            sequence=sequence,
            keys=s_key[kept],
            micros=micros[index],
            values=stored,
            rejected=tuple(rejected),
            sections=per.sections,
            section_index=per.section_index[kept],
            normalized=stored * per.scale[kept] + per.shift[kept],
        )
        known_infos = [i if i is not None else _NO_SENSOR for i in infos]
        return _Job(batch, known_infos, kept, asyncio.get_running_loop().create_future())

    async def _write_loop(self, queue: asyncio.Queue[_Job | None]) -> None:
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is None:
                break
            group, rows = [first], len(first.batch)
            while rows < self._group_rows and not queue.empty():
                nxt = queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                group.append(nxt)
                rows += len(nxt.batch)
            with hooks.write_group(len(group), rows):  # one span per commit, never per reading
                await self._commit(group)

    async def _release(self, jobs: list[_Job], failure: str | None = None) -> None:
        """Give back the jobs' queue space and routes; with ``failure``, fail their futures."""
        n = sum(len(j.batch) for j in jobs)
        for j in jobs:
            index, in_flight = self._routes[j.route]
            self._load[index] -= len(j.batch)
            if in_flight == 1:
                del self._routes[j.route]
            else:
                self._routes[j.route] = (index, in_flight - 1)
        async with self._space:
            self._pending -= n
            self._space.notify_all()
        if failure is not None:
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(DependencyUnavailable(failure))

    async def _commit(self, group: list[_Job]) -> None:
        batches = [j.batch for j in group]
        error: BaseException | None = None
        for attempt in range(3):
            for b in batches:
                b.replayed, b.original = False, None
            try:
                async with self._engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    apg: Any = raw.driver_connection
                    days = writer.days_of(batches) - self._days
                    if days:
                        await partitions.ensure(apg, days)
                        self._days |= days
                    await writer.commit(apg, batches)
                error = None
                break
            except Exception as exc:
                error = exc
                if getattr(exc, "sqlstate", None) not in _RETRYABLE or attempt == 2:
                    break
        if error is not None:
            n = sum(len(b) for b in batches)
            log.warning("ingest commit failed", batches=len(group), readings=n, error=repr(error))
            await self._release(group, "the readings could not be committed; resend the batch")
            return
        await self._release(group)
        hooks.readings_committed(sum(len(b) for b in batches if not b.replayed))  # replays wrote nothing
        committed = _Committed()
        for j in group:
            b = j.batch
            if b.replayed:
                accepted, rejected = b.original or (0, b"")
                ack = Ack(
                    b.sequence,
                    accepted,
                    tuple(
                        Rejected(r.index, r.sensor, r.reason, r.message)
                        for r in writer.decode_rejections(rejected)
                    ),
                    True,
                )
            else:
                ack = Ack(b.sequence, len(b), b.rejected, False)
                if self._listeners and len(b):
                    committed.add(j.sensors, j.sensor_index, b)
            if not j.future.done():
                j.future.set_result(ack)
        if committed:
            for listener in list(self._listeners):
                try:
                    listener(committed)
                except Exception:
                    log.exception("telemetry listener failed")
