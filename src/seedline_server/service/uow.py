"""The unit of work: one transaction, its audit events and its idempotency record.

Every mutation runs inside :meth:`UnitOfWork.run`: the change, the hash-chained audit event and
the stored first response (AIP-155) commit together or not at all.

Each license has its own audit chain (events without a license form one more). ``audit()`` only
records an event; :meth:`UnitOfWork.chain_audit`, called by :class:`Database` just before the
commit, takes the per-license advisory locks *in sorted order*, reads each chain head once and
appends the events. Locking in one order at the end means two transactions touching the same
licenses (a transfer accept writes to both sides) can never deadlock on the chain locks, and a
chain is locked only for the last moment of a transaction, not while its use case runs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from ulid import ULID

from seedline_server.domain.audit import GENESIS_HASH, chain_document, event_hash, lock_key
from seedline_server.domain.errors import DependencyUnavailable, RequestIdReused
from seedline_server.service import outbox
from seedline_server.service.context import CallContext
from seedline_server.store import models

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["GENESIS_HASH", "Database", "Replay", "UnitOfWork", "new_id", "now"]
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


@dataclass
class _Pending:
    """An audit event recorded by a use case, chained at commit."""

    id: str
    license_id: str | None
    resource: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


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
        # Events recorded by ``audit()``, chained at commit by ``chain_audit()``.
        self._pending: list[_Pending] = []
        # (sequence, hash) of each chain head this transaction has locked and extended.
        self._heads: dict[str | None, tuple[int, str]] = {}

    async def audit(
        self,
        *,
        license_id: str | None,
        resource: str,
        action: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> str:
        """Record a hash-chained audit event for this call (appended at commit); returns its id."""
        event_id = new_id()
        # Round-trip through JSON so what is hashed is exactly what JSONB stores.
        self._pending.append(
            _Pending(
                id=event_id,
                license_id=license_id,
                resource=resource,
                action=action,
                before=json.loads(_canonical(before)) if before is not None else None,
                after=json.loads(_canonical(after)) if after is not None else None,
            )
        )
        self.audit_ids.append(event_id)
        return event_id

    async def chain_audit(self) -> None:
        """Append the recorded events to their chains; the locks are held until commit.

        Chains not yet locked by this transaction are locked in sorted order (the license-less
        chain first), so concurrent transactions always queue in the same order.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        new = sorted({p.license_id for p in pending} - self._heads.keys(), key=lambda x: (x is not None, x))
        for license_id in new:
            await self.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(license_id)})
            ev = models.AuditEvent
            head = (
                await self.session.execute(
                    select(ev.sequence, ev.hash)
                    .where(ev.license_id.is_(None) if license_id is None else ev.license_id == license_id)
                    .order_by(ev.sequence.desc())
                    .limit(1)
                )
            ).first()
            self._heads[license_id] = (head[0], head[1]) if head is not None else (0, GENESIS_HASH)
        for p in pending:
            last_sequence, previous_hash = self._heads[p.license_id]
            row = models.AuditEvent(
                id=p.id,
                license_id=p.license_id,
                sequence=last_sequence + 1,
                event_time=now(),
                principal=self.ctx.principal.name,
                method=self.ctx.method,
                resource=p.resource,
                action=p.action,
                before=p.before,
                after=p.after,
                request_id=self.ctx.request_id,
                prev_hash=previous_hash,
                hash="",
            )
            row.hash = event_hash(
                chain_document(
                    id=row.id,
                    license_id=row.license_id,
                    sequence=row.sequence,
                    event_time=row.event_time,
                    principal=row.principal,
                    request_id=row.request_id,
                    method=row.method,
                    resource=row.resource,
                    action=row.action,
                    before=row.before,
                    after=row.after,
                    previous_hash=previous_hash,
                )
            )
            self.session.add(row)
            self._heads[p.license_id] = (row.sequence, row.hash)
        await self.session.flush()
        # The news of the change, for the integrations that care, in the same transaction.
        changes = [
            outbox.AuditedChange(p.id, p.license_id, p.resource, p.action, p.before, p.after) for p in pending
        ]
        await outbox.enqueue_audited(self.session, changes, now())


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
                result = await fn(uow)
                await uow.chain_audit()
                return result
            # Request ids are the caller's own: another caller reusing one gets its own result,
            # never this caller's stored answer.
            scope = f"{replay.scope} {ctx.principal.name}"
            stored = await session.get(models.IdempotencyKey, (scope, ctx.request_id))
            if stored is not None:
                if stored.fingerprint != replay.fingerprint:
                    raise RequestIdReused(
                        f"request_id {ctx.request_id!r} was already used for a different request",
                        metadata={"request_id": ctx.request_id},
                    )
                return replay.decode(stored.response)
            result = await fn(uow)
            await uow.chain_audit()
            session.add(
                models.IdempotencyKey(
                    scope=scope,
                    request_id=ctx.request_id,
                    fingerprint=replay.fingerprint,
                    response=replay.encode(result),
                    create_time=now(),
                )
            )
            await session.flush()
            return result
