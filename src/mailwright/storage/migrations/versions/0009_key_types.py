"""Account-key types: each key's plain fields, its other secrets, and an OAuth2 token cache.

Existing keys are Email Credentials; their username, sender and password stay where they were.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account_keys") as batch:
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("secrets_encrypted", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("token_cache_encrypted", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("account_keys") as batch:
        batch.drop_column("token_cache_encrypted")
        batch.drop_column("secrets_encrypted")
        batch.drop_column("settings")
