"""Batches spread over workers: a batch's messages in ranges, each sent under a lease of its own.

A range row is made when the batch's coordinator first claims the run (for a batch stored
by an older version too), so nothing is backfilled here.

Revision ID: 0012
Revises: 0011
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _when(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "batch_ranges",
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("range_no", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("first_index", sa.Integer(), nullable=False),
        sa.Column("end_index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("lease_owner", sa.String(100), nullable=True),
        _when("lease_expires_at"),
        sa.Column("lease_epoch", sa.Integer(), nullable=False, server_default="0"),
        _when("not_before"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("batch_ranges")
