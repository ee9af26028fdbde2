"""Per-pool totals of new data before and after compression (compression ratio).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pools") as batch:
        batch.add_column(
            sa.Column("bytes_raw", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("bytes_stored", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("pools") as batch:
        batch.drop_column("bytes_stored")
        batch.drop_column("bytes_raw")
