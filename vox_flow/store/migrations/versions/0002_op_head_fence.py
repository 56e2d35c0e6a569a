"""The op-log head remembers the highest fencing token a control-service leader wrote with.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: no leader has written yet (and writes without a token never set it).
    op.add_column("op_head", sa.Column("fence", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("op_head") as batch:
        batch.drop_column("fence")
