"""Label Studio access per project (URL and token from /setup), shared by every worker.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("ls_url", sa.String(1000), nullable=True))
        batch.add_column(sa.Column("ls_access_token", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("ls_access_token")
        batch.drop_column("ls_url")
