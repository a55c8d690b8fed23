"""Indexes for the dashboard's figures (services/stats.py).

`ix_run_steps_activity_updated` holds every column the per-hour and per-day counts read
(activity, when, status, attempts, run), so those counts read the index alone, the range
of the last 30 days of one activity, not the steps' rows (a batch message's row is
wide). `ix_runs_target` finds a target's runs for its own chart.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_run_steps_activity_updated",
        "run_steps",
        ["activity", "updated_at", "status", "attempts", "run_id"],
    )
    op.create_index("ix_runs_target", "runs", ["target"])


def downgrade() -> None:
    op.drop_index("ix_runs_target", "runs")
    op.drop_index("ix_run_steps_activity_updated", "run_steps")
