"""telemetry: roll-ups per section and metric, by the section each reading was taken in

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 17:00:00

``section_readings_1m`` / ``section_readings_1h`` hold min/max/sum/count per (section, metric,
bucket) in the metric's first listed unit (°C, kPa, ...). The ingest writers maintain them from
now on; existing readings are backfilled from the per-sensor roll-ups, attributed to each
sensor's current section (the only section known for them).
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)

# Sensor unit -> (a, b) into the metric's first unit: FAHRENHEIT -> CELSIUS, HPA -> KPA.
_A = "CASE s.unit WHEN 2 THEN 5.0 / 9.0 WHEN 11 THEN 0.1 ELSE 1.0 END"
_B = "CASE s.unit WHEN 2 THEN -32.0 * 5.0 / 9.0 ELSE 0.0 END"


def upgrade() -> None:
    for name, source in (("section_readings_1m", "readings_1m"), ("section_readings_1h", "readings_1h")):
        op.create_table(
            name,
            sa.Column("section_id", sa.String(length=26), nullable=False),
            sa.Column("metric", sa.SmallInteger(), nullable=False),
            sa.Column("bucket_start", TZ, nullable=False),
            sa.Column("min", sa.Double(), nullable=False),
            sa.Column("max", sa.Double(), nullable=False),
            sa.Column("sum", sa.Double(), nullable=False),
            sa.Column("count", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("section_id", "metric", "bucket_start"),
        )
        op.execute(
            f"INSERT INTO {name} (section_id, metric, bucket_start, min, max, sum, count) "  # noqa: S608
            f"SELECT s.section_id, s.metric, r.bucket_start, min(r.min * {_A} + {_B}), "
            f"max(r.max * {_A} + {_B}), sum(r.sum * {_A} + {_B} * r.count), sum(r.count) "
            f"FROM {source} r JOIN sensors s ON s.key = r.sensor_key "
            "GROUP BY s.section_id, s.metric, r.bucket_start"
        )


def downgrade() -> None:
    op.drop_table("section_readings_1h")
    op.drop_table("section_readings_1m")
