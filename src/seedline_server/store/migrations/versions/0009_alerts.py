"""alerts: alert rules, alerts (one firing per rule and sensor), the alert change log

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 15:00:00

``ux_alerts_one_firing`` is a partial unique index: at most one FIRING alert per (rule, sensor),
so server processes evaluating readings independently cannot open the same alert twice.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("license_id", sa.String(length=26), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("metric", sa.SmallInteger(), nullable=False),
        sa.Column("section_id", sa.String(length=26), nullable=True),
        sa.Column("sensor_id", sa.String(length=26), nullable=True),
        sa.Column("comparator", sa.SmallInteger(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("lower_bound", sa.Double(), nullable=True),
        sa.Column("upper_bound", sa.Double(), nullable=True),
        sa.Column("unit", sa.SmallInteger(), nullable=False),
        sa.Column("hold_seconds", sa.Double(), nullable=False),
        sa.Column("severity", sa.SmallInteger(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("update_time", TZ, nullable=False),
        sa.Column("delete_time", TZ, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("(section_id IS NULL) <> (sensor_id IS NULL)", name="ck_alert_rules_scope"),
        sa.CheckConstraint("comparator IN (1, 2, 3)", name="ck_alert_rules_comparator"),
        sa.ForeignKeyConstraint(["license_id"], ["licenses.id"]),
        sa.ForeignKeyConstraint(["section_id"], ["sections.id"]),
        sa.ForeignKeyConstraint(["sensor_id"], ["sensors.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alert_rules_license_id_id", "alert_rules", ["license_id", "id"])
    op.create_index(
        "ix_alert_rules_sensor", "alert_rules", ["sensor_id"], postgresql_where=sa.text("delete_time IS NULL")
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("license_id", sa.String(length=26), nullable=False),
        sa.Column("rule_id", sa.String(length=26), nullable=False),
        sa.Column("sensor_id", sa.String(length=26), nullable=False),
        sa.Column("section_id", sa.String(length=26), nullable=False),
        sa.Column("condition", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("severity", sa.SmallInteger(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("start_time", TZ, nullable=False),
        sa.Column("end_time", TZ, nullable=True),
        sa.Column("last_value", sa.Double(), nullable=False),
        sa.Column("last_value_time", TZ, nullable=False),
        sa.Column("acknowledge_time", TZ, nullable=True),
        sa.Column("acknowledger", sa.Text(), nullable=False),
        sa.Column("acknowledge_note", sa.Text(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("update_time", TZ, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("state IN (1, 2)", name="ck_alerts_state"),
        sa.ForeignKeyConstraint(["license_id"], ["licenses.id"]),
        sa.ForeignKeyConstraint(["rule_id"], ["alert_rules.id"]),
        sa.ForeignKeyConstraint(["sensor_id"], ["sensors.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alerts_license_id_id", "alerts", ["license_id", "id"])
    op.create_index("ix_alerts_rule", "alerts", ["rule_id", "id"])
    op.create_index("ix_alerts_firing", "alerts", ["license_id", "id"], postgresql_where=sa.text("state = 1"))
    op.create_index(
        "ux_alerts_one_firing",
        "alerts",
        ["rule_id", "sensor_id"],
        unique=True,
        postgresql_where=sa.text("state = 1"),
    )
    op.create_table(
        "alert_events",
        sa.Column("seq", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("license_id", sa.String(length=26), nullable=False),
        sa.Column("alert_id", sa.String(length=26), nullable=False),
        sa.Column("change", sa.SmallInteger(), nullable=False),
        sa.Column("event_time", TZ, nullable=False),
        sa.Column("alert", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_alert_events_license", "alert_events", ["license_id", "seq"])
    op.create_index("ix_alert_events_time", "alert_events", ["event_time"])


def downgrade() -> None:
    op.drop_index("ix_alert_events_time", table_name="alert_events")
    op.drop_index("ix_alert_events_license", table_name="alert_events")
    op.drop_table("alert_events")
    op.drop_index("ux_alerts_one_firing", table_name="alerts")
    op.drop_index("ix_alerts_firing", table_name="alerts")
    op.drop_index("ix_alerts_rule", table_name="alerts")
    op.drop_index("ix_alerts_license_id_id", table_name="alerts")
    op.drop_table("alerts")
    op.drop_index("ix_alert_rules_sensor", table_name="alert_rules")
    op.drop_index("ix_alert_rules_license_id_id", table_name="alert_rules")
    op.drop_table("alert_rules")
