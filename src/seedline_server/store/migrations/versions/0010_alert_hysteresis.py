"""alert rules: a configurable hysteresis margin (NULL keeps the metric's default)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 16:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("alert_rules", sa.Column("hysteresis", sa.Double(), nullable=True))
    op.create_check_constraint(
        "ck_alert_rules_hysteresis", "alert_rules", "hysteresis IS NULL OR hysteresis >= 0"
    )


def downgrade() -> None:
    op.drop_constraint("ck_alert_rules_hysteresis", "alert_rules", type_="check")
    op.drop_column("alert_rules", "hysteresis")
