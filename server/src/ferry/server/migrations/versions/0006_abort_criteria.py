"""Abort criteria per failure type: three optional percentages on each rollout.

Revision ID: 0006_abort_criteria
Revises: 0005_report_order
Create Date: 2026-12-03 13:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_abort_criteria"
down_revision: str | None = "0005_report_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("max_failed_pct", "max_rolled_back_pct", "max_timed_out_pct")


def upgrade() -> None:
    with op.batch_alter_table("rollout") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
