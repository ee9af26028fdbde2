"""Initial schema: pools, clients, snapshots, packs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("uuid", sa.String(), nullable=False, index=True),
        sa.Column("backend", sa.String(), nullable=False),
        sa.Column("location", sa.String(), nullable=False),
        sa.Column("encryption", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "clients",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=True),
        sa.Column("transport", sa.String(), nullable=False),
        sa.Column("config_digest", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("pool_uuid", sa.String(), nullable=False, index=True),
        sa.Column("client", sa.String(), nullable=False, index=True),
        sa.Column("time", sa.String(), nullable=False),
        sa.Column("tree", sa.String(), nullable=False),
        sa.Column("paths", sa.Text(), nullable=False),
        sa.Column("counters", sa.Text(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
    )
    op.create_table(
        "packs",
        sa.Column("pool_uuid", sa.String(), primary_key=True),
        sa.Column("pack_id", sa.String(), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("last_verified", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    for table in ("packs", "snapshots", "clients", "pools"):
        op.drop_table(table)
