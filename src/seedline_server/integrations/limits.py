"""Rate and concurrency limits shared by every worker process, kept in PostgreSQL.

METRC allows 50 GET/s per facility, 150 requests/s per vendor key and 10 concurrent requests per
facility. Those are limits on the *sum* of all our workers, so they cannot live in one process's
memory:

- :meth:`SharedLimits.take` is a token bucket per key in ``rate_buckets``. One statement takes a
  token from every bucket a request needs; a bucket may go negative, which reserves a future
  slot: the caller sleeps until the bucket would have held its token. Callers are therefore
  spaced at exactly the configured rate, whichever process they run in, at the cost of one
  round trip per request.
- :meth:`SharedLimits.slot` leases one of N rows in ``concurrency_slots`` for the duration of a
  request (``FOR UPDATE SKIP LOCKED``, so workers never wait on each other's row locks); a lease
  has an expiry so a worker killed mid-request does not hold its slot forever.

Buckets start small (``burst``) on purpose: sending at exactly the remote's rate while its own
bucket stays nearly full leaves room for network jitter, so the remote never answers 429.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["Bucket", "SharedLimits"]


@dataclass(frozen=True)
class Bucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``."""

    key: str
    rate: float
    burst: float


_TAKE = text(
    """
    WITH p AS (
      SELECT * FROM unnest(CAST(:keys AS text[]), CAST(:rates AS float8[]), CAST(:bursts AS float8[]))
        AS t(k, rate, burst)
    ), created AS (
      INSERT INTO rate_buckets (key, tokens, update_time)
      SELECT k, burst, clock_timestamp() FROM p ON CONFLICT (key) DO NOTHING
    )
    UPDATE rate_buckets b
       SET tokens = LEAST(p.burst, b.tokens + p.rate * EXTRACT(EPOCH FROM clock_timestamp() - b.update_time))
                    - 1,
           update_time = clock_timestamp()
      FROM p WHERE b.key = p.k
    RETURNING b.key, b.tokens
    """
)

_CLAIM_SLOT = text(
    """
    UPDATE concurrency_slots s
       SET holder = :holder, lease_time = clock_timestamp() + make_interval(secs => :lease)
     WHERE (s.key, s.slot) = (
       SELECT key, slot FROM concurrency_slots
        WHERE key = :key AND (holder IS NULL OR lease_time < clock_timestamp())
        ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING s.slot
    """
)
_ENSURE_SLOTS = text(
    "INSERT INTO concurrency_slots (key, slot) SELECT :key, g FROM generate_series(0, :n - 1) AS g "
    "ON CONFLICT DO NOTHING"
)
_TRIM_SLOTS = text("DELETE FROM concurrency_slots WHERE key = :key AND slot >= :n")
_RELEASE_SLOT = text(
    "UPDATE concurrency_slots SET holder = NULL, lease_time = NULL"
    " WHERE key = :key AND slot = :slot AND holder = :holder"
)


class SharedLimits:
    """Token buckets and concurrency slots in the database, shared by all processes."""

    def __init__(self, engine: AsyncEngine, holder: str) -> None:
        self._engine = engine
        self._holder = holder
        self._sized: dict[str, int] = {}
        self.waited_seconds = 0.0

    async def take(self, buckets: Sequence[Bucket]) -> float:
        """Take one token from each bucket, sleeping until all would have had it; returns the wait."""
        if not buckets:
            return 0.0
        params = {
            "keys": [b.key for b in buckets],
            "rates": [b.rate for b in buckets],
            "bursts": [b.burst for b in buckets],
        }
        async with self._engine.begin() as conn:
            rows = (await conn.execute(_TAKE, params)).all()
        if len(rows) < len(buckets):  # first use: the rows were only created by that statement
            async with self._engine.begin() as conn:
                rows = (await conn.execute(_TAKE, params)).all()
        rate = {b.key: b.rate for b in buckets}
        wait = max((-tokens / rate[key] for key, tokens in rows if tokens < 0), default=0.0)
        if wait > 0:
            self.waited_seconds += wait
            await asyncio.sleep(wait)
        return wait

    async def _ensure(self, key: str, size: int) -> None:
        if self._sized.get(key) == size:
            return
        async with self._engine.begin() as conn:
            await conn.execute(_ENSURE_SLOTS, {"key": key, "n": size})
            await conn.execute(_TRIM_SLOTS, {"key": key, "n": size})
        self._sized[key] = size

    @asynccontextmanager
    async def slot(self, key: str, size: int, *, lease_seconds: float = 120.0) -> AsyncIterator[int]:
        """Hold one of ``size`` concurrency slots of ``key`` for the body of the ``async with``."""
        await self._ensure(key, size)
        delay = 0.005
        while True:
            async with self._engine.begin() as conn:
                slot = (
                    await conn.execute(
                        _CLAIM_SLOT, {"holder": self._holder, "lease": lease_seconds, "key": key}
                    )
                ).scalar()
            if slot is not None:
                break
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not security
            delay = min(delay * 2, 0.2)
        try:
            yield int(slot)
        finally:
            async with self._engine.begin() as conn:
                await conn.execute(_RELEASE_SLOT, {"key": key, "slot": slot, "holder": self._holder})
