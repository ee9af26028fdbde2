"""Control-plane state: state metadata, last-applied resources, the state lock, users,
and clients that are renamed or retired.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "state_meta",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "resources",
        sa.Column("address", sa.String(), primary_key=True),
        sa.Column("type", sa.String(), nullable=False, index=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("applied", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "state_lock",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("lock_id", sa.String(), nullable=False),
        sa.Column("operation", sa.String(), nullable=False),
        sa.Column("who", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("host_id", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("policy", sa.String(), nullable=True))
        batch.add_column(sa.Column("former_names", sa.Text(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("retired_at")
        batch.drop_column("former_names")
        batch.drop_column("policy")
    for table in ("users", "state_lock", "resources", "state_meta"):
        op.drop_table(table)
