"""The records of work: backups, snapshots, the audit log, jobs, workers and locks."""

from __future__ import annotations

import uuid as uuidlib
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from kvmvps.models.base import Base, utcnow


class BackupState:
    QUEUED = "queued"
    READY = "ready"
    FAILED = "failed"

    ALL = (QUEUED, READY, FAILED)


class Backup(Base):
    """A full copy of a VPS's disk in the backup directory: ``<uuid>.qcow2`` + ``<uuid>.json``.

    The row outlives its VPS (a deleted VPS's backups may be kept), so it
    names the VPS by uuid and keeps its owner and hostname. File names are
    made from the backup's own uuid only, never from user text.
    """

    __tablename__ = "backups"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuidlib.uuid4()))
    vps_uuid: Mapped[str] = mapped_column(String(36), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    hostname: Mapped[str] = mapped_column(String(63))
    image_name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="manual")  # or "scheduled"
    state: Mapped[str] = mapped_column(String(16), default=BackupState.QUEUED)
    consistency: Mapped[str | None] = mapped_column(String(16))  # "stopped", "crash", "frozen"
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    virtual_bytes: Mapped[int | None] = mapped_column(BigInteger)
    host_key: Mapped[str | None] = mapped_column(Text)
    host_key_fingerprint: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SnapshotState:
    QUEUED = "queued"
    READY = "ready"
    FAILED = "failed"

    ALL = (QUEUED, READY, FAILED)


class Snapshot(Base):
    """An internal qcow2 snapshot of a VPS's disk (with its memory when it ran).

    libvirt knows it as ``snap-<uuid>``, made from the row's own uuid; the
    customer's ``label`` is display text only. The rows go with their VPS.
    """

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuidlib.uuid4()))
    vps_id: Mapped[int] = mapped_column(ForeignKey("vps.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default=SnapshotState.QUEUED)
    with_memory: Mapped[bool | None] = mapped_column(Boolean)  # taken while it ran
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    """Who did what to which object, when, and how it ended."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300), default="")
    result: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)


class JobState:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    UNFINISHED = (QUEUED, RUNNING)
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED)


class Job(Base):
    """A durable unit of work (an order, a power action...) that a worker runs."""

    __tablename__ = "jobs"
    # the claim's scan: queued jobs in id order, never the long tail of finished ones
    __table_args__ = (
        Index(
            "ix_jobs_queued",
            "id",
            postgresql_where=text("state = 'queued'"),
            sqlite_where=text("state = 'queued'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuidlib.uuid4()))
    kind: Mapped[str] = mapped_column(String(32))
    vps_uuid: Mapped[str | None] = mapped_column(String(36), index=True)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    step: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[str] = mapped_column(Text, default="{}")
    error: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(300), default="")
    worker: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Worker(Base):
    """A running worker process and its last sign of life."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Lock(Base):
    """A named, expiring lock shared by every process (e.g. one reconcile at a time)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
