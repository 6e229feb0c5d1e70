"""Live transfer events: one LISTEN connection per process, fanned out to every watcher.

Writers append a ``transfer_events`` row and ``NOTIFY`` in their transaction (see
:mod:`seedline_server.service.transfers`). This feed holds a single PostgreSQL connection that
LISTENs; on a notification (or every ``poll_interval`` seconds, in case one was lost while
reconnecting) it reads the new rows once and hands them to the in-process subscribers. The
database therefore sees one query per batch of events per process, however many watchers there
are. A watcher that falls behind by more than its queue is cut off (it resumes with its last
token) rather than letting the server's memory grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, or_, select

from seedline_server.domain.errors import DependencyUnavailable, FieldViolation, InvalidArgument
from seedline_server.service.context import CallContext
from seedline_server.service.notify import NotifyLoop
from seedline_server.service.transfers import NOTIFY_CHANNEL
from seedline_server.service.uow import Database, UnitOfWork, now
from seedline_server.store import models

log = structlog.get_logger(__name__)
_BATCH = 500
# How far back events are guaranteed to be replayable (the contract promises at least 7 days).
RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class Event:
    """One committed transfer event."""

    seq: int
    type: int
    source_license_id: str
    target_license_id: str
    visible_to_target: bool
    event_time: datetime
    snapshot: bytes

    def concerns(self, license_id: str) -> bool:
        """Whether ``license_id`` may see it: the source always, the target once committed."""
        return self.source_license_id == license_id or (
            self.target_license_id == license_id and self.visible_to_target
        )


def _event(row: models.TransferEvent) -> Event:
    return Event(
        row.seq,
        row.type,
        row.source_license_id,
        row.target_license_id,
        row.visible_to_target,
        row.event_time,
        row.snapshot,
    )


@dataclass(eq=False)
class Subscription:
    """A watcher's bounded queue of live events for one license."""

    license_id: str
    queue: asyncio.Queue[Event | None] = field(default_factory=lambda: asyncio.Queue(maxsize=1000))
    overflowed: bool = False


class TransferFeed:
    """Fans committed transfer events out to the watchers of this process."""

    def __init__(self, db: Database, dsn: str, ctx: CallContext, poll_interval: float = 5.0) -> None:
        self._db = db
        self._ctx = ctx
        self._subs: set[Subscription] = set()
        self._last = 0
        self._notify = NotifyLoop(dsn, NOTIFY_CHANNEL, poll=poll_interval, name="transfer feed")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the LISTEN connection and start dispatching from the current end of the log."""
        self._last = await self.head()
        self._task = asyncio.create_task(self._notify.run(self._dispatch), name="transfer-feed")

    async def stop(self) -> None:
        """Stop dispatching and end every subscription (their streams answer UNAVAILABLE)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._notify.close()
        for sub in list(self._subs):
            self._end(sub)

    async def head(self) -> int:
        """The newest event's seq (0 when there is none)."""

        async def run(uow: UnitOfWork) -> int:
            return int(
                await uow.session.scalar(select(func.coalesce(func.max(models.TransferEvent.seq), 0))) or 0
            )

        return await self._db.read(self._ctx, run)

    async def start_after(self, resume_token: str, since: datetime | None) -> int:
        """The seq to replay after, from a resume token, a start time, or now."""
        if resume_token:
            if not re.fullmatch(r"[0-9]{1,18}", resume_token) or int(resume_token) > await self.head():
                raise InvalidArgument(
                    "resume_token is not a token this server issued; "
                    "re-read with ListTransfers and watch from now",
                    [FieldViolation("resume_token", "unknown or expired")],
                )
            return int(resume_token)
        if since is not None:
            if since < now() - RETENTION:
                raise InvalidArgument(
                    f"since_time is older than the {RETENTION.days}-day event retention; "
                    "re-read with ListTransfers",
                    [FieldViolation("since_time", f"must be within the last {RETENTION.days} days")],
                )

            async def first(uow: UnitOfWork) -> int:
                seq = await uow.session.scalar(
                    select(func.min(models.TransferEvent.seq)).where(models.TransferEvent.event_time >= since)
                )
                return int(seq) - 1 if seq is not None else await self.head()

            return await self._db.read(self._ctx, first)
        return await self.head()

    async def history(self, license_id: str, after: int) -> AsyncIterator[Event]:
        """Stored events of ``license_id`` after ``after``, oldest first, in pages."""
        while True:

            async def page(uow: UnitOfWork, after: int = after) -> list[Event]:
                stmt = (
                    select(models.TransferEvent)
                    .where(
                        models.TransferEvent.seq > after,
                        or_(
                            models.TransferEvent.source_license_id == license_id,
                            (models.TransferEvent.target_license_id == license_id)
                            & models.TransferEvent.visible_to_target,
                        ),
                    )
                    .order_by(models.TransferEvent.seq)
                    .limit(_BATCH)
                )
                return [_event(r) for r in (await uow.session.scalars(stmt)).all()]

            events = await self._db.read(self._ctx, page)
            for ev in events:
                yield ev
                after = ev.seq
            if len(events) < _BATCH:
                return

    def subscribe(self, license_id: str) -> Subscription:
        """Start receiving live events for ``license_id``."""
        sub = Subscription(license_id)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop receiving events."""
        self._subs.discard(sub)

    @property
    def watchers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subs)

    async def next(self, sub: Subscription) -> Event:
        """The subscription's next live event; UNAVAILABLE when the feed stops or it fell behind."""
        ev = await sub.queue.get()
        if ev is None:
            why = "the watcher fell behind" if sub.overflowed else "the server is draining"
            raise DependencyUnavailable(f"{why}; reconnect with the last resume_token")
        return ev

    def _end(self, sub: Subscription) -> None:
        """End a subscription.

        Queued events are dropped so the watcher sees no gap: it stops right after the last
        event it processed and resumes from that token.
        """
        self._subs.discard(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    async def _dispatch(self) -> None:
        while True:

            async def page(uow: UnitOfWork) -> list[Event]:
                stmt = (
                    select(models.TransferEvent)
                    .where(models.TransferEvent.seq > self._last)
                    .order_by(models.TransferEvent.seq)
                    .limit(_BATCH)
                )
                return [_event(r) for r in (await uow.session.scalars(stmt)).all()]

            events = await self._db.read(self._ctx, page)
            for ev in events:
                self._last = ev.seq
                for sub in list(self._subs):
                    if not ev.concerns(sub.license_id):
                        continue
                    try:
                        sub.queue.put_nowait(ev)
                    except asyncio.QueueFull:
                        sub.overflowed = True
                        self._end(sub)
            if len(events) < _BATCH:
                return
