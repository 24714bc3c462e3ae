"""Fleet and rollouts: enrolment tokens, devices, slots, status history, rollouts,
per-device rollout state (indexed by rollout, wave, state) and alias bindings.

Revision ID: 0002_fleet_rollouts
Revises: 0001_registry
Create Date: 2026-11-25 03:09:41.577696
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002_fleet_rollouts"
down_revision: str | None = "0001_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("namespace", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("hardware", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("agent_version", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("credential_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("mqtt_password_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("enrolled_at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("enrolled_with", sa.Integer(), nullable=True),
        sa.Column("last_seen_at", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("revoked_at", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("ds_sequence", sa.Integer(), nullable=False),
        sa.Column("ds_content_digest", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("ds_envelope", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("ds_expires_at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("credential_hash"),
    )
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_hardware"), ["hardware"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_namespace"), ["namespace"], unique=False)

    op.create_table(
        "enrollment_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("namespace", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("revoked_at", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("enrollment_token", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_enrollment_token_namespace"), ["namespace"], unique=False
        )

    op.create_table(
        "device_report",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("slot", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("error_code", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("rollout_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("sequence", sa.Integer(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("received_at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["device.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("report_id"),
    )
    with op.batch_alter_table("device_report", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_report_device_id"), ["device_id"], unique=False)

    op.create_table(
        "device_slot",
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("slot", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("installed_version", sa.Integer(), nullable=True),
        sa.Column("staged_version", sa.Integer(), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["device.id"],
        ),
        sa.PrimaryKeyConstraint("device_id", "slot"),
    )
    with op.batch_alter_table("device_slot", schema=None) as batch_op:
        batch_op.create_index(
            "ix_device_slot_model_installed", ["model", "installed_version"], unique=False
        )

    op.create_table(
        "alias_binding",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("namespace", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("template", sa.JSON(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_model.id"],
        ),
        sa.PrimaryKeyConstraint("model_id", "alias"),
    )
    with op.batch_alter_table("alias_binding", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alias_binding_namespace"), ["namespace"], unique=False)

    op.create_table(
        "rollout",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("namespace", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("slot", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("manifest_sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("hardware", sa.JSON(), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("bake_s", sa.Integer(), nullable=False),
        sa.Column("min_success_pct", sa.Integer(), nullable=False),
        sa.Column("max_failures", sa.Integer(), nullable=True),
        sa.Column("max_failure_pct", sa.Integer(), nullable=True),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("retry_backoff_s", sa.Integer(), nullable=False),
        sa.Column("in_progress_timeout_s", sa.Integer(), nullable=False),
        sa.Column("auto_rollback", sa.Boolean(), nullable=False),
        sa.Column("start_at", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("wave_started_at", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("retry_generation", sa.Integer(), nullable=False),
        sa.Column("announced", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_model.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollout_model"), ["model"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollout_namespace"), ["namespace"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollout_state"), ["state"], unique=False)

    op.create_table(
        "rollout_device",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("from_manifest", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("error_code", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_report_at", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("retry_at", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["device.id"],
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollout.id"],
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    )
    with op.batch_alter_table("rollout_device", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rollout_device_device_id"), ["device_id"], unique=False
        )
        batch_op.create_index(
            "ix_rollout_device_rws", ["rollout_id", "wave", "state"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("rollout_device", schema=None) as batch_op:
        batch_op.drop_index("ix_rollout_device_rws")
        batch_op.drop_index(batch_op.f("ix_rollout_device_device_id"))

    op.drop_table("rollout_device")
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_state"))
        batch_op.drop_index(batch_op.f("ix_rollout_namespace"))
        batch_op.drop_index(batch_op.f("ix_rollout_model"))

    op.drop_table("rollout")
    with op.batch_alter_table("alias_binding", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alias_binding_namespace"))

    op.drop_table("alias_binding")
    with op.batch_alter_table("device_slot", schema=None) as batch_op:
        batch_op.drop_index("ix_device_slot_model_installed")

    op.drop_table("device_slot")
    with op.batch_alter_table("device_report", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_report_device_id"))

    op.drop_table("device_report")
    with op.batch_alter_table("enrollment_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrollment_token_namespace"))

    op.drop_table("enrollment_token")
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_namespace"))
        batch_op.drop_index(batch_op.f("ix_device_hardware"))

    op.drop_table("device")
