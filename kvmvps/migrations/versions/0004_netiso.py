"""network isolation per network, resource limits per plan

Revision ID: 0004_netiso
Revises: 0003_tenants

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004_netiso"
down_revision: str | Sequence[str] | None = "0003_tenants"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG = ("disk_bytes_sec", "disk_read_bytes_sec", "disk_write_bytes_sec")
SMALL = (
    "cpu_shares",
    "cpu_quota_pct",
    "disk_iops",
    "disk_read_iops",
    "disk_write_iops",
    "net_in_kibps",
    "net_in_peak_kibps",
    "net_in_burst_kib",
    "net_out_kibps",
    "net_out_peak_kibps",
    "net_out_burst_kib",
)


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("allow_guest_traffic", sa.Boolean(), server_default="false", nullable=False)
        )
    with op.batch_alter_table("plans", schema=None) as batch_op:
        for name in SMALL[:2]:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))
        for name in BIG:
            batch_op.add_column(sa.Column(name, sa.BigInteger(), nullable=True))
        for name in SMALL[2:]:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("plans", schema=None) as batch_op:
        for name in (*SMALL, *BIG):
            batch_op.drop_column(name)
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.drop_column("allow_guest_traffic")
