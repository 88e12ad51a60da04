"""hold limits: a user's live holds and past claims on a slot, indexed

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 05:05:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index("ix_holds_slot_id")
        batch_op.create_index("ix_holds_slot_id_user_id", ["slot_id", "user_id"], unique=False)
        batch_op.create_index(
            "ix_holds_user_id_expires_at",
            ["user_id", "expires_at"],
            unique=False,
            sqlite_where=sa.text("status = 'HOLD'"),
            postgresql_where=sa.text("status = 'HOLD'"),
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index("ix_holds_user_id_expires_at")
        batch_op.drop_index("ix_holds_slot_id_user_id")
        batch_op.create_index("ix_holds_slot_id", ["slot_id"], unique=False)
