"""backups of VPS disks; plans' backup slots, schedule and snapshot limit

Revision ID: 0011_backups
Revises: 0010_metering

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011_backups"
down_revision: str | Sequence[str] | None = "0010_metering"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "backups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("vps_uuid", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.String(length=63), nullable=False),
        sa.Column("image_name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("consistency", sa.String(length=16), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("virtual_bytes", sa.BigInteger(), nullable=True),
        sa.Column("host_key", sa.Text(), nullable=True),
        sa.Column("host_key_fingerprint", sa.String(length=128), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_backups_owner_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backups")),
        sa.UniqueConstraint("uuid", name=op.f("uq_backups_uuid")),
    )
    with op.batch_alter_table("backups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_backups_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_backups_vps_uuid"), ["vps_uuid"], unique=False)
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("backup_slots", sa.Integer(), server_default="1", nullable=False)
        )
        batch_op.add_column(sa.Column("backup_schedule", sa.String(length=8), nullable=True))
        batch_op.add_column(
            sa.Column("backup_keep", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("snapshot_limit", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("plans", schema=None) as batch_op:
        for name in ("snapshot_limit", "backup_keep", "backup_schedule", "backup_slots"):
            batch_op.drop_column(name)
    with op.batch_alter_table("backups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_backups_vps_uuid"))
        batch_op.drop_index(batch_op.f("ix_backups_owner_id"))
    op.drop_table("backups")
