"""The unit of work: one transaction, its audit events and its idempotency record.

Every mutation runs inside :meth:`UnitOfWork.run`: the change, the hash-chained audit event and
the stored first response (AIP-155) commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from ulid import ULID

from seedline_server.domain.errors import DependencyUnavailable, RequestIdReused
from seedline_server.service.context import CallContext
from seedline_server.store import models

T = TypeVar("T")
R = TypeVar("R")

GENESIS_HASH = "0" * 64
# One chain for the whole database: appends serialise on this advisory lock (held to commit).
_AUDIT_LOCK_KEY = 0x5EED_A0D1
# SQLSTATEs of transactions PostgreSQL rolled back to break a conflict: safe to run again.
_RETRYABLE = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_ATTEMPTS = 3


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def new_id() -> str:
    """A new ULID string."""
    return str(ULID())


def now() -> datetime:
    """Server time, UTC."""
    return datetime.now(UTC)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def audit_hash(prev_hash: str, event: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the event's canonical JSON."""
    return hashlib.sha256((prev_hash + _canonical(event)).encode()).hexdigest()


@dataclass(frozen=True)
class Replay(Generic[R]):
    """How to store and restore a use case's result for idempotent retries."""

    scope: str
    fingerprint: str
    encode: Callable[[R], bytes]
    decode: Callable[[bytes], R]


class UnitOfWork:
    """A session in one transaction, with audit and idempotency helpers."""

    def __init__(self, session: AsyncSession, ctx: CallContext) -> None:
        self.session = session
        self.ctx = ctx
        self.audit_ids: list[str] = []
        # Strong references to rows loaded alongside others (e.g. a lot's product): the session's
        # identity map is weak, and keeping them lets later ``session.get`` calls skip a query.
        self.pinned: list[object] = []
        # The chain head once this transaction holds the chain lock: later appends in the same
        # transaction chain onto it without another lock or lookup.
        self._head: str | None = None

    async def audit(
        self,
        *,
        license_id: str | None,
        resource: str,
        action: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> str:
        """Append a hash-chained audit event for this call; returns its id."""
        if self._head is None:
            await self.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK_KEY})
            prev = await self.session.scalar(
                select(models.AuditEvent.hash).order_by(models.AuditEvent.seq.desc()).limit(1)
            )
            self._head = prev or GENESIS_HASH
        event_id = new_id()
        event_time = now()
        content = {
            "id": event_id,
            "license_id": license_id,
            "event_time": event_time.isoformat(),
            "principal": self.ctx.principal.name,
            "method": self.ctx.method,
            "resource": resource,
            "action": action,
            "before": before,
            "after": after,
            "request_id": self.ctx.request_id,
        }
        prev_hash = self._head
        # Round-trip through JSON so what is hashed is exactly what JSONB stores.
        before_j = json.loads(_canonical(before)) if before is not None else None
        after_j = json.loads(_canonical(after)) if after is not None else None
        self.session.add(
            models.AuditEvent(
                id=event_id,
                license_id=license_id,
                event_time=event_time,
                principal=self.ctx.principal.name,
                method=self.ctx.method,
                resource=resource,
                action=action,
                before=before_j,
                after=after_j,
                request_id=self.ctx.request_id,
                prev_hash=prev_hash,
                hash=(head := audit_hash(prev_hash, content)),
            )
        )
        self._head = head
        self.audit_ids.append(event_id)
        return event_id


class Database:
    """Opens units of work; maps connection failures to DEPENDENCY_UNAVAILABLE."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def read(self, ctx: CallContext, fn: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """Run a read-only use case."""
        try:
            async with self._sessions() as session, session.begin():
                return await fn(UnitOfWork(session, ctx))
        except (OperationalError, OSError, ConnectionError) as exc:
            raise DependencyUnavailable("the database is unavailable; retry with backoff") from exc

    async def write(
        self,
        ctx: CallContext,
        fn: Callable[[UnitOfWork], Awaitable[T]],
        replay: Replay[T] | None = None,
    ) -> T:
        """Run a mutation in one transaction; with ``replay`` and a request id, idempotently.

        A transaction PostgreSQL aborts as a deadlock victim or a serialization failure changed
        nothing, so it is run again (up to :data:`_ATTEMPTS` times in all).
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self._write(ctx, fn, replay)
            except IntegrityError:
                if replay is None or not ctx.request_id:
                    raise
                # A concurrent call with the same request id committed first: answer as it did.
                return await self._write(ctx, fn, replay)
            except DBAPIError as exc:
                if _sqlstate(exc) in _RETRYABLE and attempt < _ATTEMPTS:
                    continue
                if isinstance(exc, OperationalError) or _sqlstate(exc) in _RETRYABLE:
                    raise DependencyUnavailable("the database is unavailable; retry with backoff") from exc
                raise
            except (OSError, ConnectionError) as exc:
                raise DependencyUnavailable("the database is unavailable; retry with backoff") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(
        self,
        ctx: CallContext,
        fn: Callable[[UnitOfWork], Awaitable[T]],
        replay: Replay[T] | None,
    ) -> T:
        async with self._sessions() as session, session.begin():
            uow = UnitOfWork(session, ctx)
            if replay is None or not ctx.request_id:
                return await fn(uow)
            stored = await session.get(models.IdempotencyKey, (replay.scope, ctx.request_id))
            if stored is not None:
                if stored.fingerprint != replay.fingerprint:
                    raise RequestIdReused(
                        f"request_id {ctx.request_id!r} was already used for a different request",
                        metadata={"request_id": ctx.request_id},
                    )
                return replay.decode(stored.response)
            result = await fn(uow)
            session.add(
                models.IdempotencyKey(
                    scope=replay.scope,
                    request_id=ctx.request_id,
                    fingerprint=replay.fingerprint,
                    response=replay.encode(result),
                    create_time=now(),
                )
            )
            await session.flush()
            return result
