"""hosts whose own agent runs their jobs and host-local work; hosts that stopped answering

Revision ID: 0006_hostagent
Revises: 0005_accounts

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006_hostagent"
down_revision: str | Sequence[str] | None = "0005_accounts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("agent", sa.Boolean(), server_default="false", nullable=False)
        )
        batch_op.add_column(sa.Column("down_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("down_since")
        batch_op.drop_column("agent")
