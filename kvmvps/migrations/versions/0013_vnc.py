"""console tickets name their kind: the serial console or the graphical (VNC) one

Revision ID: 0013_vnc
Revises: 0012_console

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013_vnc"
down_revision: str | Sequence[str] | None = "0012_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("console_tickets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=8), server_default="serial", nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("console_tickets", schema=None) as batch_op:
        batch_op.drop_column("kind")
