"""Snapshots: quick point-in-time states of a VPS's disk, kept inside its own volume.

A snapshot is an internal qcow2 snapshot of the VPS's overlay volume, taken
through libvirt (``virDomainSnapshotCreateXML``): of a running VPS with its
memory (the guest pauses for a moment and, reverted, runs on from that very
instant), of a stopped one its disk alone. Reverting puts the disk (and the
memory) back; a VPS that ran before runs afterwards. libvirt names it
``snap-<uuid>`` from the row's own uuid; the customer's label is display
text only.

A request checks what it can at once and records the row and a job in one
transaction; the worker takes, reverts and deletes (:func:`run_create`,
:func:`run_revert`, :func:`run_delete`). A plan allows ``snapshot_limit`` of
them per VPS (0: none). Snapshots are refused while a backup or restore is
pending and in rescue mode; a reinstall drops them (the volume is new), a
resize and a backup restore are refused while any exist, and they go with
their VPS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kvmvps import validation, xmlrender
from kvmvps.errors import Conflict, InvalidInput, NotFound
from kvmvps.models import Job, JobState, Plan, Snapshot, SnapshotState, Vps, VpsState
from kvmvps.services import Context, audit, failures, guard, jobs, provisioning
from kvmvps.services import vps as vps_service
from kvmvps.services.facts import facts_of
from kvmvps.services.steps import Build
from kvmvps.services.vps import resolve
from kvmvps.xmlspec import SnapshotSpec

S = VpsState
STATES = (S.RUNNING, S.STOPPED)
MAX_LABEL = 64
MAX_REF = 64
MAX_LIMIT = 50
LIVE_STATES = ("running", "idle", "paused", "in shutdown", "pmsuspended")
BLOCKING_KINDS = ("backup", "restore")

audit.declare("vps.snapshot.create", "vps.snapshot.revert", "vps.snapshot.delete")


def libvirt_name(snapshot_uuid: str) -> str:
    """The snapshot's name in libvirt: made from its uuid only."""
    return f"snap-{snapshot_uuid}"


class SnapshotView(TypedDict):
    """The stable JSON shape of a snapshot."""

    id: str
    vps: str
    label: str
    state: str
    with_memory: bool | None
    error: str | None
    created_at: str | None


def view(snap: Snapshot, vps_uuid: str) -> SnapshotView:
    return {
        "id": snap.uuid,
        "vps": vps_uuid,
        "label": snap.label,
        "state": snap.state,
        "with_memory": snap.with_memory,
        "error": snap.error,
        "created_at": audit.iso(snap.created_at),
    }


@dataclass(frozen=True)
class Requested:
    """A queued snapshot job: its job, its VPS and the snapshot."""

    job: str
    vps: str
    snapshot: str


# -- the plan's limit ------------------------------------------------------------
@audit.audits("plan.snapshots", "name")
def set_plan_snapshots(
    ctx: Context, name: str, limit: int, *, actor: str | None = None
) -> dict[str, object]:
    """Set how many snapshots a VPS of the plan may keep (0: none)."""
    validation.whole_number(limit, "snapshot limit", 0, MAX_LIMIT)
    with ctx.db.session() as s:
        plan = s.scalar(select(Plan).where(Plan.name == (name or "").strip()))
        if plan is None:
            raise NotFound(f"no plan named {name!r}")
        plan.snapshot_limit = limit
        return {"plan": plan.name, "snapshot_limit": plan.snapshot_limit}


# -- checks ------------------------------------------------------------------------
def clean_label(label: str | None) -> str:
    """The customer's label: one line of at most 64 characters, or empty."""
    text = (label or "").strip()
    if validation.has_control(text):
        raise InvalidInput("a snapshot label has no control characters")
    validation.not_longer(text, "snapshot label", MAX_LABEL)
    return text


def _locked(session: Session, vps: Vps) -> Vps:
    query = select(Vps).where(Vps.id == vps.id).with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).one()


def _usable(session: Session, vps: Vps, what: str, customer: bool) -> None:
    """Refuse when the VPS's state, rescue mode or a pending job rules ``what`` out."""
    guard.check_action(vps, what, operator=not customer)
    label = guard.LABELS.get(what, what.replace("_", " "))
    if vps.in_rescue:
        raise Conflict(f"cannot {label} {vps.hostname}: it is in rescue mode; unrescue it first")
    if vps.state not in STATES:
        raise Conflict(f"cannot {label} {vps.hostname}: it is {vps.state}")
    kinds = None if customer else BLOCKING_KINDS  # operators may queue behind other jobs
    query = select(Job).where(Job.vps_uuid == vps.uuid, Job.state.in_(JobState.UNFINISHED))
    if kinds is not None:
        query = query.where(Job.kind.in_(kinds))
    pending = session.scalar(query.limit(1))
    if pending is not None:
        raise Conflict(
            f"cannot {label} {vps.hostname}: {pending.kind.replace('_', ' ')} is pending "
            f"(job {pending.uuid[:8]}, {pending.state}); try again when it has finished"
        )


def _snapshot_of(session: Session, vps: Vps, ref: str) -> Snapshot:
    """A snapshot of this VPS by uuid or unique uuid prefix; another VPS's is not found."""
    ref = (ref or "").strip().lower()
    validation.not_longer(ref, "snapshot id", MAX_REF)
    if validation.has_control(ref):
        raise InvalidInput("a snapshot id has no control characters")
    if not ref:
        raise InvalidInput("no snapshot named: give its id or an id prefix")
    rows = list(
        session.scalars(
            select(Snapshot)
            .where(Snapshot.vps_id == vps.id, Snapshot.uuid.startswith(ref, autoescape=True))
            .limit(2)
        )
    )
    if not rows:
        raise NotFound(f"no snapshot of {vps.hostname} matches {ref!r}")
    if len(rows) > 1:
        raise NotFound(f"{ref!r} is ambiguous; give more of the snapshot id")
    return rows[0]


def count(session: Session, vps_id: int) -> int:
    """Snapshots of the VPS that take a place (every one not failed)."""
    query = select(func.count()).select_from(Snapshot)
    query = query.where(Snapshot.vps_id == vps_id, Snapshot.state != SnapshotState.FAILED)
    return session.scalar(query) or 0


# -- asking -------------------------------------------------------------------------
def create(
    ctx: Context,
    ref: str,
    label: str | None = None,
    *,
    actor: str | None = None,
    owner_id: int | None = None,
) -> Requested:
    """Queue a snapshot of the VPS ``ref`` within its plan's limit; ``vps.snapshot.create``."""
    with audit.audited(ctx, actor, "vps.snapshot.create", ref) as entry:
        text = clean_label(label)
        with ctx.db.session() as s:
            vps = _locked(s, resolve(s, ref, owner_id))
            entry.target = vps.hostname
            _usable(s, vps, "snapshot", owner_id is not None)
            limit, used = vps.plan.snapshot_limit, count(s, vps.id)
            if used >= limit:
                raise Conflict(
                    f"no snapshot left for {vps.hostname}: its plan allows {limit} and {used} "
                    "exist; delete one first"
                )
            snap = Snapshot(vps_id=vps.id, label=text, state=SnapshotState.QUEUED)
            s.add(snap)
            s.flush()
            job = jobs.enqueue(
                s, "snapshot", vps.uuid, vps.host_id, actor=actor or "", snapshot=snap.uuid
            )
            return Requested(job=job.uuid, vps=vps.uuid, snapshot=snap.uuid)


def revert(
    ctx: Context, ref: str, snap_ref: str, *, actor: str | None = None, owner_id: int | None = None
) -> Requested:
    """Queue going back to a ready snapshot; what the disk holds now is lost."""
    return _ask(ctx, ref, snap_ref, "snapshot_revert", actor, owner_id)


def delete(
    ctx: Context, ref: str, snap_ref: str, *, actor: str | None = None, owner_id: int | None = None
) -> Requested:
    """Queue deleting a snapshot (the state it holds is gone for good)."""
    return _ask(ctx, ref, snap_ref, "snapshot_delete", actor, owner_id)


AUDIT_NAMES = {"snapshot_revert": "vps.snapshot.revert", "snapshot_delete": "vps.snapshot.delete"}
VERBS = {"snapshot_revert": "revert to a snapshot of", "snapshot_delete": "delete a snapshot of"}


def _ask(
    ctx: Context, ref: str, snap_ref: str, kind: str, actor: str | None, owner_id: int | None
) -> Requested:
    with audit.audited(ctx, actor, AUDIT_NAMES[kind], ref) as entry, ctx.db.session() as s:
        vps = _locked(s, resolve(s, ref, owner_id))
        entry.target = vps.hostname
        snap = _snapshot_of(s, vps, snap_ref)
        guard.check_action(vps, kind, operator=owner_id is None)
        if kind == "snapshot_delete" and snap.state == SnapshotState.FAILED:
            s.delete(snap)  # nothing of it in libvirt: gone at once, no job
            return Requested(job="", vps=vps.uuid, snapshot=snap.uuid)
        _usable(s, vps, kind, owner_id is not None)
        if snap.state != SnapshotState.READY:
            raise Conflict(f"snapshot {snap.uuid[:8]} is {snap.state}, not ready")
        job = jobs.enqueue(s, kind, vps.uuid, vps.host_id, actor=actor or "", snapshot=snap.uuid)
        return Requested(job=job.uuid, vps=vps.uuid, snapshot=snap.uuid)


def list_snapshots(ctx: Context, ref: str, owner_id: int | None = None) -> list[SnapshotView]:
    """The VPS's snapshots, newest first."""
    with ctx.db.reading() as s:
        vps = resolve(s, ref, owner_id)
        rows = s.scalars(
            select(Snapshot).where(Snapshot.vps_id == vps.id).order_by(Snapshot.id.desc())
        )
        shown = [view(snap, vps.uuid) for snap in rows]
    if owner_id is not None:  # a customer reads why in plain words, never a host's paths
        for snap in shown:
            snap["error"] = failures.plain(snap["error"], "snapshot")
    return shown


def plan_limit(ctx: Context, ref: str, owner_id: int | None = None) -> int:
    """How many snapshots the VPS's plan lets it keep."""
    with ctx.db.reading() as s:
        return resolve(s, ref, owner_id).plan.snapshot_limit


# -- the worker's side -----------------------------------------------------------------
@dataclass(frozen=True)
class _Work:
    vps_uuid: str
    snapshot_uuid: str
    state: str
    domain: str
    host_uri: str
    cloud_init: bool


def _load(ctx: Context, vps_uuid: str, snapshot_uuid: str) -> _Work:
    with ctx.db.reading() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == vps_uuid))
        if vps is None:
            raise NotFound(f"VPS {vps_uuid} no longer exists")
        snap = s.scalar(
            select(Snapshot).where(Snapshot.uuid == snapshot_uuid, Snapshot.vps_id == vps.id)
        )
        if snap is None:
            raise NotFound(f"snapshot {snapshot_uuid[:8]} no longer exists")
        facts = facts_of(vps, ctx.settings)
        return _Work(
            vps.uuid, snap.uuid, snap.state, facts.domain, facts.host_uri, facts.cloud_init
        )


def run_create(ctx: Context, vps_uuid: str, snapshot_uuid: str) -> None:
    """Take the snapshot: with the memory when the VPS runs, of the disk alone when not."""
    work = _load(ctx, vps_uuid, snapshot_uuid)
    if work.state == SnapshotState.READY:
        return  # a resumed job whose first run finished
    hv, name = ctx.hypervisor(work.host_uri), libvirt_name(snapshot_uuid)
    running = hv.state(work.domain) in LIVE_STATES
    skipped = ("vdb",) if work.cloud_init else ()  # the read-only cloud-init seed
    xml = xmlrender.snapshot_xml(
        SnapshotSpec(name=name, disk="vda", with_memory=running, skipped_disks=skipped)
    )
    try:
        if name not in hv.snapshot_names(work.domain):  # a resumed job may have taken it
            hv.snapshot_create(work.domain, xml)
    except Exception as exc:
        _mark(ctx, snapshot_uuid, SnapshotState.FAILED, error=audit.error_message(exc))
        raise
    _mark(ctx, snapshot_uuid, SnapshotState.READY, with_memory=running)


def _mark(
    ctx: Context,
    snapshot_uuid: str,
    state: str,
    *,
    error: str | None = None,
    with_memory: bool | None = None,
) -> None:
    with ctx.db.session() as s:
        snap = s.scalar(select(Snapshot).where(Snapshot.uuid == snapshot_uuid))
        if snap is not None:
            snap.state, snap.error, snap.with_memory = state, error, with_memory


def run_revert(ctx: Context, vps_uuid: str, snapshot_uuid: str) -> None:
    """Go back to the snapshot; a VPS that ran runs afterwards, a stopped one stays stopped
    unless the snapshot holds a running state. The definition for the next boot is the
    current one again (libvirt puts back the one saved with the snapshot)."""
    work = _load(ctx, vps_uuid, snapshot_uuid)
    hv = ctx.hypervisor(work.host_uri)
    was_running = hv.state(work.domain) in LIVE_STATES
    hv.snapshot_revert(work.domain, libvirt_name(snapshot_uuid), running=was_running)
    _redefine(ctx, vps_uuid)
    vps_service.sync_state(ctx, vps_uuid)


def _redefine(ctx: Context, vps_uuid: str) -> None:
    with ctx.db.reading() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == vps_uuid))
        if vps is None:
            raise NotFound(f"VPS {vps_uuid} no longer exists")
        build = Build(ctx=ctx, facts=facts_of(vps, ctx.settings))
    provisioning.render_domain(build)
    build.hv.define_domain(build.xml)


def run_delete(ctx: Context, vps_uuid: str, snapshot_uuid: str) -> None:
    """Delete the snapshot in libvirt (its data in the volume), then its row."""
    try:
        work = _load(ctx, vps_uuid, snapshot_uuid)
    except NotFound:
        return  # deleted already (a resumed job)
    ctx.hypervisor(work.host_uri).snapshot_delete(work.domain, libvirt_name(snapshot_uuid))
    with ctx.db.session() as s:
        snap = s.scalar(select(Snapshot).where(Snapshot.uuid == snapshot_uuid))
        if snap is not None:
            s.delete(snap)
