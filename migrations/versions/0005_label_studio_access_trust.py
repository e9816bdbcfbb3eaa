"""Whether a project's stored Label Studio access (URL and token) came through an authenticated
path (`annotator ls connect`, or /setup behind basic auth). Only trusted access is exempt from the
media address policy, and an unauthenticated /setup never replaces stored access.

Projects that `ls connect` wired before this revision have a webhook secret: their access is
marked trusted; access stored by an unauthenticated /setup is not.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("ls_access_trusted", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(sa.text("UPDATE projects SET ls_access_trusted = :yes WHERE webhook_secret IS NOT NULL")
               .bindparams(yes=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("ls_access_trusted")
