"""tenants: an operator's suspension, per-customer quotas, sign-up invitations

Revision ID: 0003_tenants
Revises: 0002

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003_tenants"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUOTAS = ("quota_vps", "quota_vcpus", "quota_memory_mib", "quota_disk_gib")


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("vps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("suspended_reason", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("suspended_by", sa.String(length=300), nullable=True))
    with op.batch_alter_table("users", schema=None) as batch_op:
        for name in QUOTAS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))
    op.create_table(
        "invitations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("created_by", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["used_by_id"], ["users.id"], name=op.f("fk_invitations_used_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_invitations_code_hash")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("invitations")
    with op.batch_alter_table("users", schema=None) as batch_op:
        for name in reversed(QUOTAS):
            batch_op.drop_column(name)
    with op.batch_alter_table("vps", schema=None) as batch_op:
        batch_op.drop_column("suspended_by")
        batch_op.drop_column("suspended_at")
        batch_op.drop_column("suspended_reason")
