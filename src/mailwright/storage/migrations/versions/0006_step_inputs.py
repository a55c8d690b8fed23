"""Batch messages' fields in their own table, out of the step rows that are updated as they are sent.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Steps stored before keep their fields in run_steps.inputs; readers take either.
    op.create_table(
        "step_inputs",
        sa.Column(
            "step_id", sa.String(36), sa.ForeignKey("run_steps.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("inputs", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("step_inputs")
