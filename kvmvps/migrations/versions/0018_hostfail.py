"""hostfail: a failed build whose host stopped answering waits for its rollback

Revision ID: 0018_hostfail
Revises: 0017_snapshots

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0018_hostfail"
down_revision: str | Sequence[str] | None = "0017_snapshots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("vps", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("rollback_pending", sa.Boolean(), server_default="false", nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("vps", schema=None) as batch_op:
        batch_op.drop_column("rollback_pending")
