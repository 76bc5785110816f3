"""clicks: counts per item link of an issue, a subscriber's own clicks (opt-in), the latest delivery in one seek

``click_count`` holds how often each item link of an issue was clicked, without anything that could name who
clicked; ``subscriber_click`` one row per click of a known subscriber, kept only with
``tracking.per_subscriber``. The index on ``delivery (issue_id, sent_at)`` lets the scanner filter find the
delivery of an issue just before a click without reading the issue's deliveries.

Revision ID: 0008_clicks
Revises: 0007_editorial
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_clicks"
down_revision: str | None = "0007_editorial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "click_count",
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("url_hash", sa.String(length=16), nullable=False),
        sa.Column("clicks", sa.Integer(), nullable=False),
        sa.Column("human_clicks", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["issue_id"], ["issue.id"]),
        sa.PrimaryKeyConstraint("issue_id", "item_id", "url_hash"),
    )
    op.create_table(
        "subscriber_click",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("url_hash", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("likely_human", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["issue_id"], ["issue.id"]),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("subscriber_click", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subscriber_click_subscriber_id"), ["subscriber_id"], unique=False)
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.create_index("ix_delivery_issue_sent", ["issue_id", "sent_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_issue_sent")
    op.drop_table("subscriber_click")
    op.drop_table("click_count")
