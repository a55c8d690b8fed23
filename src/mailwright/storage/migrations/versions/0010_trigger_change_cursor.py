"""Email triggers on mailboxes that report changes (Microsoft Graph's delta queries) keep a cursor.

The cursor (a delta link) is where the trigger's next look starts; triggers on IMAP keep
their UID mark as before, and Graph triggers move from their UID mark to a cursor on
their next look.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trigger_states") as batch:
        batch.add_column(sa.Column("change_cursor", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trigger_states") as batch:
        batch.drop_column("change_cursor")
