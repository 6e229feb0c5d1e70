"""SQLAlchemy models of the integrations hub: integrations, their exchange log, the outbox.

The outbox (``deliveries``) is written in the same transaction as the change it reports, and
claimed by workers with ``FOR UPDATE SKIP LOCKED``. The limits the remotes impose (METRC's
requests per second and concurrent requests per facility) and each integration's circuit breaker
live here too, so every worker process shares them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from seedline_server.store.models import ULID, Base

KINDS = ("METRC", "BIOTRACKTHC", "LIMS", "WEBHOOK")
BREAKER_STATES = ("CLOSED", "OPEN", "HALF_OPEN")
DELIVERY_STATES = ("PENDING", "IN_FLIGHT", "DELIVERED", "DEAD_LETTER")
RUN_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "PARTIALLY_SUCCEEDED", "FAILED")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Integration(Base):
    """A license's connection to an outside system; credentials sealed with the KeyRing."""

    __tablename__ = "integrations"
    __table_args__ = (
        CheckConstraint(_one_of("kind", KINDS), name="ck_integrations_kind"),
        CheckConstraint(_one_of("breaker_state", BREAKER_STATES), name="ck_integrations_breaker_state"),
        # One state-system integration per license: two would report every change twice.
        Index(
            "ux_integrations_state_system",
            "license_id",
            unique=True,
            postgresql_where=text("kind IN ('METRC', 'BIOTRACKTHC')"),
        ),
        Index("ix_integrations_license", "license_id", "id"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ULID, ForeignKey("licenses.id"))
    kind: Mapped[str] = mapped_column(String(16))
    display_name: Mapped[str] = mapped_column(Text)
    endpoint_uri: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean)
    # The kind's settings as proto3 JSON of MetrcConfig / BioTrackConfig / LimsConfig / WebhookConfig.
    config: Mapped[dict[str, Any]]
    # Webhook event types subscribed to (e.g. "transfer.committed"); empty for other kinds.
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    credentials: Mapped[bytes | None] = mapped_column(LargeBinary, info={"secret": True})
    credentials_update_time: Mapped[datetime | None]
    breaker_state: Mapped[str] = mapped_column(String(16), server_default="CLOSED")
    breaker_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    breaker_open_time: Mapped[datetime | None]
    last_sync_time: Mapped[datetime | None]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(Integer)


class IntegrationLog(Base):
    """One exchange with a remote (SOP-API-001 §10.1.2): never the payload, only size and digest."""

    __tablename__ = "integration_logs"
    __table_args__ = (
        Index("ix_integration_logs_integration", "integration_id", "id"),
        Index(
            "ix_integration_logs_sync_run", "sync_run_id", postgresql_where=text("sync_run_id IS NOT NULL")
        ),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    integration_id: Mapped[str] = mapped_column(ULID, ForeignKey("integrations.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(8))  # INBOUND | OUTBOUND
    endpoint: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(Text)
    payload_size: Mapped[int] = mapped_column(BigInteger)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(8))  # SUCCESS | ERROR | TIMEOUT | RETRY
    exchange_time: Mapped[datetime]
    response_ms: Mapped[float | None] = mapped_column(Double)
    retry_count: Mapped[int] = mapped_column(Integer)
    error_detail: Mapped[str] = mapped_column(Text)
    sync_run_id: Mapped[str | None] = mapped_column(ULID)


class Delivery(Base):
    """An outbox row: one change one integration must hear about, delivered in order per resource.

    ``ordering_key`` (the resource name) orders deliveries: a worker takes a row only when no
    older row of the same integration and key is still undelivered, so a remote never sees a
    plant's harvest before its registration. ``lease_time`` bounds an IN_FLIGHT claim: a worker
    that dies leaves the row to be reclaimed when the lease runs out, and the next attempt checks
    the remote before resending.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        CheckConstraint(_one_of("state", DELIVERY_STATES), name="ck_deliveries_state"),
        # The claim scan: what is due, oldest first.
        Index(
            "ix_deliveries_due",
            "next_attempt_time",
            "id",
            postgresql_where=text("state IN ('PENDING', 'IN_FLIGHT')"),
        ),
        # The ordering check and the dead-letter count: undelivered rows per resource.
        Index(
            "ix_deliveries_open_key",
            "integration_id",
            "ordering_key",
            "id",
            postgresql_where=text("state <> 'DELIVERED'"),
        ),
        Index("ix_deliveries_integration", "integration_id", "id"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    integration_id: Mapped[str] = mapped_column(ULID, ForeignKey("integrations.id", ondelete="CASCADE"))
    license_id: Mapped[str] = mapped_column(ULID)
    event_type: Mapped[str] = mapped_column(Text)
    resource: Mapped[str] = mapped_column(Text)
    ordering_key: Mapped[str] = mapped_column(Text)
    audit_event_id: Mapped[str | None] = mapped_column(ULID)
    # {"before": {...} | null, "after": {...} | null} snapshots of the audit event.
    payload: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(12))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_time: Mapped[datetime]
    lease_time: Mapped[datetime | None]
    # Set once an attempt may have reached the remote: later attempts look before they resend.
    maybe_sent: Mapped[bool] = mapped_column(Boolean, server_default="false")
    last_error: Mapped[str] = mapped_column(Text, server_default="")
    create_time: Mapped[datetime]
    deliver_time: Mapped[datetime | None]


class SyncRun(Base):
    """A SyncIntegration run: requested through the API or by the schedule, run by a worker."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        CheckConstraint(_one_of("state", RUN_STATES), name="ck_sync_runs_state"),
        Index("ix_sync_runs_integration", "integration_id", "id"),
        # At most one run QUEUED or RUNNING per integration.
        Index(
            "ux_sync_runs_active",
            "integration_id",
            unique=True,
            postgresql_where=text("state IN ('QUEUED', 'RUNNING')"),
        ),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    integration_id: Mapped[str] = mapped_column(ULID, ForeignKey("integrations.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(20))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    mode: Mapped[str] = mapped_column(String(12))
    direction: Mapped[str] = mapped_column(String(8))
    since_time: Mapped[datetime | None]
    trigger: Mapped[str] = mapped_column(String(12))  # API | SCHEDULE
    # {"PLANTS": {"pulled": n, "pushed": n, "unchanged": n, "failed": n}, ...}
    counts: Mapped[dict[str, Any]]
    difference_count: Mapped[int] = mapped_column(Integer, server_default="0")
    error_detail: Mapped[str] = mapped_column(Text, server_default="")
    create_time: Mapped[datetime]
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    lease_time: Mapped[datetime | None]


class SyncDifference(Base):
    """One difference a reconciliation found."""

    __tablename__ = "sync_differences"
    sync_run_id: Mapped[str] = mapped_column(
        ULID, ForeignKey("sync_runs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(20))
    resource: Mapped[str] = mapped_column(Text)
    remote_id: Mapped[str] = mapped_column(Text)
    local_value: Mapped[str] = mapped_column(Text)
    remote_value: Mapped[str] = mapped_column(Text)


class SyncCursor(Base):
    """Per integration and scope: when the last pulls succeeded (schedules and INCREMENTAL)."""

    __tablename__ = "sync_cursors"
    integration_id: Mapped[str] = mapped_column(
        ULID, ForeignKey("integrations.id", ondelete="CASCADE"), primary_key=True
    )
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_success_time: Mapped[datetime | None]
    last_full_time: Mapped[datetime | None]


class RemoteId(Base):
    """The remote's id of a Seedline resource (METRC label, BioTrackTHC barcode id)."""

    __tablename__ = "remote_ids"
    __table_args__ = (Index("ix_remote_ids_remote", "integration_id", "remote_id"),)
    integration_id: Mapped[str] = mapped_column(
        ULID, ForeignKey("integrations.id", ondelete="CASCADE"), primary_key=True
    )
    resource: Mapped[str] = mapped_column(Text, primary_key=True)
    remote_id: Mapped[str] = mapped_column(Text)


class RateBucket(Base):
    """A token bucket shared by every worker (e.g. METRC's 150 requests/s per vendor key).

    ``tokens`` may go negative: a caller takes its token at once and waits until the bucket would
    have held it, so callers are served in arrival order at exactly the configured rate.
    """

    __tablename__ = "rate_buckets"
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    update_time: Mapped[datetime]


class ConcurrencySlot(Base):
    """One of N slots bounding concurrent requests to a remote (METRC: 10 per facility)."""

    __tablename__ = "concurrency_slots"
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str | None] = mapped_column(Text)
    lease_time: Mapped[datetime | None]


class InboundEvent(Base):
    """An event a remote pushed (ReceiveIntegrationEvent): its id is kept to refuse replays."""

    __tablename__ = "inbound_events"
    integration_id: Mapped[str] = mapped_column(
        ULID, ForeignKey("integrations.id", ondelete="CASCADE"), primary_key=True
    )
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    receive_time: Mapped[datetime]
    result: Mapped[dict[str, Any]]
