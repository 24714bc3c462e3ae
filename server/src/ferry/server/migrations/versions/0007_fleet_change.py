"""Fleet change scopes: whose documents a narrowed epoch bump can alter (check-in caches).

Revision ID: 0007_fleet_change
Revises: 0006_abort_criteria
Create Date: 2026-12-03 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007_fleet_change"
down_revision: str | None = "0006_abort_criteria"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fleet_change",
        sa.Column("epoch", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("scope", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("epoch", "scope"),
    )


def downgrade() -> None:
    op.drop_table("fleet_change")
