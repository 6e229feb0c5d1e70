"""Rate and concurrency limits shared by every worker process, kept in PostgreSQL.

METRC allows 50 GET/s per facility, 150 requests/s per vendor key and 10 concurrent requests per
facility. Those are limits on the *sum* of all our workers, so they cannot live in one process's
memory:

- :meth:`SharedLimits.take` is a token bucket per key in ``rate_buckets``. One statement takes a
  token from every bucket a request needs; a bucket may go negative, which reserves a future
  slot: the caller sleeps until the bucket would have held its token. Callers are therefore
  spaced at exactly the configured rate, whichever process they run in. Callers of one process
  that arrive while a take is in flight are served by the next take together (it takes as many
  tokens as they are and spaces them), so a busy worker pays far less than a round trip each.
- :meth:`SharedLimits.slot` leases one of N rows in ``concurrency_slots`` for the duration of a
  request (``FOR UPDATE SKIP LOCKED``, so workers never wait on each other's row locks); a lease
  has an expiry so a worker killed mid-request does not hold its slot forever. A released slot
  is kept by its process for a moment (``KEEP_SECONDS``) and handed to its next request without
  a round trip; a slot nobody reuses in that time goes back to the database.

Buckets start small (``burst``) on purpose: sending at exactly the remote's rate while its own
bucket stays nearly full leaves room for network jitter, so the remote never answers 429.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["KEEP_SECONDS", "Bucket", "SharedLimits"]

KEEP_SECONDS = 0.1
"""How long a process keeps a released concurrency slot for its next request."""


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
                    - :n,
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


@dataclass
class _Takers:
    """Callers of one process waiting for tokens of the same buckets."""

    waiting: list[asyncio.Future[float]] = field(default_factory=list)
    running: bool = False


@dataclass(eq=False)  # identity: a release timer must not match a later keep of the same slot
class _Kept:
    """A concurrency slot this process holds between requests."""

    slot: int
    lease_end: float  # time.monotonic() when the database lease runs out


class SharedLimits:
    """Token buckets and concurrency slots in the database, shared by all processes."""

    def __init__(self, engine: AsyncEngine, holder: str) -> None:
        self._engine = engine
        self._holder = holder
        self._sized: dict[str, int] = {}
        self._takers: dict[tuple[str, ...], _Takers] = {}
        self._kept: dict[str, list[_Kept]] = {}
        self._lease_ends: dict[tuple[str, int], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.waited_seconds = 0.0
        self.round_trips = 0
        self.slot_claims = 0

    async def take(self, buckets: Sequence[Bucket]) -> float:
        """Take one token from each bucket, sleeping until all would have had it; returns the wait."""
        if not buckets:
            return 0.0
        loop = asyncio.get_running_loop()
        key = tuple(b.key for b in buckets)
        takers = self._takers.setdefault(key, _Takers())
        mine: asyncio.Future[float] = loop.create_future()
        takers.waiting.append(mine)
        if not takers.running:
            takers.running = True
            self._spawn(self._serve_takers(takers, list(buckets)))
        due = await mine
        wait = max(0.0, due - loop.time())
        if wait > 0:
            self.waited_seconds += wait
            await asyncio.sleep(wait)
        return wait

    async def _serve_takers(self, takers: _Takers, buckets: list[Bucket]) -> None:
        """Take tokens for every waiting caller at once, until nobody waits."""
        loop = asyncio.get_running_loop()
        try:
            while takers.waiting:
                batch, takers.waiting = takers.waiting, []
                try:
                    rows = await self._take_n(buckets, len(batch))
                except Exception as exc:
                    for fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                now, n = loop.time(), len(batch)
                rate = {b.key: b.rate for b in buckets}
                for j, fut in enumerate(batch):
                    # After taking n tokens a bucket holds t; the j-th caller's token (0-based) is
                    # there once the bucket refills to j + 1 - (t + n) tokens short of zero.
                    wait = max(
                        (max(0.0, (j + 1) - (tokens + n)) / rate[k] for k, tokens in rows), default=0.0
                    )
                    if not fut.done():
                        fut.set_result(now + wait)
        finally:
            takers.running = False

    async def _take_n(self, buckets: Sequence[Bucket], n: int) -> list[tuple[str, float]]:
        params = {
            "keys": [b.key for b in buckets],
            "rates": [b.rate for b in buckets],
            "bursts": [b.burst for b in buckets],
            "n": n,
        }
        self.round_trips += 1
        async with self._engine.begin() as conn:
            rows = (await conn.execute(_TAKE, params)).all()
        if len(rows) < len(buckets):  # first use: the rows were only created by that statement
            self.round_trips += 1
            async with self._engine.begin() as conn:
                rows = (await conn.execute(_TAKE, params)).all()
        return [(str(k), float(t)) for k, t in rows]

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
        slot = self._reuse(key, lease_seconds)
        if slot is None:
            slot = await self._claim(key, size, lease_seconds)
        try:
            yield slot
        finally:
            self._keep(key, slot, lease_seconds)

    def _reuse(self, key: str, lease_seconds: float) -> int | None:
        """A slot kept from an earlier request whose lease outlasts this one, if any."""
        kept = self._kept.get(key)
        now = time.monotonic()
        while kept:
            k = kept.pop()
            if k.lease_end - now > lease_seconds / 2:
                return k.slot
            # Too little lease left for a whole request: give it back and claim afresh.
            self._spawn(self._release(key, k.slot))
        return None

    async def _claim(self, key: str, size: int, lease_seconds: float) -> int:
        await self._ensure(key, size)
        delay = 0.005
        while True:
            reused = self._reuse(key, lease_seconds)  # one of ours came free while we waited
            if reused is not None:
                return reused
            self.round_trips += 1
            async with self._engine.begin() as conn:
                slot = (
                    await conn.execute(
                        _CLAIM_SLOT, {"holder": self._holder, "lease": lease_seconds, "key": key}
                    )
                ).scalar()
            if slot is not None:
                self._lease_ends[(key, int(slot))] = time.monotonic() + lease_seconds
                self.slot_claims += 1
                return int(slot)
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not security
            delay = min(delay * 2, 0.2)

    def _keep(self, key: str, slot: int, lease_seconds: float) -> None:
        """Keep a slot for the next request; release it if nobody takes it within KEEP_SECONDS."""
        kept = _Kept(slot, self._lease_ends.get((key, slot), time.monotonic()))
        self._kept.setdefault(key, []).append(kept)
        loop = asyncio.get_running_loop()
        loop.call_later(KEEP_SECONDS, self._release_if_idle, key, kept)

    def _release_if_idle(self, key: str, kept: _Kept) -> None:
        pool = self._kept.get(key)
        if pool is not None and kept in pool:
            pool.remove(kept)
            self._spawn(self._release(key, kept.slot))

    async def _release(self, key: str, slot: int) -> None:
        self._lease_ends.pop((key, slot), None)
        self.round_trips += 1
        try:
            async with self._engine.begin() as conn:
                await conn.execute(_RELEASE_SLOT, {"key": key, "slot": slot, "holder": self._holder})
        except Exception:  # the lease runs out anyway
            return

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Give every kept slot back to the database."""
        kept = [(key, k.slot) for key, pool in self._kept.items() for k in pool]
        self._kept.clear()
        await asyncio.gather(*(self._release(key, slot) for key, slot in kept))
