"""telemetry: sensors, readings partitioned by day, roll-ups, gateway high-water marks

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 14:50:00

``readings`` is range-partitioned by ``observe_time``; its daily partitions are created ahead of
time (and dropped after the retention period) by the server, not here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sensors",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("key", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("license_id", sa.String(length=26), nullable=False),
        sa.Column("section_id", sa.String(length=26), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("metric", sa.SmallInteger(), nullable=False),
        sa.Column("unit", sa.SmallInteger(), nullable=False),
        sa.Column("reporting_interval_seconds", sa.Integer(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("last_observe_time", TZ, nullable=True),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("update_time", TZ, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("delete_time", TZ, nullable=True),
        sa.ForeignKeyConstraint(["license_id"], ["licenses.id"]),
        sa.ForeignKeyConstraint(["section_id"], ["sections.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_sensors_license_id_id", "sensors", ["license_id", "id"])
    op.create_index("ix_sensors_section_metric", "sensors", ["section_id", "metric"])
    op.create_table(
        "ingest_gateways",
        sa.Column("license_id", sa.String(length=26), nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("update_time", TZ, nullable=False),
        sa.PrimaryKeyConstraint("license_id", "gateway_id"),
    )
    op.create_table(
        "ingest_batches",
        sa.Column("license_id", sa.String(length=26), nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.LargeBinary(), nullable=False),
        sa.Column("commit_time", TZ, nullable=False),
        sa.PrimaryKeyConstraint("license_id", "gateway_id", "sequence"),
    )
    op.create_index("ix_ingest_batches_commit_time", "ingest_batches", ["commit_time"])
    op.create_table(
        "readings",
        sa.Column("sensor_key", sa.BigInteger(), nullable=False),
        sa.Column("observe_time", TZ, nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        postgresql_partition_by="RANGE (observe_time)",
    )
    op.create_index("ix_readings_time_brin", "readings", ["observe_time"], postgresql_using="brin")
    op.create_index("ix_readings_sensor_time", "readings", ["sensor_key", "observe_time"])
    for name in ("readings_1m", "readings_1h"):
        op.create_table(
            name,
            sa.Column("sensor_key", sa.BigInteger(), nullable=False),
            sa.Column("bucket_start", TZ, nullable=False),
            sa.Column("min", sa.Double(), nullable=False),
            sa.Column("max", sa.Double(), nullable=False),
            sa.Column("sum", sa.Double(), nullable=False),
            sa.Column("count", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("sensor_key", "bucket_start"),
        )


def downgrade() -> None:
    op.drop_table("readings_1h")
    op.drop_table("readings_1m")
    op.drop_table("readings")  # drops its partitions with it
    op.drop_table("ingest_batches")
    op.drop_table("ingest_gateways")
    op.drop_index("ix_sensors_section_metric", table_name="sensors")
    op.drop_index("ix_sensors_license_id_id", table_name="sensors")
    op.drop_table("sensors")
