"""Alert evaluation: a pure state machine per (rule, sensor), and the hub that drives it.

The state machine (:class:`Machine`) is fed one sensor's readings in observe-time order and
answers :class:`Opened` or :class:`Closed` when an alert starts or stops:

- CLEAR → PENDING on the first reading that meets the condition (that reading's observe time
  is the alert's ``start_time``);
- PENDING → FIRING (``Opened``) once the condition has held, reading after reading, for the
  rule's ``hold_duration`` (measured between observe times); a reading that does not meet it
  on the way resets to CLEAR;
- FIRING → CLEAR (``Closed``) on the first reading that is back inside by the hysteresis margin
  (:func:`default_hysteresis`): with a GT threshold of 28 °C and a margin of 0.5 °C, a firing
  alert resolves at 27.5 °C or below, so a value hovering around 28 °C does not flap.

Readings not newer than the last one the machine saw are ignored (a replayed or late reading
cannot re-order a sensor's history).

:class:`AlertHub` loads the enabled rules (a cache refreshed when rules change, in any process),
feeds every committed reading to the machines of the rules that watch its sensor, persists the
openings and closings (see :mod:`seedline_server.service.alerts`) and fans alert changes out to
WatchAlerts watchers through the ``alert_events`` log, so a watcher connected to one server
process sees alerts opened by another.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from seedline_server.domain.errors import DependencyUnavailable
from seedline_server.service import alerts as uses
from seedline_server.service.context import CallContext, Principal
from seedline_server.service.notify import NotifyLoop
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import alert_models as am
from seedline_server.telemetry.ingest import CommittedReading

log = structlog.get_logger(__name__)

__all__ = [
    "AlertHub",
    "Closed",
    "Comparator",
    "Condition",
    "Machine",
    "Opened",
    "Phase",
    "convert",
    "default_hysteresis",
]


class Comparator(enum.IntEnum):
    """``seedline.telemetry.v1.Comparator``."""

    GT = 1
    LT = 2
    OUTSIDE_RANGE = 3


# MeasurementUnit numbers this module converts between.
CELSIUS, FAHRENHEIT, KPA, HPA = 1, 2, 6, 11

# Hysteresis margin of each Metric, in its first listed unit (°C, %, ppm, µmol/m²/s, kPa,
# mS/cm, pH, mol/m²/d, mg/L): about the resolution of a good sensor of that quantity, so noise
# around a threshold does not open and close an alert over and over.
_MARGINS: dict[int, float] = {
    1: 0.5,  # temperature, °C
    2: 2.0,  # relative humidity, %
    3: 50.0,  # CO2, ppm
    4: 20.0,  # PPFD
    5: 0.05,  # VPD, kPa
    6: 0.1,  # substrate EC
    7: 0.1,  # substrate pH
    8: 2.0,  # substrate moisture, %
    9: 0.5,  # air pressure, kPa
    10: 0.5,  # DLI
    11: 0.5,  # water temperature, °C
    12: 0.5,  # substrate temperature, °C
    13: 0.1,  # water EC
    14: 0.1,  # water pH
    15: 0.2,  # dissolved oxygen, mg/L
}


def convert(value: float, unit: int, to: int) -> float:
    """``value`` in ``unit`` expressed in ``to`` (°C ↔ °F, kPa ↔ hPa; other pairs unchanged)."""
    if unit == to:
        return value
    if (unit, to) == (CELSIUS, FAHRENHEIT):
        return value * 1.8 + 32.0
    if (unit, to) == (FAHRENHEIT, CELSIUS):
        return (value - 32.0) / 1.8
    if (unit, to) == (KPA, HPA):
        return value * 10.0
    if (unit, to) == (HPA, KPA):
        return value / 10.0
    return value


def default_hysteresis(metric: int, unit: int) -> float:
    """The hysteresis margin of a metric's alerts, in ``unit`` (a difference, not a point)."""
    margin = _MARGINS.get(metric, 0.0)
    if unit == FAHRENHEIT:
        return margin * 1.8
    if unit == HPA:
        return margin * 10.0
    return margin


@dataclass(frozen=True)
class Condition:
    """When a rule's alert fires and when it resolves (values in the condition's unit).

    Attributes:
        comparator: how values are compared with the thresholds.
        threshold: the threshold of GT and LT.
        lower: the low end of the acceptable range of OUTSIDE_RANGE.
        upper: the high end of the acceptable range of OUTSIDE_RANGE.
        hold: how long the condition must hold before the alert fires.
        hysteresis: how far back inside a value must be for a firing alert to resolve (≥ 0).
        default_margin: whether ``hysteresis`` is the metric's default rather than the rule's
            own: for OUTSIDE_RANGE a default is capped at a quarter of the range, so a resolving
            band always remains (a rule's own margin is checked by the contract to be less
            than half the range, and used as given).

    """

    comparator: Comparator
    threshold: float = 0.0
    lower: float = 0.0
    upper: float = 0.0
    hold: timedelta = timedelta(0)
    hysteresis: float = 0.0
    default_margin: bool = True

    @property
    def margin(self) -> float:
        """The effective hysteresis margin."""
        h = max(0.0, self.hysteresis)
        if self.comparator is Comparator.OUTSIDE_RANGE:
            h = min(h, (self.upper - self.lower) / (4 if self.default_margin else 2))
        return h

    def meets(self, value: float) -> bool:
        """Whether ``value`` meets the condition (is outside the acceptable side)."""
        if self.comparator is Comparator.GT:
            return value > self.threshold
        if self.comparator is Comparator.LT:
            return value < self.threshold
        return value < self.lower or value > self.upper

    def cleared(self, value: float) -> bool:
        """Whether ``value`` is back inside by the hysteresis margin (resolves a firing alert)."""
        h = self.margin
        if self.comparator is Comparator.GT:
            return value <= self.threshold - h
        if self.comparator is Comparator.LT:
            return value >= self.threshold + h
        return self.lower + h <= value <= self.upper - h


class Phase(enum.Enum):
    """Where a machine stands."""

    CLEAR = "CLEAR"
    PENDING = "PENDING"
    FIRING = "FIRING"


@dataclass(frozen=True)
class Opened:
    """An alert starts firing.

    Attributes:
        start_time: observe time of the first reading of the run that met the condition.
        time: observe time of the reading that made it fire.
        value: that reading's value (in the condition's unit).

    """

    start_time: datetime
    time: datetime
    value: float


@dataclass(frozen=True)
class Closed:
    """A firing alert resolves.

    Attributes:
        start_time: the alert's start time.
        time: observe time of the reading that resolved it (the alert's end time).
        value: that reading's value (in the condition's unit).

    """

    start_time: datetime
    time: datetime
    value: float


class Machine:
    """The alert state of one rule for one sensor (pure: no I/O, no clock).

    Args:
        condition: the rule's condition.
        firing_since: start time of an alert already firing (e.g. loaded from the database).

    """

    __slots__ = ("condition", "last_time", "last_value", "phase", "since")

    def __init__(self, condition: Condition, firing_since: datetime | None = None) -> None:
        self.condition = condition
        self.phase = Phase.FIRING if firing_since is not None else Phase.CLEAR
        self.since: datetime | None = firing_since
        self.last_time: datetime | None = None
        self.last_value: float | None = None

    def feed(self, time: datetime, value: float) -> Opened | Closed | None:
        """Take the sensor's next reading; returns the alert's change, if any."""
        if not math.isfinite(value) or (self.last_time is not None and time <= self.last_time):
            return None
        self.last_time, self.last_value = time, value
        cond = self.condition
        if self.phase is Phase.FIRING:
            if cond.cleared(value):
                start = self.since or time
                self.phase, self.since = Phase.CLEAR, None
                return Closed(start, time, value)
            return None
        if not cond.meets(value):
            self.phase, self.since = Phase.CLEAR, None
            return None
        if self.phase is Phase.CLEAR or self.since is None:
            self.phase, self.since = Phase.PENDING, time
        if time - self.since >= cond.hold:
            self.phase = Phase.FIRING
            return Opened(self.since, time, value)
        return None

    def adopt(self, start_time: datetime) -> None:
        """Treat an alert that is firing (opened elsewhere) as this machine's own."""
        self.phase, self.since = Phase.FIRING, start_time

    def reset(self) -> None:
        """Forget any pending or firing state (the alert was resolved elsewhere)."""
        self.phase, self.since = Phase.CLEAR, None


# --- the hub ------------------------------------------------------------------------------------

SYSTEM = CallContext(principal=Principal(name="system", kind="SYSTEM"), method="seedline.server.AlertHub")
_BATCH = 500


@dataclass(frozen=True)
class _Rule:
    """A cached live rule and its evaluator condition."""

    row: am.AlertRule
    condition: Condition


@dataclass(frozen=True)
class _Job:
    """A change to persist: the machine's answer for one rule and sensor."""

    rule: am.AlertRule
    sensor_id: str
    section_id: str
    change: Opened | Closed


@dataclass(frozen=True)
class AlertChange:
    """A committed alert change as watchers get it.

    Attributes:
        seq: position in the alert change log.
        change: ``AlertChange`` number (FIRED, RESOLVED, ACKNOWLEDGED).
        alert: the alert after the change (detached).

    """

    seq: int
    change: int
    alert: am.Alert


@dataclass(eq=False)
class Watcher:
    """One WatchAlerts stream's bounded queue of changes of one license."""

    license_id: str
    queue: asyncio.Queue[AlertChange | None] = field(default_factory=lambda: asyncio.Queue(maxsize=1000))
    overflowed: bool = False


class AlertHub:
    """Evaluates committed readings against the rules, persists alerts, feeds the watchers.

    Args:
        db: the database.
        dsn: libpq DSN for the LISTEN connection (rule changes and alert changes of every
            process); None polls only.
        poll_interval: seconds between polls of the change log when no notification came.
        refresh_interval: seconds between rule cache reloads when no rule change was notified.
        touch_interval: seconds between writes of firing alerts' latest values.
        retention: how long the change log keeps events.

    """

    def __init__(
        self,
        db: Database,
        dsn: str | None = None,
        *,
        poll_interval: float = 5.0,
        refresh_interval: float = 30.0,
        touch_interval: float = 10.0,
        retention: timedelta = timedelta(hours=1),
    ) -> None:
        self._db = db
        self._poll = poll_interval
        self._refresh_every = refresh_interval
        self._touch_every = touch_interval
        self._retention = retention
        self._rules: dict[str, _Rule] = {}
        self._by_sensor: dict[str, list[_Rule]] = {}
        self._by_section: dict[tuple[str, int], list[_Rule]] = {}
        self._machines: dict[tuple[str, str], Machine] = {}
        self._firing: dict[tuple[str, str], datetime] = {}
        self._latest: dict[tuple[str, str], tuple[float, datetime]] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        # Generation of the last persisted change of each key: a refresh whose database read
        # started before that change must not judge the key's machine by that read.
        self._generation = 0
        self._persisted: dict[tuple[str, str], int] = {}
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._watchers: set[Watcher] = set()
        self._last_seq = 0
        self._rules_dirty = asyncio.Event()
        # Alert changes of every process wake the feed; rule changes mark the rule cache stale.
        self._notify = NotifyLoop(
            dsn,
            uses.EVENTS_CHANNEL,
            poll=poll_interval,
            name="alert feed",
            also={uses.RULES_CHANNEL: self._rules_dirty.set},
        )
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle --

    async def start(self) -> None:
        """Load the rules and firing alerts, then start evaluating and dispatching."""
        await self.refresh()
        self._last_seq = await self._db.read(SYSTEM, uses.event_head)
        self._tasks = [
            asyncio.create_task(self._persist_loop(), name="alert-persist"),
            asyncio.create_task(self._notify.run(self.dispatch), name="alert-feed"),
            asyncio.create_task(self._upkeep_loop(), name="alert-upkeep"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Persist the changes already decided (within ``grace`` seconds), then stop; watchers end."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._jobs.join(), grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._notify.close()
        for w in list(self._watchers):
            self._end(w)

    async def drain(self) -> None:
        """Wait until every decided change is persisted (tests, shutdown)."""
        await self._jobs.join()

    def rules_changed(self) -> None:
        """Reload the rule cache soon (this process changed a rule; others hear the NOTIFY)."""
        self._rules_dirty.set()

    # -- rules --

    async def refresh(self) -> None:
        """Reload the live rules and the firing alerts, keeping machines of unchanged rules."""

        async def load(uow: UnitOfWork) -> tuple[list[am.AlertRule], list[am.Alert]]:
            return await uses.live_rules(uow), await uses.firing_alerts(uow)

        started = self._generation
        rows, firing = await self._db.read(SYSTEM, load)
        old = self._rules
        self._rules = {r.id: _Rule(r, uses.rule_condition(r)) for r in rows}
        self._by_sensor, self._by_section = {}, {}
        for rule in self._rules.values():
            if rule.row.sensor_id is not None:
                self._by_sensor.setdefault(rule.row.sensor_id, []).append(rule)
            elif rule.row.section_id is not None:
                self._by_section.setdefault((rule.row.section_id, rule.row.metric), []).append(rule)
        self._firing = {(a.rule_id, a.sensor_id): a.start_time for a in firing}
        for key in list(self._machines):
            rule_id = key[0]
            if rule_id not in self._rules or old[rule_id].row.version != self._rules[rule_id].row.version:
                del self._machines[key]
                continue
            if key in self._in_flight or self._persisted.get(key, 0) > started:
                continue  # our own change of it is being written or was after the read
            machine, since = self._machines[key], self._firing.get(key)
            if since is not None and machine.phase is not Phase.FIRING:
                machine.adopt(since)  # another process opened it
            elif since is None and machine.phase is Phase.FIRING:
                machine.reset()  # resolved elsewhere (another process, a rule change)

    # -- evaluation (the ingest pipeline's listener: synchronous and fast) --

    def on_readings(self, readings: Sequence[CommittedReading]) -> None:
        """Feed committed readings to the machines of the rules watching their sensors.

        Never raises: a fault here must not disturb the ingest pipeline that calls it.
        """
        try:
            self._evaluate(readings)
        except Exception:
            log.exception("alert evaluation failed", readings=len(readings))

    def _evaluate(self, readings: Sequence[CommittedReading]) -> None:
        if not self._rules:
            return
        for r in readings:
            rules = self._by_sensor.get(r.sensor_id, [])
            section_rules = self._by_section.get((r.section_id, r.metric))
            if section_rules:
                rules = rules + section_rules
            for rule in rules:
                row = rule.row
                if row.license_id != r.license_id or row.metric != r.metric:
                    continue
                key = (row.id, r.sensor_id)
                machine = self._machines.get(key)
                if machine is None:
                    machine = self._machines[key] = Machine(rule.condition, self._firing.get(key))
                value = convert(r.value, r.unit, row.unit)
                change = machine.feed(r.observe_time, value)
                if change is not None:
                    self._in_flight[key] = self._in_flight.get(key, 0) + 1
                    self._latest.pop(key, None)
                    self._jobs.put_nowait(_Job(row, r.sensor_id, r.section_id, change))
                elif machine.phase is Phase.FIRING and machine.last_time == r.observe_time:
                    self._latest[key] = (value, r.observe_time)

    async def _persist_loop(self) -> None:
        while True:
            job = await self._jobs.get()
            key = (job.rule.id, job.sensor_id)
            try:
                await self._persist(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert change not persisted", rule=job.rule.id, sensor=job.sensor_id)
                # The database did not take it: undo the machine's step so a later reading retries.
                machine = self._machines.get(key)
                if machine is not None:
                    if isinstance(job.change, Opened):
                        machine.reset()
                    else:
                        machine.adopt(job.change.start_time)
            finally:
                self._generation += 1
                self._persisted[key] = self._generation
                left = self._in_flight.get(key, 1) - 1
                if left > 0:
                    self._in_flight[key] = left
                else:
                    self._in_flight.pop(key, None)
                self._jobs.task_done()

    async def _persist(self, job: _Job) -> None:
        for attempt in range(3):
            try:
                await self._write(job)
                return
            except LookupError:  # opened and resolved meanwhile elsewhere: start afresh
                machine = self._machines.get((job.rule.id, job.sensor_id))
                if machine is not None:
                    machine.reset()
                return
            except DependencyUnavailable:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)

    async def _write(self, job: _Job) -> None:
        change, key = job.change, (job.rule.id, job.sensor_id)
        if isinstance(change, Opened):
            opening = uses.Opening(
                job.rule, job.sensor_id, job.section_id, change.start_time, change.value, change.time
            )

            async def run_open(uow: UnitOfWork) -> tuple[am.Alert, bool]:
                return await uses.open_alert(uow, opening)

            row, _ = await self._db.write(SYSTEM, run_open)
            self._firing[key] = row.start_time
            machine = self._machines.get(key)
            if machine is not None and machine.phase is Phase.FIRING:
                machine.since = row.start_time  # the first opener's start stands
            return

        async def run_close(uow: UnitOfWork) -> am.Alert | None:
            return await uses.close_alert(uow, job.rule.id, job.sensor_id, change.time, change.value)

        await self._db.write(SYSTEM, run_close)
        self._firing.pop(key, None)

    # -- watchers --

    def subscribe(self, license_id: str) -> Watcher:
        """Start receiving the alert changes of ``license_id``."""
        w = Watcher(license_id)
        self._watchers.add(w)
        return w

    def unsubscribe(self, w: Watcher) -> None:
        """Stop receiving changes."""
        self._watchers.discard(w)

    @property
    def watchers(self) -> int:
        """How many watchers are subscribed."""
        return len(self._watchers)

    async def next(self, w: Watcher, heartbeat: float) -> AlertChange | None:
        """The watcher's next change, or None after ``heartbeat`` seconds without one.

        Raises:
            DependencyUnavailable: the hub stopped or the watcher fell behind.

        """
        try:
            got = await asyncio.wait_for(w.queue.get(), heartbeat)
        except TimeoutError:
            return None
        if got is None:
            why = "the watcher fell behind" if w.overflowed else "the server is draining"
            raise DependencyUnavailable(f"{why}; watch again")
        return got

    def _end(self, w: Watcher) -> None:
        self._watchers.discard(w)
        while not w.queue.empty():
            w.queue.get_nowait()
        w.queue.put_nowait(None)

    async def dispatch(self) -> None:
        """Hand the change log's new events to the watchers of their licenses."""
        while True:

            async def page(uow: UnitOfWork) -> list[am.AlertEvent]:
                return await uses.events_after(uow, self._last_seq, _BATCH)

            events = await self._db.read(SYSTEM, page)
            for ev in events:
                self._last_seq = ev.seq
                item: AlertChange | None = None
                for w in list(self._watchers):
                    if w.license_id != ev.license_id:
                        continue
                    item = item or AlertChange(ev.seq, ev.change, uses.alert_from_json(ev.alert))
                    try:
                        w.queue.put_nowait(item)
                    except asyncio.QueueFull:
                        w.overflowed = True
                        self._end(w)
            if len(events) < _BATCH:
                return

    # -- background loops --

    async def _upkeep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = next_touch = next_prune = loop.time()
        while True:
            try:
                wait = max(0.0, min(next_refresh, next_touch) - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rules_dirty.wait(), wait)
                t = loop.time()
                if self._rules_dirty.is_set() or t >= next_refresh:
                    self._rules_dirty.clear()
                    await self.refresh()
                    next_refresh = t + self._refresh_every
                if t >= next_touch:
                    await self.touch()
                    next_touch = t + self._touch_every
                if t >= next_prune:
                    await self.prune()
                    next_prune = t + 60.0
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("alert upkeep failed, retrying", exc_info=True)
                await asyncio.sleep(self._poll)

    async def prune(self) -> None:
        """Drop change log events older than the retention."""
        cutoff = datetime.now(UTC) - self._retention

        async def run(uow: UnitOfWork) -> None:
            await uses.prune_events(uow, cutoff)

        await self._db.write(SYSTEM, run)

    async def touch(self) -> None:
        """Write the latest values of firing alerts seen since the last touch."""
        if not self._latest:
            return
        latest, self._latest = self._latest, {}

        async def run(uow: UnitOfWork) -> None:
            await uses.touch_alerts(uow, latest)

        await self._db.write(SYSTEM, run)
