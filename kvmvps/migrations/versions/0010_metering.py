"""metering: samples, hourly rollups, running counters, monthly transfer; plans' allowance

Revision ID: 0010_metering
Revises: 0009_rescue

"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010_metering"
down_revision: str | Sequence[str] | None = "0009_rescue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USAGE = (
    "cpu_ns",
    "memory_kib",
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "read_bytes",
    "write_bytes",
    "read_reqs",
    "write_reqs",
)


def _vps_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["vps_id"], ["vps.id"], name=op.f(f"fk_{table}_vps_id_vps"), ondelete="CASCADE"
    )


def _usage() -> list[sa.Column[Any]]:
    return [
        sa.Column("seconds", sa.Float(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in USAGE),
    ]


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "metric_counters",
        sa.Column("vps_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("instance", sa.BigInteger(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("total", sa.Text(), nullable=False),
        _vps_fk("metric_counters"),
        sa.PrimaryKeyConstraint("vps_id", name=op.f("pk_metric_counters")),
    )
    op.create_table(
        "metric_samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vps_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        *_usage(),
        _vps_fk("metric_samples"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metric_samples")),
    )
    op.create_index(op.f("ix_metric_samples_at"), "metric_samples", ["at"])
    op.create_index("ix_metric_samples_vps_at", "metric_samples", ["vps_id", "at"])
    op.create_table(
        "metric_hourly",
        sa.Column("vps_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        *_usage(),
        _vps_fk("metric_hourly"),
        sa.PrimaryKeyConstraint("vps_id", "hour", name=op.f("pk_metric_hourly")),
    )
    op.create_index(op.f("ix_metric_hourly_hour"), "metric_hourly", ["hour"])
    op.create_table(
        "transfer_months",
        sa.Column("vps_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("notified_pct", sa.Integer(), nullable=False),
        sa.Column("enforced", sa.String(length=16), nullable=True),
        _vps_fk("transfer_months"),
        sa.PrimaryKeyConstraint("vps_id", "month", name=op.f("pk_transfer_months")),
    )
    op.create_table(
        "metric_gauges",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_metric_gauges")),
    )
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transfer_gib", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("over_limit", sa.String(length=16), server_default="throttle", nullable=False)
        )
        batch_op.add_column(
            sa.Column("over_limit_kibps", sa.Integer(), server_default="128", nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("over_limit_kibps")
        batch_op.drop_column("over_limit")
        batch_op.drop_column("transfer_gib")
    op.drop_table("metric_gauges")
    op.drop_table("transfer_months")
    op.drop_index(op.f("ix_metric_hourly_hour"), table_name="metric_hourly")
    op.drop_table("metric_hourly")
    op.drop_index("ix_metric_samples_vps_at", table_name="metric_samples")
    op.drop_index(op.f("ix_metric_samples_at"), table_name="metric_samples")
    op.drop_table("metric_samples")
    op.drop_table("metric_counters")
