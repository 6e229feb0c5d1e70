"""Outbox lag, backlog, dead letters and circuit breaker states as observable gauges.

A sampler task reads the outbox tables every ``period`` seconds (two small aggregate queries,
served by the partial index on undelivered rows) and keeps the figures; the gauges' callbacks
hand the latest figures to whichever reader collects (Prometheus scrape, OTLP export) without
touching the database from the exporter's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import structlog
from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.observability.instruments import Telemetry, current

__all__ = ["BREAKER_VALUES", "OutboxGauges"]

log = structlog.get_logger("seedline.observability")

BREAKER_VALUES = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}
_BACKLOG = text(
    """
    SELECT integration_id,
           count(*) FILTER (WHERE state IN ('PENDING', 'IN_FLIGHT')) AS pending,
           count(*) FILTER (WHERE state = 'DEAD_LETTER') AS dead,
           coalesce(extract(epoch FROM clock_timestamp()
                    - min(create_time) FILTER (WHERE state IN ('PENDING', 'IN_FLIGHT'))), 0) AS lag
      FROM deliveries WHERE state <> 'DELIVERED' GROUP BY integration_id
    """
)
_BREAKERS = text("SELECT id, breaker_state FROM integrations")


class OutboxGauges:
    """Samples the outbox and registers the gauges on the telemetry's meter.

    Args:
        engine: The database.
        period: Seconds between samples.
        telemetry: Whose meter to register on; default the active telemetry.

    """

    def __init__(self, engine: AsyncEngine, period: float = 15.0, telemetry: Telemetry | None = None) -> None:
        self._engine = engine
        self._period = period
        self.pending: dict[str, int] = {}
        self.dead: dict[str, int] = {}
        self.lag: dict[str, float] = {}
        self.breakers: dict[str, str] = {}
        meter = (telemetry or current()).meter
        meter.create_observable_gauge(
            "seedline.outbox.lag",
            [self._observe_lag],
            unit="s",
            description="Age of the oldest undelivered (pending or in-flight) delivery, per integration.",
        )
        meter.create_observable_gauge(
            "seedline.outbox.pending",
            [self._observe_pending],
            unit="{delivery}",
            description="Pending or in-flight deliveries, per integration.",
        )
        meter.create_observable_gauge(
            "seedline.outbox.dead_letters",
            [self._observe_dead],
            unit="{delivery}",
            description="Dead-lettered deliveries waiting for a retry, per integration.",
        )
        meter.create_observable_gauge(
            "seedline.integration.breaker_state",
            [self._observe_breakers],
            unit="1",
            description="Circuit breaker per integration: 0 CLOSED, 1 HALF_OPEN, 2 OPEN.",
        )

    async def sample(self) -> None:
        """Read the figures once."""
        async with self._engine.connect() as conn:
            backlog = (await conn.execute(_BACKLOG)).all()
            breakers = (await conn.execute(_BREAKERS)).all()
        self.pending = {r.integration_id: int(r.pending) for r in backlog}
        self.dead = {r.integration_id: int(r.dead) for r in backlog}
        self.lag = {r.integration_id: float(r.lag) for r in backlog}
        self.breakers = {r.id: str(r.breaker_state) for r in breakers}

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every period until ``stop`` (a failed sample keeps the previous figures)."""
        while not stop.is_set():
            try:
                await self.sample()
            except Exception as exc:  # the database may be away; the health watcher reports it
                log.warning("outbox gauges not sampled", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._period)

    def _per_integration(self, values: dict[str, int] | dict[str, float]) -> Iterable[Observation]:
        ids = set(self.breakers) | set(values)
        return [Observation(values.get(i, 0), {"seedline.integration.id": i}) for i in sorted(ids)]

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        return self._per_integration(self.lag)

    def _observe_pending(self, _options: CallbackOptions) -> Iterable[Observation]:
        return self._per_integration(self.pending)

    def _observe_dead(self, _options: CallbackOptions) -> Iterable[Observation]:
        return self._per_integration(self.dead)

    def _observe_breakers(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(BREAKER_VALUES.get(state, -1), {"seedline.integration.id": i})
            for i, state in sorted(self.breakers.items())
        ]
