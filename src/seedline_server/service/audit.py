"""The audit trail: reading it (ListAuditEvents, GetAuditEvent) and verifying its hash chains.

:func:`verify` walks every chain (or one) in ``sequence`` order in keyset batches inside one
read-only REPEATABLE READ snapshot, so it runs in bounded memory on any table size and is not
confused by events appended meanwhile. For each chain it reports the *first* broken link.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from seedline_server.domain import paging
from seedline_server.domain.audit import (
    ACTION_RULES,
    ACTION_STATE_CHANGE,
    GENESIS_HASH,
    chain_document,
    event_hash,
)
from seedline_server.domain.errors import InvalidPageToken, NotFound
from seedline_server.service import filters
from seedline_server.service.registry import Page, get_license
from seedline_server.service.uow import UnitOfWork
from seedline_server.store import models

# How far from its position a misplaced event is looked for, to tell "reordered" from "altered".
REORDER_WINDOW = 1000
_EV = models.AuditEvent
_COLUMNS = (
    _EV.seq,
    _EV.id,
    _EV.license_id,
    _EV.sequence,
    _EV.event_time,
    _EV.principal,
    _EV.method,
    _EV.resource,
    _EV.action,
    _EV.before,
    _EV.after,
    _EV.request_id,
    _EV.prev_hash,
    _EV.hash,
)


def event_name(license_id: str, event_id: str) -> str:
    """``licenses/{license}/auditEvents/{audit_event}``."""
    return f"licenses/{license_id}/auditEvents/{event_id}"


def _document(row: Any, previous_hash: str, sequence: int | None = None) -> dict[str, Any]:
    return chain_document(
        id=row.id,
        license_id=row.license_id,
        sequence=row.sequence if sequence is None else sequence,
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


def row_hash(row: Any, previous_hash: str) -> str:
    """The hash a stored event (model or result row) must carry, given ``previous_hash``."""
    return event_hash(_document(row, previous_hash))


# ---------------------------------------------------------------------------------------------
# Verification


class Problem(enum.Enum):
    """What is wrong at a broken link."""

    CONTENT_HASH_MISMATCH = "content hash mismatch: the event was altered after it was written"
    PREVIOUS_HASH_MISMATCH = (
        "previous_hash mismatch: the event before it was removed, inserted, altered or replaced"
    )
    SEQUENCE_GAP = "sequence gap: events are missing"
    SEQUENCE_DUPLICATE = "duplicate sequence: two events claim the same position"
    REORDERED = "reordered: the event is authentic but was written at another position"


@dataclass(frozen=True)
class Finding:
    """The first broken link of a chain."""

    license_id: str | None
    sequence: int
    event_id: str
    problem: Problem
    detail: str

    @property
    def chain(self) -> str:
        """``licenses/{id}``, or ``(no license)`` for the license-less chain."""
        return f"licenses/{self.license_id}" if self.license_id else "(no license)"

    def describe(self) -> str:
        """One line for people."""
        where = f"{self.chain} sequence {self.sequence} event {self.event_id}"
        return f"{where}: {self.problem.value} ({self.detail})"


@dataclass(frozen=True)
class Head:
    """The last event of a chain as verified (anchor it elsewhere to detect a cut-off tail)."""

    license_id: str | None
    sequence: int
    hash: str


@dataclass
class Report:
    """What :func:`verify` found."""

    events: int = 0
    heads: list[Head] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """True when every chain verified."""
        return not self.findings


class _Chain:
    """Running state of one chain's walk."""

    def __init__(self, license_id: str | None) -> None:
        self.license_id = license_id
        self.expected = 1
        self.previous_hash = GENESIS_HASH
        self.finding: Finding | None = None

    def check(self, row: Any) -> Finding | None:
        """Check the next row; returns the chain's first finding (then the walk skips the rest)."""

        def found(problem: Problem, detail: str) -> Finding:
            self.finding = Finding(row.license_id, row.sequence, row.id, problem, detail)
            return self.finding

        if row.sequence > self.expected:
            missing = (
                f"sequence {self.expected}"
                if row.sequence == self.expected + 1
                else f"sequences {self.expected}..{row.sequence - 1}"
            )
            return found(Problem.SEQUENCE_GAP, f"{missing} missing")
        if row.sequence < self.expected:
            return found(Problem.SEQUENCE_DUPLICATE, f"sequence {row.sequence} appears again")
        if row_hash(row, row.prev_hash) != row.hash:
            written_at = _position_written(row)
            if written_at is not None:
                return found(
                    Problem.REORDERED, f"its hash is valid at sequence {written_at}, not {row.sequence}"
                )
            return found(Problem.CONTENT_HASH_MISMATCH, "the recomputed hash differs from the stored hash")
        if row.prev_hash != self.previous_hash:
            return found(
                Problem.PREVIOUS_HASH_MISMATCH,
                f"previous_hash {row.prev_hash[:12]}… is not the hash of the event before, "
                f"{self.previous_hash[:12]}…",
            )
        self.expected += 1
        self.previous_hash = row.hash
        return None


def _position_written(row: Any) -> int | None:
    """The sequence at which the row's content and stored hash agree, if near its position."""
    low, high = max(1, row.sequence - REORDER_WINDOW), row.sequence + REORDER_WINDOW
    for candidate in range(low, high + 1):
        if candidate != row.sequence and event_hash(_document(row, row.prev_hash, candidate)) == row.hash:
            return candidate
    return None


async def count_events(conn: AsyncConnection, license_id: str | None = None, one_chain: bool = False) -> int:
    """How many events :func:`verify` would walk (for a progress bar)."""
    stmt = select(func.count()).select_from(_EV)
    if one_chain:
        stmt = stmt.where(_chain_is(license_id))
    return int((await conn.execute(stmt)).scalar_one())


def _chain_is(license_id: str | None) -> ColumnElement[bool]:
    return _EV.license_id.is_(None) if license_id is None else _EV.license_id == license_id


async def verify(
    conn: AsyncConnection,
    *,
    license_id: str | None = None,
    one_chain: bool = False,
    batch: int = 5000,
    on_progress: Callable[[int], None] | None = None,
) -> Report:
    """Verify every chain, or with ``one_chain`` only ``license_id``'s (None: the license-less).

    Runs in its own read-only REPEATABLE READ transaction on ``conn``; ``on_progress`` gets the
    number of rows of each batch as it is checked.
    """
    report = Report()
    async with conn.begin():
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        if one_chain:
            await _walk_one(conn, license_id, batch, report, on_progress)
        else:
            await _walk_one(conn, None, batch, report, on_progress)
            await _walk_licensed(conn, batch, report, on_progress)
    return report


def _close(chain: _Chain, report: Report) -> None:
    if chain.finding is not None:
        report.findings.append(chain.finding)
    elif chain.expected > 1:
        report.heads.append(Head(chain.license_id, chain.expected - 1, chain.previous_hash))


async def _walk_one(
    conn: AsyncConnection,
    license_id: str | None,
    batch: int,
    report: Report,
    on_progress: Callable[[int], None] | None,
) -> None:
    chain = _Chain(license_id)
    last: tuple[int, int] = (0, 0)
    while chain.finding is None:
        stmt = (
            select(*_COLUMNS)
            .where(_chain_is(license_id), tuple_(_EV.sequence, _EV.seq) > tuple_(*last))
            .order_by(_EV.sequence, _EV.seq)
            .limit(batch)
        )
        rows = (await conn.execute(stmt)).all()
        if not rows:
            break
        for row in rows:
            report.events += 1
            if chain.check(row) is not None:
                break
        if on_progress is not None:
            on_progress(len(rows))
        last = (rows[-1].sequence, rows[-1].seq)
    _close(chain, report)


async def _walk_licensed(
    conn: AsyncConnection, batch: int, report: Report, on_progress: Callable[[int], None] | None
) -> None:
    chain: _Chain | None = None
    where: ColumnElement[bool] = _EV.license_id.is_not(None)
    while True:
        stmt = select(*_COLUMNS).where(where).order_by(_EV.license_id, _EV.sequence, _EV.seq).limit(batch)
        rows = (await conn.execute(stmt)).all()
        if not rows:
            break
        skip_from: str | None = None
        for row in rows:
            if chain is None or row.license_id != chain.license_id:
                if chain is not None:
                    _close(chain, report)
                chain = _Chain(row.license_id)
            report.events += 1
            if chain.check(row) is not None:
                skip_from = row.license_id
                break
        if on_progress is not None:
            on_progress(len(rows))
        if skip_from is not None:
            # The chain is broken: jump past the rest of it.
            where = _EV.license_id > skip_from
        else:
            last = rows[-1]
            where = tuple_(_EV.license_id, _EV.sequence, _EV.seq) > tuple_(
                last.license_id, last.sequence, last.seq
            )
    if chain is not None:
        _close(chain, report)


# ---------------------------------------------------------------------------------------------
# Reading: ListAuditEvents and GetAuditEvent


def action_case() -> ColumnElement[int]:
    """SQL of :func:`seedline_server.domain.audit.action_number` over the ``action`` column."""
    whens = [
        (_EV.action == pattern if match == "eq" else _EV.action.startswith(pattern, autoescape=True), number)
        for match, pattern, number in ACTION_RULES
    ]
    return case(*whens, else_=ACTION_STATE_CHANGE)


_TEXT_FIELDS = {
    "resource": _EV.resource,
    "principal": _EV.principal,
    "method": _EV.method,
    "request_id": _EV.request_id,
}


def parse_filter(expression: str, action_numbers: dict[str, int]) -> list[ColumnElement[bool]]:
    """SQL conditions of an AIP-160 filter (the subset ListAuditEvents documents).

    ``action_numbers`` maps ``AuditAction`` value names (e.g. ``AUDIT_ACTION_SIGN``) to numbers.

    Raises:
        InvalidArgument: the filter does not parse or names an unknown field, operator or value.

    """

    def text_field(column: Any) -> filters.Field:
        def make(op: str, value: str, field: str) -> ColumnElement[bool]:
            if op != "=":
                raise filters.violation(f"{field} supports only =")
            return filters.compare(column, op, value, field)

        return make

    def action(op: str, value: str, field: str) -> ColumnElement[bool]:
        number = action_numbers.get(value) or action_numbers.get(f"AUDIT_ACTION_{value}")
        if op != "=" or not number:
            raise filters.violation(
                f"action must be compared with = to an AuditAction name, got {op} {value!r}"
            )
        return action_case() == number

    def sequence(op: str, value: str, field: str) -> ColumnElement[bool]:
        if op not in filters.RANGE_OPS or not re.fullmatch(r"\d{1,18}", value):
            raise filters.violation(
                f"sequence must be compared with =, <, <=, > or >= to a whole number, got {value!r}"
            )
        return filters.compare(_EV.sequence, op, int(value), field)

    return filters.conditions(
        expression,
        {
            **{name: text_field(column) for name, column in _TEXT_FIELDS.items()},
            "action": action,
            "event_time": lambda op, value, field: filters.compare(
                _EV.event_time, op, filters.timestamp(value, field), field
            ),
            "sequence": sequence,
        },
    )


async def list_events(
    uow: UnitOfWork,
    license_id: str,
    conditions: Sequence[ColumnElement[bool]],
    query: dict[str, str],
    descending: bool,
    size: int,
    token: str,
) -> Page[models.AuditEvent]:
    """A page of a license's events in sequence order (keyset on ``(license_id, sequence)``)."""
    await get_license(uow, license_id)
    limit = paging.page_size(size)
    after = paging.decode_token(token, query)
    stmt: Select[models.AuditEvent] = select(_EV).where(_EV.license_id == license_id, *conditions)
    if after is not None:
        if not after.isdigit():
            raise InvalidPageToken("page_token is malformed")
        stmt = stmt.where(_EV.sequence < int(after) if descending else _EV.sequence > int(after))
    stmt = stmt.order_by(_EV.sequence.desc() if descending else _EV.sequence).limit(limit + 1)
    rows = list((await uow.session.scalars(stmt)).all())
    next_token = ""
    if len(rows) > limit:
        rows = rows[:limit]
        next_token = paging.next_token(str(rows[-1].sequence), query)
    return Page(rows, next_token)


async def get_event(uow: UnitOfWork, license_id: str, event_id: str) -> models.AuditEvent:
    """One event of the license, or NOT_FOUND (also when it belongs to another license)."""
    row = await uow.session.scalar(select(_EV).where(_EV.id == event_id))
    if row is None or row.license_id != license_id:
        raise NotFound("audit event", event_name(license_id, event_id))
    return row
