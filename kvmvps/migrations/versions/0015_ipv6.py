"""IPv6: a /64 per NAT network, a fixed IPv6 address per lease and VPS

Revision ID: 0015_ipv6
Revises: 0014_allowance

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0015_ipv6"
down_revision: str | Sequence[str] | None = "0014_allowance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ipv6_prefix", sa.String(length=43), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_networks_ipv6_prefix"), ["ipv6_prefix"])
    with op.batch_alter_table("ip_leases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ipv6", sa.String(length=39), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_ip_leases_network_id_ipv6"), ["network_id", "ipv6"]
        )
    with op.batch_alter_table("vps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ipv6", sa.String(length=39), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("vps", schema=None) as batch_op:
        batch_op.drop_column("ipv6")
    with op.batch_alter_table("ip_leases", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_ip_leases_network_id_ipv6"), type_="unique")
        batch_op.drop_column("ipv6")
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_networks_ipv6_prefix"), type_="unique")
        batch_op.drop_column("ipv6_prefix")
