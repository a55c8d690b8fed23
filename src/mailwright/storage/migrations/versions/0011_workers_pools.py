"""Workers on many machines: runs name the worker pool that may execute them, and live workers
are listed.

`runs.pool` is copied from the target's `worker_pool` setting when the run is queued, so that
finding a pool's due runs needs no look into the targets' settings. `workers` holds one row
per running worker process, refreshed by its heartbeat: what `mailwright workers list` shows
and how a run learns that its pool has no live worker.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("pool", sa.String(100), nullable=True))
    op.create_table(
        "workers",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pool", sa.String(100), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("broker", sa.String(20), nullable=False),
        sa.Column("runs_in_hand", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_workers_heartbeat", "workers", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_workers_heartbeat", "workers")
    op.drop_table("workers")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("pool")
