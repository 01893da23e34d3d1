"""More VPS operations: the serial console and moving to another plan."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from kvmvps import cpupin, validation
from kvmvps.errors import CapacityError, Conflict, InvalidInput, KvmvpsError
from kvmvps.hypervisor import Hypervisor
from kvmvps.limits import throttled
from kvmvps.models import Job, JobState, Plan, Snapshot, Vps, VpsState
from kvmvps.services import (
    Context,
    audit,
    guard,
    inventory,
    jobs,
    placement,
    provisioning,
    quotas,
    tuning,
)
from kvmvps.services.facts import VpsFacts, facts_of, plan_limits
from kvmvps.services.inventory import get_by_name
from kvmvps.services.steps import Build
from kvmvps.services.vps import VpsView, resolve, view
from kvmvps.storage import check_base_image, overlay_capacity

log = logging.getLogger(__name__)

MAX_LOG_BYTES = 4 << 20


# -- console -----------------------------------------------------------------
def console_log_path(ctx: Context, ref: str) -> tuple[str, Path]:
    """The VPS's hostname and the file its serial console is logged to."""
    with ctx.db.session() as s:
        vps = resolve(s, ref)
        return vps.hostname, Path(facts_of(vps, ctx.settings).console_log)


def console_log(ctx: Context, ref: str, max_bytes: int = MAX_LOG_BYTES) -> str:
    """The end of the VPS's console log (at most ``max_bytes``), as text."""
    hostname, path = console_log_path(ctx, ref)
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        raise KvmvpsError(
            f"{hostname} has no console log yet (it is written while the VPS runs)"
        ) from None
    except OSError as exc:
        raise KvmvpsError(f"cannot read the console log of {hostname}: {exc.strerror}") from None
    return data.decode("utf-8", errors="replace")


# -- resize ------------------------------------------------------------------
RESIZE_STATES = (VpsState.RUNNING, VpsState.STOPPED, VpsState.SUSPENDED)
ROOT_DISK = "vda"


def _check_plans(vps: Vps, old: Plan, new: Plan) -> None:
    if new.id == old.id:
        raise InvalidInput(f"{vps.hostname} already has plan {new.name!r}")
    if new.disk_gib < old.disk_gib:
        raise InvalidInput(
            f"a disk cannot shrink: plan {new.name!r} has {new.disk_gib} GiB, "
            f"{vps.hostname} already has {old.disk_gib} GiB"
        )


def _check_state(session: Session, vps: Vps, hv: Hypervisor, job: str | None) -> bool:
    """Whether the guest runs (its disk then grows live); Conflict when it may not move now."""
    if vps.state not in RESIZE_STATES:
        raise Conflict(f"cannot resize {vps.hostname}: it is {vps.state}")
    live = hv.state(vps.domain_name) != "shut off"
    if live != (vps.state != VpsState.STOPPED):
        said = "running" if live else "shut off"
        raise Conflict(
            f"cannot resize {vps.hostname}: it is {vps.state} but {said} according to libvirt; "
            "try again in a moment"
        )
    if _busy(session, vps, job):
        raise Conflict(f"cannot resize {vps.hostname}: a job is still working on it")
    return live


def _repin(ctx: Context, session: Session, vps: Vps, old: Plan, new: Plan) -> None:
    """Put the VPS on ``new`` and pin its vCPUs afresh, if the host has room."""
    st = ctx.settings
    cpupin.release(session, vps)
    vps.plan = new
    session.flush()
    cap = placement.capacity(session, vps.host, st.cpu_overcommit, st.host_memory_reserve_mib)
    if new.memory_mib > old.memory_mib and cap.memory_committed_mib > cap.memory_limit_mib:
        raise CapacityError(
            f"host {vps.host.name} has {cap.free_memory_mib + new.memory_mib - old.memory_mib} "
            f"MiB free, too little to grow {vps.hostname} to {new.memory_mib} MiB"
        )
    if new.vcpus > old.vcpus and cap.vcpus_pinned + new.vcpus > cap.vcpu_limit:
        raise CapacityError(
            f"host {vps.host.name} has {cap.free_vcpus} vCPU(s) free, too few for {new.vcpus} vCPUs"
        )
    cpupin.allocate(session, vps, vps.host, new.vcpus, st.cpu_overcommit)


def _redefine(
    ctx: Context, hv: Hypervisor, facts: VpsFacts, grow_to: int | None, live: bool
) -> str:
    """Define the domain afresh from the facts and grow the disk; return the old XML.

    A running guest keeps its vCPUs and memory until it next starts; its disk
    grows at once (libvirt's block resize). If growing fails the old
    definition is restored before the error is raised.
    """
    build = Build(ctx=ctx, facts=facts)
    provisioning.render_domain(build)
    old_xml = hv.domain_xml(facts.domain, inactive=True)
    hv.define_domain(build.xml)
    try:
        if grow_to is not None and live:
            hv.grow_disk_live(facts.domain, ROOT_DISK, grow_to)
        elif grow_to is not None:
            hv.resize_volume(facts.pool, facts.overlay_volume, grow_to)
    except Exception:
        _restore(hv, old_xml, facts.domain)
        raise
    return old_xml


def _restore(hv: Hypervisor, xml: str, domain: str) -> None:
    try:
        hv.define_domain(xml)
    except Exception as exc:  # noqa: BLE001 - the original error matters more
        log.error("restoring the definition of %s failed: %s", domain, exc)


def _same_size(old: Plan, new: Plan) -> bool:
    return (old.vcpus, old.memory_mib, old.disk_gib) == (new.vcpus, new.memory_mib, new.disk_gib)


def _busy(session: Session, vps: Vps, job: str | None = None) -> bool:
    """Whether a job other than ``job`` (the one doing this resize) is queued or running."""
    query = select(Job.id).where(Job.vps_uuid == vps.uuid, Job.state.in_(JobState.UNFINISHED))
    if job is not None:
        query = query.where(Job.uuid != job)
    return session.scalar(query) is not None


def _resize_live(
    ctx: Context, session: Session, vps: Vps, old: Plan, new: Plan, job: str | None
) -> None:
    """Same size, other limits: apply them to the running guest (and its definition)."""
    if _busy(session, vps, job):
        raise Conflict(f"cannot resize {vps.hostname}: a job is still working on it")
    facts = facts_of(vps, ctx.settings)
    held = throttled(plan_limits(new), vps.throttle_kibps)  # over the transfer: still held
    tuning.apply_or_restore(ctx.hypervisor(vps.host), facts, held, facts.limits)
    vps.plan = new


@audit.audits("vps.resize", target="ref")
def resize(
    ctx: Context, ref: str, plan: str, *, actor: str | None = None, job: str | None = None
) -> VpsView:
    """Move a VPS to another plan: vCPUs and memory follow, the disk only grows.

    A plan of the same size (only other limits) is applied live to a running
    VPS. Otherwise the domain is defined afresh: a stopped VPS gets everything
    at its next start; a running one gets its larger disk at once (the guest
    sees it grow) and its vCPUs and memory when it next starts. Database
    changes commit only after libvirt has the new definition and disk (or
    limits); any failure before that leaves both as they were. ``job`` is the
    job doing this resize (it does not count as another job at work).
    """
    with ctx.db.session() as s:
        vps = resolve(s, ref)
        if vps.in_rescue:
            raise Conflict(f"cannot resize {vps.hostname}: it is in rescue mode; unrescue it first")
        if s.scalar(select(Snapshot.id).where(Snapshot.vps_id == vps.id).limit(1)) is not None:
            raise Conflict(
                f"cannot resize {vps.hostname}: it has snapshots (their memory and disk fit "
                "the old size); delete them first"
            )
        new = get_by_name(s, Plan, plan, "plan")
        if vps.state in (VpsState.RUNNING, VpsState.SUSPENDED) and _same_size(vps.plan, new):
            _check_plans(vps, vps.plan, new)
            _resize_live(ctx, s, vps, vps.plan, new, job)
            s.flush()
            return view(vps)
    return _resize_defined(ctx, ref, plan, job)


def _resize_defined(ctx: Context, ref: str, plan: str, job: str | None) -> VpsView:
    hv: Hypervisor | None = None
    old_xml, domain = None, ""
    try:
        with ctx.db.session() as s:
            vps = resolve(s, ref)
            new, old = get_by_name(s, Plan, plan, "plan"), vps.plan
            _check_plans(vps, old, new)
            hv, domain = ctx.hypervisor(vps.host), vps.domain_name
            live = _check_state(s, vps, hv, job)
            _repin(ctx, s, vps, old, new)
            facts = facts_of(vps, ctx.settings)
            size = overlay_capacity(
                new.disk_gib, check_base_image(Path(facts.base_path)), facts.image_name
            )
            grow = size if new.disk_gib > old.disk_gib else None
            old_xml = _redefine(ctx, hv, facts, grow, live)
            s.flush()
            return view(vps)
    except BaseException:
        if hv is not None and old_xml is not None:
            _restore(hv, old_xml, domain)
        raise


# -- a customer's resize: checked now, done by a worker -------------------------------
@dataclass(frozen=True)
class ResizeRequested:
    """A queued resize: its job, its VPS, the plan and what the customer should know."""

    job: str
    vps: str
    plan: str
    note: str


def request_resize(
    ctx: Context,
    ref: str,
    plan: str,
    *,
    actor: str | None = None,
    owner_id: int | None = None,
) -> ResizeRequested:
    """Queue a move of the VPS ``ref`` to ``plan``; a worker runs :func:`resize`.

    ``owner_id`` scopes it to one customer's VPSes: the plan must be one the
    shop sells, the customer's quotas must hold the larger plan, and the VPS
    may have no other job pending. Recorded as ``vps.resize.request``,
    refusals too.
    """
    with audit.audited(ctx, actor, "vps.resize.request", ref) as entry:
        plan = validation.object_name(plan, "plan name")
        with ctx.db.session() as s:
            vps = _locked(s, resolve(s, ref, owner_id))
            entry.target = vps.hostname
            customer = owner_id is not None
            guard.check_action(vps, "resize", operator=not customer)
            if vps.in_rescue:
                raise Conflict(
                    f"cannot resize {vps.hostname}: it is in rescue mode; leave rescue mode first"
                )
            if vps.state not in RESIZE_STATES:
                raise Conflict(f"cannot resize {vps.hostname}: it is {vps.state}")
            if customer:
                inventory.for_sale(s, Plan, plan, "plan")
            new = get_by_name(s, Plan, plan, "plan")
            _check_plans(vps, vps.plan, new)
            if _busy(s, vps):
                raise Conflict(
                    f"{vps.hostname} already has an action pending; try again when it has finished"
                )
            quotas.check_resize(s, ctx.settings, vps.owner, vps.plan, new)
            job = jobs.enqueue(s, "resize", vps.uuid, vps.host_id, actor=actor or "", plan=new.name)
            return ResizeRequested(job.uuid, vps.uuid, new.name, _note(vps, new))


audit.declare("vps.resize.request")


# how each of kvmvps's own images follows a disk grown while it runs
FILESYSTEM_GROWS = {"tiny": "its filesystem with it", "debian": "its filesystem with it"}


def _note(vps: Vps, new: Plan) -> str:
    """What the customer should know about when the new size applies."""
    if vps.state == VpsState.STOPPED:
        return "the new size applies when the server next starts"
    if _same_size(vps.plan, new):
        return "the new limits apply at once"
    parts = []
    if new.disk_gib > vps.plan.disk_gib:
        fs = FILESYSTEM_GROWS.get(vps.image.os_family)
        parts.append("the disk grows now" + (f", {fs}" if fs else ""))
    if (new.vcpus, new.memory_mib) != (vps.plan.vcpus, vps.plan.memory_mib):
        parts.append(
            "vCPUs and memory apply at the next start "
            "(shut the server down, then start it; a reboot is not enough)"
        )
    return "; ".join(parts)


def _locked(session: Session, vps: Vps) -> Vps:
    """The VPS row locked for this transaction, read afresh (two requests queue here)."""
    query = select(Vps).where(Vps.id == vps.id).with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).one()
