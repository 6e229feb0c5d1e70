"""Integration use cases: CRUD with sealed credentials, tests, syncs, the outbox and the exchange log.

Credentials are write-only. They arrive as a ``Credentials`` message, are serialised and sealed
with the :class:`KeyRing` bound to the integration's resource name (so an envelope copied into
another row does not open), and only ``credentials_set`` / ``credentials_update_time`` are ever
shown. Audit snapshots go through :func:`registry.snapshot`, which prints ``***`` for the sealed
column.

Every mutation locks the integration row first (``FOR UPDATE``), so a delete and a sync request
for the same integration are serialised: a delete never removes an integration while a run is
being queued for it, and the one-active-run index is only a last line of defence.

TestIntegration makes a real call: the row is read (and its credentials opened) in one short
transaction, the connector's ``test`` runs outside any transaction, and the exchanges it made are
written to the integration log in a second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from seedline.integration.v1 import integration_pb2 as pb
from sqlalchemy import Select, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from ulid import ULID

from seedline_server.crypto import KeyRing, SecretError
from seedline_server.domain import paging
from seedline_server.domain.errors import (
    AlreadyExists,
    DependencyUnavailable,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    InvalidStateTransition,
    InvalidUpdateMask,
    NotFound,
)
from seedline_server.integrations.connector import TestReport
from seedline_server.integrations.registry import (
    CONFIG_TYPES,
    Connectors,
    IntegrationRow,
    open_row,
    parse_config,
)
from seedline_server.integrations.sync import SYNC_CHANNEL
from seedline_server.integrations.transport import Exchange, RemoteError
from seedline_server.integrations.worker import log_rows
from seedline_server.service import outbox
from seedline_server.service.context import CallContext
from seedline_server.service.registry import Page, check_etag, get_license, get_scoped, list_page, snapshot
from seedline_server.service.uow import Database, UnitOfWork, now
from seedline_server.store import integration_models as im

__all__ = [
    "CONFIG_FIELDS",
    "STATE_SYSTEMS",
    "SYNC_SUPPORT",
    "WEBHOOK_EVENT_TYPES",
    "ConnectionTest",
    "DeliveryFilter",
    "DifferenceFilter",
    "LogFilter",
    "Spec",
    "SyncRequest",
    "View",
    "create_integration",
    "delete_integration",
    "get_integration",
    "integration_name",
    "list_deliveries",
    "list_differences",
    "list_integrations",
    "list_logs",
    "request_sync",
    "retry_dead_letters",
    "run_connection_test",
    "update_integration",
]

STATE_SYSTEMS = frozenset({"METRC", "BIOTRACKTHC"})
# The config oneof field (and Credentials oneof field) of each kind.
CONFIG_FIELDS: dict[str, str] = {
    "METRC": "metrc",
    "BIOTRACKTHC": "biotrack",
    "LIMS": "lims",
    "WEBHOOK": "webhook",
}


# WebhookEvent enum value → the event type stored and delivered (``transfer.committed``...).
def _event_type(enum_name: str) -> str:
    """``WEBHOOK_EVENT_LAB_RESULT_UPDATED`` → ``lab_result.updated``."""
    noun, verb = enum_name.removeprefix("WEBHOOK_EVENT_").lower().rsplit("_", 1)
    return f"{noun}.{verb}"


WEBHOOK_EVENT_TYPES: dict[int, str] = {
    v.number: _event_type(v.name) for v in pb.WebhookEvent.DESCRIPTOR.values if v.number
}
# What each kind can sync: (scopes, directions). WEBHOOK integrations only push; LIMS only pull.
SYNC_SUPPORT: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "METRC": (frozenset({"PLANTS", "INVENTORY"}), frozenset({"PULL", "PUSH", "BOTH"})),
    "BIOTRACKTHC": (frozenset({"PLANTS", "INVENTORY"}), frozenset({"PULL", "PUSH", "BOTH"})),
    "LIMS": (frozenset({"LAB_RESULTS"}), frozenset({"PULL"})),
    "WEBHOOK": (frozenset({"PLANTS", "INVENTORY", "LAB_RESULTS", "TRANSFERS"}), frozenset({"PUSH"})),
}
_ACTIVE_RUN = ("QUEUED", "RUNNING")
log = structlog.get_logger("seedline.integrations")
_MUTABLE = ("display_name", "endpoint_uri", "enabled")


def integration_name(license_id: str, integration_id: str) -> str:
    """``licenses/{license}/integrations/{integration}``."""
    return f"licenses/{license_id}/integrations/{integration_id}"


def _snapshot(row: im.Integration) -> dict[str, Any]:
    """The audit snapshot: every column, the sealed credentials as ``***``, and whether they are set."""
    return {**snapshot(row), "credentials_set": row.credentials is not None}


# --- specs and checks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """An integration as the caller describes it (create, or the new values of an update).

    Attributes:
        kind: ``METRC``, ``BIOTRACKTHC``, ``LIMS`` or ``WEBHOOK``.
        display_name: Human-readable name.
        endpoint_uri: Base HTTPS URL of the remote; empty for WEBHOOK.
        enabled: Whether the integration runs.
        config: The kind's config message (``MetrcConfig``...).
        credentials: The credentials to seal, or None to leave them unset/unchanged.

    """

    kind: str
    display_name: str
    endpoint_uri: str
    enabled: bool
    config: Message | None
    credentials: pb.Credentials | None = None


def _check_spec(spec: Spec, prefix: str = "integration") -> None:
    """Raise INVALID_ARGUMENT unless kind, config, credentials and endpoint fit together."""
    bad: list[FieldViolation] = []
    if spec.kind not in CONFIG_FIELDS:
        raise InvalidArgument(
            "the integration's kind must be METRC, BIOTRACKTHC, LIMS or WEBHOOK",
            [FieldViolation(f"{prefix}.kind", "must be set")],
        )
    field = CONFIG_FIELDS[spec.kind]
    if spec.config is None or not isinstance(spec.config, CONFIG_TYPES[spec.kind]):
        bad.append(FieldViolation(f"{prefix}.{field}", f"required for {spec.kind} integrations"))
    if spec.credentials is not None and spec.credentials.WhichOneof("kind") != field:
        bad.append(
            FieldViolation(f"{prefix}.credentials.{field}", f"credentials must be {field} credentials")
        )
    if spec.kind == "WEBHOOK" and spec.endpoint_uri:
        bad.append(FieldViolation(f"{prefix}.endpoint_uri", "must be empty for WEBHOOK (use webhook.url)"))
    if spec.kind != "WEBHOOK" and not spec.endpoint_uri:
        bad.append(FieldViolation(f"{prefix}.endpoint_uri", f"required for {spec.kind} integrations"))
    if not spec.display_name.strip():
        bad.append(FieldViolation(f"{prefix}.display_name", "must not be empty"))
    if bad:
        raise InvalidArgument("the integration's fields do not fit its kind", bad)


def _config_json(config: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return out


def config_message(row: im.Integration) -> Message:
    """The stored config of ``row`` as its kind's message."""
    config: Message = parse_config(row.kind, row.config)
    return config


def _events(kind: str, config: Message) -> list[str]:
    if kind != "WEBHOOK":
        return []
    assert isinstance(config, pb.WebhookConfig)
    return [WEBHOOK_EVENT_TYPES[e] for e in config.events if e in WEBHOOK_EVENT_TYPES]


def _seal(keyring: KeyRing, credentials: pb.Credentials, name: str) -> bytes:
    return keyring.seal(credentials.SerializeToString(deterministic=True), name.encode())


# --- reads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """An integration with what GetIntegration shows beside its row."""

    row: im.Integration
    dead_letters: int = 0
    latest_run: im.SyncRun | None = None


async def _views(uow: UnitOfWork, rows: Sequence[im.Integration]) -> list[View]:
    """Rows with their dead-letter counts and latest runs, in two queries whatever their number."""
    ids = [r.id for r in rows]
    if not ids:
        return []
    d = im.Delivery
    counted = await uow.session.execute(
        select(d.integration_id, func.count())
        .where(d.integration_id.in_(ids), d.state == "DEAD_LETTER")
        .group_by(d.integration_id)
    )
    dead = {integration_id: int(n) for integration_id, n in counted}
    s = im.SyncRun
    newest = select(func.max(s.id)).where(s.integration_id.in_(ids)).group_by(s.integration_id)
    latest = {run.integration_id: run for run in await uow.session.scalars(select(s).where(s.id.in_(newest)))}
    return [View(r, dead.get(r.id, 0), latest.get(r.id)) for r in rows]


async def _view(uow: UnitOfWork, row: im.Integration) -> View:
    await uow.session.flush()
    return (await _views(uow, [row]))[0]


async def _get(uow: UnitOfWork, license_id: str, integration_id: str) -> im.Integration:
    return await get_scoped(uow, im.Integration, license_id, integration_id, "integration", "integrations")


async def _lock(uow: UnitOfWork, license_id: str, integration_id: str) -> im.Integration:
    row = await uow.session.get(im.Integration, integration_id, with_for_update=True, populate_existing=True)
    if row is None or row.license_id != license_id:
        raise NotFound("integration", integration_name(license_id, integration_id))
    return row


async def get_integration(uow: UnitOfWork, license_id: str, integration_id: str) -> View:
    """One integration of the license with its breaker, dead letters and latest run, or NOT_FOUND."""
    return await _view(uow, await _get(uow, license_id, integration_id))


async def list_integrations(
    uow: UnitOfWork, license_id: str, kind: str, size: int, token: str
) -> tuple[list[View], str]:
    """A page of the license's integrations in id order, optionally of one kind."""
    await get_license(uow, license_id)
    i = im.Integration
    stmt = select(i).where(i.license_id == license_id)
    if kind:
        stmt = stmt.where(i.kind == kind)
    page: Page[im.Integration] = await list_page(
        uow, stmt, i.id, size, token, {"parent": license_id, "kind": kind}
    )
    return await _views(uow, page.rows), page.next_page_token


# --- create, update, delete --------------------------------------------------------------------


async def _state_system_taken(uow: UnitOfWork, license_id: str, but: str = "") -> None:
    i = im.Integration
    other = (
        await uow.session.execute(
            select(i.id, i.kind).where(i.license_id == license_id, i.kind.in_(STATE_SYSTEMS), i.id != but)
        )
    ).first()
    if other is not None:
        raise AlreadyExists(
            f"licenses/{license_id} already reports to a state system ({other.kind}, "
            f"{integration_name(license_id, other.id)}); a license has at most one METRC or BioTrackTHC "
            "integration",
            metadata={"integration": integration_name(license_id, other.id)},
        )


async def create_integration(uow: UnitOfWork, keyring: KeyRing, license_id: str, spec: Spec) -> View:
    """Add an integration; credentials (if given) are sealed, never stored in the clear."""
    _check_spec(spec)
    assert spec.config is not None
    await get_license(uow, license_id)
    if spec.kind in STATE_SYSTEMS:
        await _state_system_taken(uow, license_id)
    t = now()
    row_id = str(ULID.from_datetime(t))
    name = integration_name(license_id, row_id)
    row = im.Integration(
        id=row_id,
        license_id=license_id,
        kind=spec.kind,
        display_name=spec.display_name,
        endpoint_uri=spec.endpoint_uri,
        enabled=spec.enabled,
        config=_config_json(spec.config),
        events=_events(spec.kind, spec.config),
        credentials=_seal(keyring, spec.credentials, name) if spec.credentials is not None else None,
        credentials_update_time=t if spec.credentials is not None else None,
        breaker_state="CLOSED",
        breaker_failures=0,
        breaker_open_time=None,
        last_sync_time=None,
        create_time=t,
        update_time=t,
        version=1,
    )
    try:
        async with uow.session.begin_nested():
            uow.session.add(row)
            await uow.session.flush()
    except IntegrityError as exc:  # a concurrent create of the license's state system won
        raise AlreadyExists(
            f"licenses/{license_id} already has a METRC or BioTrackTHC integration; a license has at most one"
        ) from exc
    await uow.audit(license_id=license_id, resource=name, action="CREATE", before=None, after=_snapshot(row))
    return await _view(uow, row)


def _paths(mask: Sequence[str], spec: Spec, kind: str) -> list[str]:
    """The update mask made explicit; INVALID_ARGUMENT (INVALID_UPDATE_MASK) for what cannot change."""
    config_field = CONFIG_FIELDS[kind]
    paths = list(mask)
    if not paths or paths == ["*"]:
        paths = [*_MUTABLE, config_field] + (["credentials"] if spec.credentials is not None else [])
    config_subfields = set(CONFIG_TYPES[kind].DESCRIPTOR.fields_by_name)
    bad = []
    for p in paths:
        head, _, sub = p.partition(".")
        if p in _MUTABLE or p == "credentials" or p == config_field:
            continue
        if head == config_field and sub in config_subfields:
            continue
        bad.append(p)
    if bad:
        allowed = ", ".join([*_MUTABLE, config_field, f"{config_field}.<field>", "credentials"])
        raise InvalidUpdateMask(
            f"update_mask names fields that cannot be updated on a {kind} integration: {', '.join(bad)} "
            f"(mutable: {allowed}; the kind is immutable)",
            [FieldViolation("update_mask", f"cannot update: {', '.join(bad)}")],
        )
    if "credentials" in paths and spec.credentials is None:
        raise InvalidArgument(
            "update_mask names credentials but integration.credentials is not set; send the new credentials",
            [FieldViolation("integration.credentials", "required when named in update_mask")],
        )
    return paths


async def update_integration(
    uow: UnitOfWork,
    keyring: KeyRing,
    license_id: str,
    integration_id: str,
    spec: Spec,
    mask: Sequence[str],
    given_etag: str,
) -> View:
    """Change the masked fields; credentials are replaced only when named (or given with no mask)."""
    row = await _lock(uow, license_id, integration_id)
    if not spec.kind:  # a partial update need not restate the kind
        spec = replace(spec, kind=row.kind)
    if spec.kind != row.kind:
        raise InvalidArgument(
            f"the kind of an integration is immutable (this one is {row.kind})",
            [FieldViolation("integration.kind", f"must be {row.kind}")],
        )
    paths = _paths(mask, spec, row.kind)
    check_etag(given_etag, row.id, row.version)
    before = _snapshot(row)
    config_field = CONFIG_FIELDS[row.kind]
    config = config_message(row)
    for p in paths:
        head, _, sub = p.partition(".")
        if head != config_field:
            continue
        if spec.config is None or not isinstance(spec.config, CONFIG_TYPES[row.kind]):
            raise InvalidArgument(
                f"update_mask names {p} but integration.{config_field} is not set",
                [FieldViolation(f"integration.{config_field}", "required when named in update_mask")],
            )
        if sub:
            FieldMask(paths=[sub]).MergeMessage(
                spec.config, config, replace_message_field=True, replace_repeated_field=True
            )
        else:
            config = spec.config
    merged = Spec(
        kind=row.kind,
        display_name=spec.display_name if "display_name" in paths else row.display_name,
        endpoint_uri=spec.endpoint_uri if "endpoint_uri" in paths else row.endpoint_uri,
        enabled=spec.enabled if "enabled" in paths else row.enabled,
        config=config,
        credentials=spec.credentials if "credentials" in paths else None,
    )
    _check_spec(merged)
    t = now()
    row.display_name = merged.display_name
    row.endpoint_uri = merged.endpoint_uri
    row.enabled = merged.enabled
    row.config = _config_json(config)
    row.events = _events(row.kind, config)
    if merged.credentials is not None:
        row.credentials = _seal(keyring, merged.credentials, integration_name(license_id, row.id))
        row.credentials_update_time = t
    row.version += 1  # connectors compare versions: a changed integration gets a rebuilt connector
    row.update_time = t
    await uow.audit(
        license_id=license_id,
        resource=integration_name(license_id, row.id),
        action="UPDATE",
        before=before,
        after={**_snapshot(row), "credentials_replaced": merged.credentials is not None},
    )
    return await _view(uow, row)


async def _active_run(uow: UnitOfWork, integration_id: str) -> im.SyncRun | None:
    s = im.SyncRun
    found: im.SyncRun | None = (
        await uow.session.scalars(
            select(s).where(s.integration_id == integration_id, s.state.in_(_ACTIVE_RUN))
        )
    ).first()
    return found


async def delete_integration(uow: UnitOfWork, license_id: str, integration_id: str, given_etag: str) -> None:
    """Delete an integration with its sealed credentials, logs and deliveries; refused during a sync run."""
    row = await _lock(uow, license_id, integration_id)
    check_etag(given_etag, row.id, row.version)
    run = await _active_run(uow, row.id)
    if run is not None:
        raise InvalidStateTransition(
            f"sync run {run.id} of this integration is {run.state}; delete it once the run has finished",
            metadata={"sync_run_id": run.id, "state": run.state},
        )
    before = _snapshot(row)
    await uow.session.delete(row)
    await uow.session.flush()  # deliveries, logs, runs and remote ids go with it (ON DELETE CASCADE)
    await uow.audit(
        license_id=license_id,
        resource=integration_name(license_id, integration_id),
        action="DELETE",
        before=before,
        after=None,
    )


# --- sync runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncRequest:
    """What SyncIntegration asks for (enum names without their prefixes)."""

    scopes: tuple[str, ...]
    mode: str  # FULL | INCREMENTAL
    direction: str  # PULL | PUSH | BOTH
    since: datetime | None = None


def _check_support(kind: str, req: SyncRequest) -> None:
    scopes, directions = SYNC_SUPPORT[kind]
    bad = [
        FieldViolation(f"scopes[{n}]", f"{kind} integrations cannot sync {s}")
        for n, s in enumerate(req.scopes)
        if s not in scopes
    ]
    if req.direction not in directions:
        bad.append(
            FieldViolation("direction", f"{kind} integrations sync only {', '.join(sorted(directions))}")
        )
    if not req.scopes:
        bad.append(FieldViolation("scopes", "name at least one scope"))
    if req.since is not None and req.mode != "INCREMENTAL":
        bad.append(FieldViolation("since_time", "only allowed with SYNC_MODE_INCREMENTAL"))
    if bad:
        raise InvalidArgument(f"this {kind} integration cannot run the sync asked for", bad)


async def request_sync(uow: UnitOfWork, license_id: str, integration_id: str, req: SyncRequest) -> im.SyncRun:
    """Queue a sync run (a worker picks it up at once, woken by NOTIFY) and return it."""
    row = await _lock(uow, license_id, integration_id)
    _check_support(row.kind, req)
    if not row.enabled:
        raise InvalidStateTransition("the integration is disabled; enable it before syncing")
    if row.credentials is None:
        raise FailedPrecondition("no credentials are stored for this integration; set them before syncing")
    if row.breaker_state == "OPEN":
        raise DependencyUnavailable(
            "the integration's circuit breaker is OPEN after repeated failures of the remote; "
            "retry once it has recovered (see circuit_breaker_state and the exchange logs)",
            metadata={"circuit_breaker_state": "OPEN"},
        )
    active = await _active_run(uow, row.id)
    if active is not None:
        raise InvalidStateTransition(
            f"sync run {active.id} of this integration is already {active.state}; follow it through "
            "latest_sync_run",
            metadata={"sync_run_id": active.id, "state": active.state},
        )
    t = now()
    run = im.SyncRun(
        id=str(ULID.from_datetime(t)),
        integration_id=row.id,
        state="QUEUED",
        scopes=list(req.scopes),
        mode=req.mode,
        direction=req.direction,
        since_time=req.since,
        trigger="API",
        counts={},
        difference_count=0,
        error_detail="",
        create_time=t,
        start_time=None,
        end_time=None,
        lease_time=None,
    )
    try:
        async with uow.session.begin_nested():
            uow.session.add(run)
            await uow.session.flush()
    except IntegrityError as exc:  # the schedule queued one at the same moment
        raise InvalidStateTransition(
            "another sync run of this integration was queued at the same moment; follow it through "
            "latest_sync_run"
        ) from exc
    # Delivered at commit: a worker LISTENing on the channel claims the run at once.
    await uow.session.execute(text("SELECT pg_notify(:c, '')"), {"c": SYNC_CHANNEL})
    await uow.audit(
        license_id=license_id,
        resource=integration_name(license_id, row.id),
        action="SYNC_REQUESTED",
        before=None,
        after={"sync_run": snapshot(run)},
    )
    return run


@dataclass(frozen=True)
class DifferenceFilter:
    """ListSyncDifferences filters; empty means the latest run / any kind."""

    sync_run_id: str = ""
    kind: str = ""


async def list_differences(
    uow: UnitOfWork, license_id: str, integration_id: str, f: DifferenceFilter, size: int, token: str
) -> tuple[list[im.SyncDifference], str]:
    """A page of a run's differences, by scope then remote id (the order they were stored in)."""
    await _get(uow, license_id, integration_id)
    limit = paging.page_size(size)
    query = {"parent": integration_id, "run": f.sync_run_id, "kind": f.kind}
    after = paging.decode_token(token, query)
    s = im.SyncRun
    if after is not None:  # the run is fixed by the first page, so "latest" cannot shift under a reader
        run_id, _, seq_text = after.partition(":")
        if not seq_text.isdigit():
            raise InvalidArgument("page_token is malformed", [FieldViolation("page_token", "malformed")])
        start = int(seq_text)
    elif f.sync_run_id:
        run_id, start = f.sync_run_id, 0
    else:
        latest = (
            await uow.session.scalars(
                select(s.id).where(s.integration_id == integration_id).order_by(s.id.desc()).limit(1)
            )
        ).first()
        if latest is None:
            return [], ""
        run_id, start = latest, 0
    found = await uow.session.get(s, run_id)
    if found is None or found.integration_id != integration_id:
        raise NotFound("sync run", f"{integration_name(license_id, integration_id)}/syncRuns/{run_id}")
    d = im.SyncDifference
    stmt = select(d).where(d.sync_run_id == run_id, d.seq > start)
    if f.kind:
        stmt = stmt.where(d.kind == f.kind)
    rows = list((await uow.session.scalars(stmt.order_by(d.seq).limit(limit + 1))).all())
    next_token = ""
    if len(rows) > limit:
        rows = rows[:limit]
        next_token = paging.next_token(f"{run_id}:{rows[-1].seq}", query)
    return rows, next_token


# --- the outbox --------------------------------------------------------------------------------


async def _newest_first(
    uow: UnitOfWork, stmt: Select[Any], id_column: Any, size: int, token: str, query: dict[str, str]
) -> tuple[list[Any], str]:
    """Keyset pagination over ``id_column`` descending (ULIDs: newest first)."""
    limit = paging.page_size(size)
    after = paging.decode_token(token, query)
    if after is not None:
        stmt = stmt.where(id_column < after)
    rows = list((await uow.session.scalars(stmt.order_by(id_column.desc()).limit(limit + 1))).all())
    next_token = ""
    if len(rows) > limit:
        rows = rows[:limit]
        next_token = paging.next_token(rows[-1].id, query)
    return rows, next_token


@dataclass(frozen=True)
class DeliveryFilter:
    """ListDeliveries filters; empty means any state."""

    state: str = ""


async def list_deliveries(
    uow: UnitOfWork, license_id: str, integration_id: str, f: DeliveryFilter, size: int, token: str
) -> tuple[list[im.Delivery], str]:
    """A page of the integration's deliveries, newest first."""
    await _get(uow, license_id, integration_id)
    d = im.Delivery
    stmt = select(d).where(d.integration_id == integration_id)
    if f.state:
        stmt = stmt.where(d.state == f.state)
    return await _newest_first(uow, stmt, d.id, size, token, {"parent": integration_id, "state": f.state})


async def retry_dead_letters(
    uow: UnitOfWork, license_id: str, integration_id: str, delivery_ids: Sequence[str]
) -> int:
    """Put dead letters (the named ones, or all) back to PENDING with a fresh attempt budget."""
    row = await _lock(uow, license_id, integration_id)
    d = im.Delivery
    t = now()
    stmt = (
        update(d)
        .where(d.integration_id == row.id, d.state == "DEAD_LETTER")
        .values(state="PENDING", attempts=0, next_attempt_time=t, lease_time=None)
        .returning(d.id)
    )
    if delivery_ids:
        stmt = stmt.where(d.id.in_(sorted(set(delivery_ids))))
    retried = sorted((await uow.session.scalars(stmt)).all())
    if not retried:
        return 0
    # Delivered at commit: workers LISTENing on the outbox channel claim them at once.
    await uow.session.execute(text("SELECT pg_notify(:c, '')"), {"c": outbox.CHANNEL})
    await uow.audit(
        license_id=license_id,
        resource=integration_name(license_id, row.id),
        action="DEAD_LETTERS_RETRIED",
        before=None,
        after={"retried_count": len(retried), "deliveries": retried},
    )
    return len(retried)


# --- the exchange log --------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    """ListIntegrationLogs filters; empty values mean "any"."""

    status: str = ""
    direction: str = ""
    start: datetime | None = None
    end: datetime | None = None
    sync_run_id: str = ""


async def list_logs(
    uow: UnitOfWork, license_id: str, integration_id: str, f: LogFilter, size: int, token: str
) -> tuple[list[im.IntegrationLog], str]:
    """A page of the integration's exchanges, newest first."""
    await _get(uow, license_id, integration_id)
    if f.start is not None and f.end is not None and f.end <= f.start:
        raise InvalidArgument(
            "end_time must be after start_time", [FieldViolation("end_time", "must be after start_time")]
        )
    g = im.IntegrationLog
    stmt = select(g).where(g.integration_id == integration_id)
    if f.status:
        stmt = stmt.where(g.status == f.status)
    if f.direction:
        stmt = stmt.where(g.direction == f.direction)
    if f.start is not None:
        stmt = stmt.where(g.exchange_time >= f.start)
    if f.end is not None:
        stmt = stmt.where(g.exchange_time < f.end)
    if f.sync_run_id:
        stmt = stmt.where(g.sync_run_id == f.sync_run_id)
    query = {
        "parent": integration_id,
        "status": f.status,
        "direction": f.direction,
        "start": f.start.isoformat() if f.start else "",
        "end": f.end.isoformat() if f.end else "",
        "run": f.sync_run_id,
    }
    return await _newest_first(uow, stmt, g.id, size, token, query)


# --- the connection test -----------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionTest:
    """What TestIntegration found, and the log entry of its call."""

    report: TestReport
    log_id: str


def _opened(keyring: KeyRing, row: im.Integration) -> IntegrationRow:
    if row.credentials is None:
        raise FailedPrecondition(
            "no credentials are stored for this integration; set them with UpdateIntegration before testing"
        )
    try:
        return open_row(keyring, row)
    except SecretError as exc:
        raise FailedPrecondition(
            "the stored credentials cannot be opened with the configured keys; set them again"
        ) from exc


async def _probe(connectors: Connectors, target: IntegrationRow, exchanges: list[Exchange]) -> TestReport:
    """The connector's test; a remote failure is a report, never an error."""
    try:
        connector = connectors.build(target)
        return await connector.test(exchanges)
    except RemoteError as exc:
        if exc.exchange is not None and exc.exchange not in exchanges:
            exchanges.append(exc.exchange)
        reachable = exc.status is not None
        latency = (
            timedelta(milliseconds=exc.exchange.response_ms or 0) if reachable and exc.exchange else None
        )
        return TestReport(reachable, False, False, latency, exc.detail[:500])
    except Exception as exc:  # a connector choking on an odd answer: still a report, and logged
        log.exception("connection test failed", integration=target.name)
        return TestReport(
            bool(exchanges),
            False,
            False,
            None,
            f"the connection test failed unexpectedly ({type(exc).__name__}); it was logged",
        )


async def run_connection_test(
    database: Database,
    ctx: CallContext,
    keyring: KeyRing,
    connectors: Connectors,
    license_id: str,
    integration_id: str,
) -> ConnectionTest:
    """Test an integration with its stored endpoint and credentials (works while disabled).

    The remote call happens outside any transaction; its exchanges are then written to the
    integration log and the test is audited (without any secret).
    """

    async def load(uow: UnitOfWork) -> IntegrationRow:
        return _opened(keyring, await _get(uow, license_id, integration_id))

    target = await database.read(ctx, load)
    exchanges: list[Exchange] = []
    report = await _probe(connectors, target, exchanges)
    for e in exchanges:
        e.summary = e.summary if e.summary.startswith("connection test") else f"connection test: {e.summary}"
    rows = log_rows(integration_id, exchanges)

    async def record(uow: UnitOfWork) -> str:
        await _lock(uow, license_id, integration_id)  # NOT_FOUND if it was deleted meanwhile
        if rows:
            await uow.session.execute(insert(im.IntegrationLog), rows)
        log_id = rows[-1]["id"] if rows else ""
        await uow.audit(
            license_id=license_id,
            resource=integration_name(license_id, integration_id),
            action="TESTED",
            before=None,
            after={
                "reachable": report.reachable,
                "authenticated": report.authenticated,
                "license_visible": report.license_visible,
                "latency_ms": round(report.latency.total_seconds() * 1000, 3) if report.latency else None,
                "detail": report.detail,
                "log": f"{integration_name(license_id, integration_id)}/logs/{log_id}" if log_id else "",
            },
        )
        return str(log_id)

    return ConnectionTest(report, await database.write(ctx, record))
