"""The outbox worker: claims deliveries, hands them to connectors, records what happened.

Any number of worker processes run this loop against one database; they share the work through
``FOR UPDATE SKIP LOCKED`` and need no coordinator.

- **Claim**: one statement takes up to N due deliveries of enabled integrations whose circuit
  breaker is CLOSED, skipping rows other workers hold, and only the *oldest undelivered* row of
  each (integration, resource): so a remote hears of one resource's changes in commit order, and
  a dead-lettered change holds back the later ones of the same resource until it is retried.
  Claimed rows become IN_FLIGHT with a lease; a worker that dies (even by SIGKILL) leaves them to
  be reclaimed when the lease runs out, marked to *look before resending*.
- **Deliver**: the connector sends; the outcome, the exchange log rows and the remote ids are
  written in one short transaction, guarded by the attempt number so a late writer whose lease
  expired cannot overwrite a newer attempt.
- **Retry**: exponential backoff with jitter (``base * 2^(attempt-1)``, capped, times a random
  factor in [0.5, 1)), or the remote's Retry-After when it is longer; after ``max_attempts`` or
  on a permanent refusal the delivery becomes DEAD_LETTER with its error kept.
- **Circuit breaker** per integration, in the database so every worker sees it: after
  ``breaker_threshold`` consecutive failures that say something about the remote's health
  (timeouts, connection errors, 5xx; not 429 or a 4xx refusal) it OPENs and nothing is claimed
  for it; after ``breaker_cooldown`` one worker moves it to HALF_OPEN and makes one probe call:
  success CLOSEs it, failure OPENs it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import insert, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from ulid import ULID

from seedline_server.integrations.connector import Connector, Job, Outcome
from seedline_server.integrations.transport import Exchange, RemoteError
from seedline_server.observability import hooks
from seedline_server.service.outbox import CHANNEL
from seedline_server.store import integration_models as im

__all__ = ["OutboxWorker", "WorkerSettings", "backoff"]

log = structlog.get_logger("seedline.outbox")


@dataclass(frozen=True)
class WorkerSettings:
    """Tuning of the outbox worker."""

    batch: int = 32
    concurrency: int = 32
    lease_seconds: float = 60.0
    max_attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 300.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    idle_poll: float = 1.0


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before the attempt after ``attempt``: exponential, capped, with jitter in [0.5, 1)."""
    r: float = (rng or random).random()
    return float(min(cap, base * (2 ** max(0, attempt - 1))) * (0.5 + r / 2))


_CLAIM = text(
    """
    WITH due AS (
      SELECT d.id FROM deliveries d
        JOIN integrations i ON i.id = d.integration_id
       WHERE ((d.state = 'PENDING' AND d.next_attempt_time <= clock_timestamp())
              OR (d.state = 'IN_FLIGHT' AND d.lease_time < clock_timestamp()))
         AND i.enabled AND i.breaker_state = 'CLOSED'
         AND (CAST(:only AS text[]) IS NULL OR d.integration_id = ANY(CAST(:only AS text[])))
         AND NOT EXISTS (
           SELECT 1 FROM deliveries p
            WHERE p.integration_id = d.integration_id AND p.ordering_key = d.ordering_key
              AND p.state <> 'DELIVERED' AND p.id < d.id)
       ORDER BY d.next_attempt_time, d.id
       LIMIT :n
       FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE deliveries x
       SET state = 'IN_FLIGHT',
           lease_time = clock_timestamp() + make_interval(secs => :lease),
           attempts = x.attempts + 1,
           maybe_sent = x.maybe_sent OR x.state = 'IN_FLIGHT'
      FROM due WHERE x.id = due.id
    RETURNING x.id, x.integration_id, x.license_id, x.event_type, x.resource, x.payload, x.attempts,
              x.maybe_sent, x.create_time, x.audit_event_id
    """
)
# What is still to do: pending or in flight, of a running integration, not held back by a dead
# letter of the same resource.
_LEFT = text(
    """
    SELECT count(*) FROM deliveries d JOIN integrations i ON i.id = d.integration_id
     WHERE d.state IN ('PENDING', 'IN_FLIGHT') AND i.enabled AND i.breaker_state <> 'OPEN'
       AND (CAST(:only AS text[]) IS NULL OR d.integration_id = ANY(CAST(:only AS text[])))
       AND NOT EXISTS (
         SELECT 1 FROM deliveries p
          WHERE p.integration_id = d.integration_id AND p.ordering_key = d.ordering_key
            AND p.state = 'DEAD_LETTER' AND p.id < d.id)
    """
)
_DELIVERED = text(
    """
    UPDATE deliveries SET state = 'DELIVERED', deliver_time = clock_timestamp(), lease_time = NULL,
           last_error = ''
     WHERE id = :id AND state = 'IN_FLIGHT' AND attempts = :attempt
    """
)
_RETRY = text(
    """
    UPDATE deliveries SET state = 'PENDING', lease_time = NULL, last_error = :error,
           next_attempt_time = clock_timestamp() + make_interval(secs => :delay),
           maybe_sent = maybe_sent OR :maybe_sent
     WHERE id = :id AND state = 'IN_FLIGHT' AND attempts = :attempt
    """
)
_DEAD = text(
    """
    UPDATE deliveries SET state = 'DEAD_LETTER', lease_time = NULL, last_error = :error,
           maybe_sent = maybe_sent OR :maybe_sent
     WHERE id = :id AND state = 'IN_FLIGHT' AND attempts = :attempt
    """
)
_HEALTHY = text("UPDATE integrations SET breaker_failures = 0 WHERE id = :i AND breaker_failures > 0")
_FAILED = text(
    """
    UPDATE integrations
       SET breaker_failures = breaker_failures + 1,
           breaker_state = CASE WHEN breaker_failures + 1 >= :threshold THEN 'OPEN' ELSE breaker_state END,
           breaker_open_time = CASE WHEN breaker_failures + 1 >= :threshold AND breaker_state <> 'OPEN'
                                    THEN clock_timestamp() ELSE breaker_open_time END
     WHERE id = :i
    RETURNING breaker_state
    """
)
_TO_HALF_OPEN = text(
    """
    UPDATE integrations SET breaker_state = 'HALF_OPEN'
     WHERE breaker_state = 'OPEN' AND enabled
       AND (CAST(:only AS text[]) IS NULL OR id = ANY(CAST(:only AS text[])))
       AND breaker_open_time < clock_timestamp() - make_interval(secs => :cooldown)
    RETURNING id
    """
)
_CLOSE = text(
    "UPDATE integrations SET breaker_state = 'CLOSED', breaker_failures = 0, breaker_open_time = NULL "
    "WHERE id = :i AND breaker_state = 'HALF_OPEN'"
)
_REOPEN = text(
    "UPDATE integrations SET breaker_state = 'OPEN', breaker_open_time = clock_timestamp() "
    "WHERE id = :i AND breaker_state = 'HALF_OPEN'"
)


def log_rows(integration_id: str, exchanges: list[Exchange]) -> list[dict[str, Any]]:
    """``integration_logs`` rows of exchanges."""
    return [
        {
            "id": str(ULID.from_datetime(e.exchange_time)),
            "integration_id": integration_id,
            "direction": e.direction,
            "endpoint": e.endpoint,
            "request_id": e.request_id,
            "payload_size": e.payload_size,
            "payload_sha256": e.payload_sha256,
            "summary": e.summary,
            "status": e.status,
            "exchange_time": e.exchange_time,
            "response_ms": e.response_ms,
            "retry_count": e.retry_count,
            "error_detail": e.error_detail,
            "sync_run_id": e.sync_run_id,
        }
        for e in exchanges
    ]


ConnectorSource = Callable[[str], Awaitable[Connector]]


class OutboxWorker:
    """One worker process's delivery loop."""

    def __init__(
        self,
        engine: AsyncEngine,
        connectors: ConnectorSource,
        settings: WorkerSettings | None = None,
        *,
        name: str = "worker",
        only: list[str] | None = None,
    ) -> None:
        self._engine = engine
        # Restrict this worker to some integrations (tests sharing a database; sharding).
        self._only = only
        self._connectors = connectors
        self.settings = settings or WorkerSettings()
        self.name = name
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0
        self._last_probe = 0.0

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; in-flight deliveries finish first."""
        listener = asyncio.create_task(self._listen(stop))
        try:
            while not stop.is_set():
                room = self.settings.concurrency - len(self._inflight)
                try:
                    await self._probe_half_open()
                    jobs = await self._claim(min(room, self.settings.batch)) if room > 0 else []
                except Exception as exc:  # the database went away: keep polling until it is back
                    log.warning("outbox claim failed", error=str(exc))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.settings.idle_poll)
                    continue
                for job in jobs:
                    task = asyncio.create_task(self._deliver(job))
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
                if jobs and len(jobs) == min(room, self.settings.batch):
                    continue  # more may be due: claim again as soon as there is room
                self._wake.clear()
                waiters: list[asyncio.Task[Any]] = [
                    asyncio.create_task(self._wake.wait()),
                    asyncio.create_task(stop.wait()),
                ]
                if self._inflight and room <= 0:
                    waiters.append(asyncio.create_task(self._first_done()))
                _, pending = await asyncio.wait(
                    waiters, timeout=self.settings.idle_poll, return_when=asyncio.FIRST_COMPLETED
                )
                for p in pending:
                    p.cancel()
        finally:
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    async def run_until_idle(self, *, within: float = 60.0) -> None:
        """Deliver until nothing is due or in flight (tests and the CLI's one-shot mode)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            await self._probe_half_open()
            jobs = await self._claim(self.settings.batch)
            if jobs:
                await asyncio.gather(*(self._deliver(j) for j in jobs))
                continue
            async with self._engine.connect() as conn:
                left = (
                    await conn.execute(
                        _LEFT,
                        {"only": self._only},
                    )
                ).scalar_one()
            if not left:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("the outbox did not drain in time")

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def _first_done(self) -> None:
        await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN for commits that enqueued deliveries; reconnects, and polling covers gaps."""
        while not stop.is_set():
            try:
                async with self._engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    driver = raw.driver_connection
                    assert driver is not None

                    def notified(*_: object) -> None:
                        self._wake.set()

                    await driver.add_listener(CHANNEL, notified)
                    try:
                        await stop.wait()
                    finally:
                        with contextlib.suppress(Exception):
                            await driver.remove_listener(CHANNEL, notified)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: poll until it is back
                log.warning("outbox listener lost", error=str(exc))
                await asyncio.sleep(1.0)

    # -- claim and deliver ------------------------------------------------------------------

    async def _claim(self, n: int) -> list[Job]:
        if n <= 0:
            return []
        async with self._engine.begin() as conn:
            params = {"n": n, "lease": self.settings.lease_seconds, "only": self._only}
            rows = (await conn.execute(_CLAIM, params)).all()
        return [
            Job(
                id=r.id,
                integration_id=r.integration_id,
                license_id=r.license_id,
                event_type=r.event_type,
                resource=r.resource,
                payload=r.payload,
                attempt=r.attempts,
                look_first=bool(r.maybe_sent),
                create_time=r.create_time,
                audit_event_id=r.audit_event_id,
            )
            for r in sorted(rows, key=lambda r: r.id)
        ]

    async def _deliver(self, job: Job) -> None:
        with hooks.delivery(job.id, job.integration_id, job.event_type, job.attempt):
            await self._attempt(job)

    async def _attempt(self, job: Job) -> None:
        exchanges: list[Exchange] = []
        try:
            connector = await self._connectors(job.integration_id)
            outcome = await connector.deliver(job, exchanges)
        except RemoteError as exc:
            if exc.exchange is not None and exc.exchange not in exchanges:
                exchanges.append(exc.exchange)
            await self._failed(job, exc, exchanges)
            return
        except Exception as exc:
            log.exception("delivery crashed", delivery=job.id, event_type=job.event_type)
            err = RemoteError(
                f"internal error: {type(exc).__name__}: {exc}"[:500], retryable=True, maybe_sent=True
            )
            await self._failed(job, err, exchanges)
            return
        for e in exchanges:
            e.retry_count = job.attempt - 1
        try:
            await self._record_delivered(job, outcome, exchanges)
        except IntegrityError:  # the integration was deleted meanwhile, its deliveries with it
            log.info("integration deleted during delivery", delivery=job.id)

    async def _record_delivered(self, job: Job, outcome: Outcome, exchanges: list[Exchange]) -> None:
        async with self._engine.begin() as conn:
            done = (await conn.execute(_DELIVERED, {"id": job.id, "attempt": job.attempt})).rowcount
            if exchanges:
                await conn.execute(insert(im.IntegrationLog), log_rows(job.integration_id, exchanges))
            if outcome.remote_ids:
                stmt = pg_insert(im.RemoteId).values(
                    [
                        {"integration_id": job.integration_id, "resource": k, "remote_id": v}
                        for k, v in outcome.remote_ids.items()
                    ]
                )
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["integration_id", "resource"],
                        set_={"remote_id": stmt.excluded.remote_id},
                    )
                )
            await conn.execute(_HEALTHY, {"i": job.integration_id})
        if done:
            self.delivered += 1
            hooks.delivery_outcome("delivered", job.integration_id)

    async def _failed(self, job: Job, exc: RemoteError, exchanges: list[Exchange]) -> None:
        s = self.settings
        dead = not exc.retryable or job.attempt >= s.max_attempts
        for e in exchanges:
            e.retry_count = job.attempt - 1
        if exchanges and dead and exchanges[-1].status == "RETRY":
            exchanges[-1].status = "ERROR"  # not retried after all: the log must say so
        try:
            await self._record_failure(job, exc, exchanges, dead)
        except IntegrityError:  # the integration was deleted meanwhile, its deliveries with it
            log.info("integration deleted during delivery", delivery=job.id)
            return
        self.failed += 1
        hooks.delivery_outcome("dead_letter" if dead else "retry", job.integration_id)

    async def _record_failure(
        self, job: Job, exc: RemoteError, exchanges: list[Exchange], dead: bool
    ) -> None:
        s = self.settings
        error = exc.detail[:2000]
        async with self._engine.begin() as conn:
            if dead:
                await conn.execute(
                    _DEAD,
                    {"id": job.id, "attempt": job.attempt, "error": error, "maybe_sent": exc.maybe_sent},
                )
            else:
                delay = backoff(job.attempt, s.base_delay, s.max_delay)
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                await conn.execute(
                    _RETRY,
                    {
                        "id": job.id,
                        "attempt": job.attempt,
                        "error": error,
                        "delay": delay,
                        "maybe_sent": exc.maybe_sent,
                    },
                )
            if exchanges:
                await conn.execute(insert(im.IntegrationLog), log_rows(job.integration_id, exchanges))
            if exc.counts_for_breaker:
                state = (
                    await conn.execute(_FAILED, {"i": job.integration_id, "threshold": s.breaker_threshold})
                ).scalar()
                if state == "OPEN":
                    log.warning("circuit breaker open", integration=job.integration_id, error=error)

    # -- the breaker's half-open probe -------------------------------------------------------

    async def _probe_half_open(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_probe < 0.5:
            return
        self._last_probe = loop.time()
        async with self._engine.begin() as conn:
            ids = (
                (
                    await conn.execute(
                        _TO_HALF_OPEN, {"cooldown": self.settings.breaker_cooldown, "only": self._only}
                    )
                )
                .scalars()
                .all()
            )
        for integration_id in ids:
            exchanges: list[Exchange] = []
            try:
                connector = await self._connectors(integration_id)
                await connector.probe(exchanges)
                ok = True
            except Exception as exc:
                if (
                    isinstance(exc, RemoteError)
                    and exc.exchange is not None
                    and exc.exchange not in exchanges
                ):
                    exchanges.append(exc.exchange)
                ok = False
            for e in exchanges:
                e.summary = f"circuit breaker probe: {e.summary}"
            async with self._engine.begin() as conn:
                await conn.execute(_CLOSE if ok else _REOPEN, {"i": integration_id})
                if exchanges:
                    await conn.execute(insert(im.IntegrationLog), log_rows(integration_id, exchanges))
            log.info("circuit breaker probe", integration=integration_id, closed=ok)
            if ok:
                self._wake.set()
