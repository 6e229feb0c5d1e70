"""A loop woken by PostgreSQL NOTIFY, polling while the database is away.

Feeds that fan database changes out to watchers (transfer events, alert changes) share it: a
LISTEN connection wakes the loop at once when a commit notifies; without notifications (or without
a connection) the loop still runs every ``poll`` seconds, so nothing is missed, only later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import asyncpg  # type: ignore[import-untyped]
import structlog

__all__ = ["NotifyLoop"]

log = structlog.get_logger("seedline.notify")


class NotifyLoop:
    """Runs a step whenever ``channel`` is notified, or every ``poll`` seconds.

    Args:
        dsn: libpq DSN of the LISTEN connection; None polls only.
        channel: The channel whose notifications wake the loop.
        poll: Seconds between runs when nothing was notified (and between reconnect attempts).
        name: For the log ("transfer feed").
        also: Other channels to listen on, each with its own callback (called on notification).

    """

    def __init__(
        self,
        dsn: str | None,
        channel: str,
        *,
        poll: float,
        name: str,
        also: Mapping[str, Callable[[], None]] | None = None,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._poll = poll
        self._name = name
        self._also = dict(also or {})
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    def wake(self) -> None:
        """Run the step soon, as if notified."""
        self._wake.set()

    async def run(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` on every wake-up until cancelled; database errors are logged and retried."""
        while True:
            try:
                await self._listen()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                self._wake.clear()
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: keep going, retry
                log.warning(f"{self._name}: database unavailable, retrying", exc_info=True)
                await self.close()
                await asyncio.sleep(self._poll)

    async def close(self) -> None:
        """Close the LISTEN connection (the next run opens it again)."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def _listen(self) -> None:
        if self._dsn is None or (self._conn is not None and not self._conn.is_closed()):
            return
        self._conn = await asyncpg.connect(self._dsn)
        await self._conn.add_listener(self._channel, self._notified)
        for channel, callback in self._also.items():
            await self._conn.add_listener(channel, lambda *_, cb=callback: cb())

    def _notified(self, *_: object) -> None:
        self._wake.set()
