"""Email triggers: where each trigger stands, and one row per message it took.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trigger_states",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "workflow_id", sa.String(36), sa.ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.String(36)),
        sa.Column("folder", sa.String(500), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("uidvalidity", sa.BigInteger()),
        sa.Column("last_uid", sa.BigInteger()),
        sa.Column("baseline_at", sa.DateTime(timezone=True)),
        sa.Column("last_checked_at", sa.DateTime(timezone=True)),
        sa.Column("last_message_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("workflow_id", "position", name="uq_trigger_states_workflow_position"),
    )
    op.create_table(
        "trigger_messages",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "workflow_id", sa.String(36), sa.ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.String(36), nullable=False),
        sa.Column("folder", sa.String(500), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("message_key", sa.String(500), nullable=False),
        sa.Column("uid", sa.BigInteger()),
        sa.Column("message_id", sa.String(998)),
        sa.Column("subject", sa.Text()),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("run_id", sa.String(36)),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("retry_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "workflow_id",
            "target_id",
            "folder",
            "uidvalidity",
            "message_key",
            name="uq_trigger_messages_mail",
        ),
    )
    op.create_index("ix_trigger_messages_status", "trigger_messages", ["status"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("trigger", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("trigger")
    op.drop_index("ix_trigger_messages_status", "trigger_messages")
    op.drop_table("trigger_messages")
    op.drop_table("trigger_states")
