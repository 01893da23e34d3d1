"""console tickets: one-use, short-lived passes to a VPS's console, stored hashed

Revision ID: 0012_console
Revises: 0011_backups

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012_console"
down_revision: str | Sequence[str] | None = "0011_backups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "console_tickets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("vps_uuid", sa.String(length=36), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_tickets")),
        sa.UniqueConstraint("ticket_hash", name=op.f("uq_console_tickets_ticket_hash")),
    )
    with op.batch_alter_table("console_tickets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_console_tickets_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("console_tickets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_console_tickets_expires_at"))
    op.drop_table("console_tickets")
