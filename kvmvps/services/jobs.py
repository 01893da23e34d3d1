"""Durable jobs: queued in the database, claimed atomically, leased, finished once.

A worker claims a job by moving it from ``queued`` to ``running`` in one
transaction and holds a lease that it renews while it works. A job whose
lease runs out (its worker died) is queued again for another worker, until
its attempts are used up.

Claiming is safe with any number of workers: on PostgreSQL candidate rows
are locked with ``FOR UPDATE SKIP LOCKED``; on SQLite every write
transaction starts with ``BEGIN IMMEDIATE`` (see :mod:`kvmvps.db`), so claims
are serialised.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict, overload

from sqlalchemy import (
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from kvmvps import validation
from kvmvps.db import rowcount
from kvmvps.errors import NotFound
from kvmvps.models import Host, Job, JobState, Vps, Worker
from kvmvps.services import Context, failures

BUILD_KINDS = ("create", "reinstall")
KINDS = BUILD_KINDS + (
    "start",
    "shutdown",
    "destroy",
    "reboot",
    "suspend",
    "resume",
    "delete",
    "password_reset",
    "edge",  # write a host's iptables rules and proxy (run by that host's agent)
    "rescue",
    "unrescue",
    "backup",
    "restore",
    "image_test",  # an image's self-test (no VPS of its own until it orders one)
    "snapshot",
    "snapshot_revert",
    "snapshot_delete",
    "resize",
    "migrate",  # move a VPS to another host (params: to, live)
)
MAX_ATTEMPTS = 3


def now() -> datetime:
    return datetime.now(UTC)


@overload
def aware(moment: datetime) -> datetime: ...
@overload
def aware(moment: datetime | None) -> datetime | None: ...
def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were stored as UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


@dataclass(frozen=True)
class Claimed:
    """What a worker needs to run a job it claimed."""

    id: int
    uuid: str
    kind: str
    vps_uuid: str | None
    params: dict[str, Any]
    attempts: int
    started_at: datetime
    host_id: int | None = None


def enqueue(
    session: Session,
    kind: str,
    vps_uuid: str | None,
    host_id: int | None,
    actor: str = "",
    **params: Any,
) -> Job:
    """Add a job inside the caller's transaction."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    job = Job(
        kind=kind,
        vps_uuid=vps_uuid,
        host_id=host_id,
        actor=actor,
        params=json.dumps(params, sort_keys=True),
    )
    session.add(job)
    session.flush()
    return job


def claimed_from_row(job: Any, started: datetime) -> Claimed:
    """A claimed job as a worker sees it, from a row of the jobs table or a Job.

    ``started`` stands in for a start time the row lacks.
    """
    return Claimed(
        id=job.id,
        uuid=job.uuid,
        kind=job.kind,
        vps_uuid=job.vps_uuid,
        params=json.loads(job.params or "{}"),
        attempts=job.attempts,
        started_at=aware(job.started_at or started),
        host_id=job.host_id,
    )


def request_edge(session: Session, host: Host) -> None:
    """Ask ``host``'s agent to rewrite its rules and proxy (once, however often asked)."""
    queued = session.scalar(
        select(Job.id)
        .where(Job.kind == "edge", Job.host_id == host.id, Job.state == JobState.QUEUED)
        .limit(1)
    )
    if queued is None:
        enqueue(session, "edge", None, host.id, actor="kvmvps")


AGENT_PREFIX = "agent:"


def agent_worker_name(host: str, name: str) -> str:
    """The worker name of an agent of ``host``."""
    return f"{AGENT_PREFIX}{host}:{name}"


def agent_of(ctx: Context, job_uuid: str) -> str | None:
    """The host whose agent must run the job, when that is not this process; else None."""
    with ctx.db.session() as s:
        name = s.scalar(
            select(Host.name)
            .join(Job, Job.host_id == Host.id)
            .where(Job.uuid == job_uuid, Host.agent)
        )
    return None if name is None or name == ctx.settings.agent_host else name


def live_agents(ctx: Context, host: str) -> list[str]:
    """Live agents of ``host``."""
    return [w for w in live_workers(ctx) if w.startswith(agent_worker_name(host, ""))]


def renew_lease(ctx: Context, job_id: int, worker: str) -> bool:
    """Extend the lease; False when the job is no longer ours."""
    expires = now() + timedelta(seconds=ctx.settings.job_lease_seconds)
    with ctx.db.session() as s:
        result = s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.worker == worker,
                Job.state == JobState.RUNNING,
            )
            .values(lease_expires_at=expires)
        )
        return rowcount(result) == 1


def set_step(ctx: Context, job_id: int, step: str, progress: int) -> None:
    with ctx.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(step=step, progress=progress))


def release(ctx: Context, job_id: int, worker: str) -> None:
    """Hand a job back to the queue (a worker stopping between steps)."""
    with ctx.db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == worker)
            .values(
                state=JobState.QUEUED,
                worker=None,
                lease_expires_at=None,
                attempts=Job.attempts - 1,
            )
        )


def expired(ctx: Context) -> list[Claimed]:
    """Running jobs whose worker stopped renewing the lease."""
    with ctx.db.session() as s:
        rows = s.scalars(
            select(Job).where(Job.state == JobState.RUNNING, Job.lease_expires_at < now())
        )
        return [claimed_from_row(j, now()) for j in rows]


def requeue_expired(ctx: Context, job_id: int) -> bool:
    """Queue an expired job again; False if someone else already did."""
    with ctx.db.session() as s:
        result = s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.state == JobState.RUNNING,
                Job.lease_expires_at < now(),
            )
            .values(state=JobState.QUEUED, worker=None, lease_expires_at=None)
        )
        return rowcount(result) == 1


def take_over_expired(ctx: Context, job_id: int, worker: str) -> bool:
    """Become the holder of an expired job (to roll it back); False if we lost the race."""
    lease = now() + timedelta(seconds=ctx.settings.job_lease_seconds)
    with ctx.db.session() as s:
        result = s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.state == JobState.RUNNING,
                Job.lease_expires_at < now(),
            )
            .values(worker=worker, lease_expires_at=lease)
        )
        return rowcount(result) == 1


# -- reading -----------------------------------------------------------------
class JobView(TypedDict):
    """The stable JSON shape of a job."""

    id: str
    kind: str
    vps: str | None
    state: str
    step: str | None
    progress: int
    attempts: int
    error: str | None
    actor: str
    worker: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None


def job_view(job: Job) -> JobView:
    return {
        "id": job.uuid,
        "kind": job.kind,
        "vps": job.vps_uuid,
        "state": job.state,
        "step": job.step,
        "progress": job.progress,
        "attempts": job.attempts,
        "error": job.error,
        "actor": job.actor,
        "worker": job.worker,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return aware(moment).isoformat() if moment else None


def get_job(ctx: Context, ref: str, owner_id: int | None = None, actor: str = "") -> JobView:
    """A job by uuid or unique uuid prefix.

    With ``owner_id`` (a customer), only a job that concerns one of their
    VPSes or that ``actor`` asked for; they are not told which worker ran it,
    and its error is in plain words.
    """
    ref = (ref or "").strip().lower()
    validation.not_longer(ref, "job id", 64)
    if not ref:
        raise NotFound("no job id given")
    query = select(Job).where(Job.uuid.startswith(ref, autoescape=True)).limit(2)
    if owner_id is not None:
        owned = select(Vps.uuid).where(Vps.owner_id == owner_id)
        query = query.where(or_(Job.vps_uuid.in_(owned), Job.actor == actor))
    with ctx.db.reading() as s:
        rows = list(s.scalars(query))
        if len(rows) != 1:
            raise NotFound(f"no job matches {ref!r}" if not rows else f"{ref!r} is ambiguous")
        shown = job_view(rows[0])
    if owner_id is not None:
        shown["worker"] = None  # which machine ran it is the operators' business
    shown["error"] = failures.for_owner(shown["error"], owner_id, shown["kind"])
    return shown


def active_jobs(ctx: Context, vps_uuids: Iterable[str]) -> dict[str, JobView]:
    """The newest unfinished job of each of these VPSes, by VPS id."""
    uuids = list(vps_uuids)
    if not uuids:
        return {}
    query = (
        select(Job)
        .where(Job.vps_uuid.in_(uuids), Job.state.in_(JobState.UNFINISHED))
        .order_by(Job.id)
    )
    with ctx.db.reading() as s:
        return {job.vps_uuid: job_view(job) for job in s.scalars(query) if job.vps_uuid}


def latest_job(ctx: Context, vps_uuid: str, owner_id: int | None = None) -> JobView | None:
    """The newest job of a VPS, finished or not (its error in plain words for an owner)."""
    query = select(Job).where(Job.vps_uuid == vps_uuid).order_by(Job.id.desc()).limit(1)
    with ctx.db.reading() as s:
        job = s.scalar(query)
        if job is None:
            return None
        shown = job_view(job)
    shown["error"] = failures.for_owner(shown["error"], owner_id, shown["kind"])
    return shown


def list_jobs(
    ctx: Context, state: str | None = None, vps_uuid: str | None = None, limit: int = 50
) -> list[JobView]:
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if state:
        query = query.where(Job.state == state)
    if vps_uuid:
        query = query.where(Job.vps_uuid == vps_uuid)
    with ctx.db.session() as s:
        return [job_view(j) for j in s.scalars(query)]


# -- workers -----------------------------------------------------------------
def worker_heartbeat(ctx: Context, name: str) -> None:
    with ctx.db.session() as s:
        row = s.scalar(select(Worker).where(Worker.name == name))
        if row is None:
            s.add(Worker(name=name))
        else:
            row.heartbeat_at = now()


def worker_gone(ctx: Context, name: str) -> None:
    with ctx.db.session() as s:
        row = s.scalar(select(Worker).where(Worker.name == name))
        if row is not None:
            s.delete(row)


def live_workers(ctx: Context) -> list[str]:
    """Workers that showed a sign of life within three heartbeats."""
    horizon = now() - timedelta(seconds=3 * ctx.settings.worker_heartbeat_seconds)
    with ctx.db.session() as s:
        return list(s.scalars(select(Worker.name).where(Worker.heartbeat_at >= horizon)))
