"""slot_events: the change log behind the live slot board and hold histories

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 05:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "'HELD', 'EXTENDED', 'CONFIRMED', 'RELEASED', 'CANCELLED', 'LAPSED', 'SLOT_CREATED', 'SLOT_DELETED'"


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "slot_events",
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("slot_id", sa.Uuid(), nullable=False),
        sa.Column("room_id", sa.Uuid(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hold_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("held_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"kind IN ({KINDS})", name=op.f("ck_slot_events_kind_known")),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_slot_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_slot_events_hold_id", "slot_events", ["hold_id"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_slot_events_hold_id", table_name="slot_events")
    op.drop_table("slot_events")
