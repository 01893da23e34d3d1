"""port forwards, HTTP names, a host's public address, a plan's extra forwards

Revision ID: 0002
Revises: 0001

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("public_address", sa.String(length=39), nullable=True))
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("extra_forwards", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_table(
        "forwards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(length=3), nullable=False),
        sa.Column("public_port", sa.Integer(), nullable=False),
        sa.Column("public_address", sa.String(length=39), nullable=True),
        sa.Column("vps_id", sa.Integer(), nullable=True),
        sa.Column("guest_port", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_forwards_host_id_hosts")),
        sa.ForeignKeyConstraint(["vps_id"], ["vps.id"], name=op.f("fk_forwards_vps_id_vps")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forwards")),
        sa.UniqueConstraint(
            "host_id",
            "protocol",
            "public_port",
            name=op.f("uq_forwards_host_id_protocol_public_port"),
        ),
    )
    with op.batch_alter_table("forwards", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_forwards_vps_id"), ["vps_id"], unique=False)

    op.create_table(
        "http_names",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("vps_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["vps_id"], ["vps.id"], name=op.f("fk_http_names_vps_id_vps")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_http_names")),
        sa.UniqueConstraint("name", name=op.f("uq_http_names_name")),
    )
    with op.batch_alter_table("http_names", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_http_names_vps_id"), ["vps_id"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("http_names", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_http_names_vps_id"))
    op.drop_table("http_names")
    with op.batch_alter_table("forwards", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_forwards_vps_id"))
    op.drop_table("forwards")
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("extra_forwards")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("public_address")
