"""Webhook trust: a per-project webhook secret, and a pending request to pull the project from
Label Studio (an unauthenticated event is only a hint to do that).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.String(200), nullable=True))
        batch.add_column(sa.Column("sync_requested_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("sync_requested_at")
        batch.drop_column("webhook_secret")
