"""The dashboard's figures (services/stats.py): hourly counts, and an index to make them.

`delivery_hours` and `delivery_failures` hold the send steps of each hour that is over, per
target (and per error class and SMTP code), counted once; the dashboard reads them and
counts only the steps of the last hour or so from `run_steps`. Nothing is backfilled here:
the first look at the dashboard counts the last 30 days.

`ix_run_steps_updated` (when, activity, status, attempts, run) finds an hour's send steps
without a scan, and tells their state without reading the rows (a batch message's is wide).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _hour_and_target() -> list[sa.Column[object]]:
    return [
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("target", sa.String(200), primary_key=True),
    ]


def upgrade() -> None:
    op.create_table(
        "delivery_hours",
        *_hour_and_target(),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("deferred", sa.Integer(), nullable=False),
        sa.Column("rate_limited", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_table(
        "delivery_failures",
        *_hour_and_target(),
        sa.Column("code", sa.String(100), primary_key=True),
        sa.Column("smtp_code", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("example", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index(
        "ix_run_steps_updated", "run_steps", ["updated_at", "activity", "status", "attempts", "run_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_run_steps_updated", "run_steps")
    op.drop_table("delivery_failures")
    op.drop_table("delivery_hours")
