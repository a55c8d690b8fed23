"""Roles for API tokens and web sessions (existing ones become admins), and the audit log.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every token was an admin before roles existed: they stay admins, so nothing breaks.
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("role", sa.String(20), nullable=False, server_default="admin"))
    with op.batch_alter_table("web_sessions") as batch:
        batch.add_column(sa.Column("role", sa.String(20), nullable=False, server_default="admin"))
        batch.add_column(sa.Column("token_name", sa.String(200), nullable=True))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("face", sa.String(20), nullable=False),
        sa.Column("actor_type", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("object_type", sa.String(30), nullable=False),
        sa.Column("object_id", sa.String(36), nullable=False),
        sa.Column("object_name", sa.String(300), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", "audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("web_sessions") as batch:
        batch.drop_column("token_name")
        batch.drop_column("role")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("role")
