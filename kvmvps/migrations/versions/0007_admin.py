"""the admin area: plans and images hidden from the shop, hosts in maintenance

Revision ID: 0007_admin
Revises: 0006_hostagent

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007_admin"
down_revision: str | Sequence[str] | None = "0006_hostagent"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    for table in ("plans", "images"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("hidden", sa.Boolean(), server_default="false", nullable=False)
            )
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("maintenance", sa.Boolean(), server_default="false", nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("maintenance")
    for table in ("images", "plans"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("hidden")
