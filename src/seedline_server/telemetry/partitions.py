"""Daily range partitions of ``readings``: created ahead of time, dropped after retention.

A partition ``readings_pYYYYMMDD`` holds the UTC day ``[YYYY-MM-DD, next day)``. The manager
creates today minus ``behind_days`` through today plus ``ahead_days`` at start and then every
``interval_seconds``; partitions whose whole day is older than ``retention_days`` are dropped
(also the roll-up rows of that age; batch acknowledgements and BatchIngestReadings request ids
after 31 days, a day past the contract's de-duplication window). The ingest pipeline also calls
:func:`ensure` for the days of a batch it has not seen, so a reading is never refused for want
of a partition.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from contextlib import suppress
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger("seedline.telemetry.partitions")
_NAME = re.compile(r"^readings_p(\d{8})$")


def partition_name(day: date) -> str:
    """The partition of ``day`` (UTC)."""
    return f"readings_p{day:%Y%m%d}"


def day_of(name: str) -> date | None:
    """The day of a partition name, or None for another table."""
    match = _NAME.match(name)
    return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC).date() if match else None


def _bound(day: date) -> str:
    return datetime.combine(day, time(), tzinfo=UTC).isoformat()


async def ensure(conn: Any, days: Iterable[date]) -> None:
    """Create the partitions of ``days`` that do not exist (``conn``: an asyncpg connection)."""
    for day in sorted(set(days)):
        name = partition_name(day)
        # Two processes creating the same day at once would both pass IF NOT EXISTS and one
        # would fail on the catalog: creators take turns under a transaction-scoped lock.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('seedline.readings.partitions'))")
            # Names and bounds come from dates, never from input: safe to format.
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF readings "
                f"FOR VALUES FROM ('{_bound(day)}') TO ('{_bound(day + timedelta(days=1))}')"
            )


async def existing(engine: AsyncEngine) -> list[date]:
    """The days that have a partition, oldest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'readings'::regclass"
            )
        )
        return sorted(d for (n,) in rows if (d := day_of(n)) is not None)


class PartitionManager:
    """Keeps the partitions of ``readings`` ahead of time and within retention."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ahead_days: int = 3,
        behind_days: int = 31,
        retention_days: int = 90,
        interval_seconds: float = 3600.0,
    ) -> None:
        self._engine = engine
        self._ahead = ahead_days
        self._behind = min(behind_days, retention_days)
        self._retention = retention_days
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    @property
    def retention_days(self) -> int:
        """How many days readings are kept."""
        return self._retention

    async def run_once(self, today: date | None = None) -> tuple[list[date], list[date]]:
        """Create the missing partitions and drop the expired ones; returns (created, dropped)."""
        today = today or datetime.now(UTC).date()
        have = set(await existing(self._engine))
        want = [today + timedelta(days=d) for d in range(-self._behind, self._ahead + 1)]
        created = [d for d in want if d not in have]
        cutoff = today - timedelta(days=self._retention)
        dropped = sorted(d for d in have if d < cutoff)
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            apg: Any = raw.driver_connection
            await ensure(apg, created)
            for day in sorted(dropped):
                await apg.execute(f"DROP TABLE IF EXISTS {partition_name(day)}")
            edge = datetime.combine(cutoff, time(), tzinfo=UTC)
            for table in ("readings_1m", "readings_1h", "section_readings_1m", "section_readings_1h"):
                await apg.execute(f"DELETE FROM {table} WHERE bucket_start < $1", edge)  # noqa: S608
            # A day longer than the contract's 30: readings may be up to 30 days old and 5
            # minutes ahead, so a replay after this has nothing left that it could store twice.
            month_ago = datetime.now(UTC) - timedelta(days=31)
            await apg.execute("DELETE FROM ingest_batches WHERE commit_time < $1", month_ago)
            # BatchIngestReadings request ids (``~id``) are de-duplicated for 30 days, like batches.
            await apg.execute(
                "DELETE FROM ingest_gateways WHERE gateway_id LIKE '~%' AND update_time < $1", month_ago
            )
        if created or dropped:
            log.info("partitions", created=[str(d) for d in created], dropped=[str(d) for d in dropped])
        return created, dropped

    async def start(self) -> None:
        """Run once now, then every ``interval_seconds`` in the background."""
        await self.run_once()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except Exception:  # the database may be away; try again next time
                log.warning("partition maintenance failed", exc_info=True)

    async def stop(self) -> None:
        """Stop the background task."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
