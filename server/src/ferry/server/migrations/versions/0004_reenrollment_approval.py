"""Devices: an operator's one-time approval to re-enrol an existing id without its credential.

Revision ID: 0004_reenrollment_approval
Revises: 0003_fleet_epoch
Create Date: 2026-12-03 12:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004_reenrollment_approval"
down_revision: str | None = "0003_fleet_epoch"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "device",
        sa.Column("reenrollment_approved_until", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("device") as batch:
        batch.drop_column("reenrollment_approved_until")
