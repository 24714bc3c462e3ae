"""Report order: the device's own report sequence on reports, slots and memberships.

Revision ID: 0005_report_order
Revises: 0004_reenrollment_approval
Create Date: 2026-12-03 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_report_order"
down_revision: str | None = "0004_reenrollment_approval"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device_report") as batch:
        batch.add_column(sa.Column("report_seq", sa.Integer(), nullable=True))
    with op.batch_alter_table("device_slot") as batch:
        batch.add_column(
            sa.Column("last_report_at", sa.String(), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("last_report_seq", sa.Integer(), nullable=True))
    with op.batch_alter_table("rollout_device") as batch:
        batch.add_column(sa.Column("last_report_seq", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout_device") as batch:
        batch.drop_column("last_report_seq")
    with op.batch_alter_table("device_slot") as batch:
        batch.drop_column("last_report_seq")
        batch.drop_column("last_report_at")
    with op.batch_alter_table("device_report") as batch:
        batch.drop_column("report_seq")
