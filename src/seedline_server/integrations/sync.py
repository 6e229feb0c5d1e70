"""Sync runs (pulls, pushes, reconciliation) and the schedule that starts them.

A run is a ``sync_runs`` row: SyncIntegration inserts it QUEUED (and NOTIFYs), the schedule
inserts its own, and any worker claims it with ``FOR UPDATE SKIP LOCKED``, marks it RUNNING under
a lease and works through its scopes with the integration's connector. A worker that dies leaves
the lease to run out; the next worker starts the run again (pulls are read-only comparisons and
pushes go through the outbox, so a repeat does no harm).

Pulls never overwrite Seedline's records: Seedline is the system of record and the state
system its mirror. A pull reads the remote's records (in METRC's 24-hour ``lastModified`` windows
and pages of at most 20), remembers the remote ids of what matches, and lists every difference
(missing on either side, quantity, phase or status mismatches) for a person to resolve. A push
re-sends, through the outbox, every record the remote is missing.

The schedule (SOP-API-001): plants every 4 hours, inventory daily, a FULL reconciliation of both
weekly; lab results arrive in real time by webhook, so they have no schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from ulid import ULID

from seedline_server.integrations.connector import Connector
from seedline_server.integrations.transport import Exchange, RemoteError
from seedline_server.integrations.worker import log_rows
from seedline_server.service import outbox
from seedline_server.store import integration_models as im

__all__ = [
    "SCHEDULE",
    "Difference",
    "RunSpec",
    "Scheduler",
    "ScopeResult",
    "SyncRunner",
    "Syncer",
]

log = structlog.get_logger("seedline.sync")
SYNC_CHANNEL = "seedline_sync"

# scope → how often an INCREMENTAL pull is due; FULL reconciliation of all of them weekly.
SCHEDULE: dict[str, timedelta] = {"PLANTS": timedelta(hours=4), "INVENTORY": timedelta(days=1)}
FULL_EVERY = timedelta(days=7)
# The kinds whose connector pulls and reconciles (BioTrackTHC's sync_* reads are not mapped yet).
SCHEDULED_KINDS = ("METRC",)


@dataclass(frozen=True)
class RunSpec:
    """A claimed run."""

    id: str
    integration_id: str
    license_id: str
    scopes: tuple[str, ...]
    mode: str
    direction: str
    since: datetime | None


@dataclass(frozen=True)
class Difference:
    """One difference between Seedline and the remote."""

    scope: str
    kind: str  # MISSING_REMOTE | MISSING_LOCAL | QUANTITY_MISMATCH | PHASE_MISMATCH | STATUS_MISMATCH
    resource: str
    remote_id: str
    local_value: str
    remote_value: str


@dataclass
class ScopeResult:
    """What one scope of a run did."""

    pulled: int = 0
    pushed: int = 0
    unchanged: int = 0
    failed: int = 0
    differences: list[Difference] = field(default_factory=list)


class Syncer(Protocol):
    """A connector that can sync."""

    def supports(self, scope: str, direction: str) -> bool:
        """Whether this connector can run ``scope`` in ``direction`` (PULL or PUSH)."""
        ...

    async def sync_scope(self, run: RunSpec, scope: str, log: list[Exchange]) -> ScopeResult:
        """Run one scope of ``run``."""
        ...


_CLAIM = text(
    """
    UPDATE sync_runs r SET state = 'RUNNING', start_time = COALESCE(r.start_time, clock_timestamp()),
           lease_time = clock_timestamp() + make_interval(secs => :lease)
     WHERE r.id = (
       SELECT s.id FROM sync_runs s JOIN integrations i ON i.id = s.integration_id
        WHERE (s.state = 'QUEUED' OR (s.state = 'RUNNING' AND s.lease_time < clock_timestamp()))
          AND i.breaker_state <> 'OPEN'
        ORDER BY s.id LIMIT 1 FOR UPDATE OF s SKIP LOCKED)
    RETURNING r.id, r.integration_id, r.scopes, r.mode, r.direction, r.since_time,
              (SELECT license_id FROM integrations WHERE id = r.integration_id) AS license_id
    """
)


_SCHEDULED_RUN = text(
    """
    INSERT INTO sync_runs
           (id, integration_id, state, scopes, mode, direction, trigger, counts, create_time, since_time)
    VALUES (:id, :i, 'QUEUED', :scopes, :mode, 'PULL', 'SCHEDULE', '{}', :now, :since)
    ON CONFLICT DO NOTHING RETURNING id
    """
)


def _counts(scope: str, r: ScopeResult) -> dict[str, int]:
    return {"pulled": r.pulled, "pushed": r.pushed, "unchanged": r.unchanged, "failed": r.failed}


class SyncRunner:
    """Claims and runs sync runs."""

    def __init__(self, engine: AsyncEngine, connectors: Any, *, lease_seconds: float = 300.0) -> None:
        self._engine = engine
        self._connectors = connectors
        self._lease = lease_seconds
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Run sync runs until ``stop``."""
        listener = asyncio.create_task(self._listen(stop))
        try:
            while not stop.is_set():
                try:
                    ran = await self.run_one()
                except Exception:
                    log.exception("sync runner failed")
                    ran = False
                if ran:
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await asyncio.wait(
                            [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())],
                            return_when=asyncio.FIRST_COMPLETED,
                        )
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    async def _listen(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self._engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    driver = raw.driver_connection
                    assert driver is not None

                    def notified(*_: object) -> None:
                        self._wake.set()

                    await driver.add_listener(SYNC_CHANNEL, notified)
                    await stop.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(1.0)

    async def run_one(self) -> bool:
        """Claim and run one due run; False when none is due."""
        async with self._engine.begin() as conn:
            row = (await conn.execute(_CLAIM, {"lease": self._lease})).first()
        if row is None:
            return False
        spec = RunSpec(
            row.id,
            row.integration_id,
            row.license_id,
            tuple(row.scopes),
            row.mode,
            row.direction,
            row.since_time,
        )
        await self._execute(spec)
        return True

    async def _execute(self, spec: RunSpec) -> None:
        started = datetime.now(UTC)
        counts: dict[str, dict[str, int]] = {}
        differences: list[Difference] = []
        error = ""
        try:
            connector: Connector = await self._connectors(spec.integration_id)
            syncer: Syncer | None = connector if hasattr(connector, "sync_scope") else None  # type: ignore[assignment]
            if syncer is None:
                raise RemoteError("this kind of integration does not sync", retryable=False, maybe_sent=False)
            directions = ["PULL", "PUSH"] if spec.direction == "BOTH" else [spec.direction]
            for scope in spec.scopes:
                total = ScopeResult()
                for direction in directions:
                    if not syncer.supports(scope, direction):
                        raise RemoteError(
                            f"{scope} cannot be synced in direction {direction} by this integration",
                            retryable=False,
                            maybe_sent=False,
                        )
                    exchanges: list[Exchange] = []
                    try:
                        one = await syncer.sync_scope(
                            RunSpec(
                                spec.id,
                                spec.integration_id,
                                spec.license_id,
                                spec.scopes,
                                spec.mode,
                                direction,
                                spec.since,
                            ),
                            scope,
                            exchanges,
                        )
                    finally:
                        await self._write_logs(spec, exchanges)
                    total.pulled += one.pulled
                    total.pushed += one.pushed
                    total.unchanged += one.unchanged
                    total.failed += one.failed
                    if direction == "PULL":
                        total.differences.extend(one.differences)
                counts[scope] = _counts(scope, total)
                differences.extend(total.differences)
                await self._progress(spec, counts)
        except RemoteError as exc:
            error = exc.detail
        except Exception as exc:
            log.exception("sync run crashed", run=spec.id)
            error = f"internal error: {type(exc).__name__}"
        failed = sum(c["failed"] for c in counts.values())
        state = "FAILED" if error else ("PARTIALLY_SUCCEEDED" if failed else "SUCCEEDED")
        if not error and failed:
            error = f"{failed} record(s) failed; see the exchange logs of this run"
        await self._finish(spec, state, counts, differences, error, started)

    async def _write_logs(self, spec: RunSpec, exchanges: list[Exchange]) -> None:
        if not exchanges:
            return
        for e in exchanges:
            e.sync_run_id = spec.id
        async with self._engine.begin() as conn:
            await conn.execute(insert(im.IntegrationLog), log_rows(spec.integration_id, exchanges))

    async def _progress(self, spec: RunSpec, counts: dict[str, dict[str, int]]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(im.SyncRun)
                .where(im.SyncRun.id == spec.id)
                .values(
                    counts=counts,
                    lease_time=datetime.now(UTC) + timedelta(seconds=self._lease),
                )
            )

    async def _finish(
        self,
        spec: RunSpec,
        state: str,
        counts: dict[str, dict[str, int]],
        differences: list[Difference],
        error: str,
        started: datetime,
    ) -> None:
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            if differences:
                await conn.execute(
                    insert(im.SyncDifference),
                    [
                        {
                            "sync_run_id": spec.id,
                            "seq": i,
                            "scope": d.scope,
                            "kind": d.kind,
                            "resource": d.resource,
                            "remote_id": d.remote_id,
                            "local_value": d.local_value,
                            "remote_value": d.remote_value,
                        }
                        for i, d in enumerate(sorted(differences, key=lambda d: (d.scope, d.remote_id)), 1)
                    ],
                )
            await conn.execute(
                update(im.SyncRun)
                .where(im.SyncRun.id == spec.id)
                .values(
                    state=state,
                    counts=counts,
                    end_time=now,
                    lease_time=None,
                    error_detail=error[:2000],
                    difference_count=len(differences),
                )
            )
            if state != "FAILED":
                await conn.execute(
                    update(im.Integration)
                    .where(im.Integration.id == spec.integration_id)
                    .values(last_sync_time=now)
                )
                for scope in counts:
                    values: dict[str, Any] = {"last_success_time": started}
                    if spec.mode == "FULL":
                        values["last_full_time"] = started
                    stmt = text(
                        "INSERT INTO sync_cursors (integration_id, scope, last_success_time, last_full_time)"
                        " VALUES (:i, :s, :t, :f) ON CONFLICT (integration_id, scope) DO UPDATE SET"
                        " last_success_time = EXCLUDED.last_success_time,"
                        " last_full_time = COALESCE(EXCLUDED.last_full_time, sync_cursors.last_full_time)"
                    )
                    await conn.execute(
                        stmt,
                        {
                            "i": spec.integration_id,
                            "s": scope,
                            "t": started,
                            "f": values.get("last_full_time"),
                        },
                    )
        async with self._engine.begin() as conn:
            from sqlalchemy.ext.asyncio import AsyncSession

            session = AsyncSession(bind=conn)
            await outbox.enqueue_event(
                session,
                license_id=spec.license_id,
                event_type="sync.completed",
                resource=f"licenses/{spec.license_id}/integrations/{spec.integration_id}",
                payload={
                    "sync_run_id": spec.id,
                    "state": state,
                    "counts": counts,
                    "difference_count": len(differences),
                },
                now=now,
            )
            await session.flush()
        log.info(
            "sync run finished", run=spec.id, state=state, differences=len(differences), error=error or None
        )


class Scheduler:
    """Inserts the scheduled runs that are due (any number of processes may run it)."""

    def __init__(self, engine: AsyncEngine, *, period: float = 60.0) -> None:
        self._engine = engine
        self._period = period

    async def run(self, stop: asyncio.Event) -> None:
        """Check the schedule every ``period`` seconds until ``stop``."""
        while not stop.is_set():
            try:
                await self.tick(datetime.now(UTC))
            except Exception:
                log.warning("schedule check failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._period):
                    await stop.wait()

    async def tick(self, now: datetime) -> list[str]:
        """Insert the runs due at ``now``; returns their ids."""
        i, c = im.Integration, im.SyncCursor
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(i.id, c.scope, c.last_success_time, c.last_full_time)
                    .outerjoin(c, c.integration_id == i.id)
                    .where(
                        i.enabled.is_(True),
                        i.kind.in_(SCHEDULED_KINDS),
                        i.credentials.is_not(None),
                        i.breaker_state != "OPEN",
                    )
                )
            ).all()
            cursors: dict[str, dict[str, tuple[datetime | None, datetime | None]]] = {}
            for iid, scope, last, full in rows:
                cursors.setdefault(iid, {})
                if scope is not None:
                    cursors[iid][scope] = (last, full)
            created = []
            for iid, scopes in cursors.items():
                fulls = [scopes.get(s, (None, None))[1] for s in SCHEDULE]
                since: datetime | None = None
                if any(f is None or now - f >= FULL_EVERY for f in fulls):
                    due, mode = list(SCHEDULE), "FULL"
                else:
                    due = [
                        s
                        for s, every in SCHEDULE.items()
                        if (last := scopes.get(s, (None, None))[0]) is None or now - last >= every
                    ]
                    mode = "INCREMENTAL"
                    # Pull what changed since the oldest of their last successes (in METRC's
                    # 24-hour lastModified windows).
                    lasts = [t for s in due if (t := scopes.get(s, (None, None))[0]) is not None]
                    since = min(lasts) if due and len(lasts) == len(due) else None
                    if due and since is None:
                        mode = "FULL"
                if not due:
                    continue
                run_id = str(ULID())
                inserted = (
                    await conn.execute(
                        _SCHEDULED_RUN,
                        {"id": run_id, "i": iid, "scopes": due, "mode": mode, "now": now, "since": since},
                    )
                ).scalar()
                if inserted:
                    created.append(run_id)
            if created:
                await conn.execute(text("SELECT pg_notify(:c, '')"), {"c": SYNC_CHANNEL})
        return created
