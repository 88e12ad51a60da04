"""token lifecycle: api_tokens expiry, revocation and last use; the generated admin token stored hashed

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00

"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_ADMIN_SECRET = "admin_token"  # the plain generated admin token, as 0001-0002 stored it
ADMIN_SECRET = "admin_token_sha256"  # auth.ADMIN_SECRET: only its SHA-256


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    # A generated admin token stored in plain: keep it working, but keep only its hash.
    conn = op.get_bind()
    secrets = sa.table("service_secrets", sa.column("id", sa.Uuid()), sa.column("name"), sa.column("value"))
    rows = conn.execute(sa.select(secrets.c.id, secrets.c.value).where(secrets.c.name == OLD_ADMIN_SECRET)).all()
    for row_id, value in rows:
        digest = hashlib.sha256(value.encode()).hexdigest()
        conn.execute(sa.update(secrets).where(secrets.c.id == row_id).values(name=ADMIN_SECRET, value=digest))


def downgrade() -> None:
    """Downgrade schema.

    Tokens that were revoked or carry an expiry are deleted first: without these columns they
    would work again, and forever.
    The hashed admin token cannot be turned back into a plain one; it is deleted, and the
    next start of the older version generates (and prints) a new one.
    """
    conn = op.get_bind()
    tokens = sa.table("api_tokens", sa.column("revoked_at"), sa.column("expires_at"))
    conn.execute(sa.delete(tokens).where(sa.or_(tokens.c.revoked_at.is_not(None), tokens.c.expires_at.is_not(None))))
    secrets = sa.table("service_secrets", sa.column("name"))
    conn.execute(sa.delete(secrets).where(secrets.c.name == ADMIN_SECRET))
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("expires_at")
