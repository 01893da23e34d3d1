"""Metering: what each VPS used.

Its last raw counters, its samples and their hourly sums, its monthly
transfer; and the gauges a worker found last, for ``/metrics``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from kvmvps.models.base import Base, utcnow


class MetricCounter(Base):
    """A VPS's last raw counters from libvirt and its running totals since it was made.

    ``instance`` is the libvirt domain id the raw counters belong to: a guest
    started again has a new one, and its counters began again from zero.
    """

    __tablename__ = "metric_counters"

    vps_id: Mapped[int] = mapped_column(ForeignKey("vps.id", ondelete="CASCADE"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    instance: Mapped[int] = mapped_column(BigInteger)
    raw: Mapped[str] = mapped_column(Text)  # JSON: counter name -> last raw value
    total: Mapped[str] = mapped_column(Text)  # JSON: counter name -> total since created


class MetricSample(Base):
    """What a VPS used in one sampling interval (increments, never raw counters); 24 h kept."""

    __tablename__ = "metric_samples"

    id: Mapped[int] = mapped_column(primary_key=True)
    vps_id: Mapped[int] = mapped_column(ForeignKey("vps.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    seconds: Mapped[float] = mapped_column(Float)
    cpu_ns: Mapped[int] = mapped_column(BigInteger)
    memory_kib: Mapped[int] = mapped_column(BigInteger)
    rx_bytes: Mapped[int] = mapped_column(BigInteger)
    tx_bytes: Mapped[int] = mapped_column(BigInteger)
    rx_packets: Mapped[int] = mapped_column(BigInteger)
    tx_packets: Mapped[int] = mapped_column(BigInteger)
    read_bytes: Mapped[int] = mapped_column(BigInteger)
    write_bytes: Mapped[int] = mapped_column(BigInteger)
    read_reqs: Mapped[int] = mapped_column(BigInteger)
    write_reqs: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_metric_samples_vps_at", "vps_id", "at"),)


class MetricHourly(Base):
    """The samples of one VPS in one hour, summed (memory: the highest); 90 days kept."""

    __tablename__ = "metric_hourly"

    vps_id: Mapped[int] = mapped_column(ForeignKey("vps.id", ondelete="CASCADE"), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True, index=True)
    seconds: Mapped[float] = mapped_column(Float)
    cpu_ns: Mapped[int] = mapped_column(BigInteger)
    memory_kib: Mapped[int] = mapped_column(BigInteger)
    rx_bytes: Mapped[int] = mapped_column(BigInteger)
    tx_bytes: Mapped[int] = mapped_column(BigInteger)
    rx_packets: Mapped[int] = mapped_column(BigInteger)
    tx_packets: Mapped[int] = mapped_column(BigInteger)
    read_bytes: Mapped[int] = mapped_column(BigInteger)
    write_bytes: Mapped[int] = mapped_column(BigInteger)
    read_reqs: Mapped[int] = mapped_column(BigInteger)
    write_reqs: Mapped[int] = mapped_column(BigInteger)


class TransferMonth(Base):
    """A VPS's transfer (in + out bytes) in one calendar month (UTC), and what it led to."""

    __tablename__ = "transfer_months"

    vps_id: Mapped[int] = mapped_column(ForeignKey("vps.id", ondelete="CASCADE"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # "2026-11"
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # 0, 80 or 100: the highest share of the allowance the customer was told about
    notified_pct: Mapped[int] = mapped_column(Integer, default=0)
    # "throttled" or "suspended" while over the allowance and acted upon
    enforced: Mapped[str | None] = mapped_column(String(16))


class MetricGauge(Base):
    """A figure a worker found last (e.g. a reconcile pass's drift), for ``/metrics``."""

    __tablename__ = "metric_gauges"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
