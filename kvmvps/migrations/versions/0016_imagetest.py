"""images that test themselves: each test's result and timings; a failed image is hidden

Revision ID: 0016_imagetest
Revises: 0015_ipv6

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0016_imagetest"
down_revision: str | Sequence[str] | None = "0015_ipv6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "image_tests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("job_uuid", sa.String(length=36), nullable=True),
        sa.Column("vps_uuid", sa.String(length=36), nullable=True),
        sa.Column("actor", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("checks", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_image_tests_image_id_images")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_tests")),
        sa.UniqueConstraint("uuid", name=op.f("uq_image_tests_uuid")),
    )
    with op.batch_alter_table("image_tests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_tests_image_id"), ["image_id"], unique=False)
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("test_failed", sa.Boolean(), server_default="false", nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("test_failed")
    with op.batch_alter_table("image_tests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_tests_image_id"))
    op.drop_table("image_tests")
