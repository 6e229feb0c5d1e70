"""integrations hub: integrations, exchange logs, the outbox, sync runs, shared limits

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 23:10:06.342935

``deliveries`` is the transactional outbox (claimed with FOR UPDATE SKIP LOCKED);
``rate_buckets`` and ``concurrency_slots`` hold the remotes' limits so every worker process
shares them; ``inbound_events`` remembers pushed event ids to refuse replays.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "concurrency_slots",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=True),
        sa.Column("lease_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", "slot"),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "integrations",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("license_id", sa.String(length=26), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("endpoint_uri", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("config", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("credentials", sa.LargeBinary(), nullable=True),
        sa.Column("credentials_update_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("breaker_state", sa.String(length=16), server_default="CLOSED", nullable=False),
        sa.Column("breaker_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("breaker_open_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sync_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "breaker_state IN ('CLOSED', 'OPEN', 'HALF_OPEN')", name="ck_integrations_breaker_state"
        ),
        sa.CheckConstraint(
            "kind IN ('METRC', 'BIOTRACKTHC', 'LIMS', 'WEBHOOK')", name="ck_integrations_kind"
        ),
        sa.ForeignKeyConstraint(
            ["license_id"],
            ["licenses.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_integrations_license", "integrations", ["license_id", "id"], unique=False)
    op.create_index(
        "ux_integrations_state_system",
        "integrations",
        ["license_id"],
        unique=True,
        postgresql_where=sa.text("kind IN ('METRC', 'BIOTRACKTHC')"),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("integration_id", sa.String(length=26), nullable=False),
        sa.Column("license_id", sa.String(length=26), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("ordering_key", sa.Text(), nullable=False),
        sa.Column("audit_event_id", sa.String(length=26), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("maybe_sent", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("last_error", sa.Text(), server_default="", nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deliver_time", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('PENDING', 'IN_FLIGHT', 'DELIVERED', 'DEAD_LETTER')", name="ck_deliveries_state"
        ),
        sa.ForeignKeyConstraint(["integration_id"], ["integrations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["next_attempt_time", "id"],
        unique=False,
        postgresql_where=sa.text("state IN ('PENDING', 'IN_FLIGHT')"),
    )
    op.create_index("ix_deliveries_integration", "deliveries", ["integration_id", "id"], unique=False)
    op.create_index(
        "ix_deliveries_open_key",
        "deliveries",
        ["integration_id", "ordering_key", "id"],
        unique=False,
        postgresql_where=sa.text("state <> 'DELIVERED'"),
    )
    op.create_table(
        "inbound_events",
        sa.Column("integration_id", sa.String(length=26), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("receive_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(["integration_id"], ["integrations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("integration_id", "event_id"),
    )
    op.create_table(
        "integration_logs",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("integration_id", sa.String(length=26), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("payload_size", sa.BigInteger(), nullable=False),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("exchange_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("response_ms", sa.Double(), nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("error_detail", sa.Text(), nullable=False),
        sa.Column("sync_run_id", sa.String(length=26), nullable=True),
        sa.ForeignKeyConstraint(["integration_id"], ["integrations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_integration_logs_integration", "integration_logs", ["integration_id", "id"], unique=False
    )
    op.create_index(
        "ix_integration_logs_sync_run",
        "integration_logs",
        ["sync_run_id"],
        unique=False,
        postgresql_where=sa.text("sync_run_id IS NOT NULL"),
    )
    op.create_table(
        "remote_ids",
        sa.Column("integration_id", sa.String(length=26), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("remote_id", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["integration_id"], ["integrations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("integration_id", "resource"),
    )
    op.create_index("ix_remote_ids_remote", "remote_ids", ["integration_id", "remote_id"], unique=False)
    op.create_table(
        "sync_cursors",
        sa.Column("integration_id", sa.String(length=26), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("last_success_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_full_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["integration_id"], ["integrations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("integration_id", "scope"),
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("integration_id", sa.String(length=26), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("mode", sa.String(length=12), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("since_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trigger", sa.String(length=12), nullable=False),
        sa.Column("counts", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("difference_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error_detail", sa.Text(), server_default="", nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_time", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'PARTIALLY_SUCCEEDED', 'FAILED')",
            name="ck_sync_runs_state",
        ),
        sa.ForeignKeyConstraint(["integration_id"], ["integrations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sync_runs_integration", "sync_runs", ["integration_id", "id"], unique=False)
    op.create_index(
        "ux_sync_runs_active",
        "sync_runs",
        ["integration_id"],
        unique=True,
        postgresql_where=sa.text("state IN ('QUEUED', 'RUNNING')"),
    )
    op.create_table(
        "sync_differences",
        sa.Column("sync_run_id", sa.String(length=26), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("remote_id", sa.Text(), nullable=False),
        sa.Column("local_value", sa.Text(), nullable=False),
        sa.Column("remote_value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["sync_run_id"], ["sync_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("sync_run_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("sync_differences")
    op.drop_index(
        "ux_sync_runs_active",
        table_name="sync_runs",
        postgresql_where=sa.text("state IN ('QUEUED', 'RUNNING')"),
    )
    op.drop_index("ix_sync_runs_integration", table_name="sync_runs")
    op.drop_table("sync_runs")
    op.drop_table("sync_cursors")
    op.drop_index("ix_remote_ids_remote", table_name="remote_ids")
    op.drop_table("remote_ids")
    op.drop_index(
        "ix_integration_logs_sync_run",
        table_name="integration_logs",
        postgresql_where=sa.text("sync_run_id IS NOT NULL"),
    )
    op.drop_index("ix_integration_logs_integration", table_name="integration_logs")
    op.drop_table("integration_logs")
    op.drop_table("inbound_events")
    op.drop_index(
        "ix_deliveries_open_key", table_name="deliveries", postgresql_where=sa.text("state <> 'DELIVERED'")
    )
    op.drop_index("ix_deliveries_integration", table_name="deliveries")
    op.drop_index(
        "ix_deliveries_due",
        table_name="deliveries",
        postgresql_where=sa.text("state IN ('PENDING', 'IN_FLIGHT')"),
    )
    op.drop_table("deliveries")
    op.drop_index(
        "ux_integrations_state_system",
        table_name="integrations",
        postgresql_where=sa.text("kind IN ('METRC', 'BIOTRACKTHC')"),
    )
    op.drop_index("ix_integrations_license", table_name="integrations")
    op.drop_table("integrations")
    op.drop_table("rate_buckets")
    op.drop_table("concurrency_slots")
