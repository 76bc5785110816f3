"""delivery: the (issue, status) index also orders by id, so a claim reads only the rows it takes

A claim asks for the first due deliveries of an issue in id order. With an index on (issue_id, status)
alone PostgreSQL sorts every queued row of the issue for each claim (SQLite's index carries the rowid
already), which made a million-subscriber send slower with every batch.

Revision ID: 0005_delivery_claim_index
Revises: 0004_ingest
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_delivery_claim_index"
down_revision: str | None = "0004_ingest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_issue_status")
        batch_op.create_index("ix_delivery_issue_status", ["issue_id", "status", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_issue_status")
        batch_op.create_index("ix_delivery_issue_status", ["issue_id", "status"], unique=False)
