"""rescue mode: images marked as rescue systems; a VPS's rescue image and host key

Revision ID: 0009_rescue
Revises: 0008_account

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009_rescue"
down_revision: str | Sequence[str] | None = "0008_account"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("rescue", sa.Boolean(), server_default="false", nullable=False)
        )
    with op.batch_alter_table("vps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rescue_image_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("rescue_host_key", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("rescue_host_key_fingerprint", sa.String(length=128), nullable=True)
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_vps_rescue_image_id_images"), "images", ["rescue_image_id"], ["id"]
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("vps", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_vps_rescue_image_id_images"), type_="foreignkey")
        batch_op.drop_column("rescue_host_key_fingerprint")
        batch_op.drop_column("rescue_host_key")
        batch_op.drop_column("rescue_image_id")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("rescue")
