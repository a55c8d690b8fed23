"""Workflows, runs and run steps.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _when(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "workflows",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("name_key", sa.String(200), nullable=False, unique=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        _when("created_at", nullable=False),
        _when("updated_at", nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("workflow_id", sa.String(36), sa.ForeignKey("workflows.id", ondelete="SET NULL")),
        sa.Column("workflow_name", sa.String(200), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("target", sa.String(200)),
        sa.Column("account_key", sa.String(200)),
        sa.Column("error", sa.JSON()),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        _when("not_before"),
        sa.Column("lease_owner", sa.String(100)),
        _when("lease_expires_at"),
        _when("dispatched_at"),
        _when("created_at", nullable=False),
        _when("started_at"),
        _when("finished_at"),
    )
    op.create_index("ix_runs_status", "runs", ["status", "not_before"])
    op.create_index("ix_runs_workflow", "runs", ["workflow_id", "created_at"])
    op.create_table(
        "run_steps",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(100), nullable=False),
        sa.Column("item_index", sa.Integer()),
        sa.Column("activity", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.JSON()),
        sa.Column("output", sa.JSON()),
        sa.Column("error", sa.JSON()),
        sa.Column("message_id", sa.String(300)),
        sa.Column("send_state", sa.String(20)),
        sa.Column("notes", sa.JSON(), nullable=False),
        _when("started_at"),
        _when("finished_at"),
        _when("updated_at", nullable=False),
    )
    op.create_index("ix_run_steps_run", "run_steps", ["run_id", "position", "item_index"])


def downgrade() -> None:
    op.drop_table("run_steps")
    op.drop_table("runs")
    op.drop_table("workflows")
