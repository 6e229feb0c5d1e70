"""The integrations runtime of one process: outbox worker, sync runner and schedule together."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.config import Settings
from seedline_server.crypto import KeyRing
from seedline_server.integrations.limits import SharedLimits
from seedline_server.integrations.registry import Connectors
from seedline_server.integrations.sync import Scheduler, SyncRunner
from seedline_server.integrations.transport import Http
from seedline_server.integrations.worker import OutboxWorker, WorkerSettings
from seedline_server.observability import instruments as observability
from seedline_server.observability.outbox_gauges import OutboxGauges

__all__ = ["Runtime", "build_runtime"]


@dataclass
class Runtime:
    """The parts, for tests that drive them directly."""

    http: Http
    connectors: Connectors
    worker: OutboxWorker
    runner: SyncRunner
    scheduler: Scheduler | None
    # Outbox lag, dead letters and breaker states for the metrics (only when metrics are on).
    gauges: OutboxGauges | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run every part until ``stop``; then close outbound connections."""
        parts = [self.worker.run(stop), self.runner.run(stop)]
        if self.scheduler is not None:
            parts.append(self.scheduler.run(stop))
        if self.gauges is not None:
            parts.append(self.gauges.run(stop))
        try:
            await asyncio.gather(*parts)
        finally:
            await self.connectors.limits.close()
            await self.http.aclose()


def build_runtime(settings: Settings, engine: AsyncEngine, keyring: KeyRing) -> Runtime:
    """Assemble the runtime from settings (the engine should have its own small pool)."""
    holder = f"{socket.gethostname()}:{os.getpid()}"
    http = Http(ca_file=settings.integration_ca_file, timeout=settings.integration_timeout_seconds)
    limits = SharedLimits(engine, holder)
    connectors = Connectors(engine, keyring, http, limits, settings=settings)
    worker = OutboxWorker(
        engine,
        connectors,
        WorkerSettings(
            concurrency=settings.outbox_concurrency,
            batch=min(32, settings.outbox_concurrency),
            lease_seconds=settings.outbox_lease_seconds,
            max_attempts=settings.outbox_max_attempts,
            base_delay=settings.outbox_base_delay_seconds,
            max_delay=settings.outbox_max_delay_seconds,
            breaker_threshold=settings.breaker_threshold,
            breaker_cooldown=settings.breaker_cooldown_seconds,
        ),
        name=holder,
    )
    runner = SyncRunner(engine, connectors)
    scheduler = Scheduler(engine) if settings.schedule_enabled else None
    metering = observability.current().metering
    gauges = OutboxGauges(engine, settings.outbox_gauge_interval_seconds) if metering else None
    return Runtime(http, connectors, worker, runner, scheduler, gauges)
