"""Several classification controls per project: labels and model versions carry the control they
belong to (NULL: the project's primary control, which is every row written before). Whisper
transcripts, cached by audio content and model.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("labels", "model_versions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("control", sa.String(200), nullable=True))
    op.create_table(
        "transcripts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("audio_sha", sa.String(64), nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("audio_sha", "model"),
    )


def downgrade() -> None:
    op.drop_table("transcripts")
    for table in ("labels", "model_versions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("control")
