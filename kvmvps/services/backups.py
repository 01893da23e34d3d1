"""Backups of a VPS's disk: asked for here, made and restored by the worker.

A request checks what it can at once (the VPS is the caller's, its state
allows it, a slot of its plan is free, nothing else is pending for a
customer) and records a :class:`~kvmvps.models.Backup` row and a job in one
transaction. The worker's job copies the disk (see :mod:`kvmvps.services.backup_work`).

Backup ids are scoped: a customer names only backups of their own VPSes,
and a restore takes only a backup of the VPS it restores.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from kvmvps import backupstore, validation
from kvmvps.errors import Conflict, InvalidInput, NotFound
from kvmvps.models import Backup, BackupState, Job, JobState, Plan, Snapshot, Vps, VpsState
from kvmvps.services import Context, audit, failures, guard, jobs
from kvmvps.services.vps import resolve

S = VpsState
BACKUP_STATES = (S.RUNNING, S.STOPPED, S.SUSPENDED)
RESTORE_STATES = (S.RUNNING, S.STOPPED)
SCHEDULES = ("daily", "weekly")
MAX_REF = 64

MAX_SLOTS = 100

audit.declare("vps.backup.create", "vps.backup.restore", "vps.backup.delete")


class PlanBackups(TypedDict):
    """A plan's backup settings."""

    plan: str
    backup_slots: int
    backup_schedule: str | None
    backup_keep: int


@audit.audits("plan.backups", "name")
def set_plan_backups(
    ctx: Context,
    name: str,
    slots: int | None = None,
    schedule: str | None = None,
    keep: int | None = None,
    *,
    actor: str | None = None,
) -> PlanBackups:
    """Change a plan's backup slots, schedule (``daily``, ``weekly``, ``none``) and how many
    scheduled backups are kept; the kept ones must fit in the slots."""
    if slots is not None:
        validation.whole_number(slots, "backup slots", 0, MAX_SLOTS)
    if keep is not None:
        validation.whole_number(keep, "scheduled backups kept", 0, MAX_SLOTS)
    if schedule is not None and schedule not in (*SCHEDULES, "none"):
        raise InvalidInput(f"schedule must be one of {', '.join(SCHEDULES)}, none")
    with ctx.db.session() as s:
        plan = s.scalar(select(Plan).where(Plan.name == (name or "").strip()))
        if plan is None:
            raise NotFound(f"no plan named {name!r}")
        if slots is not None:
            plan.backup_slots = slots
        if keep is not None:
            plan.backup_keep = keep
        if schedule is not None:
            plan.backup_schedule = None if schedule == "none" else schedule
        if plan.backup_schedule and not 1 <= plan.backup_keep <= plan.backup_slots:
            raise InvalidInput(
                f"a schedule keeps 1 to {plan.backup_slots} backups (the plan's slots), "
                f"not {plan.backup_keep}"
            )
        return {
            "plan": plan.name,
            "backup_slots": plan.backup_slots,
            "backup_schedule": plan.backup_schedule,
            "backup_keep": plan.backup_keep,
        }


class BackupView(TypedDict):
    """The stable JSON shape of a backup."""

    id: str
    vps: str
    hostname: str
    image: str
    kind: str
    state: str
    consistency: str | None
    size_bytes: int | None
    virtual_bytes: int | None
    error: str | None
    created_at: str | None
    finished_at: str | None


def view(backup: Backup) -> BackupView:
    return {
        "id": backup.uuid,
        "vps": backup.vps_uuid,
        "hostname": backup.hostname,
        "image": backup.image_name,
        "kind": backup.kind,
        "state": backup.state,
        "consistency": backup.consistency,
        "size_bytes": backup.size_bytes,
        "virtual_bytes": backup.virtual_bytes,
        "error": backup.error,
        "created_at": _iso(backup.created_at),
        "finished_at": _iso(backup.finished_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return jobs.aware(moment).isoformat() if moment else None


@dataclass(frozen=True)
class Requested:
    """A queued backup or restore: its job, its VPS and the backup."""

    job: str
    vps: str
    backup: str


# -- finding -------------------------------------------------------------------
def _locked(session: Session, vps: Vps) -> Vps:
    """The VPS row locked for this transaction (two requests for it queue here)."""
    query = select(Vps).where(Vps.id == vps.id).with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).one()


def _backup_of(session: Session, vps_uuid: str, ref: str) -> Backup:
    """A backup of this VPS by uuid or unique uuid prefix; another VPS's is not found."""
    return _one_backup(session, ref, Backup.vps_uuid == vps_uuid)


def _backup_ref(ref: str) -> str:
    ref = (ref or "").strip().lower()
    validation.not_longer(ref, "backup id", MAX_REF)
    if validation.has_control(ref):
        raise InvalidInput("a backup id has no control characters")
    if not ref:
        raise InvalidInput("no backup named: give its id or an id prefix")
    return ref


def _one_backup(session: Session, ref: str, *where: ColumnElement[bool]) -> Backup:
    ref = _backup_ref(ref)
    rows = list(
        session.scalars(
            select(Backup).where(*where, Backup.uuid.startswith(ref, autoescape=True)).limit(2)
        )
    )
    if not rows:
        raise NotFound(f"no backup of this VPS matches {ref!r}")
    if len(rows) > 1:
        raise NotFound(f"{ref!r} is ambiguous; give more of the backup id")
    return rows[0]


def _kept_of(session: Session, ref: str, owner_id: int | None) -> list[ColumnElement[bool]]:
    """Conditions for backups of the VPS ``ref``, or, once it is deleted, of the VPS
    that had this id or hostname (its kept backups); always only the owner's."""
    scope = [] if owner_id is None else [Backup.owner_id == owner_id]
    try:
        return [*scope, Backup.vps_uuid == resolve(session, ref, owner_id).uuid]
    except NotFound:
        name = (ref or "").strip().lower()
        return [*scope, or_(Backup.vps_uuid == name, Backup.hostname == name)]


def find_backup(session: Session, ref: str, backup_ref: str, owner_id: int | None) -> Backup:
    """A backup of the VPS ``ref``, or a kept backup of a deleted VPS of that name or id.

    When neither the VPS nor such a backup exists, the VPS is what is not found.
    """
    try:
        resolve(session, ref, owner_id)
    except NotFound as missing:
        try:
            return _one_backup(session, backup_ref, *_kept_of(session, ref, owner_id))
        except NotFound:
            raise missing from None
    return _one_backup(session, backup_ref, *_kept_of(session, ref, owner_id))


def _refuse_if_pending(session: Session, vps: Vps, customer: bool) -> None:
    if not customer:
        return  # operators may queue work behind other jobs
    pending = session.scalar(
        select(Job).where(Job.vps_uuid == vps.uuid, Job.state.in_(JobState.UNFINISHED)).limit(1)
    )
    if pending is not None:
        raise Conflict(
            f"{vps.hostname} already has an action pending: {pending.kind.replace('_', ' ')} "
            f"(job {pending.uuid[:8]}, {pending.state}); try again when it has finished"
        )


def used_slots(session: Session, vps_uuid: str) -> int:
    """Backups that take a slot: every one not failed."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Backup)
            .where(Backup.vps_uuid == vps_uuid, Backup.state != BackupState.FAILED)
        )
        or 0
    )


# -- asking ----------------------------------------------------------------------
def create(
    ctx: Context, ref: str, *, actor: str | None = None, owner_id: int | None = None
) -> Requested:
    """Queue a backup of the VPS ``ref`` within its plan's backup slots.

    ``owner_id`` scopes it to a customer's VPSes (one pending action at a
    time); recorded in the audit log as ``vps.backup.create``.
    """
    with audit.audited(ctx, actor, "vps.backup.create", ref) as entry:
        customer = owner_id is not None
        with ctx.db.session() as s:
            vps = _locked(s, resolve(s, ref, owner_id))
            entry.target = vps.hostname
            guard.check_action(vps, "backup", operator=not customer)
            if vps.state not in BACKUP_STATES:
                raise Conflict(f"cannot back up {vps.hostname}: it is {vps.state}")
            _refuse_if_pending(s, vps, customer)
            slots, used = vps.plan.backup_slots, used_slots(s, vps.uuid)
            if used >= slots:
                raise Conflict(
                    f"no backup slot left for {vps.hostname}: its plan has {slots} and "
                    f"{used} are used; delete a backup first"
                )
            return _record(s, vps, "manual", actor or "")


def _record(session: Session, vps: Vps, kind: str, actor: str) -> Requested:
    backup = Backup(
        vps_uuid=vps.uuid,
        owner_id=vps.owner_id,
        hostname=vps.hostname,
        image_name=vps.image.name,
        kind=kind,
        state=BackupState.QUEUED,
    )
    session.add(backup)
    session.flush()
    job = jobs.enqueue(session, "backup", vps.uuid, vps.host_id, actor=actor, backup=backup.uuid)
    return Requested(job=job.uuid, vps=vps.uuid, backup=backup.uuid)


def restore(
    ctx: Context,
    ref: str,
    backup_ref: str,
    *,
    actor: str | None = None,
    owner_id: int | None = None,
) -> Requested:
    """Queue replacing the VPS's disk with one of its own ready backups.

    The worker stops the VPS for it and starts it again if it ran; its
    address, credentials and pinned host key stay. Recorded as ``vps.backup.restore``.
    """
    with audit.audited(ctx, actor, "vps.backup.restore", ref) as entry:
        customer = owner_id is not None
        with ctx.db.session() as s:
            vps = _locked(s, resolve(s, ref, owner_id))
            entry.target = vps.hostname
            guard.check_action(vps, "backup_restore", operator=not customer)
            backup = _backup_of(s, vps.uuid, backup_ref)
            if backup.state != BackupState.READY:
                raise Conflict(f"backup {backup.uuid[:8]} is {backup.state}, not ready")
            if vps.state not in RESTORE_STATES:
                raise Conflict(f"cannot restore {vps.hostname}: it is {vps.state}")
            if s.scalar(select(Snapshot.id).where(Snapshot.vps_id == vps.id).limit(1)):
                raise Conflict(
                    f"cannot restore {vps.hostname}: it has snapshots, which live in the disk "
                    "a restore replaces; delete them first"
                )
            _refuse_if_pending(s, vps, customer)
            job = jobs.enqueue(
                s, "restore", vps.uuid, vps.host_id, actor=actor or "", backup=backup.uuid
            )
            return Requested(job=job.uuid, vps=vps.uuid, backup=backup.uuid)


def delete(
    ctx: Context,
    ref: str,
    backup_ref: str,
    *,
    actor: str | None = None,
    owner_id: int | None = None,
) -> BackupView:
    """Delete a backup (its files and its row); one a job still uses is refused."""
    with audit.audited(ctx, actor, "vps.backup.delete", ref) as entry:
        with ctx.db.session() as s:
            try:
                vps: Vps | None = _locked(s, resolve(s, ref, owner_id))
            except NotFound:
                vps = None  # a kept backup of a deleted VPS
            if vps is not None:
                guard.check_action(vps, "backup_delete", operator=owner_id is None)
            backup = find_backup(s, ref, backup_ref, owner_id)
            entry.target = backup.hostname
            if _in_use(s, backup):
                raise Conflict(f"backup {backup.uuid[:8]} is in use by a job; try again later")
            shown = view(backup)
            s.delete(backup)
        backupstore.remove(ctx.settings.backup_path, shown["id"])  # once the row is gone
        return shown


def _in_use(session: Session, backup: Backup) -> bool:
    """A queued or running job of its VPS names the backup."""
    params = session.scalars(
        select(Job.params).where(
            Job.state.in_(JobState.UNFINISHED),
            or_(
                and_(Job.vps_uuid == backup.vps_uuid, Job.kind.in_(("backup", "restore"))),
                Job.kind == "create",  # a new VPS made from it
            ),
        )
    )
    return any(backup.uuid in p for p in params)


def list_backups(ctx: Context, ref: str, owner_id: int | None = None) -> list[BackupView]:
    """The VPS's backups, newest first (a deleted VPS's kept ones by its id or hostname)."""
    with ctx.db.reading() as s:
        rows = s.scalars(
            select(Backup).where(*_kept_of(s, ref, owner_id)).order_by(Backup.id.desc())
        )
        shown = [view(b) for b in rows]
        if not shown:
            resolve(s, ref, owner_id)  # a VPS with none, or NotFound
    if owner_id is not None:  # a customer reads why in plain words, never a host's paths
        for b in shown:
            b["error"] = failures.plain(b["error"], "backup")
    return shown


def plan_slots(ctx: Context, ref: str, owner_id: int | None = None) -> int:
    """How many backups the VPS's plan lets it keep."""
    with ctx.db.reading() as s:
        return resolve(s, ref, owner_id).plan.backup_slots


def drop_all(ctx: Context, vps_uuid: str) -> int:
    """Delete every backup of a VPS (it is being deleted); return how many."""
    with ctx.db.session() as s:
        rows = list(s.scalars(select(Backup).where(Backup.vps_uuid == vps_uuid)))
        gone = [backup.uuid for backup in rows]
        for backup in rows:
            s.delete(backup)
    for backup_uuid in gone:
        backupstore.remove(ctx.settings.backup_path, backup_uuid)
    return len(gone)


# -- the schedule ------------------------------------------------------------------
PERIODS = {"daily": timedelta(days=1), "weekly": timedelta(days=7)}
SCHEDULE_ACTOR = "system:schedule"


def run_schedule(ctx: Context) -> list[str]:
    """Queue a scheduled backup of every VPS whose plan's schedule is due; the jobs queued.

    A VPS is due when its newest scheduled backup (ready, queued or failed)
    is a period old; one with a job pending, or suspended, waits. The VPS
    rows are locked, so two workers never queue the same backup twice.
    """
    queued = []
    with ctx.db.session() as s:
        rows = s.scalars(
            select(Vps)
            .join(Plan, Plan.id == Vps.plan_id)
            .where(
                Plan.backup_schedule.is_not(None),
                Vps.state.in_((S.RUNNING, S.STOPPED)),
                Vps.suspended_reason.is_(None),
            )
            .order_by(Vps.id)
            .with_for_update(of=Vps)
        )
        for vps in rows:
            if _due(s, vps):
                queued.append(_record(s, vps, "scheduled", SCHEDULE_ACTOR).job)
    return queued


def _due(session: Session, vps: Vps) -> bool:
    period = PERIODS.get(vps.plan.backup_schedule or "")
    if period is None:
        return False
    busy = session.scalar(
        select(Job.id).where(Job.vps_uuid == vps.uuid, Job.state.in_(JobState.UNFINISHED))
    )
    if busy is not None:
        return False
    last = session.scalar(
        select(func.max(Backup.created_at)).where(
            Backup.vps_uuid == vps.uuid, Backup.kind == "scheduled"
        )
    )
    return last is None or jobs.aware(last) <= jobs.now() - period


def prune(ctx: Context, vps_uuid: str) -> int:
    """Delete the scheduled backups beyond the plan's ``backup_keep``, oldest first."""
    with ctx.db.session() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == vps_uuid))
        if vps is None or not vps.plan.backup_schedule:
            return 0
        kept = list(
            s.scalars(
                select(Backup)
                .where(
                    Backup.vps_uuid == vps_uuid,
                    Backup.kind == "scheduled",
                    Backup.state == BackupState.READY,
                )
                .order_by(Backup.id.desc())
            )
        )
        old = kept[max(vps.plan.backup_keep, 1) :]
        gone = [backup.uuid for backup in old]
        for backup in old:
            s.delete(backup)
    for backup_uuid in gone:
        backupstore.remove(ctx.settings.backup_path, backup_uuid)
    return len(gone)
