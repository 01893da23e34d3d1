"""imagecache: an image's own TCG code-cache size for its VPSes (None: the setting)

Revision ID: 0019_imagecache
Revises: 0018_hostfail

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0019_imagecache"
down_revision: str | Sequence[str] | None = "0018_hostfail"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tcg_tb_cache_mib", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("tcg_tb_cache_mib")
