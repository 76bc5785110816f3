"""editorial: the editor's choices for an issue (item order, lead item, note, subject), kept on its row

The next issue is saved as a ``draft`` row once an editor makes a first choice for it (the desk, or
``digest order / note / subject``); preparing it promotes that row, so its number and the choices carry
over. Every existing issue gets no choices: its items keep the default order. ``version`` counts the
choices made (two editors never overwrite each other unknowingly), ``undo`` the choices before each of the
last few changes.

Revision ID: 0007_editorial
Revises: 0006_firings
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_editorial"
down_revision: str | None = "0006_firings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("issue", schema=None) as batch_op:
        batch_op.add_column(sa.Column("note", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("subject_override", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("item_order", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column("lead_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("undo", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    # A draft is not an issue to the older code (no deliveries, a state it does not know): its choices go.
    op.execute("DELETE FROM issue WHERE status = 'draft'")
    with op.batch_alter_table("issue", schema=None) as batch_op:
        batch_op.drop_column("undo")
        batch_op.drop_column("version")
        batch_op.drop_column("lead_id")
        batch_op.drop_column("item_order")
        batch_op.drop_column("subject_override")
        batch_op.drop_column("note")
