"""ingest: summary subtitle/type/paywall and the editor's exclude flag; the feed state table

Revision ID: 0004_ingest
Revises: 0003_scheduler
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_ingest"
down_revision: str | None = "0003_scheduler"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("summary", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subtitle", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("article_type", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("paywalled", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("excluded", sa.Boolean(), nullable=False, server_default=sa.false()))

    op.create_table(
        "feedstate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("etag", sa.String(), nullable=True),
        sa.Column("last_modified", sa.String(), nullable=True),
        sa.Column("last_fetch_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.String(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("items_seen", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("url"),
    )


def downgrade() -> None:
    op.drop_table("feedstate")
    with op.batch_alter_table("summary", schema=None) as batch_op:
        batch_op.drop_column("excluded")
        batch_op.drop_column("paywalled")
        batch_op.drop_column("article_type")
        batch_op.drop_column("subtitle")
