"""The transactional outbox: deliveries written in the same transaction as the change they report.

Every mutation records audit events (:meth:`UnitOfWork.audit`); just before commit,
:meth:`UnitOfWork.chain_audit` hands them to :func:`enqueue_audited`, which writes one
``deliveries`` row per event and interested integration of the event's license. So a change and
the news of it commit together or not at all, and no use case can forget to report: the hook
sits under every mutation, present and future.

Who hears what:

- METRC and BioTrackTHC: plants, collections (harvests), lots, transfers and lab results, with
  a fine-grained type (``plant.created``, ``plant.phase_changed``, ``lot.adjusted``...); the
  connector decides what the state system is told (some changes have no state-side equivalent
  and are delivered as "not reported").
- LIMS: lab samples (``lab_sample.created``: register the sample at the laboratory).
- Webhooks: the coarse event types they subscribed to (``transfer.committed``, ``lot.updated``,
  ``plant.updated``...; see :data:`WEBHOOK_TYPES`).

Events that do not come from an audit event (a sync run finished, a lot quarantined by a LIMS
import, a telemetry alert) go through :func:`enqueue_event`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from ulid import ULID

from seedline_server.store import integration_models as im

__all__ = [
    "CHANNEL",
    "WEBHOOK_TYPES",
    "AuditedChange",
    "enqueue_audited",
    "enqueue_event",
    "enqueue_resend",
    "event_type",
]

# NOTIFY channel workers LISTEN on: a commit that enqueued something wakes them at once.
CHANNEL = "seedline_outbox"

# Resource collection (the name segment before the id) → event noun.
_NOUNS = {
    "plants": "plant",
    "collections": "collection",
    "lots": "lot",
    "transfers": "transfer",
    "labResults": "lab_result",
    "samples": "lab_sample",
    "labSamples": "lab_sample",
}
# What each connector kind hears about (by noun); webhooks go by subscription instead.
_INTERESTS: dict[str, frozenset[str]] = {
    "METRC": frozenset({"plant", "collection", "lot", "transfer", "lab_result"}),
    "BIOTRACKTHC": frozenset({"plant", "collection", "lot", "transfer", "lab_result"}),
    "LIMS": frozenset({"lab_sample"}),
}
# Audit verbs that change nothing a remote records (notes stay in Seedline).
_QUIET = frozenset({"NOTE_ADDED", "CONVERSION_BALANCE"})


def _webhook_type(noun: str, verb: str) -> str | None:
    """The webhook event type of a fine-grained change, or None when no webhook event covers it."""
    if noun == "transfer":
        return {
            "TRANSFER_COMMITTED": "transfer.committed",
            "TRANSFER_ACCEPTED": "transfer.accepted",
            "TRANSFER_REJECTED": "transfer.rejected",
            "TRANSFER_VOIDED": "transfer.voided",
        }.get(verb)
    if noun == "lab_result":
        return "lab_result.updated"
    if noun == "lot":
        return "lot.updated"
    if noun == "plant" and verb not in {"MATERIAL_APPLIED", "DESTRUCTION_CANCELLED"}:
        return "plant.updated"
    return None


# Every webhook event type (the WebhookEvent enum's wire names), for validation and docs.
WEBHOOK_TYPES = (
    "transfer.committed",
    "transfer.accepted",
    "transfer.rejected",
    "transfer.voided",
    "lab_result.updated",
    "lot.updated",
    "plant.updated",
    "sync.completed",
    "lot.quarantined",
    "alert.opened",
    "alert.closed",
)


def noun_of(resource: str) -> str | None:
    """The event noun of a resource name (``licenses/L/plants/P`` → ``plant``), or None."""
    parts = resource.split("/")
    if len(parts) < 4 or parts[0] != "licenses":
        return None
    return _NOUNS.get(parts[-2])


def event_type(resource: str, verb: str) -> str | None:
    """The fine-grained event type of an audited change (``plant.phase_changed``), or None."""
    noun = noun_of(resource)
    if noun is None or verb in _QUIET:
        return None
    return f"{noun}.{verb.lower()}"


@dataclass(frozen=True)
class AuditedChange:
    """What the outbox needs of an audit event."""

    audit_event_id: str
    license_id: str | None
    resource: str
    verb: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass(frozen=True)
class _Subscriber:
    id: str
    kind: str
    events: frozenset[str]


async def _subscribers(session: AsyncSession, license_ids: Iterable[str]) -> dict[str, list[_Subscriber]]:
    i = im.Integration
    stmt = select(i.id, i.license_id, i.kind, i.events).where(
        i.license_id.in_(sorted(set(license_ids))), i.enabled.is_(True)
    )
    rows = (await session.execute(stmt)).all()
    out: dict[str, list[_Subscriber]] = {}
    for iid, lid, kind, events in rows:
        out.setdefault(lid, []).append(_Subscriber(iid, kind, frozenset(events or ())))
    return out


def _row(
    sub: _Subscriber, change: AuditedChange, license_id: str, etype: str, now: datetime
) -> dict[str, Any]:
    return {
        "id": str(ULID()),
        "integration_id": sub.id,
        "license_id": license_id,
        "event_type": etype,
        "resource": change.resource,
        "ordering_key": change.resource,
        "audit_event_id": change.audit_event_id,
        "payload": {"verb": change.verb, "before": change.before, "after": change.after},
        "state": "PENDING",
        "attempts": 0,
        "next_attempt_time": now,
        "create_time": now,
    }


async def enqueue_audited(session: AsyncSession, changes: Sequence[AuditedChange], now: datetime) -> int:
    """Write the deliveries for a transaction's audited changes; returns how many were written."""
    typed: list[tuple[AuditedChange, str]] = []
    for c in changes:
        etype = event_type(c.resource, c.verb) if c.license_id is not None else None
        if etype is not None:
            typed.append((c, etype))
    if not typed:
        return 0
    subscribers = await _subscribers(session, (c.license_id for c, _ in typed if c.license_id))
    rows: list[dict[str, Any]] = []
    for change, etype in typed:
        assert change.license_id is not None
        noun = etype.split(".", 1)[0]
        for sub in subscribers.get(change.license_id, ()):
            if sub.kind == "WEBHOOK":
                wtype = _webhook_type(noun, change.verb)
                if wtype is not None and wtype in sub.events:
                    rows.append(_row(sub, change, change.license_id, wtype, now))
            elif noun in _INTERESTS.get(sub.kind, frozenset()):
                rows.append(_row(sub, change, change.license_id, etype, now))
    return await _write(session, rows)


async def enqueue_event(
    session: AsyncSession,
    *,
    license_id: str,
    event_type: str,
    resource: str,
    payload: dict[str, Any],
    now: datetime,
    audit_event_id: str | None = None,
) -> int:
    """Write deliveries of a non-audit event (``sync.completed``, ``lot.quarantined``, ``alert.*``).

    Only webhooks subscribed to ``event_type`` receive it.
    """
    subscribers = await _subscribers(session, [license_id])
    change = AuditedChange(audit_event_id or "", license_id, resource, event_type, None, payload)
    rows = [
        _row(sub, change, license_id, event_type, now)
        for sub in subscribers.get(license_id, ())
        if sub.kind == "WEBHOOK" and event_type in sub.events
    ]
    for row in rows:
        row["audit_event_id"] = audit_event_id
        row["payload"] = {"verb": event_type, "before": None, "after": payload}
    return await _write(session, rows)


async def enqueue_resend(
    session: AsyncSession, *, integration_id: str, kind: str, changes: Sequence[AuditedChange], now: datetime
) -> int:
    """Queue ``changes`` again for one integration (a reconciliation PUSH of what the remote lacks).

    They take the same path as first deliveries: ordered per resource, retried, looked up first
    by connectors that can (so a record the remote has after all is not sent twice).
    """
    sub = _Subscriber(integration_id, kind, frozenset())
    rows = []
    for change in changes:
        etype = event_type(change.resource, change.verb)
        if etype is not None and change.license_id is not None:
            row = _row(sub, change, change.license_id, etype, now)
            row["maybe_sent"] = True  # the remote may have it after all: connectors look first
            rows.append(row)
    return await _write(session, rows)


async def _write(session: AsyncSession, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    await session.execute(insert(im.Delivery), rows)
    # Delivered to listeners at commit, dropped on rollback: wakes the workers without polling.
    await session.execute(text("SELECT pg_notify(:c, '')"), {"c": CHANNEL})
    return len(rows)
