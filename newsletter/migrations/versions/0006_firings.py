"""firings: the scheduler's guard is the firing, not the period; issues keep the copy they were sent as

An issue no longer belongs to a period (``issue.period_key`` goes): an editor may prepare the next issue at
any time, and the scheduler's "once only" rule is kept by ``firing.due_at`` (one row per scheduled time of
the cron). Each ``scheduled_period`` row becomes the firing at its ``due_at`` with the same outcome and
issue; its detail, which repeated the period key ("2026-W48: MISSED: ..."), is rewritten to say which period
it was. Issues keep their number and span (``period_start``/``period_end``). ``issue_copy`` holds an issue's
rendered, non-personal HTML and text as first sent; issues sent before this upgrade get theirs on the first
visit to their archive page (rendering needs the config and templates, which a migration does not have).

Revision ID: 0006_firings
Revises: 0005_delivery_claim_index
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_firings"
down_revision: str | None = "0005_delivery_claim_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTCOMES = ("issued", "quiet", "empty", "no_recipients", "missed")
WHAT_HAPPENED = {
    "issued": "its issue was prepared",
    "quiet": "the quiet note went out",
    "empty": "nothing new was waiting",
    "no_recipients": "nobody was subscribed",
    "missed": "the scheduler was not running",
}


def upgrade() -> None:
    op.create_table(
        "issue_copy",
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("html", sa.LargeBinary(), nullable=False),
        sa.Column("text", sa.LargeBinary(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["issue_id"], ["issue.id"]),
        sa.PrimaryKeyConstraint("issue_id"),
    )
    op.create_table(
        "firing",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.Enum(*OUTCOMES, name="firingoutcome", native_enum=False, length=20), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["issue_id"], ["issue.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("due_at"),
    )
    happened = " ".join(f"WHEN '{outcome}' THEN '{text}'" for outcome, text in WHAT_HAPPENED.items())
    # Two periods recorded for one firing (possible only after the cadence was changed): the first counts.
    op.execute(
        "INSERT INTO firing (due_at, outcome, recorded_at, issue_id, detail) "
        "SELECT due_at, outcome, recorded_at, issue_id, "
        f"'as period ' || period_key || ': ' || CASE outcome {happened} ELSE outcome END "
        "FROM scheduled_period WHERE id IN (SELECT MIN(id) FROM scheduled_period GROUP BY due_at)"
    )
    op.drop_table("scheduled_period")
    with op.batch_alter_table("issue", schema=None) as batch_op:
        batch_op.drop_column("period_key")


def downgrade() -> None:
    with op.batch_alter_table("issue", schema=None) as batch_op:
        batch_op.add_column(sa.Column("period_key", sa.String(length=32), nullable=True))
    op.execute("UPDATE issue SET period_key = 'issue-' || CAST(number AS VARCHAR(12))")
    with op.batch_alter_table("issue", schema=None) as batch_op:
        batch_op.alter_column("period_key", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_unique_constraint("uq_issue_period_key", ["period_key"])
    op.create_table(
        "scheduled_period",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("period_key", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.Enum(*OUTCOMES, name="periodoutcome", native_enum=False, length=20), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["issue_id"], ["issue.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("period_key"),
    )
    op.execute(
        "INSERT INTO scheduled_period (period_key, outcome, due_at, recorded_at, issue_id, detail) "
        "SELECT 'firing-' || CAST(id AS VARCHAR(12)), outcome, due_at, recorded_at, issue_id, detail FROM firing"
    )
    op.drop_table("firing")
    op.drop_table("issue_copy")
