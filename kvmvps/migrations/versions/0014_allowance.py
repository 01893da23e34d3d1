"""monthly transfer enforcement (the speed a VPS is held to over its allowance); a partial
index of queued jobs for the claim

Revision ID: 0014_allowance
Revises: 0013_vnc

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0014_allowance"
down_revision: str | Sequence[str] | None = "0013_vnc"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("vps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("throttle_kibps", sa.Integer(), nullable=True))
    op.create_index(
        "ix_jobs_queued",
        "jobs",
        ["id"],
        unique=False,
        postgresql_where=sa.text("state = 'queued'"),
        sqlite_where=sa.text("state = 'queued'"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(
        "ix_jobs_queued",
        table_name="jobs",
        postgresql_where=sa.text("state = 'queued'"),
        sqlite_where=sa.text("state = 'queued'"),
    )
    with op.batch_alter_table("vps", schema=None) as batch_op:
        batch_op.drop_column("throttle_kibps")
